"""The worker runtime end to end: the ETL worker and the launcher's supervision.

- a scheduled ETL run blocked for a minute (the test holds a lock on a
  warehouse table) delays neither an offline alert, nor simulator_start(),
  nor the launcher's own pass; released, the run completes and
  iotpipe.status shows it ok;
- SIGTERM ends a blocked ETL run within seconds, and the launcher starts the
  next one on schedule;
- a library newer than the SQL (the database at 0.1.0): the launcher waits
  and says why, starts nothing, and resumes after ALTER EXTENSION iotpipe
  UPDATE without a restart.

Runs last (test modules run in name order) and leaves a fresh install.
Sensors and rules here are it-wk-*.
"""

import json
import time
from datetime import datetime, timezone

import psycopg
import pytest

from conftest import connect, drop_extension, poll

CH = "iotpipe_alerts"


def status(db, worker):
    row = db.execute(
        "SELECT pid, kind, state, started_at, messages, rows, last_error, "
        "last_activity, detail, now() - last_activity AS age "
        "FROM iotpipe.status WHERE worker = %s",
        (worker,),
    ).fetchone()
    if row is None:
        return None
    keys = (
        "pid",
        "kind",
        "state",
        "started_at",
        "messages",
        "rows",
        "last_error",
        "last_activity",
        "detail",
        "age",
    )
    return dict(zip(keys, row))


def now_iso():
    return (
        datetime.now(timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def reading(sensor, location="it-wk/line"):
    return json.dumps(
        {
            "sensor_id": sensor,
            "ts": now_iso(),
            "temperature": 21.0,
            "location": location,
        }
    )


def ingest(db, *msgs):
    acc, rej = db.execute(
        "SELECT * FROM iotpipe.ingest_json(%s)", (list(msgs),)
    ).fetchone()
    assert (acc, rej) == (len(msgs), 0)


def set_etl_interval(db, seconds):
    if seconds is None:
        db.execute("ALTER SYSTEM RESET iotpipe.etl_interval")
    else:
        db.execute(f"ALTER SYSTEM SET iotpipe.etl_interval = {int(seconds)}")
    db.execute("SELECT pg_reload_conf()")


def stop_simulator(db):
    db.execute("SELECT iotpipe.simulator_stop()")
    poll(
        lambda: (s := status(db, "simulator")) is None or s["pid"] is None,
        30,
        what="the simulator to stop",
    )


def etl_backends(db):
    return db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'iotpipe etl'"
    ).fetchone()[0]


def waits_on_lock(db, pid):
    return (
        db.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        or [None]
    )[0] == "Lock"


def blocked_etl(db):
    """The ETL worker's status row once its run waits for the test's lock."""
    s = status(db, "etl")
    if s and s["state"] == "running" and s["pid"] and waits_on_lock(db, s["pid"]):
        return s
    return None


def launcher_current(db):
    s = status(db, "launcher")
    assert s["state"] == "running", s
    assert s["age"].total_seconds() < 3.0, f"launcher pass is stale: {s}"


@pytest.fixture
def blocker():
    """A transaction holding the warehouse's first table run_etl() writes to."""
    with connect(autocommit=False) as c:
        yield c
        c.rollback()


@pytest.fixture
def clean(db):
    def wipe():
        with connect() as c:
            c.execute("DELETE FROM iotpipe.alert_rules WHERE name LIKE 'it-wk-%'")
            set_etl_interval(c, None)

    db.execute("SET client_min_messages = warning")  # run_etl's NOTICEs
    wipe()
    stop_simulator(db)
    yield db
    wipe()
    stop_simulator(db)


def hold_warehouse(blocker):
    blocker.execute("LOCK TABLE iotpipe_dw.dim_location IN ACCESS EXCLUSIVE MODE")


def test_long_etl_run_delays_nothing(clean, blocker):
    db = clean
    # the scheduled run must reach the warehouse: it has one new reading to load
    last = db.execute("SELECT (iotpipe.run_etl()).run_id").fetchone()[0]
    ingest(db, reading("it-wk-etl"))
    hold_warehouse(blocker)
    set_etl_interval(db, 1)
    etl = poll(lambda: blocked_etl(db), 30, what="the scheduled ETL run to block")
    assert etl["kind"] == "etl"
    assert etl["detail"] == "running iotpipe.run_etl()"
    t_blocked = time.monotonic()

    with connect() as listener:
        listener.execute(f"LISTEN {CH}")
        # an offline rule fires on time for a sensor that stopped reporting
        ingest(db, reading("it-wk-mute"))
        t_silent = time.monotonic()
        rule = db.execute(
            "INSERT INTO iotpipe.alert_rules (name, kind, sensor_id, for_duration, severity) "
            "VALUES ('it-wk-offline', 'offline', 'it-wk-mute', '2 seconds', 'critical') "
            "RETURNING rule_id"
        ).fetchone()[0]
        fired = None
        deadline = t_silent + 6.0
        while fired is None and time.monotonic() < deadline:
            for n in listener.notifies(timeout=max(0.05, deadline - time.monotonic())):
                p = json.loads(n.payload)
                if p["rule_id"] == rule:
                    fired = p
                    break
        took = time.monotonic() - t_silent
        assert fired is not None, "the offline alert did not fire during the ETL run"
        assert (fired["sensor_id"], fired["state"]) == ("it-wk-mute", "firing")
        assert 1.8 <= took <= 2.0 + 2.5, took

    # the simulator starts and its rows arrive within a few seconds
    t0 = time.monotonic()
    db.execute("SELECT iotpipe.simulator_start(sensors => 5, rate => 50)")
    sim = poll(
        lambda: (s := status(db, "simulator"))
        and s["state"] == "running"
        and s["pid"]
        and s["rows"] > 0
        and s,
        5,
        what="the simulator's rows while the ETL run is blocked",
    )
    assert time.monotonic() - t0 < 5
    rows0 = sim["rows"]

    # a full minute of a blocked run: the launcher stays current, no second run
    while time.monotonic() - t_blocked < 60:
        launcher_current(db)
        s = status(db, "etl")
        assert (s["pid"], s["state"]) == (etl["pid"], "running"), s
        assert etl_backends(db) == 1
        time.sleep(1.0)
    assert status(db, "simulator")["rows"] > rows0

    # released, the run completes and says so
    blocker.rollback()
    done = poll(
        lambda: (s := status(db, "etl")) and s["state"] == "idle" and s,
        30,
        what="the ETL run to finish after the lock is released",
    )
    assert done["detail"].startswith("last run ") and " ok: " in done["detail"], done
    assert done["last_error"] is None
    assert done["pid"] is None
    assert done["messages"] >= 1  # raw readings read
    assert done["rows"] >= 1  # fact rows written
    assert done["started_at"] <= done["last_activity"]
    run = db.execute(
        "SELECT status, rows_read >= 1, duration >= interval '60 seconds' "
        "FROM iotpipe.etl_runs WHERE run_id > %s ORDER BY run_id LIMIT 1",
        (last,),
    ).fetchone()
    assert run == ("ok", True, True)
    assert (
        db.execute(
            "SELECT count(*) FROM iotpipe_dw.dim_sensor WHERE sensor_id = 'it-wk-etl'"
        ).fetchone()[0]
        == 1
    )


def test_sigterm_ends_blocked_etl_run(clean, blocker):
    db = clean
    db.execute("SELECT iotpipe.run_etl()")
    ingest(db, reading("it-wk-term"))
    hold_warehouse(blocker)
    set_etl_interval(db, 3)
    first = poll(lambda: blocked_etl(db), 30, what="the scheduled ETL run to block")

    t0 = time.monotonic()
    assert db.execute("SELECT pg_terminate_backend(%s)", (first["pid"],)).fetchone()[0]
    gone = poll(
        lambda: (s := status(db, "etl"))
        and s["pid"] is None
        and s["state"] == "idle"
        and etl_backends(db) == 0
        and s,
        5,
        what="the ETL worker to end after SIGTERM",
    )
    assert time.monotonic() - t0 < 5
    assert gone["detail"] == "last run did not finish", gone
    assert gone["last_error"]
    launcher_current(db)
    # the run was rolled back as a whole: no row is left behind as running
    assert (
        db.execute(
            "SELECT count(*) FROM iotpipe.etl_runs WHERE status = 'running'"
        ).fetchone()[0]
        == 0
    )

    # the next run starts on schedule (3 s after the last start), blocks again
    second = poll(lambda: blocked_etl(db), 10, what="the next scheduled ETL run")
    assert second["pid"] != first["pid"]
    assert (second["started_at"] - first["started_at"]).total_seconds() < 10
    blocker.rollback()
    done = poll(
        lambda: (s := status(db, "etl")) and s["state"] == "idle" and s,
        30,
        what="the next ETL run to finish",
    )
    assert " ok: " in done["detail"] and done["last_error"] is None, done
    assert (
        db.execute(
            "SELECT count(*) FROM iotpipe_dw.dim_sensor WHERE sensor_id = 'it-wk-term'"
        ).fetchone()[0]
        == 1
    )


def test_library_newer_than_sql(clean):
    db = clean
    launcher = status(db, "launcher")["pid"]
    drop_extension(db)
    db.execute("CREATE EXTENSION iotpipe VERSION '0.1.0'")
    try:
        want = (
            "extension iotpipe 0.1.0 is installed; run ALTER EXTENSION iotpipe UPDATE"
        )
        poll(
            lambda: (s := status(db, "launcher"))
            and s["state"] == "waiting"
            and s["detail"] == want,
            10,
            what="the launcher to wait for ALTER EXTENSION",
        )
        # 0.1.0's simulator_start() only records the wish: nothing starts
        db.execute("SELECT iotpipe.simulator_start(sensors => 5, rate => 50)")
        assert db.execute("SELECT enabled FROM iotpipe.simulator").fetchone()[0]
        set_etl_interval(db, 1)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            s = status(db, "launcher")
            assert (s["pid"], s["state"], s["detail"]) == (launcher, "waiting", want)
            assert s["age"].total_seconds() < 3
            assert (
                db.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type IN "
                    "('iotpipe simulator', 'iotpipe kafka', 'iotpipe etl')"
                ).fetchone()[0]
                == 0
            )
            assert (
                db.execute(
                    "SELECT count(*) FROM iotpipe.status WHERE pid IS NOT NULL AND kind <> 'launcher'"
                ).fetchone()[0]
                == 0
            )
            time.sleep(0.5)
        set_etl_interval(db, None)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            db.execute(
                "SELECT * FROM iotpipe.ingest_json(%s)", ([reading("it-wk-old")],)
            )
        assert e.value.diag.message_hint == "Run ALTER EXTENSION iotpipe UPDATE."

        db.execute("ALTER EXTENSION iotpipe UPDATE")
        poll(
            lambda: (s := status(db, "launcher"))
            and s["state"] == "running"
            and s["pid"] == launcher,
            10,
            what="the launcher to resume after ALTER EXTENSION iotpipe UPDATE",
        )
        # the recorded wish is honoured now, and simulator_start() works
        poll(
            lambda: (s := status(db, "simulator"))
            and s["state"] == "running"
            and s["pid"],
            10,
            what="the simulator the 0.1.0 database asked for",
        )
        db.execute(
            "SELECT iotpipe.simulator_start(sensors => 5, rate => 50, seed => 2)"
        )
        poll(
            lambda: (s := status(db, "simulator"))
            and s["state"] == "running"
            and s["rows"] > 0,
            10,
            what="the simulator's rows after the update",
        )
        ingest(db, reading("it-wk-new"))
    finally:
        # a fresh install for whatever runs next
        set_etl_interval(db, None)
        drop_extension(db, if_exists=True)
        db.execute("CREATE EXTENSION iotpipe")
        poll(
            lambda: (s := status(db, "launcher")) and s["state"] == "running",
            10,
            what="the launcher to see the fresh extension",
        )
    # the fresh install wants no simulator: the launcher stops the one that ran
    # (asynchronously: SIGTERM, then the worker's own exit clears the slot)
    poll(
        lambda: (s := status(db, "simulator")) is None or s["pid"] is None,
        10,
        what="the simulator of the dropped install to stop",
    )
