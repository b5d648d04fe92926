"""Partitions and locks that never stall ingest (issue 11, cases 11, 13b, 13c).

- test_hostile_timestamps_bounded: one reading per day over the whole accepted
  range (2000-01-01 .. tomorrow) in one ingest_json call: the call needs a
  bounded number of new partitions and locks (0.1.0: out of shared memory);
  what it may not make now is held and ingested again by the launcher, every
  reading exactly once.
- test_idle_reader_does_not_stall_ingest: an operator idle in a transaction
  after reading iotpipe.readings; ingest that needs a new partition and
  ingest that does not both finish at once (0.1.0: both wait for the reader).
- test_reading_held_while_partition_lock_busy: a session holds SHARE UPDATE
  EXCLUSIVE on iotpipe.readings (what ATTACH needs): the reading is held, not
  waited for, and lands once the lock is free.
- test_analyst_cannot_block_etl_or_partitions: an analyst holding 0.1.0's
  advisory keys blocks neither run_etl(), partition creation nor the ETL
  worker (0.1.0: they wait forever), nor (holding the rule-limit key of
  0.2.0 before this change) adding an alert rule.
- test_run_etl_serializes: two run_etl() still run one after the other; a
  bounded wait ends with "another run_etl is in progress".
"""

import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from conftest import DB, connect, conninfo, poll

ETL_KEY = 7597124726873653297  # run_etl's key in 0.1.0
PARTITION_KEY = 0x696F7470  # src/partition.c's key in 0.1.0


def msg(sensor, ts, temp=20.0):
    return (
        f'{{"sensor_id":"{sensor}","ts":"{ts.strftime("%Y-%m-%dT%H:%M:%S")}Z",'
        f'"temperature":{temp}}}'
    )


def partitions(db):
    return db.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'iotpipe.readings'::regclass"
    ).fetchone()[0]


def partition_names(db):
    return {
        r[0]
        for r in db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'iotpipe.readings'::regclass"
        )
    }


def covered(db, ts):
    """Does a partition of iotpipe.readings take a row at ts?"""
    return db.execute(
        "SELECT EXISTS (SELECT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'iotpipe.readings'::regclass"
        "   AND %s::timestamptz >= (regexp_match(pg_get_expr(c.relpartbound, c.oid),"
        "                           'FROM \\(''([^'']+)''\\)'))[1]::timestamptz"
        "   AND %s::timestamptz < (regexp_match(pg_get_expr(c.relpartbound, c.oid),"
        "                           'TO \\(''([^'']+)''\\)'))[1]::timestamptz)",
        (ts, ts),
    ).fetchone()[0]


def uncovered_recent_day(db):
    """A day within the daily window (2 .. 30 days ago) that has no partition."""
    today = datetime.now(timezone.utc).replace(
        hour=12, minute=0, second=0, microsecond=0
    )
    for back in range(2, 30):
        ts = today - timedelta(days=back)
        if not covered(db, ts):
            return ts
    # every day has one: drop an empty one (made ahead by an earlier test)
    for back in range(2, 30):
        ts = today - timedelta(days=back)
        name = f"readings_p{ts:%Y%m%d}"
        rel = db.execute("SELECT to_regclass(%s)", (f"iotpipe.{name}",)).fetchone()[0]
        if (
            rel
            and not db.execute(
                f"SELECT EXISTS (SELECT FROM iotpipe.{name})"
            ).fetchone()[0]
        ):
            try:
                db.execute("SET lock_timeout = '2s'")
                db.execute(f"DROP TABLE iotpipe.{name}")
            except psycopg.errors.LockNotAvailable:
                continue
            finally:
                db.execute("RESET lock_timeout")
            return ts
    pytest.skip("no day of the daily window is free")


def held(db, sensor):
    return db.execute(
        "SELECT count(*) FROM iotpipe.dead_letters WHERE starts_with(error, 'held: ')"
        " AND convert_from(payload, 'UTF8')::jsonb ->> 'sensor_id' = %s",
        (sensor,),
    ).fetchone()[0]


def run_in_thread(fn):
    out = {}

    def target():
        t0 = time.monotonic()
        try:
            out["result"] = fn()
        except Exception as e:  # reported by the caller
            out["error"] = e
        out["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def ingest_timed(sensor, ts, timeout_s=20):
    """ingest_json in its own session, bounded by statement_timeout."""

    def fn():
        with connect() as c:
            c.execute(f"SET statement_timeout = '{timeout_s}s'")
            return c.execute(
                "SELECT accepted, rejected FROM iotpipe.ingest_json(%s)",
                ([msg(sensor, ts)],),
            ).fetchone()

    return run_in_thread(fn)


@pytest.fixture
def cleanup(db):
    sensors = []
    yield sensors
    for s in sensors:
        db.execute("DELETE FROM iotpipe.readings WHERE sensor_id = %s", (s,))
        db.execute("DELETE FROM iotpipe.sensors WHERE sensor_id = %s", (s,))
        db.execute(
            "DELETE FROM iotpipe.dead_letters WHERE starts_with(error, 'held: ')"
            " AND convert_from(payload, 'UTF8')::jsonb ->> 'sensor_id' = %s",
            (s,),
        )


def test_hostile_timestamps_bounded(db, cleanup):
    sensor = "part-hostile"
    cleanup.append(sensor)
    now = datetime.now(timezone.utc)
    first = datetime(2000, 1, 1, 6, 30, tzinfo=timezone.utc)
    days = (now - first).days + 1  # until tomorrow's 06:30 at most
    stamps = [
        first + timedelta(days=i)
        for i in range(days)
        if first + timedelta(days=i) < now + timedelta(hours=23)
    ]
    before = partitions(db)
    before_names = partition_names(db)
    c = connect(autocommit=False)
    try:
        acc, rej = c.execute(
            "SELECT accepted, rejected FROM iotpipe.ingest_json(%s)",
            ([msg(sensor, ts) for ts in stamps],),
        ).fetchone()
        # every lock of the call is still held here: bounded, not one per day
        locks = c.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid()"
        ).fetchone()[0]
        # made by this call: what it sees minus what everyone else sees
        made = partitions(c) - partitions(db)
        c.commit()
    finally:
        c.close()
    assert acc + rej == len(stamps)
    assert made <= 16, f"{made} partitions made by one call"
    # a table, two indexes per partition written to, and the new ones' own
    assert (
        locks < 200 + 4 * before
    ), f"{locks} locks held by one call ({before} partitions)"
    # the rest is held, with a reason, not dropped
    assert rej > 0 and held(db, sensor) == rej
    reason = db.execute(
        "SELECT error FROM iotpipe.dead_letters WHERE starts_with(error, 'held: ')"
        " AND convert_from(payload, 'UTF8')::jsonb ->> 'sensor_id' = %s LIMIT 1",
        (sensor,),
    ).fetchone()[0]
    assert "no partition of iotpipe.readings for" in reason and "launcher" in reason
    # the launcher ingests the held readings again until none is left
    poll(
        lambda: held(db, sensor) == 0,
        120,
        0.5,
        "the launcher to ingest the held readings",
    )
    n, distinct, lo, hi = db.execute(
        "SELECT count(*), count(DISTINCT ts), min(ts), max(ts) FROM iotpipe.readings WHERE sensor_id = %s",
        (sensor,),
    ).fetchone()
    assert (n, distinct) == (len(stamps), len(stamps))
    assert (lo, hi) == (stamps[0], stamps[-1])
    total = db.execute(
        "SELECT readings_total FROM iotpipe.sensors WHERE sensor_id = %s", (sensor,)
    ).fetchone()[0]
    assert total == len(stamps)
    # years of history are few partitions: this test made at most one per
    # year, month of this year and day of the daily window (and ahead); a
    # year or month where earlier tests left partitions splits into its
    # months or days
    made_in_all = len(partition_names(db) - before_names)
    old = [n[10:] for n in before_names if len(n) >= 14]
    years = {n[:4] for n in old}
    months = {n[:6] for n in old if len(n) >= 16}
    bound = (now.year - 2000 + 1) + 12 + 31 + 2 + 11 * len(years) + 30 * len(months)
    assert made_in_all <= bound, (made_in_all, bound)


def test_idle_reader_does_not_stall_ingest(db, cleanup):
    sensor = "part-idle"
    cleanup.append(sensor)
    db.execute("DROP ROLE IF EXISTS part_operator")
    db.execute("CREATE ROLE part_operator LOGIN IN ROLE iotpipe_operator")
    day = uncovered_recent_day(db)
    reader = psycopg.connect(conninfo(user="part_operator"), autocommit=False)
    try:
        reader.execute("SELECT count(*) FROM iotpipe.readings").fetchone()
        # reader: idle in transaction, holding ACCESS SHARE on the table
        today = datetime.now(timezone.utc).replace(microsecond=0)
        t_new, out_new = ingest_timed(sensor, day)
        t_old, out_old = ingest_timed(sensor, today)
        t_new.join(15)
        t_old.join(15)
        assert (
            not t_new.is_alive()
        ), "ingest that needs a partition still waits after 15 s"
        assert (
            not t_old.is_alive()
        ), "ingest into an existing partition still waits after 15 s"
        assert "error" not in out_new, out_new
        assert "error" not in out_old, out_old
        assert out_new["result"] == (1, 0) and out_old["result"] == (1, 0)
        assert out_new["elapsed"] < 5 and out_old["elapsed"] < 5, (out_new, out_old)
        assert covered(db, day)
        assert (
            db.execute(
                "SELECT count(*) FROM iotpipe.readings WHERE sensor_id = %s", (sensor,)
            ).fetchone()[0]
            == 2
        )
        # the reader was not disturbed
        assert reader.execute("SELECT 1").fetchone()[0] == 1
    finally:
        reader.close()
        db.execute("DROP ROLE IF EXISTS part_operator")


def test_reading_held_while_partition_lock_busy(db, cleanup):
    sensor = "part-busy"
    cleanup.append(sensor)
    day = uncovered_recent_day(db)
    blocker = connect(autocommit=False)
    try:
        # what ANALYZE of the table, or another creator's open transaction, holds
        blocker.execute("LOCK TABLE iotpipe.readings IN SHARE UPDATE EXCLUSIVE MODE")
        t_new, out_new = ingest_timed(sensor, day)
        t_now, out_now = ingest_timed(
            sensor, datetime.now(timezone.utc).replace(microsecond=0)
        )
        t_new.join(15)
        t_now.join(15)
        assert (
            not t_new.is_alive()
        ), "ingest that needs a partition still waits after 15 s"
        assert (
            not t_now.is_alive()
        ), "ingest into an existing partition still waits after 15 s"
        assert "error" not in out_new, out_new
        assert out_new["result"] == (0, 1), out_new
        assert out_new["elapsed"] < 5, out_new
        assert out_now["result"] == (1, 0), out_now
        assert held(db, sensor) == 1
        reason = db.execute(
            "SELECT error FROM iotpipe.dead_letters WHERE starts_with(error, 'held: ')"
            " ORDER BY id DESC LIMIT 1"
        ).fetchone()[0]
        assert "could not be made now" in reason and "lock timeout" in reason
        assert not covered(db, day)
    finally:
        blocker.rollback()
        blocker.close()
    # once the lock is free the launcher makes the partition and ingests it
    poll(
        lambda: held(db, sensor) == 0,
        60,
        0.5,
        "the launcher to ingest the held reading",
    )
    rows = db.execute(
        "SELECT ts FROM iotpipe.readings WHERE sensor_id = %s ORDER BY ts", (sensor,)
    ).fetchall()
    assert len(rows) == 2 and rows[0][0] == day
    assert covered(db, day)


@pytest.fixture
def analyst_holding_old_keys(db):
    db.execute("DROP ROLE IF EXISTS part_analyst")
    db.execute("CREATE ROLE part_analyst LOGIN IN ROLE iotpipe_analyst")
    a = psycopg.connect(conninfo(user="part_analyst"), autocommit=True)
    try:
        # every form of 0.1.0's keys: bigint (field4 1) and two int4 (field4 2)
        a.execute("SELECT pg_advisory_lock(%s)", (ETL_KEY,))
        a.execute("SELECT pg_advisory_lock(%s)", (PARTITION_KEY,))
        a.execute("SELECT pg_advisory_lock(0, %s)", (PARTITION_KEY,))
        a.execute(
            "SELECT pg_advisory_lock((%s >> 32)::int, (%s & 4294967295)::bigint::int)",
            (ETL_KEY, ETL_KEY),
        )
        # the rule-limit check's key (0.2.0 before this change)
        a.execute("SELECT pg_advisory_lock(hashtext('iotpipe.alert_rules_limit'))")
        yield a
    finally:
        a.close()
        db.execute("DROP ROLE IF EXISTS part_analyst")


def test_analyst_cannot_block_etl_or_partitions(db, analyst_holding_old_keys, cleanup):
    sensor = "part-analyst"
    cleanup.append(sensor)
    db.execute("SET client_min_messages = warning")
    db.execute("SET statement_timeout = '20s'")
    try:
        t0 = time.monotonic()
        status = db.execute("SELECT status FROM iotpipe.run_etl()").fetchone()[0]
        assert status == "ok" and time.monotonic() - t0 < 10
        db.execute("SELECT iotpipe.reset_warehouse()")
        assert (
            db.execute(
                "SELECT iotpipe.apply_retention(interval '100 years')"
            ).fetchone()[0]
            == 0
        )
        day = uncovered_recent_day(db)
        assert (
            db.execute(
                "SELECT iotpipe.create_partitions(%s::date, %s::date)", (day, day)
            ).fetchone()[0]
            == 1
        )
        day = uncovered_recent_day(db)
        acc, rej = db.execute(
            "SELECT accepted, rejected FROM iotpipe.ingest_json(%s)",
            ([msg(sensor, day)],),
        ).fetchone()
        assert (acc, rej) == (1, 0)
        assert covered(db, day)
        # adding a rule checks the rule limit under the extension's own lock
        db.execute(
            "INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, clear_threshold, severity)"
            " VALUES ('part-analyst-rule', 'threshold', 'temperature', '>', 90, 85, 'warning')"
        )
    finally:
        db.execute("DELETE FROM iotpipe.alert_rules WHERE name = 'part-analyst-rule'")
        db.execute("RESET statement_timeout")
    # the scheduled ETL worker runs too
    last = db.execute(
        "SELECT coalesce(max(run_id), 0) FROM iotpipe.etl_runs"
    ).fetchone()[0]
    try:
        db.execute("ALTER SYSTEM SET iotpipe.etl_interval = 1")
        db.execute("SELECT pg_reload_conf()")
        poll(
            lambda: db.execute(
                "SELECT count(*) FROM iotpipe.etl_runs WHERE run_id > %s AND status = 'ok'",
                (last,),
            ).fetchone()[0]
            >= 1,
            30,
            what="a scheduled ETL run while an analyst holds 0.1.0's keys",
        )
    finally:
        db.execute("ALTER SYSTEM RESET iotpipe.etl_interval")
        db.execute("SELECT pg_reload_conf()")
    # the analyst still holds every key it took: they simply are not ours
    assert (
        analyst_holding_old_keys.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchone()[0]
        == 5
    )
    # and cannot take the extension's lock: no pg_advisory_* names it
    ours = db.execute(
        "SELECT DISTINCT objsubid FROM pg_locks WHERE locktype = 'advisory'"
        " AND pid <> %s",
        (analyst_holding_old_keys.info.backend_pid,),
    ).fetchall()
    assert all(o[0] not in (1, 2) for o in ours)


def test_run_etl_serializes(db):
    db.execute("SET client_min_messages = warning")
    first = connect(autocommit=False)
    try:
        first.execute("SET client_min_messages = warning")
        run_a = first.execute("SELECT run_id FROM iotpipe.run_etl()").fetchone()[0]
        # first holds the ETL lock until it commits; a second call waits
        ts = datetime.now(timezone.utc).replace(microsecond=0)
        db.execute(
            "SELECT * FROM iotpipe.ingest_json(%s)", ([msg("part-serial", ts, 21.0)],)
        )

        def second():
            with connect() as c:
                c.execute("SET client_min_messages = warning")
                c.execute("SET statement_timeout = '30s'")
                return c.execute(
                    "SELECT run_id, status, rows_read FROM iotpipe.run_etl()"
                ).fetchone()

        t, out = run_in_thread(second)
        t.join(1.5)
        assert t.is_alive(), f"second run_etl did not wait: {out}"
        # a bounded wait gives up with a clear error
        with connect() as c:
            c.execute("SET statement_timeout = '10s'")
            c.execute("SET iotpipe.etl_lock_timeout = 200")
            t0 = time.monotonic()
            with pytest.raises(
                psycopg.errors.LockNotAvailable, match="another run_etl is in progress"
            ):
                c.execute("SELECT iotpipe.run_etl()")
            assert time.monotonic() - t0 < 3
        first.commit()
        t.join(20)
        assert "error" not in out, out
        run_b, status, rows = out["result"]
        assert run_b > run_a and status == "ok"
        # the second run saw the first one's commit: it read only what is new
        assert rows >= 1
        assert (
            db.execute(
                "SELECT count(*) FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor s USING (sensor_key)"
                " WHERE s.sensor_id = 'part-serial'"
            ).fetchone()[0]
            == 1
        )
    finally:
        first.close()
        db.execute("DELETE FROM iotpipe.readings WHERE sensor_id = 'part-serial'")
        db.execute("DELETE FROM iotpipe.sensors WHERE sensor_id = 'part-serial'")


assert DB  # the suite's database (conftest)


def test_retention_never_waits_for_an_idle_reader(db, cleanup):
    """Dropping a partition takes ACCESS EXCLUSIVE on iotpipe.readings: with a
    reader idle in its transaction apply_retention gives up after its short
    lock wait (0.1.0: waits forever, and every ingest queues behind it)."""
    sensor = "part-retention"
    cleanup.append(sensor)
    db.execute("SET client_min_messages = warning")
    db.execute("SELECT iotpipe.run_etl()")
    db.execute("DROP TABLE IF EXISTS iotpipe.readings_p19990101")
    reader = connect(autocommit=False)
    try:
        reader.execute("SELECT count(*) FROM iotpipe.readings").fetchone()
        # an empty partition the reader has not touched, long past any retention
        db.execute(
            "CREATE TABLE iotpipe.readings_p19990101"
            " (LIKE iotpipe.readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        db.execute(
            "ALTER TABLE iotpipe.readings ATTACH PARTITION iotpipe.readings_p19990101"
            " FOR VALUES FROM ('1999-01-01 00:00+00') TO ('1999-01-02 00:00+00')"
        )

        def retention():
            with connect() as c:
                c.execute("SET client_min_messages = warning")
                c.execute("SET statement_timeout = '20s'")
                return c.execute(
                    "SELECT iotpipe.apply_retention(interval '20 years')"
                ).fetchone()[0]

        t_ret, out_ret = run_in_thread(retention)
        time.sleep(0.2)  # let it queue for the table's lock
        t_ing, out_ing = ingest_timed(
            sensor, datetime.now(timezone.utc).replace(microsecond=0)
        )
        t_ret.join(15)
        t_ing.join(15)
        assert not t_ret.is_alive(), "apply_retention still waits after 15 s"
        assert not t_ing.is_alive(), "ingest still waits after 15 s"
        assert "error" not in out_ret, out_ret
        assert "error" not in out_ing, out_ing
        assert out_ret["elapsed"] < 5 and out_ing["result"] == (1, 0)
        # kept for next time, not dropped under the reader
        assert db.execute(
            "SELECT to_regclass('iotpipe.readings_p19990101')"
        ).fetchone()[0]
    finally:
        reader.close()
    assert (
        db.execute("SELECT iotpipe.apply_retention(interval '20 years')").fetchone()[0]
        >= 1
    )
    assert (
        db.execute("SELECT to_regclass('iotpipe.readings_p19990101')").fetchone()[0]
        is None
    )


def test_partitions_written_per_transaction_bounded(db, cleanup):
    """A batch spread over many existing daily partitions writes into at
    most 256 in one transaction (each costs locks until it ends); the rest
    is held and ingested again by the launcher."""
    sensor = "part-spread"
    cleanup.append(sensor)
    db.execute("SET client_min_messages = warning")
    days = [
        datetime(2011, 1, 1, 12, tzinfo=timezone.utc) + timedelta(days=i)
        for i in range(365)
    ]
    # daily partitions for 2011 (a year partition left by another test goes)
    if db.execute("SELECT to_regclass('iotpipe.readings_p2011')").fetchone()[0]:
        assert not db.execute(
            "SELECT EXISTS (SELECT FROM iotpipe.readings_p2011)"
        ).fetchone()[0]
        db.execute("DROP TABLE iotpipe.readings_p2011")
    db.execute("SELECT iotpipe.create_partitions('2011-01-01', '2011-12-31')")
    assert all(covered(db, d) for d in days[::30])
    c = connect(autocommit=False)
    try:
        acc, rej = c.execute(
            "SELECT accepted, rejected FROM iotpipe.ingest_json(%s)",
            ([msg(sensor, d) for d in days],),
        ).fetchone()
        touched = c.execute(
            "SELECT count(DISTINCT tableoid) FROM iotpipe.readings WHERE sensor_id = %s",
            (sensor,),
        ).fetchone()[0]
        c.commit()
    finally:
        c.close()
    assert acc + rej == 365 and touched <= 256 and rej >= 365 - 256, (acc, rej, touched)
    if rej:
        reason = db.execute(
            "SELECT error FROM iotpipe.dead_letters WHERE starts_with(error, 'held: ')"
            " AND convert_from(payload, 'UTF8')::jsonb ->> 'sensor_id' = %s LIMIT 1",
            (sensor,),
        ).fetchone()[0]
        assert "partitions of iotpipe.readings already" in reason
    poll(
        lambda: held(db, sensor) == 0,
        60,
        0.5,
        "the launcher to ingest the held readings",
    )
    assert db.execute(
        "SELECT count(*), count(DISTINCT ts) FROM iotpipe.readings WHERE sensor_id = %s",
        (sensor,),
    ).fetchone() == (365, 365)


def test_partition_made_in_a_rolled_back_savepoint(db, cleanup):
    """A partition made inside a savepoint that rolls back is gone: the same
    transaction makes it again for the next reading of that day."""
    sensor = "part-savepoint"
    cleanup.append(sensor)
    day = uncovered_recent_day(db)
    c = connect(autocommit=False)
    try:
        c.execute("SAVEPOINT s")
        assert (
            c.execute(
                "SELECT accepted FROM iotpipe.ingest_json(%s)",
                ([msg(sensor, day, 1.0)],),
            ).fetchone()[0]
            == 1
        )
        c.execute("ROLLBACK TO SAVEPOINT s")
        assert c.execute(
            "SELECT accepted, rejected FROM iotpipe.ingest_json(%s)",
            ([msg(sensor, day, 2.0)],),
        ).fetchone() == (1, 0)
        c.commit()
    finally:
        c.close()
    assert db.execute(
        "SELECT array_agg(temperature) FROM iotpipe.readings WHERE sensor_id = %s",
        (sensor,),
    ).fetchone()[0] == [2.0]
    assert (
        db.execute(
            "SELECT readings_total FROM iotpipe.sensors WHERE sensor_id = %s", (sensor,)
        ).fetchone()[0]
        == 1
    )
