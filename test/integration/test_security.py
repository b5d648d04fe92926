"""Hardening (issue 11): no name the extension uses can be captured through
the search_path.

Hostile functions and operators are planted in ``public`` and in a schema
placed first on the callers' search_path, each bumping its own sequence when
called (sequences are not transactional: a call counts even when its
transaction rolls back).  Then admin and operator logins, with that
search_path, run what they run day to day (ingest with alerts firing and
resolving, rule changes, the alert timers, the ETL, retention, the simulator
with its worker running, status reads, ack_alert), and not one plant may
have been called.  The database's own search_path puts the hostile schemas
first too, so that workers started meanwhile (the simulator) would use them
unless they set their own.  A control call proves that the plants do capture an
unqualified name.
"""

import psycopg
import pytest

from conftest import DB, conninfo, connect, poll

PLANT_SCHEMAS = ("public", "iotpipe_hijack")
CALLER_PATH = "iotpipe_hijack, public, pg_catalog"

# (name, argument types, result type, how the spy passes the call on)
FUNCTIONS = [
    ("now", "", "timestamptz", "pg_catalog.now()"),
    ("clock_timestamp", "", "timestamptz", "pg_catalog.clock_timestamp()"),
    ("lower", "text", "text", "pg_catalog.lower($1)"),
    ("upper", "text", "text", "pg_catalog.upper($1)"),
    ("length", "text", "int", "pg_catalog.length($1)"),
    ("left", "text, int", "text", "pg_catalog.left($1, $2)"),
    ("split_part", "text, text, int", "text", "pg_catalog.split_part($1, $2, $3)"),
    ("substr", "text, int", "text", "pg_catalog.substr($1, $2)"),
    ("format", "text, text", "text", "pg_catalog.format($1, $2)"),
    ("format", "text, bigint", "text", "pg_catalog.format($1, $2)"),
    ("array_position", "text[], text", "int", "pg_catalog.array_position($1, $2)"),
    ("pg_notify", "text, text", "void", "pg_catalog.pg_notify($1, $2)"),
    ("pg_has_role", "name, text, text", "bool", "pg_catalog.pg_has_role($1, $2, $3)"),
    ("set_config", "text, text, bool", "text", "pg_catalog.set_config($1, $2, $3)"),
    ("pg_advisory_xact_lock", "bigint", "void", "pg_catalog.pg_advisory_xact_lock($1)"),
    (
        "pg_visible_in_snapshot",
        "xid8, pg_snapshot",
        "bool",
        "pg_catalog.pg_visible_in_snapshot($1, $2)",
    ),
    ("pg_snapshot_xmin", "pg_snapshot", "xid8", "pg_catalog.pg_snapshot_xmin($1)"),
    ("pg_current_snapshot", "", "pg_snapshot", "pg_catalog.pg_current_snapshot()"),
    ("pg_current_xact_id", "", "xid8", "pg_catalog.pg_current_xact_id()"),
    ("date_part", "text, timestamptz", "float8", "pg_catalog.date_part($1, $2)"),
    ("date_trunc", "text, timestamptz", "timestamptz", "pg_catalog.date_trunc($1, $2)"),
    ("to_char", "timestamptz, text", "text", "pg_catalog.to_char($1, $2)"),
    ("to_regclass", "text", "regclass", "pg_catalog.to_regclass($1)"),
    ("round", "numeric, int", "numeric", "pg_catalog.round($1, $2)"),
    ("sqrt", "float8", "float8", "pg_catalog.sqrt($1)"),
    (
        "brin_summarize_new_values",
        "regclass",
        "int",
        "pg_catalog.brin_summarize_new_values($1)",
    ),
    ("current_setting", "text", "text", "pg_catalog.current_setting($1)"),
    ("jsonb_typeof", "jsonb", "text", "pg_catalog.jsonb_typeof($1)"),
    ("unnest", "text[]", "SETOF text", "pg_catalog.unnest($1)"),
    ("unnest", "float8[]", "SETOF float8", "pg_catalog.unnest($1)"),
    ("unnest", "timestamptz[]", "SETOF timestamptz", "pg_catalog.unnest($1)"),
    ("unnest", "bigint[]", "SETOF bigint", "pg_catalog.unnest($1)"),
    ("unnest", "int[]", "SETOF int", "pg_catalog.unnest($1)"),
    ("unnest", "bytea[]", "SETOF bytea", "pg_catalog.unnest($1)"),
    ("unnest", "bool[]", "SETOF bool", "pg_catalog.unnest($1)"),
]

# (operator, left type, right type, result type)
OPERATORS = [
    ("=", "text", "text", "bool"),
    ("<>", "text", "text", "bool"),
    ("~", "text", "text", "bool"),
    ("||", "text", "text", "text"),
    ("=", "int", "int", "bool"),
    ("<", "int", "int", "bool"),
    ("=", "bigint", "bigint", "bool"),
    (">=", "bigint", "bigint", "bool"),
    ("=", "timestamptz", "timestamptz", "bool"),
    ("<", "timestamptz", "timestamptz", "bool"),
    ("<=", "timestamptz", "timestamptz", "bool"),
    (">", "timestamptz", "timestamptz", "bool"),
    (">=", "timestamptz", "timestamptz", "bool"),
    ("-", "timestamptz", "timestamptz", "interval"),
    ("+", "timestamptz", "interval", "timestamptz"),
    ("-", "timestamptz", "interval", "timestamptz"),
    (">", "float8", "float8", "bool"),
    ("<", "float8", "float8", "bool"),
    ("=", "float8", "float8", "bool"),
    ("=", "jsonb", "jsonb", "bool"),
    ("->>", "jsonb", "text", "text"),
    ("#>>", "jsonb", "text[]", "text"),
    ("<=", "interval", "interval", "bool"),
]


def plant(db):
    """Create the spies; returns {sequence name: what it spies on}."""
    db.execute("CREATE SCHEMA iotpipe_spy")
    db.execute("CREATE SCHEMA iotpipe_hijack")
    db.execute("GRANT USAGE ON SCHEMA iotpipe_spy, iotpipe_hijack TO PUBLIC")
    spies = {}
    n = 0
    for schema in PLANT_SCHEMAS:
        for name, args, ret, call in FUNCTIONS:
            n += 1
            seq = f"iotpipe_spy.hit_{n}"
            spies[seq] = f'function {schema}."{name}"({args})'
            if ret == "void":
                body = f"PERFORM {call}; RETURN;"
            elif ret.startswith("SETOF"):
                body = f"RETURN QUERY SELECT * FROM {call};"
            else:
                body = f"RETURN {call};"
            db.execute(f"CREATE SEQUENCE {seq}")
            db.execute(
                f'CREATE FUNCTION {schema}."{name}"({args}) RETURNS {ret} '
                "LANGUAGE plpgsql SET search_path = pg_catalog AS "
                f"$f$ BEGIN PERFORM pg_catalog.nextval('{seq}'); {body} END $f$"
            )
        for op, left, right, ret in OPERATORS:
            n += 1
            seq = f"iotpipe_spy.hit_{n}"
            fn = f"{schema}.iotpipe_spy_op_{n}"
            spies[seq] = f"operator {schema}.{op} ({left}, {right})"
            db.execute(f"CREATE SEQUENCE {seq}")
            db.execute(
                f"CREATE FUNCTION {fn}({left}, {right}) RETURNS {ret} "
                "LANGUAGE plpgsql SET search_path = pg_catalog AS "
                f"$f$ BEGIN PERFORM pg_catalog.nextval('{seq}'); "
                f"RETURN $1 OPERATOR(pg_catalog.{op}) $2; END $f$"
            )
            db.execute(
                f"CREATE OPERATOR {schema}.{op} "
                f"(LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {fn})"
            )
    db.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA iotpipe_spy TO PUBLIC")
    return spies


def unplant(db, spies):
    for schema in PLANT_SCHEMAS:
        for name, args, _, _ in FUNCTIONS:
            db.execute(f'DROP FUNCTION IF EXISTS {schema}."{name}"({args})')
    n = 0
    for schema in PLANT_SCHEMAS:
        n += len(FUNCTIONS)
        for op, left, right, _ in OPERATORS:
            n += 1
            db.execute(f"DROP OPERATOR IF EXISTS {schema}.{op} ({left}, {right})")
            db.execute(
                f"DROP FUNCTION IF EXISTS {schema}.iotpipe_spy_op_{n}({left}, {right})"
            )
    db.execute("DROP SCHEMA IF EXISTS iotpipe_hijack CASCADE")
    db.execute("DROP SCHEMA IF EXISTS iotpipe_spy CASCADE")


def hits(db, spies):
    """The spies called so far, with how often."""
    out = {}
    for seq, what in spies.items():
        last, called = db.execute(f"SELECT last_value, is_called FROM {seq}").fetchone()
        if called:
            out[what] = last
    return out


def reset_hits(db, spies):
    for seq in spies:
        db.execute("SELECT pg_catalog.setval(%s, 1, false)", (seq,))


def login(user):
    c = psycopg.connect(conninfo(user=user), autocommit=True)
    c.execute(f"SET search_path = {CALLER_PATH}")
    return c


def simulator_row(db):
    return db.execute(
        "SELECT s.state, s.pid, s.messages FROM iotpipe.status s "
        "WHERE s.worker OPERATOR(pg_catalog.=) 'simulator'"
    ).fetchone()


@pytest.fixture
def hijacked():
    db = connect()
    # the checker itself resolves through pg_catalog only
    db.execute("SET search_path = pg_catalog")
    db.execute("SELECT iotpipe.simulator_stop()")
    for r in ("iotpipe_sec_admin", "iotpipe_sec_op"):
        db.execute(f"DROP ROLE IF EXISTS {r}")
    db.execute("CREATE ROLE iotpipe_sec_admin LOGIN IN ROLE iotpipe_admin")
    db.execute("CREATE ROLE iotpipe_sec_op LOGIN IN ROLE iotpipe_operator")
    spies = {}
    try:
        spies = plant(db)
        # every new session, the simulator's worker included, starts with
        # the hostile schemas first unless it sets its own search_path
        db.execute(
            f"ALTER DATABASE {DB} SET search_path = {CALLER_PATH.replace(', ', ',')}"
        )
        yield db, spies
    finally:
        db.execute(f"ALTER DATABASE {DB} RESET search_path")
        db.execute("SELECT iotpipe.simulator_stop()")
        unplant(db, spies)
        db.execute(
            "DELETE FROM iotpipe.alert_rules WHERE name OPERATOR(pg_catalog.~~) 'sec-%'"
        )
        db.execute("DROP ROLE IF EXISTS iotpipe_sec_admin")
        db.execute("DROP ROLE IF EXISTS iotpipe_sec_op")
        db.close()


def test_no_planted_function_or_operator_is_ever_called(hijacked):
    db, spies = hijacked
    adm = login("iotpipe_sec_admin")
    op = login("iotpipe_sec_op")
    try:
        # control: the plants do capture an unqualified name on this path
        adm.execute("SELECT lower('X'), 'a'::text = 'b'::text")
        control = hits(db, spies)
        assert 'function iotpipe_hijack."lower"(text)' in control, control
        assert "operator iotpipe_hijack.= (text, text)" in control, control
        reset_hits(db, spies)

        # rules of every kind for the test's sensors, and a silence
        adm.execute(
            "INSERT INTO iotpipe.alert_rules "
            "(name, kind, metric, sensor_id, op, threshold, clear_threshold, for_duration) VALUES "
            "('sec-hot', 'threshold', 'temperature', 'sec-1', '>', 50, 40, '0'), "
            "('sec-rate', 'rate', 'temperature', 'sec-1', '>', 5, NULL, '0'), "
            "('sec-humid', 'threshold', 'humidity', 'sec-2', '<', 20, NULL, '0')"
        )
        adm.execute(
            "INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, threshold, "
            "window_size, min_samples, statistic) VALUES ('sec-anomaly', 'anomaly', "
            "'temperature', 'sec-1', 3, 10, 5, 'zscore')"
        )
        adm.execute(
            "INSERT INTO iotpipe.alert_rules (name, kind, sensor_id, for_duration) "
            "VALUES ('sec-offline', 'offline', 'sec-2', '1 second')"
        )
        adm.execute(
            "INSERT INTO iotpipe.silences (sensor_id, ends_at, reason) "
            "VALUES ('sec-2', pg_catalog.now() OPERATOR(pg_catalog.+) interval '1 hour', "
            "'security test')"
        )
        msgs = [
            '{"sensor_id":"sec-1","ts":"2026-06-01T10:%02d:00Z","temperature":%s,'
            '"humidity":50,"location":"sec/line"}' % (i, t)
            for i, t in enumerate([20, 21, 20, 21, 20, 21, 60, 70, 10, 65])
        ]
        msgs.append(
            '{"sensor_id":"sec-2","ts":"2026-06-01T10:00:00Z","humidity":10,"location":"sec/b"}'
        )
        msgs.append("not json")
        acc, rej = adm.execute(
            "SELECT * FROM iotpipe.ingest_json(%s)", (msgs,)
        ).fetchone()
        assert (acc, rej) == (11, 1)
        adm.execute(
            "SELECT * FROM iotpipe.ingest_json_bytes(ARRAY["
            'pg_catalog.convert_to(\'{"sensor_id":"sec-1","ts":1780308900000,"temperature":66}\', \'UTF8\'),'
            "'\\xff'::bytea])"
        )
        adm.execute("SELECT iotpipe.create_partitions('2026-06-02', '2026-06-03')")
        adm.execute(
            "SELECT iotpipe._alert_timers("
            "pg_catalog.now() OPERATOR(pg_catalog.+) interval '1 hour')"
        )
        adm.execute(
            "UPDATE iotpipe.alert_rules SET enabled = false "
            "WHERE name OPERATOR(pg_catalog.=) 'sec-hot'"
        )
        adm.execute("SELECT pg_catalog.count(*) FROM iotpipe.simulate(3, 20)")

        fired = db.execute(
            "SELECT count(*) FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id) "
            "WHERE r.name OPERATOR(pg_catalog.~~) 'sec-%'"
        ).fetchone()[0]
        assert fired >= 4, fired

        # the operator reads and acknowledges
        alert_id = op.execute(
            "SELECT a.alert_id FROM iotpipe.alerts a JOIN iotpipe.alert_rules r "
            "ON r.rule_id OPERATOR(pg_catalog.=) a.rule_id "
            "WHERE r.name OPERATOR(pg_catalog.=) 'sec-hot' ORDER BY 1 LIMIT 1"
        ).fetchone()[0]
        acked = op.execute(
            "SELECT acked_by FROM iotpipe.ack_alert(%s)", (alert_id,)
        ).fetchone()[0]
        assert acked == "iotpipe_sec_op"
        op.execute("SELECT * FROM iotpipe.status")
        op.execute("SELECT * FROM iotpipe.firing_alerts")
        op.execute("SELECT * FROM iotpipe.kafka_lag")

        # the warehouse: a run, another with until, retention
        for until in (None, "2026-06-01 10:05+00", None):
            status = adm.execute(
                "SELECT status, error FROM iotpipe.run_etl(%s)", (until,)
            ).fetchone()
            assert status[0] == "ok", status
        adm.execute("SELECT iotpipe.apply_retention()")
        adm.execute("SELECT iotpipe.apply_retention(interval '3650 days')")
        adm.execute("SELECT * FROM iotpipe.etl_progress")

        # the simulator's worker ingests (with the alert engine) for a while
        adm.execute(
            "SELECT iotpipe.simulator_start(sensors => 5, rate => 500, seed => 11, "
            "malformed_ratio => 0.05)"
        )
        first = poll(
            lambda: (s := simulator_row(adm)) and s[0] == "running" and s[2] > 0 and s,
            30,
            what="the simulator to run",
        )
        poll(
            lambda: simulator_row(adm)[2] >= first[2] + 1500,
            30,
            what="the simulator to ingest 1500 more messages (3 s)",
        )
        adm.execute("SELECT iotpipe.simulator_stop()")
        poll(
            lambda: (s := simulator_row(db)) is None or s[0] != "running",
            30,
            what="the simulator to stop",
        )
    finally:
        adm.close()
        op.close()
    assert hits(db, spies) == {}
