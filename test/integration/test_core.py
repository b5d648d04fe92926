"""The foundation: hostile input through the ingest core, the simulator worker
(rate, reproducibility, counters, kill -9), the launcher's life cycle, and the
preload error.  Runs against the suite's cluster (conftest.py)."""

import json
import os
import random
import signal
import subprocess
import time

import pytest

from conftest import DIR, PORT, ROOT, connect, drop_extension, poll, server_log


def status(db, worker="simulator"):
    row = db.execute(
        "SELECT pid, state, messages, rows, rejected, rate, last_error, restarts "
        "FROM iotpipe.status WHERE worker = %s",
        (worker,),
    ).fetchone()
    if row is None:
        return None
    keys = (
        "pid",
        "state",
        "messages",
        "rows",
        "rejected",
        "rate",
        "last_error",
        "restarts",
    )
    return dict(zip(keys, row))


def stop_simulator(db):
    db.execute("SELECT iotpipe.simulator_stop()")
    poll(
        lambda: (s := status(db)) is None or s["pid"] is None,
        30,
        what="the simulator to stop",
    )


def postmaster_start(db):
    return db.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


# ---------------------------------------------------------------- hostile input


def hostile_corpus():
    """At least 100 malformed or hostile messages, as bytes."""
    good = {
        "sensor_id": "h-1",
        "ts": "2026-11-27T10:00:00Z",
        "temperature": 20.5,
        "humidity": 40.0,
    }
    g = json.dumps(good).encode()
    c = []
    # not JSON / truncated at every length
    c += [
        b"hello",
        b"{",
        b"}",
        b"{{}}",
        b"null",
        b"true",
        b"42",
        b'"str"',
        b"[]",
        b"{]",
    ]
    c += [g[:i] for i in range(1, len(g), 3)]
    # invalid UTF-8 and NUL bytes in various places
    c += [
        b'{"sensor_id":"\xff","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"\xc3\x28","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"\xed\xa0\x80","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"\xf8\x88\x80\x80\x80","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b"\x00",
        b'{"sensor_id":"a\x00b","ts":"2026-11-27T10:00:00Z","temperature":1}',
        g + b"\x00",
        b"\xef\xbb\xbf" + g,
    ]
    # deep nesting
    for depth in (65, 100, 1000, 100000):
        c.append(
            b'{"sensor_id":"h","ts":"2026-11-27T10:00:00Z","temperature":1,"x":'
            + b"[" * depth
            + b"]" * depth
            + b"}"
        )
    c.append(b"[" * 200000)
    c.append(b'{"a":' * 50000)
    # huge numbers and non-finite values
    for v in (
        "1e309",
        "-1e309",
        "NaN",
        "Infinity",
        "-Infinity",
        "1" * 400,
        "0x10",
        "+1",
        ".5",
        "1.",
        "1e",
        "--1",
    ):
        c.append(
            b'{"sensor_id":"h","ts":"2026-11-27T10:00:00Z","temperature":'
            + v.encode()
            + b"}"
        )
    # wrong types for every field
    for field, val in [
        ("sensor_id", 1),
        ("sensor_id", None),
        ("sensor_id", []),
        ("sensor_id", {}),
        ("sensor_id", True),
        ("ts", None),
        ("ts", True),
        ("ts", []),
        ("ts", 1.5),
        ("ts", "2026-11-27"),
        ("temperature", "20"),
        ("temperature", True),
        ("temperature", {}),
        ("humidity", "x"),
        ("humidity", [1]),
        ("location", 5),
        ("location", ["a"]),
        ("location", {"a": 1}),
    ]:
        m = dict(good)
        m[field] = val
        c.append(json.dumps(m).encode())
    # missing fields
    for drop in (["sensor_id"], ["ts"], ["temperature", "humidity"]):
        c.append(json.dumps({k: v for k, v in good.items() if k not in drop}).encode())
    # out-of-range values and absurd timestamps
    for k, v in [
        ("humidity", 100.5),
        ("humidity", -1),
        ("temperature", -273.2),
        ("ts", "1970-01-01T00:00:00Z"),
        ("ts", "1999-12-31T23:59:59.999Z"),
        ("ts", "9999-12-31T23:59:59Z"),
        ("ts", "2026-13-01T00:00:00Z"),
        ("ts", "2026-11-31T00:00:00Z"),
        ("ts", "2026-11-27T25:00:00Z"),
        ("ts", "2026-11-27T10:00:00+99:00"),
        ("ts", 0),
        ("ts", -1),
        ("ts", 99999999999999999),
        ("ts", "2026-11-27T10:00:00.Z"),
    ]:
        m = dict(good)
        m[k] = v
        c.append(json.dumps(m).encode())
    # 1 MB strings, oversized messages, long ids
    c.append(json.dumps({**good, "sensor_id": "x" * 1_000_000}).encode())
    c.append(json.dumps({**good, "location": "y" * 1_000_000}).encode())
    c.append(json.dumps({**good, "pad": "z" * 65536}).encode())
    c.append(json.dumps({**good, "sensor_id": "x" * 65}).encode())
    c.append(json.dumps({**good, "location": "l" * 257}).encode())
    # broken escapes and control characters
    c += [
        b'{"sensor_id":"\\x41","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"\\u12","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"\\udc00","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"\\ud800\\u0041","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"a\nb","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"a\tb","ts":"2026-11-27T10:00:00Z","temperature":1}',
        b'{"sensor_id":"a","ts":"2026-11-27T10:00:00Z","temperature":1',
        b'{"sensor_id":"a" "ts":"2026-11-27T10:00:00Z"}',
        b'{"sensor_id":"a",,"ts":"2026-11-27T10:00:00Z"}',
        b"{'sensor_id':'a'}",
        b'{sensor_id:"a"}',
    ]
    # random garbage, reproducible
    rnd = random.Random(7)
    for _ in range(30):
        c.append(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))))
    # random mutations of a good message
    for _ in range(30):
        b = bytearray(g)
        for _ in range(rnd.randrange(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        c.append(bytes(b))
    return c


def test_hostile_corpus_is_fully_accounted_for(db):
    corpus = hostile_corpus()
    assert len(corpus) >= 100
    started = postmaster_start(db)
    db.execute("TRUNCATE iotpipe.dead_letters")
    before = db.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
    acc, rej = db.execute(
        "SELECT * FROM iotpipe.ingest_json_bytes(%s)", (corpus,)
    ).fetchone()
    assert acc + rej == len(corpus)
    after = db.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
    dls = db.execute(
        "SELECT payload, error FROM iotpipe.dead_letters ORDER BY id"
    ).fetchall()
    assert after - before == acc
    assert len(dls) == rej
    # every dead letter keeps the exact bytes, and has a reason
    payloads = [bytes(p) for p, _ in dls]
    assert all(e for _, e in dls)
    rejected_inputs = sorted(payloads)
    assert sorted(set(rejected_inputs)) == sorted(set(rejected_inputs) & set(corpus))
    # the hostile corpus is nearly all rejected (a few random mutations may stay valid)
    assert rej >= len(corpus) - 10
    # the text entry point, for what text can carry
    texts = [m.decode() for m in corpus if b"\x00" not in m and _utf8(m)]
    db.execute("TRUNCATE iotpipe.dead_letters")
    acc2, rej2 = db.execute(
        "SELECT * FROM iotpipe.ingest_json(%s)", (texts,)
    ).fetchone()
    assert acc2 + rej2 == len(texts)
    assert db.execute("SELECT count(*) FROM iotpipe.dead_letters").fetchone()[0] == rej2
    # no backend crashed: the postmaster was not reinitialized
    assert postmaster_start(db) == started
    assert "terminated by signal" not in server_log()


def _utf8(b):
    try:
        b.decode()
        return True
    except UnicodeDecodeError:
        return False


# ---------------------------------------------------------------- simulator


def test_simulator_holds_its_rate_and_counters_match(db):
    stop_simulator(db)
    db.execute("TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters")
    s0 = status(db) or {"messages": 0, "rows": 0, "rejected": 0}
    db.execute(
        "SELECT iotpipe.simulator_start(sensors => 100, rate => 1000, seed => 3, malformed_ratio => 0.01)"
    )
    poll(
        lambda: (s := status(db)) and s["state"] == "running" and s["pid"],
        20,
        what="the simulator to run",
    )
    # measure over 10 s once it runs
    m1 = status(db)["messages"]
    t1 = time.monotonic()
    time.sleep(10)
    m2 = status(db)["messages"]
    t2 = time.monotonic()
    rate = (m2 - m1) / (t2 - t1)
    assert 900 <= rate <= 1100, f"simulator ran at {rate:.0f}/s, asked 1000/s"
    st = status(db)
    assert 800 <= st["rate"] <= 1200, st
    stop_simulator(db)
    s1 = status(db)
    rows = db.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
    dls = db.execute(
        "SELECT count(*) FROM iotpipe.dead_letters WHERE source = 'simulator'"
    ).fetchone()[0]
    assert rows > 9000
    assert s1["rows"] - s0["rows"] == rows
    assert s1["rejected"] - s0["rejected"] == dls
    assert s1["messages"] - s0["messages"] == rows + dls
    assert 0 < dls < rows * 0.03
    # sensors reflect what was ingested
    total = db.execute(
        "SELECT sum(readings_total), count(*) FROM iotpipe.sensors"
    ).fetchone()
    assert total[0] == rows
    assert 90 <= total[1] <= 100


def run_virtual(db, seed, n=3000):
    db.execute("TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters")
    db.execute(
        "SELECT iotpipe.simulator_start(sensors => 20, rate => 5000, seed => %s, "
        "malformed_ratio => 0.01, start_ts => '2026-03-01 00:00:00+00')",
        (seed,),
    )
    poll(
        lambda: db.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0] >= n,
        30,
        what=f"{n} simulated readings",
    )
    stop_simulator(db)
    rows = db.execute(
        "SELECT sensor_id, ts, temperature, humidity, location FROM iotpipe.readings ORDER BY ts, sensor_id LIMIT %s",
        (n,),
    ).fetchall()
    dl = db.execute(
        "SELECT payload FROM iotpipe.dead_letters ORDER BY payload LIMIT 5"
    ).fetchall()
    return rows, dl


def test_simulator_is_reproducible_for_a_seed(db):
    stop_simulator(db)
    a, dla = run_virtual(db, 11)
    b, dlb = run_virtual(db, 11)
    c, _ = run_virtual(db, 12)
    assert len(a) == 3000
    assert a == b
    assert a != c
    # event times follow the virtual clock: 1/rate apart from start_ts
    assert a[0][1].isoformat().startswith("2026-03-01T00:00:00")


def test_kill_9_of_the_simulator_restarts_it(db):
    stop_simulator(db)
    db.execute("SELECT iotpipe.simulator_start(sensors => 50, rate => 500)")
    first = poll(
        lambda: (s := status(db)) and s["state"] == "running" and s["pid"],
        20,
        what="the simulator",
    )
    os.kill(first, signal.SIGKILL)

    # the postmaster reinitializes; the launcher comes back and restarts the simulator
    def restarted():
        with connect() as c:
            s = status(c)
            return (
                s
                if s and s["pid"] and s["pid"] != first and s["state"] == "running"
                else None
            )

    s = poll(restarted, 60, 0.3, "the simulator to be restarted after kill -9")
    with connect() as c:
        n1 = c.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
        poll(
            lambda: c.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
            > n1 + 500,
            20,
            what="the restarted simulator to carry on",
        )
        stop_simulator(c)
    assert s["pid"] != first


# ---------------------------------------------------------------- launcher


def test_launcher_survives_drop_and_create_extension(db):
    stop_simulator(db)
    launcher = status(db, "launcher")["pid"]
    db.execute("SELECT iotpipe.simulator_start(sensors => 10, rate => 100)")
    poll(
        lambda: (s := status(db)) and s["state"] == "running", 20, what="the simulator"
    )
    drop_extension(db)
    # the launcher stops the worker; worker_status() went with the extension: ask pg_stat_activity
    poll(
        lambda: db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'iotpipe simulator'"
        ).fetchone()[0]
        == 0,
        20,
        what="the simulator to stop after DROP EXTENSION",
    )
    assert (
        db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'iotpipe launcher' AND pid = %s",
            (launcher,),
        ).fetchone()[0]
        == 1
    )
    db.execute("CREATE EXTENSION iotpipe")
    poll(
        lambda: (s := status(db, "launcher"))
        and s["state"] == "running"
        and s["pid"] == launcher,
        20,
        what="the launcher to see the extension again",
    )
    # desired state starts fresh with the new extension: no simulator
    assert status(db) is None or status(db)["pid"] is None
    # partitions for today and ahead are there again
    poll(
        lambda: db.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'iotpipe.readings'::regclass"
        ).fetchone()[0]
        >= 4,
        20,
        what="partition upkeep",
    )


def test_functions_refuse_without_preload(tmp_path):
    """A cluster without shared_preload_libraries: CREATE EXTENSION fails with a hint."""
    d = DIR + "-nopreload"
    port = str(PORT + 7)
    subprocess.run(
        [
            os.path.join(ROOT, "scripts/pgcluster.sh"),
            "start",
            d,
            port,
            "nopreload",
            "--no-preload",
        ],
        check=True,
    )
    try:
        import psycopg

        with psycopg.connect(
            f"host={d} port={port} dbname=nopreload user=postgres", autocommit=True
        ) as c:
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                c.execute("CREATE EXTENSION iotpipe")
            assert (
                e.value.diag.message_primary
                == "iotpipe must be loaded via shared_preload_libraries"
            )
            assert "shared_preload_libraries" in e.value.diag.message_hint
            assert (
                c.execute(
                    "SELECT count(*) FROM pg_namespace WHERE nspname = 'iotpipe'"
                ).fetchone()[0]
                == 0
            )
    finally:
        subprocess.run(
            [os.path.join(ROOT, "scripts/pgcluster.sh"), "stop", d, "immediate"]
        )
