"""Kafka ingestion end to end, against a real broker (the session ``kafka``
fixture) and the suite's cluster: exactly once at volume, kill -9 and
immediate restarts mid-stream, a 30 s broker outage, bad messages, stop/start
resuming at the stored offsets, partitions added, the simulator's kafka sink.

Every test uses its own topic and its own sensor-id prefix, and cleans up its
source, offsets and rows afterwards.  Each message i of a test is a pure
function of i (see ``message``), so the checks recompute what was produced
from the rows themselves.
"""

import os
import signal
import threading
import time

import psycopg
import pytest
from psycopg.types.json import Jsonb
from kafka_harness import high_watermarks, produce

from conftest import connect, poll, restart_server, server_log

# event times: a day ago, one millisecond apart (well inside the accepted window)
BASE_MS = (int(time.time()) - 86400) * 1000


def message(prefix, i):
    """Key and value of message i of a test."""
    sid = f"{prefix}-{i % 500:04d}"
    t = -20 + (i % 1000) * 0.125
    h = (i % 400) * 0.25
    value = f'{{"sensor_id":"{sid}","ts":{BASE_MS + i},"temperature":{t!r},"humidity":{h!r}}}'
    return sid.encode(), value.encode()


def messages(prefix, start, stop):
    return (message(prefix, i) for i in range(start, stop))


def q(sql, args=None):
    """One query on a fresh connection (survives server restarts)."""
    with connect() as c:
        return c.execute(sql, args).fetchall()


def q1(sql, args=None):
    return q(sql, args)[0][0]


def count_rows(prefix):
    return q1(
        "SELECT count(*) FROM iotpipe.readings WHERE sensor_id LIKE %s",
        (prefix + "-%",),
    )


def verify(prefix, n):
    """Exactly messages 0..n-1 of prefix are in readings, each once, values equal."""
    row = q(
        """
        WITH r AS (
            SELECT sensor_id, temperature, humidity,
                   (extract(epoch FROM ts) * 1000)::bigint - %(base)s AS i
              FROM iotpipe.readings WHERE sensor_id LIKE %(like)s)
        SELECT count(*), count(DISTINCT i), min(i), max(i),
               count(*) FILTER (WHERE sensor_id <> %(prefix)s || '-' || lpad((i %% 500)::text, 4, '0')
                                   OR temperature <> -20 + (i %% 1000) * 0.125
                                   OR humidity <> (i %% 400) * 0.25)
          FROM r
        """,
        {"base": BASE_MS, "like": prefix + "-%", "prefix": prefix},
    )[0]
    total, distinct, lo, hi, wrong = row
    assert (
        (total, distinct, lo, hi, wrong) == (n, n, 0, n - 1, 0)
    ), f"rows={total} distinct={distinct} min={lo} max={hi} wrong values={wrong}, expected {n}"


def kafka_workers(topic):
    return q(
        "SELECT worker, pid, state, last_error, detail FROM iotpipe.status "
        "WHERE kind = 'kafka' AND worker LIKE %s ORDER BY worker",
        (f"kafka {topic} #%",),
    )


def stored_offsets(topic):
    return dict(
        q(
            "SELECT partition, next_offset FROM iotpipe.kafka_offsets WHERE topic = %s",
            (topic,),
        )
    )


def wait_caught_up(kafka, topic, timeout=60):
    """Every partition's stored next_offset equals its high watermark."""
    hw = high_watermarks(kafka.bootstrap, topic)
    want = {p: h for p, h in hw.items() if h > 0}
    poll(
        lambda: stored_offsets(topic) == want,
        timeout,
        0.2,
        f"offsets of {topic} to reach {want}",
    )
    return sum(hw.values())


@pytest.fixture
def sources():
    """Topics (and row prefixes) a test uses; all cleaned up afterwards."""
    made = []  # (topic, prefix)
    yield made
    with connect() as c:
        for topic, prefix in made:
            c.execute(
                "SELECT iotpipe.kafka_stop(topic) FROM iotpipe.kafka_sources WHERE topic = %s",
                (topic,),
            )
        for topic, _ in made:
            poll(
                lambda t=topic: all(w[1] is None for w in kafka_workers(t)),
                30,
                what=f"the workers of {topic} to stop",
            )
        for topic, prefix in made:
            c.execute("DELETE FROM iotpipe.kafka_sources WHERE topic = %s", (topic,))
            c.execute("DELETE FROM iotpipe.kafka_offsets WHERE topic = %s", (topic,))
            c.execute("DELETE FROM iotpipe.kafka_watermarks WHERE topic = %s", (topic,))
            c.execute("DELETE FROM iotpipe.dead_letters WHERE topic = %s", (topic,))
            if prefix:
                c.execute(
                    "DELETE FROM iotpipe.readings WHERE sensor_id LIKE %s",
                    (prefix + "-%",),
                )
                c.execute(
                    "DELETE FROM iotpipe.sensors WHERE sensor_id LIKE %s",
                    (prefix + "-%",),
                )


def start(kafka, topic, workers=1, group="iotpipe", options=None):
    with connect() as c:
        c.execute(
            "SELECT iotpipe.kafka_start(%s, %s, %s, %s, %s)",
            (kafka.bootstrap, topic, group, workers, Jsonb(options or {})),
        )


class Producer(threading.Thread):
    """Produces messages start..stop in chunks with pauses: a live stream."""

    def __init__(self, bootstrap, topic, prefix, start, stop, chunk, pause):
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, prefix, start, stop, chunk, pause)
        self.error = None

    def run(self):
        bootstrap, topic, prefix, lo, hi, chunk, pause = self.args
        try:
            for s in range(lo, hi, chunk):
                produce(
                    bootstrap,
                    topic,
                    messages(prefix, s, min(s + chunk, hi)),
                    flush_timeout=150,
                )
                time.sleep(pause)
        except Exception as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def finish(self, timeout=180):
        self.join(timeout)
        assert not self.is_alive(), "the producer did not finish"
        if self.error:
            raise self.error


# ---------------------------------------------------------------- 1. volume


def test_million_messages_exactly_once(kafka, sources):
    topic, prefix, n = "iot-k1", "k1", 1_000_000
    sources.append((topic, prefix))
    kafka.create_topic(topic, 4)
    t = time.monotonic()
    produce(kafka.bootstrap, topic, messages(prefix, 0, n))
    produced_in = time.monotonic() - t
    assert sum(high_watermarks(kafka.bootstrap, topic).values()) == n

    t = time.monotonic()
    start(kafka, topic, workers=2)
    poll(lambda: count_rows(prefix) >= n, 240, 0.5, f"{n} rows")
    drained_in = time.monotonic() - t
    wait_caught_up(kafka, topic)
    verify(prefix, n)

    # both workers took part, on disjoint partitions
    workers = kafka_workers(topic)
    assert len(workers) == 2
    parts = [
        set(w[4].split("partitions ")[1].split(";")[0].split(",")) for w in workers
    ]
    assert parts[0] and parts[1] and not parts[0] & parts[1], workers
    poll(
        lambda: q1(
            "SELECT coalesce(sum(lag), -1) FROM iotpipe.kafka_lag WHERE topic = %s",
            (topic,),
        )
        == 0,
        15,
        what="lag 0 in iotpipe.kafka_lag",
    )
    print(
        f"produced {n} in {produced_in:.1f} s; drained in {drained_in:.1f} s ({n / drained_in:,.0f} msgs/s)"
    )


# ---------------------------------------------------------------- 2. kill -9 / crash restarts


def test_kill9_and_immediate_restart_mid_stream(kafka, sources):
    """kill -9 of a worker (twice), an immediate restart, kill -9 again, each
    mid-stream: the stream comes in parts, and each disruption happens while
    a part is being ingested; the next part is produced only afterwards, so
    that its rows arriving proves the workers came back by themselves (with a
    fast ingest core the whole stream could otherwise be in before the
    disruption)."""
    topic, prefix, n = "iot-k2", "k2", 200_000
    sources.append((topic, prefix))
    kafka.create_topic(topic, 4)

    def kill_worker(index):
        pid = poll(
            lambda: next(
                (
                    w[1]
                    for w in kafka_workers(topic)
                    if w[0].endswith(f"#{index}") and w[1]
                ),
                None,
            ),
            60,
            what=f"kafka worker #{index} to run",
        )
        # the postmaster restarts everything; the launcher brings the workers back
        os.kill(pid, signal.SIGKILL)

    disruptions = [
        ("kill -9 of worker #1", lambda: kill_worker(1)),
        ("kill -9 of worker #2", lambda: kill_worker(2)),
        ("an immediate restart", lambda: restart_server("immediate")),
        ("kill -9 of worker #1 again", lambda: kill_worker(1)),
    ]
    part = n // (len(disruptions) + 1)
    producer = Producer(kafka.bootstrap, topic, prefix, 0, part, 5_000, 0.2)
    producer.start()
    start(kafka, topic, workers=2)
    for i, (what, disrupt) in enumerate(disruptions):
        lo = i * part
        poll(
            lambda: count_rows(prefix) > lo,
            60,
            0.2,
            f"rows of part {i + 1} before {what}",
        )
        disrupt()
        producer.finish()
        producer = Producer(
            kafka.bootstrap, topic, prefix, lo + part, lo + 2 * part, 5_000, 0.2
        )
        producer.start()
        # rows of the next part arrive only if the workers are back
        poll(
            lambda: count_rows(prefix) > lo + part,
            90,
            0.2,
            f"ingest to go on after {what}",
        )
    producer.finish()
    total = wait_caught_up(kafka, topic, 120)
    assert total == n
    verify(prefix, n)


# ---------------------------------------------------------------- 3. broker outage


def test_broker_outage_30s_mid_stream(kafka, sources):
    topic, prefix, n = "iot-k3", "k3", 60_000
    sources.append((topic, prefix))
    kafka.create_topic(topic, 2)
    producer = Producer(kafka.bootstrap, topic, prefix, 0, n, 3_000, 0.2)
    producer.start()
    start(kafka, topic, workers=1)
    poll(lambda: count_rows(prefix) >= 9_000, 60, 0.2, "rows before the outage")

    kafka.stop_keep_data()
    down_at = time.monotonic()
    # the worker reports the outage (state and last error), it does not stall silently
    w = poll(
        lambda: next(
            (w for w in kafka_workers(topic) if w[2] == "backoff" and w[3]), None
        ),
        25,
        0.2,
        "the worker to report the outage",
    )
    assert "kafka" in w[3], w
    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    kafka.start_keep_data()

    producer.finish()
    total = wait_caught_up(kafka, topic, 120)
    assert total == n
    verify(prefix, n)
    # recovered by itself: running, error cleared, same process
    poll(
        lambda: [(w[2], w[3]) for w in kafka_workers(topic)] == [("running", None)],
        30,
        what="the worker to be healthy again",
    )
    log = server_log()
    assert "librdkafka" in log and "kafka reachable again" in log


# ---------------------------------------------------------------- 4. bad messages


def test_bad_messages_are_dead_letters_with_coordinates(kafka, sources):
    topic, prefix = "iot-k4", "k4"
    sources.append((topic, prefix))
    kafka.create_topic(topic, 2)
    bad = [
        b"not json at all",
        b"\xff\xfe\xfd invalid utf-8",
        None,  # a tombstone: NULL value
        b'{"sensor_id": "k4-big", "ts": 1, "pad": "'
        + b"x" * 70_000
        + b'"}',  # over 64 kB
        b'{"sensor_id": "k4-0001"}',  # no ts, no values
        b'{"sensor_id": "k4-0002", "ts": "2026-11-27T10:00:00Z", "humidity": 150}',
        b"[1, 2, 3]",
        b"",
    ]
    expected_bad = {}  # (partition, offset) -> payload
    good = 0
    for part in (0, 1):
        batch = []
        for j in range(60):
            if j % 3 == 1:
                payload = bad[(j // 3 + part) % len(bad)]
                batch.append((b"k", payload))
                expected_bad[(part, j)] = payload
            else:
                batch.append(message(prefix, good))
                good += 1
        produce(kafka.bootstrap, topic, batch, partition=part)

    start(kafka, topic)
    wait_caught_up(kafka, topic)
    verify(prefix, good)
    rows = q(
        'SELECT partition, "offset", payload, error, source FROM iotpipe.dead_letters WHERE topic = %s',
        (topic,),
    )
    got = {(r[0], r[1]): bytes(r[2]) for r in rows}
    assert got == {k: (v if v is not None else b"") for k, v in expected_bad.items()}
    assert all(r[3] for r in rows) and {r[4] for r in rows} == {"kafka"}
    reasons = {(r[0], r[1]): r[3] for r in rows}
    big = next(k for k, v in expected_bad.items() if v is not None and len(v) > 65536)
    assert "too large" in reasons[big]
    null = next(k for k, v in expected_bad.items() if v is None)
    assert "null" in reasons[null]
    w = kafka_workers(topic)
    assert [x[2] for x in w] == ["running"], w
    assert q1(
        "SELECT rejected FROM iotpipe.status WHERE worker = %s", (f"kafka {topic} #1",)
    ) == len(expected_bad)


# ---------------------------------------------------------------- 5. stop / start


def test_stop_then_start_resumes_at_stored_offsets(kafka, sources):
    topic, prefix = "iot-k5", "k5"
    sources.append((topic, prefix))
    kafka.create_topic(topic, 3)
    produce(kafka.bootstrap, topic, messages(prefix, 0, 20_000))
    start(kafka, topic, group="k5-first")
    wait_caught_up(kafka, topic)
    first = stored_offsets(topic)
    assert sum(first.values()) == 20_000

    with connect() as c:
        c.execute("SELECT iotpipe.kafka_stop(%s)", (topic,))
    poll(
        lambda: all(w[1] is None for w in kafka_workers(topic)),
        30,
        what="the worker to stop",
    )
    produce(kafka.bootstrap, topic, messages(prefix, 20_000, 40_000))
    time.sleep(1.5)  # stopped means stopped: nothing moves
    assert count_rows(prefix) == 20_000 and stored_offsets(topic) == first

    # another group id and two workers: the table, not Kafka's group offsets, says where to go on
    secret = "hunter2-k5-xyzzy"
    start(
        kafka,
        topic,
        workers=2,
        group="k5-second",
        options={"sasl.password": secret, "fetch.wait.max.ms": 50},
    )
    wait_caught_up(kafka, topic)
    verify(prefix, 40_000)

    # secrets: admins only, never in the log
    assert secret not in server_log()
    with connect() as c:
        c.execute("SET ROLE iotpipe_operator")
        assert (
            c.execute(
                "SELECT workers FROM iotpipe.kafka_sources WHERE topic = %s", (topic,)
            ).fetchone()[0]
            == 2
        )
        assert (
            c.execute(
                "SELECT count(*) FROM iotpipe.kafka_lag WHERE topic = %s", (topic,)
            ).fetchone()[0]
            == 3
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT options FROM iotpipe.kafka_sources")
    with connect() as c:
        c.execute("SET ROLE iotpipe_analyst")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM iotpipe.kafka_sources")
    with connect() as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
            c.execute(
                "SELECT iotpipe.kafka_start('127.0.0.1:1', 'x', options => %s)",
                ('{"no.such.property": "hunter2-k5-other"}',),
            )
        assert "no.such.property" in str(e.value) and "hunter2" not in str(e.value)
        with pytest.raises(psycopg.errors.UndefinedObject):
            c.execute("SELECT iotpipe.kafka_stop('no-such-topic')")


# ---------------------------------------------------------------- more: partitions, topic missing, simulator


def test_topic_missing_then_created_and_partitions_added(kafka, sources):
    topic, prefix = "iot-k6", "k6"
    sources.append((topic, prefix))
    start(kafka, topic, workers=2)
    w = poll(
        lambda: [
            x
            for x in kafka_workers(topic)
            if x[2] == "waiting" and "does not exist" in (x[4] or "")
        ],
        30,
        0.2,
        "the workers to report the missing topic",
    )
    assert w
    kafka.create_topic(topic, 1)
    produce(kafka.bootstrap, topic, messages(prefix, 0, 1000))
    wait_caught_up(kafka, topic, 60)
    kafka.add_partitions(topic, 3)
    produce(kafka.bootstrap, topic, messages(prefix, 1000, 1500), partition=1)
    produce(kafka.bootstrap, topic, messages(prefix, 1500, 2000), partition=2)
    wait_caught_up(kafka, topic, 60)
    verify(prefix, 2000)
    assert set(stored_offsets(topic)) == {0, 1, 2}


def test_simulator_kafka_sink(kafka, sources):
    topic = "iot-k7"
    sources.append((topic, None))
    kafka.create_topic(topic, 2)
    with connect() as c:
        c.execute(
            "SELECT iotpipe.simulator_start(sensors => 20, rate => 2000, seed => 7, sink => 'kafka', "
            "topic => %s, brokers => %s)",
            (topic, kafka.bootstrap),
        )
    try:
        poll(
            lambda: sum(high_watermarks(kafka.bootstrap, topic).values()) >= 5000,
            60,
            0.5,
            "simulated messages",
        )
    finally:
        with connect() as c:
            c.execute("SELECT iotpipe.simulator_stop()")
    poll(
        lambda: q1(
            "SELECT count(*) FROM iotpipe.status WHERE worker = 'simulator' AND pid IS NOT NULL"
        )
        == 0,
        30,
    )
    first_xid = q1("SELECT pg_current_xact_id()")
    start(kafka, topic)
    total = wait_caught_up(kafka, topic, 60)
    accepted, rejected = q(
        "SELECT rows, rejected FROM iotpipe.status WHERE worker = %s",
        (f"kafka {topic} #1",),
    )[0]
    assert accepted + rejected == total and accepted > 0.99 * total
    assert (
        q1("SELECT count(*) FROM iotpipe.dead_letters WHERE topic = %s", (topic,))
        == rejected
    )
    with (
        connect() as c
    ):  # the simulator's sensor ids are not ours alone: remove our rows by xid
        c.execute(
            "DELETE FROM iotpipe.readings WHERE ingest_xid > %s::text::xid8",
            (str(first_xid),),
        )


def test_failing_batch_transactions_roll_back_and_retry(kafka, sources):
    """A batch whose transaction fails (here: a trigger on the offsets table)
    commits nothing; the worker shows the error, backs off, rebuilds its
    consumer and consumes again from the stored offsets."""
    topic, prefix = "iot-k8", "k8"
    sources.append((topic, prefix))
    kafka.create_topic(topic, 2)
    produce(kafka.bootstrap, topic, messages(prefix, 0, 20_000))
    with connect() as c:
        c.execute(
            """CREATE FUNCTION public.k8_fail() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                   IF NEW.topic = 'iot-k8' THEN RAISE EXCEPTION 'k8: injected failure'; END IF;
                   RETURN NEW;
               END $$;
               CREATE TRIGGER k8_fail BEFORE INSERT OR UPDATE ON iotpipe.kafka_offsets
                   FOR EACH ROW EXECUTE FUNCTION public.k8_fail();"""
        )
    try:
        start(kafka, topic)
        failing = poll(
            lambda: [
                w
                for w in kafka_workers(topic)
                if w[2] == "backoff" and "injected failure" in (w[3] or "")
            ],
            30,
            0.2,
            "the worker to report the failing batch",
        )
        assert count_rows(prefix) == 0 and stored_offsets(topic) == {}
    finally:
        with connect() as c:
            c.execute(
                "DROP TRIGGER k8_fail ON iotpipe.kafka_offsets; DROP FUNCTION public.k8_fail()"
            )
    wait_caught_up(kafka, topic, 60)
    verify(prefix, 20_000)
    assert [w[1] for w in kafka_workers(topic)] == [
        failing[0][1]
    ], "the worker must survive"


# ---------------------------------------------------------------- stopping at once


def process_gone(pid):
    """The process exited (a zombie not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:  # gone between open and read: ProcessLookupError
        return True


def time_until(fn, timeout=30.0):
    """Seconds until fn() is true, polled every 10 ms (fails after timeout)."""
    t0 = time.monotonic()
    while not fn():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture
def long_poll_timeout():
    """iotpipe.kafka_poll_timeout at its maximum, 10 s, reset afterwards."""

    def set_to(value):
        with connect() as c:
            if value is None:
                c.execute("ALTER SYSTEM RESET iotpipe.kafka_poll_timeout")
            else:
                c.execute(f"ALTER SYSTEM SET iotpipe.kafka_poll_timeout = '{value}'")
            c.execute("SELECT pg_reload_conf()")

    set_to("10s")
    yield
    set_to(None)


def test_worker_stops_at_once_with_a_long_poll_timeout(
    kafka, sources, long_poll_timeout
):
    """A worker waiting for messages (iotpipe.kafka_poll_timeout 10 s) ends
    its wait at once: on kafka_stop (the launcher bumps the slot's generation
    and signals it) and on a SIGTERM (after which the launcher starts it
    again), within 1 s each."""
    topic, prefix = "iot-k9", "k9"
    sources.append((topic, prefix))
    kafka.create_topic(topic, 1)
    produce(kafka.bootstrap, topic, messages(prefix, 0, 10))
    start(kafka, topic)
    poll(lambda: count_rows(prefix) == 10, 60, 0.1, "the first 10 rows")

    def running_pid():
        w = kafka_workers(topic)
        return w[0][1] if w and w[0][1] and w[0][2] == "running" else None

    # 1. SIGTERM: gone within 1 s, then back (the launcher) and consuming
    pid = poll(running_pid, 30, what="the worker to run")
    time.sleep(1.5)  # the worker has long reloaded the setting and waits in a poll
    os.kill(pid, signal.SIGTERM)
    took = time_until(lambda: process_gone(pid))
    print(f"SIGTERM: worker gone after {took:.3f} s")
    assert took < 1.0, f"the worker took {took:.3f} s to exit after SIGTERM"
    new_pid = poll(
        lambda: (p := running_pid()) and p != pid and p, 60, what="the worker back"
    )
    produce(kafka.bootstrap, topic, messages(prefix, 10, 11))
    poll(lambda: count_rows(prefix) == 11, 30, 0.1, "the row produced after SIGTERM")
    verify(prefix, 11)

    # 2. kafka_stop: gone, and its status row not running, within 1 s
    time.sleep(1.5)
    t0 = time.monotonic()
    with connect() as c:
        c.execute("SELECT iotpipe.kafka_stop(%s)", (topic,))
    time_until(
        lambda: process_gone(new_pid)
        and all(w[1] is None and w[2] != "running" for w in kafka_workers(topic))
    )
    total = time.monotonic() - t0
    print(f"kafka_stop: worker gone after {total:.3f} s")
    assert total < 1.0, f"the worker took {total:.3f} s to stop after kafka_stop"
