"""Constraints a DBA adds to iotpipe.readings, met by a worker (issue 11,
case 12), and iotpipe.sensors' counters after a crash (case 16).

- a CHECK constraint that some of the simulator's readings violate: those
  become dead letters naming the constraint, with their exact message; the
  rest lands, the simulator never goes into backoff;
- a unique index and a reproducible simulator started again from its
  beginning: every repeated reading is a dead letter, the stream goes on;
- kill -9 of the launcher during a steady simulator stream (a crash restart
  of the server): afterwards, and at every moment while the stream goes on,
  readings_total of every sensor equals count(*) of its readings.

Runs against the suite's cluster (conftest.py).  pg_regress
17_dba_constraints covers the same through iotpipe.ingest_json(), plus NOT
NULL, a foreign key, triggers and savepoints.
"""

import json
import os
import signal

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
    assert drift(db) == []


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
    assert drift(db) == []


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
        # never behind, not even while the stream goes on
        for _ in range(5):
            assert drift(c) == []
        stop_simulator(c)
        assert drift(c) == []
        total, rows = c.execute(
            "SELECT (SELECT sum(readings_total) FROM iotpipe.sensors), "
            "(SELECT count(*) FROM iotpipe.readings)"
        ).fetchone()
        assert total == rows
