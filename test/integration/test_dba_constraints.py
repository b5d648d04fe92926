"""Constraints a DBA adds to iotpipe.readings, met by a worker (issue 11,
case 12), and iotpipe.sensors' counters after a crash (case 16).

- a CHECK constraint that some of the simulator's readings violate: those
  become dead letters naming the constraint, with their exact message; the
  rest lands, the simulator never goes into backoff;
- a unique index and a reproducible simulator started again from its
  beginning: every repeated reading is a dead letter, the stream goes on;
- a deferred foreign key met by the simulator: checked with the write;
- a CHECK and a unique index met by a Kafka worker: the dead letters carry
  the refused messages' topic, partition and offset, the offsets move on;
- kill -9 of the launcher during a steady simulator stream (a crash restart
  of the server): at every moment while the stream goes on, readings_total
  plus the pending iotpipe.sensor_deltas equals count(*) of the sensor's
  readings, and readings_total alone does once the stream stops.

Runs against the suite's cluster (conftest.py), after test_core (which checks that the
server log has no crash: the kill -9 here makes one).  pg_regress
17_dba_constraints covers the same through iotpipe.ingest_json(), plus NOT
NULL, a foreign key, triggers and savepoints.
"""

import json
import os
import signal
import time

from psycopg.types.json import Jsonb

from conftest import connect, poll


def worker(db, name):
    return db.execute(
        "SELECT pid, state, last_error FROM iotpipe.status WHERE worker = %s", (name,)
    ).fetchone()


def stop_simulator(db):
    db.execute("SELECT iotpipe.simulator_stop()")
    poll(
        lambda: (s := worker(db, "simulator")) is None or s[0] is None,
        30,
        what="the simulator to stop",
    )


def fresh(db):
    stop_simulator(db)
    db.execute("TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters")


def count(db, sql, *args):
    return db.execute(sql, args).fetchone()[0]


def drift(db):
    """Sensors whose readings_total differs from count(*), in one snapshot."""
    return db.execute(
        "SELECT coalesce(s.sensor_id, r.sensor_id), s.readings_total, r.n "
        "  FROM iotpipe.sensors s FULL JOIN "
        "       (SELECT sensor_id, count(*) AS n FROM iotpipe.readings GROUP BY 1) r "
        "       USING (sensor_id) "
        " WHERE s.readings_total IS DISTINCT FROM r.n"
    ).fetchall()


def drift_counting_deltas(db):
    """Sensors whose readings_total plus pending deltas differs from count(*),
    in one snapshot: never any, at any moment."""
    return db.execute(
        "WITH pending AS ("
        "  SELECT u.id AS sensor_id, sum(u.n) AS n FROM iotpipe.sensor_deltas d, "
        "         unnest(d.sensor_id, d.readings) AS u(id, n) GROUP BY 1), "
        "counted AS ("
        "  SELECT coalesce(s.sensor_id, p.sensor_id) AS sensor_id, "
        "         coalesce(s.readings_total, 0) + coalesce(p.n, 0) AS n "
        "    FROM iotpipe.sensors s FULL JOIN pending p USING (sensor_id)) "
        "SELECT coalesce(c.sensor_id, r.sensor_id), c.n, r.n "
        "  FROM counted c FULL JOIN "
        "       (SELECT sensor_id, count(*) AS n FROM iotpipe.readings GROUP BY 1) r "
        "       USING (sensor_id) "
        " WHERE c.n IS DISTINCT FROM r.n"
    ).fetchall()


def no_drift(db, what="readings_total to equal count(*) for every sensor"):
    """Deltas are folded within iotpipe.sensor_refresh (1 s) and a launcher pass."""
    poll(lambda: drift(db) == [], 30, 0.2, what)


def refused(db, constraint):
    return db.execute(
        "SELECT payload, error, source FROM iotpipe.dead_letters "
        "WHERE error LIKE %s ORDER BY id",
        (f'rejected by constraint "{constraint}" (SQLSTATE %',),
    ).fetchall()


# ---------------------------------------------------------------- case 12


def test_simulator_rows_refused_by_a_check_constraint_become_dead_letters(db):
    fresh(db)
    db.execute(
        "ALTER TABLE iotpipe.readings ADD CONSTRAINT no_sensor_3 "
        "CHECK (sensor_id <> 'sensor-0003')"
    )
    try:
        db.execute(
            "SELECT iotpipe.simulator_start(sensors => 10, rate => 1000, "
            "malformed_ratio => 0)"
        )
        poll(
            lambda: len(refused(db, "no_sensor_3")) >= 50
            and count(db, "SELECT count(*) FROM iotpipe.readings") >= 1000,
            60,
            0.2,
            "refused rows as dead letters and the others landed",
        )
        sim = worker(db, "simulator")
        assert sim[1] == "running" and sim[2] is None, sim
        stop_simulator(db)
    finally:
        db.execute("ALTER TABLE iotpipe.readings DROP CONSTRAINT no_sensor_3")

    letters = refused(db, "no_sensor_3")
    for payload, error, source in letters:
        m = json.loads(bytes(payload))  # the exact message the simulator made
        assert m["sensor_id"] == "sensor-0003", m
        assert source == "simulator"
        assert "violates check constraint" in error
    # every dead letter is one of these: the simulator made no malformed ones
    assert count(db, "SELECT count(*) FROM iotpipe.dead_letters") == len(letters)
    assert (
        count(
            db, "SELECT count(*) FROM iotpipe.readings WHERE sensor_id = 'sensor-0003'"
        )
        == 0
    )
    # the nine other sensors all landed, and the counters follow what landed
    assert count(db, "SELECT count(DISTINCT sensor_id) FROM iotpipe.readings") == 9
    assert (
        count(
            db, "SELECT count(*) FROM iotpipe.sensors WHERE sensor_id = 'sensor-0003'"
        )
        == 0
    )
    no_drift(db)


def test_simulator_replayed_into_a_unique_index_keeps_going(db):
    fresh(db)
    db.execute("CREATE UNIQUE INDEX readings_once ON iotpipe.readings (sensor_id, ts)")
    start = (
        "SELECT iotpipe.simulator_start(sensors => 50, rate => 2000, seed => 5, "
        "malformed_ratio => 0, start_ts => '2026-06-01 00:00:00+00')"
    )
    try:
        db.execute(start)
        poll(
            lambda: count(db, "SELECT count(*) FROM iotpipe.readings") >= 3000,
            60,
            0.2,
            "the first run's readings",
        )
        stop_simulator(db)
        first = count(db, "SELECT count(*) FROM iotpipe.readings")
        # the same settings again: the generator starts over from reading 0
        db.execute(start)
        poll(
            lambda: len(refused(db, "readings_once")) >= first
            and count(db, "SELECT count(*) FROM iotpipe.readings") >= first + 2000,
            60,
            0.2,
            "the replayed readings refused and the stream going on past them",
        )
        sim = worker(db, "simulator")
        assert sim[1] == "running" and sim[2] is None, sim
        stop_simulator(db)
    finally:
        db.execute("DROP INDEX iotpipe.readings_once")

    letters = refused(db, "readings_once")
    # exactly the first run's readings came back, each once
    assert len(letters) == first
    keys = {
        (m["sensor_id"], m["ts"]) for m in (json.loads(bytes(p)) for p, _, _ in letters)
    }
    assert len(keys) == first
    stored = count(
        db,
        "SELECT count(*) FROM iotpipe.readings r "
        "JOIN (SELECT (x::jsonb)->>'sensor_id' AS s, ((x::jsonb)->>'ts')::timestamptz AS t "
        "        FROM unnest(%s::text[]) x) k ON r.sensor_id = k.s AND r.ts = k.t",
        [bytes(p).decode() for p, _, _ in letters],
    )
    assert stored == first, "each refused reading is one that is stored"
    no_drift(db)


def test_simulator_rows_refused_by_a_deferred_foreign_key_become_dead_letters(db):
    # checked at commit in any other transaction; a worker checks it with
    # the write, where the rows it refuses can be set aside
    fresh(db)
    db.execute("DROP TABLE IF EXISTS public.it_registered")
    db.execute(
        'CREATE TABLE public.it_registered (sensor_id text COLLATE "C" PRIMARY KEY)'
    )
    db.execute(
        "INSERT INTO public.it_registered "
        "SELECT format('sensor-%s', lpad(g::text, 4, '0')) FROM generate_series(1, 4) g"
    )
    db.execute(
        "ALTER TABLE iotpipe.readings ADD CONSTRAINT it_registered_fk FOREIGN KEY (sensor_id) "
        "REFERENCES public.it_registered DEFERRABLE INITIALLY DEFERRED"
    )
    try:
        db.execute(
            "SELECT iotpipe.simulator_start(sensors => 8, rate => 1000, malformed_ratio => 0)"
        )
        poll(
            lambda: len(refused(db, "it_registered_fk")) >= 50
            and count(db, "SELECT count(*) FROM iotpipe.readings") >= 500,
            60,
            0.2,
            "unregistered sensors' readings as dead letters and the others landed",
        )
        sim = worker(db, "simulator")
        assert sim[1] == "running" and sim[2] is None, sim
        stop_simulator(db)
    finally:
        db.execute("ALTER TABLE iotpipe.readings DROP CONSTRAINT it_registered_fk")
        db.execute("DROP TABLE public.it_registered")
    ids = {
        json.loads(bytes(p))["sensor_id"] for p, _, _ in refused(db, "it_registered_fk")
    }
    assert ids == {f"sensor-{i:04d}" for i in range(5, 9)}
    landed = db.execute(
        "SELECT DISTINCT sensor_id FROM iotpipe.readings ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in landed] == [f"sensor-{i:04d}" for i in range(1, 5)]
    no_drift(db)


def test_kafka_rows_refused_by_constraints_keep_their_coordinates(db, kafka):
    from kafka_harness import high_watermarks, produce  # test/kafka

    topic = "iot-kc"
    base_ms = (int(time.time()) - 3600) * 1000
    kafka.create_topic(topic, 2)
    refused_at = {}  # (partition, offset) -> payload
    good = 0
    for part in (0, 1):
        batch = []
        for j in range(80):  # message j is at offset j of its partition
            sid, ts = f"kc-{j % 7}", base_ms + part * 1000 + j
            if j % 5 == 3:  # the same sensor and ts as message j - 1
                sid, ts = f"kc-{(j - 1) % 7}", ts - 1
            t = 150 if j % 5 == 1 else 20  # the CHECK refuses 150
            value = f'{{"sensor_id":"{sid}","ts":{ts},"temperature":{t}}}'.encode()
            batch.append((b"k", value))
            if j % 5 in (1, 3):
                refused_at[(part, j)] = value
            else:
                good += 1
        produce(kafka.bootstrap, topic, batch, partition=part)
    db.execute(
        "ALTER TABLE iotpipe.readings ADD CONSTRAINT kc_not_hot "
        "CHECK (sensor_id NOT LIKE 'kc-%' OR temperature < 100)"
    )
    db.execute("CREATE UNIQUE INDEX kc_once ON iotpipe.readings (sensor_id, ts)")
    try:
        db.execute(
            "SELECT iotpipe.kafka_start(%s, %s, 'iotpipe', 1, %s)",
            (kafka.bootstrap, topic, Jsonb({})),
        )
        want = {
            p: h for p, h in high_watermarks(kafka.bootstrap, topic).items() if h > 0
        }
        poll(
            lambda: dict(
                db.execute(
                    "SELECT partition, next_offset FROM iotpipe.kafka_offsets WHERE topic = %s",
                    (topic,),
                ).fetchall()
            )
            == want,
            90,
            0.2,
            "the worker to take every message",
        )
        w = db.execute(
            "SELECT state, last_error FROM iotpipe.status WHERE worker = %s",
            (f"kafka {topic} #1",),
        ).fetchone()
        assert w == ("running", None), w
        letters = db.execute(
            'SELECT partition, "offset", payload, error, source FROM iotpipe.dead_letters '
            "WHERE topic = %s",
            (topic,),
        ).fetchall()
        assert {(r[0], r[1]): bytes(r[2]) for r in letters} == refused_at
        for part, off, payload, error, source in letters:
            assert source == "kafka"
            expect = "kc_not_hot" if off % 5 == 1 else "kc_once"
            assert error.startswith(f'rejected by constraint "{expect}"'), error
        assert (
            count(
                db,
                "SELECT count(*) FROM iotpipe.readings WHERE sensor_id LIKE %s",
                "kc-%",
            )
            == good
        )
        poll(
            lambda: [d for d in drift(db) if d[0].startswith("kc-")] == [],
            30,
            0.2,
            "the kc- sensors' counters to equal their readings",
        )
    finally:
        db.execute("SELECT iotpipe.kafka_stop(%s)", (topic,))
        poll(
            lambda: count(
                db,
                "SELECT count(*) FROM iotpipe.status WHERE worker LIKE %s AND pid IS NOT NULL",
                f"kafka {topic} #%",
            )
            == 0,
            30,
            what="the Kafka worker to stop",
        )
        db.execute("ALTER TABLE iotpipe.readings DROP CONSTRAINT kc_not_hot")
        db.execute("DROP INDEX iotpipe.kc_once")
        for t in ("kafka_sources", "kafka_offsets", "kafka_watermarks", "dead_letters"):
            db.execute(f"DELETE FROM iotpipe.{t} WHERE topic = %s", (topic,))
        db.execute("DELETE FROM iotpipe.readings WHERE sensor_id LIKE 'kc-%'")
        db.execute("DELETE FROM iotpipe.sensors WHERE sensor_id LIKE 'kc-%'")


# ---------------------------------------------------------------- case 16


def test_sensor_counters_equal_the_readings_after_kill_9_of_the_launcher(db):
    fresh(db)
    db.execute(
        "SELECT iotpipe.simulator_start(sensors => 200, rate => 2000, malformed_ratio => 0)"
    )
    poll(
        lambda: count(db, "SELECT count(*) FROM iotpipe.readings") >= 4000,
        60,
        0.2,
        "readings before the kill",
    )
    launcher = worker(db, "launcher")[0]
    before = count(db, "SELECT count(*) FROM iotpipe.readings")
    db.close()
    os.kill(launcher, signal.SIGKILL)  # the postmaster restarts the whole server

    def streaming_again():
        with connect() as c:
            launcher_now = worker(c, "launcher")
            sim = worker(c, "simulator")
            n = count(c, "SELECT count(*) FROM iotpipe.readings")
            return (
                launcher_now
                and launcher_now[0] not in (None, launcher)
                and sim
                and sim[1] == "running"
                and n >= before + 4000
            )

    poll(streaming_again, 90, 0.3, "the server and the simulator back after kill -9")
    with connect() as c:
        # while the stream goes on, the counters and the pending deltas
        # together are exactly the readings, at every moment
        for _ in range(5):
            assert drift_counting_deltas(c) == []
        stop_simulator(c)
        assert drift_counting_deltas(c) == []
        no_drift(c, "the deltas to be folded after the stop")
        assert count(c, "SELECT count(*) FROM iotpipe.sensor_deltas") == 0
        total, rows = c.execute(
            "SELECT (SELECT sum(readings_total) FROM iotpipe.sensors), "
            "(SELECT count(*) FROM iotpipe.readings)"
        ).fetchone()
        assert total == rows
