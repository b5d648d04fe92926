"""Faults around the workers (issue 11): the launcher terminated, a
reproducible simulator killed or restarted mid-stream, the extension in a
second database, and iotpipe.database missing at server start.  Runs against
the suite's cluster (conftest.py); the last test starts a cluster of its own."""

import os
import signal
import subprocess
import time

import psycopg
import pytest

from conftest import DIR, PORT, ROOT, connect, poll, restart_server


def launcher(db):
    return db.execute(
        "SELECT pid, state FROM iotpipe.status WHERE worker = 'launcher'"
    ).fetchone()


def simulator(db):
    return db.execute(
        "SELECT pid, state FROM iotpipe.status WHERE worker = 'simulator'"
    ).fetchone()


def stop_simulator(db):
    db.execute("SELECT iotpipe.simulator_stop()")
    poll(
        lambda: (s := simulator(db)) is None or s[0] is None,
        30,
        what="the simulator to stop",
    )


def readings(db):
    return db.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]


def running_launcher_other_than(old):
    def fn():
        with connect() as c:
            row = launcher(c)
            return (
                row
                if row and row[0] and row[0] != old and row[1] == "running"
                else None
            )

    return fn


# ---------------------------------------------------------------- case 14


def test_launcher_comes_back_after_pg_terminate_backend(db):
    stop_simulator(db)
    db.execute("SELECT iotpipe.simulator_start(sensors => 10, rate => 200)")
    sim = poll(
        lambda: (s := simulator(db)) and s[1] == "running" and s[0],
        30,
        what="the simulator",
    )
    first = poll(lambda: (r := launcher(db)) and r[1] == "running" and r[0], 30)
    assert db.execute("SELECT pg_terminate_backend(%s)", (first,)).fetchone()[0]
    second = poll(
        running_launcher_other_than(first), 15, 0.2, "a new launcher after SIGTERM"
    )[0]
    # the simulator kept running (adopted, not started twice) and keeps producing
    assert simulator(db)[0] == sim
    n = readings(db)
    poll(lambda: readings(db) > n + 200, 20, what="the simulator to keep producing")
    assert (
        db.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'iotpipe simulator'"
        ).fetchone()[0]
        == 1
    )
    # the new launcher supervises: a stop reaches the adopted simulator
    stop_simulator(db)
    assert launcher(db)[0] == second


def test_launcher_comes_back_after_drop_database_force(db):
    db.execute("DROP DATABASE IF EXISTS iotpipe_faults_scratch")
    db.execute("CREATE DATABASE iotpipe_faults_scratch")
    other = connect("iotpipe_faults_scratch")
    try:
        other.execute("SELECT 1")
        first = poll(lambda: (r := launcher(db)) and r[1] == "running" and r[0], 30)
        db.execute("DROP DATABASE iotpipe_faults_scratch WITH (FORCE)")
        with pytest.raises(psycopg.OperationalError):
            other.execute("SELECT 1")
    finally:
        other.close()
    # FORCE terminates the sessions of the dropped database only: the
    # launcher (in another database) goes on, the same process
    poll(
        lambda: (r := launcher(db)) and r[1] == "running" and r[0],
        15,
        0.2,
        "a running launcher after DROP DATABASE WITH (FORCE)",
    )
    assert launcher(db)[0] == first
    # and it still supervises
    db.execute("SELECT iotpipe.simulator_start(sensors => 5, rate => 100)")
    poll(lambda: (s := simulator(db)) and s[1] == "running", 20, what="the simulator")
    stop_simulator(db)


# ---------------------------------------------------------------- case 15

SENSORS = (
    2000  # = rate: the worker's virtual step (1/rate) equals simulate()'s (1/sensors)
)
START = "2026-05-01 00:00:00+00"
SEED = 77


def expected(db, n):
    return set(
        db.execute(
            "SELECT m->>'sensor_id', (m->>'ts')::timestamptz, (m->>'temperature')::float8, "
            "(m->>'humidity')::float8 "
            "FROM iotpipe.simulate(%s, %s, %s, %s, 0) AS t(x), LATERAL (SELECT x::jsonb AS m) j",
            (SENSORS, n, SEED, START),
        ).fetchall()
    )


def actual(db):
    return db.execute(
        "SELECT sensor_id, ts, temperature, humidity FROM iotpipe.readings"
    ).fetchall()


def start_reproducible(db):
    stop_simulator(db)
    db.execute("TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters")
    db.execute(
        "SELECT iotpipe.simulator_start(sensors => %s, rate => %s, seed => %s, "
        "malformed_ratio => 0, start_ts => %s)",
        (SENSORS, SENSORS, SEED, START),
    )


def finish_and_compare(db, at_least):
    poll(lambda: readings(db) >= at_least, 60, 0.2, f"{at_least} readings")
    stop_simulator(db)
    rows = actual(db)
    assert len(set(rows)) == len(rows), "duplicate readings"
    # exactly the generator's first len(rows) readings: no gap, nothing else
    assert set(rows) == expected(db, len(rows)), "not the generator's stream"
    assert db.execute("SELECT count(*) FROM iotpipe.dead_letters").fetchone()[0] == 0
    position = db.execute("SELECT position FROM iotpipe.simulator").fetchone()[0]
    assert position == len(rows), "the committed position counts the rows written"


def test_reproducible_simulator_resumes_after_kill_9(db):
    start_reproducible(db)
    pid = poll(
        lambda: (s := simulator(db)) and s[1] == "running" and s[0], 30, what="sim"
    )
    poll(lambda: readings(db) >= 5000, 30, 0.05, "readings before the kill")
    os.kill(pid, signal.SIGKILL)

    def restarted():
        with connect() as c:
            s = simulator(c)
            return s if s and s[0] and s[0] != pid and s[1] == "running" else None

    poll(restarted, 60, 0.3, "the simulator to be restarted after kill -9")
    with connect() as c:
        finish_and_compare(c, 14000)


def test_reproducible_simulator_resumes_after_an_immediate_restart(db):
    start_reproducible(db)
    poll(lambda: (s := simulator(db)) and s[1] == "running", 30, what="sim")
    poll(lambda: readings(db) >= 5000, 30, 0.05, "readings before the restart")
    db.close()
    restart_server("immediate")
    with connect() as c:
        poll(lambda: (s := simulator(c)) and s[1] == "running", 60, 0.3, "sim again")
        finish_and_compare(c, 14000)


# ---------------------------------------------------------------- case 18


def test_second_database_refuses_worker_functions(db):
    db.execute("DROP DATABASE IF EXISTS iotpipe_faults_second WITH (FORCE)")
    db.execute("CREATE DATABASE iotpipe_faults_second")
    here = db.execute("SELECT current_database()").fetchone()[0]
    try:
        with connect("iotpipe_faults_second") as c:
            c.execute("CREATE EXTENSION iotpipe")
            # the workers of the first database are not shown here
            assert c.execute("SELECT count(*) FROM iotpipe.status").fetchone()[0] == 0
            for call in (
                "SELECT iotpipe.simulator_start()",
                "SELECT iotpipe.simulator_stop()",
                "SELECT iotpipe.kafka_start('127.0.0.1:1', 'faults')",
                "SELECT iotpipe.kafka_stop('faults')",
            ):
                with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
                    c.execute(call)
                assert e.value.diag.message_primary == (
                    f'iotpipe workers run in database "{here}", '
                    'not in "iotpipe_faults_second"'
                ), call
                assert "iotpipe.database" in e.value.diag.message_hint
            assert not c.execute("SELECT enabled FROM iotpipe.simulator").fetchone()[0]
            # what needs no worker works
            assert (
                c.execute("SELECT count(*) FROM iotpipe.simulate(3, 10)").fetchone()[0]
                == 10
            )
        # in the workers' database everything is as before
        assert launcher(db)[1] == "running"
    finally:
        db.execute("DROP DATABASE IF EXISTS iotpipe_faults_second WITH (FORCE)")


# ---------------------------------------------------------------- case 19


def test_launcher_waits_quietly_for_its_database():
    d = DIR + "-nodb"
    port = PORT + 9
    script = os.path.join(ROOT, "scripts/pgcluster.sh")
    subprocess.run(
        [
            script,
            "start",
            d,
            str(port),
            "postgres",
            "--conf",
            "iotpipe.database = 'later'",
        ],
        check=True,
    )
    try:
        time.sleep(5)  # what the launcher says while the database is missing
        with open(os.path.join(d, "server.log"), errors="replace") as f:
            log = f.read()
        assert log.count("FATAL") == 0, log
        assert 1 <= log.count('waiting for database "later"') <= 2, log
        assert log.count("iotpipe launcher") <= 3, log

        info = f"host={d} port={port} user=postgres"
        with psycopg.connect(info + " dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE later")
        with psycopg.connect(info + " dbname=later", autocommit=True) as c:
            c.execute("CREATE EXTENSION iotpipe")
            poll(
                lambda: (
                    r := c.execute(
                        "SELECT pid, state FROM iotpipe.status WHERE worker = 'launcher'"
                    ).fetchone()
                )
                and r[1] == "running",
                20,
                0.2,
                "the launcher to run in the new database",
            )
    finally:
        subprocess.run([script, "stop", d, "immediate"])
