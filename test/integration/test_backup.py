"""pg_dump / pg_restore of an iotpipe database (issue 11, case 17).

The suite's database (the workers run there) is filled with every kind of
row: readings in several partitions (old days among them), sensors, rules,
firing, resolved and acknowledged alerts, a silence, dead letters, a Kafka
source that consumed a real topic (committed offsets, watermarks), simulator
settings, the warehouse after run_etl() and readings held back in
etl_pending.  Then:

- ``pg_dump -Fc`` (under an exported snapshot, so that the source can be
  read exactly as dumped while its workers go on) and ``pg_restore`` into a
  new database of the same cluster: exit 0, no error; every table's rows
  and every sequence equal the source's; the copy works (ingest_json, an
  alert, run_etl with the held-back rows, new ids after the restored ones).
- a plain dump through psql (ON_ERROR_STOP) restores the same rows.
- the plain dump through one psql session into a second cluster whose
  ``iotpipe.database`` is the restore target, its transaction counter far
  behind the first's: the launcher waits while the restore runs (and makes
  no partition of its own), then the restored Kafka source resumes at its
  restored offsets (every message produced after the dump arrives exactly
  once, none before it twice), and run_etl() takes in exactly the readings
  the source's ETL had not seen and every new one, each once.

On 0.1.0 pg_restore exits 1 with 2 errors per partition (``relation
"readings_pYYYYMMDD_sensor_id_ts_idx" already exists``) and the copy has no
rules, alerts, sensors, dead letters, sources or offsets.
"""

import os
import subprocess
import time

import psycopg
import pytest
from psycopg.types.json import Jsonb
from kafka_harness import produce

from conftest import DB, DIR, PORT, ROOT, connect, poll

PGBIN = subprocess.check_output(["pg_config", "--bindir"], text=True).strip()
COPY_DB = "iotpipe_backup_copy"
PLAIN_DB = "iotpipe_backup_plain"
TOPIC = "iot-bk"
PREFIX = "bk"
NOW_MS = int(time.time()) * 1000
# tables that are not dumped, by design: one ETL run's scratch space and the
# sessions each database notes for itself (src/sql/60_backup.sql)
NOT_DUMPED = {
    "iotpipe.etl_stage_facts",
    "iotpipe.etl_stage_hourly",
    "iotpipe.etl_stage_days",
    "iotpipe.restore_sessions",
}


def pg(tool):
    return os.path.join(PGBIN, tool)


def msg(sid, ts, t, h=None, loc="bk-site/line-1"):
    body = f'"sensor_id":"{sid}","ts":"{ts}","temperature":{t}'
    if h is not None:
        body += f',"humidity":{h}'
    return "{" + body + f',"location":"{loc}"' + "}"


def kmsg(i):
    """Kafka message i: its sensor and event time are a function of i."""
    sid = f"{PREFIX}-k{i % 7}"
    value = (
        f'{{"sensor_id":"{sid}","ts":{NOW_MS - 3_600_000 + i},'
        f'"temperature":{i % 30},"location":"bk-site/kafka"}}'
    )
    return sid.encode(), value.encode()


def tables(conn):
    return [
        r[0]
        for r in conn.execute(
            """SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname IN ('iotpipe', 'iotpipe_dw') AND c.relkind IN ('r', 'p')
                  AND NOT c.relispartition ORDER BY 1"""
        )
    ]


def contents(conn):
    """Per table an md5 of its rows (as text, sorted) and the count; the sequences; partitions."""
    out = {}
    for t in tables(conn):
        if t in NOT_DUMPED:
            continue
        out[t] = conn.execute(
            f"SELECT count(*), md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), '')) FROM {t} x"
        ).fetchone()
    for (s,) in conn.execute(
        """SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname IN ('iotpipe', 'iotpipe_dw') AND c.relkind = 'S' ORDER BY 1"""
    ).fetchall():
        out[s] = conn.execute(f"SELECT last_value, is_called FROM {s}").fetchone()
    out["partitions"] = conn.execute(
        """SELECT string_agg(c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid), ', ' ORDER BY c.relname)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'iotpipe.readings'::regclass"""
    ).fetchone()[0]
    out["partition indexes"] = conn.execute(
        """SELECT string_agg(pg_get_indexdef(x.indexrelid), ', ' ORDER BY pg_get_indexdef(x.indexrelid))
             FROM pg_inherits i JOIN pg_index x ON x.indrelid = i.inhrelid
            WHERE i.inhparent = 'iotpipe.readings'::regclass"""
    ).fetchone()[0]
    return out


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def conn_args(host=DIR, port=PORT):
    return ["-h", host, "-p", str(port), "-U", "postgres"]


def drop_copies(c):
    for d in (COPY_DB, PLAIN_DB):
        c.execute(f"DROP DATABASE IF EXISTS {d} WITH (FORCE)")


def kafka_rows(conn):
    """Rows of the test's topic by message number i: (count, distinct i, min i, max i)."""
    return conn.execute(
        """WITH r AS (SELECT (extract(epoch FROM ts) * 1000)::bigint - %s AS i FROM iotpipe.readings
                       WHERE sensor_id LIKE %s AND location = 'bk-site/kafka')
           SELECT count(*), count(DISTINCT i), min(i), max(i) FROM r""",
        (NOW_MS - 3_600_000, PREFIX + "-k%"),
    ).fetchone()


def stored(conn):
    return dict(
        conn.execute(
            "SELECT partition, next_offset FROM iotpipe.kafka_offsets WHERE topic = %s",
            (TOPIC,),
        ).fetchall()
    )


@pytest.fixture
def filled(kafka):
    """The suite's database with every kind of row; cleaned up afterwards."""
    c = connect()
    drop_copies(c)
    n_kafka = 300
    try:
        # readings in several partitions, old days among them; dead letters
        res = c.execute(
            "SELECT * FROM iotpipe.ingest_json(%s)",
            (
                [
                    msg(f"{PREFIX}-1", "2021-06-01T10:00:00Z", 20, 40),
                    msg(f"{PREFIX}-1", "2024-02-29T23:59:59.5Z", 21),
                    msg(f"{PREFIX}-2", "2025-12-31T12:00:00Z", 22, 50),
                    '{"sensor_id":"bk-bad","ts":"yesterday","temperature":1}',
                    "not json at all",
                ],
            ),
        ).fetchone()
        assert res == (3, 2)
        c.execute(
            """INSERT INTO iotpipe.alert_rules (name, kind, metric, location, op, threshold, clear_threshold, severity)
               VALUES ('bk-hot', 'threshold', 'temperature', 'bk-site/line-1', '>', 80, 70, 'critical')"""
        )
        c.execute(
            """INSERT INTO iotpipe.silences (sensor_id, ends_at, reason)
               VALUES ('bk-9', now() + interval '1 day', 'maintenance of bk-9')"""
        )
        now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        c.execute(
            "SELECT * FROM iotpipe.ingest_json(%s)",
            (
                [
                    msg(f"{PREFIX}-1", now + ".100Z", 90),  # fires, stays firing
                    msg(f"{PREFIX}-2", now + ".100Z", 95),  # fires ...
                    msg(f"{PREFIX}-2", now + ".200Z", 60),  # ... and resolves
                ],
            ),
        )
        alerts = c.execute(
            """SELECT a.sensor_id, a.state, a.alert_id FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id)
                WHERE r.name = 'bk-hot' ORDER BY a.sensor_id"""
        ).fetchall()
        assert [(s, st) for s, st, _ in alerts] == [
            (f"{PREFIX}-1", "firing"),
            (f"{PREFIX}-2", "resolved"),
        ]
        c.execute("SELECT iotpipe.ack_alert(%s, 'night shift')", (alerts[1][2],))

        # a Kafka source that consumed a real topic: offsets and watermarks
        kafka.create_topic(TOPIC, 3)
        produce(kafka.bootstrap, TOPIC, (kmsg(i) for i in range(n_kafka)))
        c.execute(
            "SELECT iotpipe.kafka_start(%s, %s, 'bk-group', 1, %s)",
            (kafka.bootstrap, TOPIC, Jsonb({"fetch.wait.max.ms": "20"})),
        )
        poll(
            lambda: sum(stored(c).values()) == n_kafka and kafka_rows(c)[0] == n_kafka,
            60,
            0.2,
            "the source to consume the topic",
        )
        # simulator settings (not running: its rows would change the source)
        c.execute(
            """UPDATE iotpipe.simulator SET sensors = 7, rate = 12.5, seed = 42,
                      start_ts = '2026-11-01 00:00+00', position = 1234, generation = generation + 1"""
        )
        # this server's transaction counter well ahead of the second cluster's
        for _ in range(5000):
            c.execute("SELECT pg_current_xact_id()")
        # the warehouse, then readings held back by run_etl(until)
        assert c.execute("SELECT status FROM iotpipe.run_etl()").fetchone()[0] == "ok"
        c.execute(
            "SELECT * FROM iotpipe.ingest_json(%s)",
            ([msg(f"{PREFIX}-3", now + ".300Z", 30)],),
        )
        assert (
            c.execute(
                "SELECT status FROM iotpipe.run_etl(now() - interval '1 day')"
            ).fetchone()[0]
            == "ok"
        )
        assert (
            c.execute(
                "SELECT count(*) FROM iotpipe.etl_pending WHERE sensor_id LIKE 'bk-%'"
            ).fetchone()[0]
            >= 1
        )
        # a reading no ETL run has seen yet
        c.execute(
            "SELECT * FROM iotpipe.ingest_json(%s)",
            ([msg(f"{PREFIX}-6", now + ".600Z", 31)],),
        )
        yield c, n_kafka
    finally:
        c.execute(
            "SELECT iotpipe.kafka_stop(topic) FROM iotpipe.kafka_sources WHERE topic = %s",
            (TOPIC,),
        )
        poll(
            lambda: c.execute(
                "SELECT count(*) FROM iotpipe.status WHERE worker LIKE %s AND pid IS NOT NULL",
                (f"kafka {TOPIC} #%",),
            ).fetchone()[0]
            == 0,
            30,
            what="the source's worker to stop",
        )
        for sql in (
            "DELETE FROM iotpipe.kafka_sources WHERE topic = %(t)s",
            "DELETE FROM iotpipe.kafka_offsets WHERE topic = %(t)s",
            "DELETE FROM iotpipe.kafka_watermarks WHERE topic = %(t)s",
            "DELETE FROM iotpipe.alert_rules WHERE name = 'bk-hot'",
            "DELETE FROM iotpipe.silences WHERE sensor_id = 'bk-9'",
            "DELETE FROM iotpipe.dead_letters WHERE payload::text LIKE '%%bk-bad%%' OR payload = 'not json at all'",
            "DELETE FROM iotpipe.etl_pending WHERE sensor_id LIKE 'bk-%%'",
            "DELETE FROM iotpipe.readings WHERE sensor_id LIKE 'bk-%%'",
            "DELETE FROM iotpipe.sensors WHERE sensor_id LIKE 'bk-%%'",
        ):
            c.execute(sql, {"t": TOPIC})
        c.execute(
            """UPDATE iotpipe.simulator SET sensors = 100, rate = 100, seed = 1, start_ts = NULL,
                      position = 0"""
        )
        drop_copies(c)
        kafka.delete_topic(TOPIC)
        c.close()


def check_works(conn):
    """ingest, an alert, the held-back readings and new ones in the warehouse, new ids."""
    max_alert = conn.execute("SELECT max(alert_id) FROM iotpipe.alerts").fetchone()[0]
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    assert conn.execute(
        "SELECT * FROM iotpipe.ingest_json(%s)",
        ([msg(f"{PREFIX}-4", now + ".400Z", 99), "still not json"],),
    ).fetchone() == (1, 1)
    a = conn.execute(
        """SELECT a.alert_id, a.state FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id)
            WHERE r.name = 'bk-hot' AND a.sensor_id = %s""",
        (f"{PREFIX}-4",),
    ).fetchone()
    assert a is not None and a[1] == "firing" and a[0] > max_alert
    run = conn.execute(
        "SELECT status, error, run_id, rows_read FROM iotpipe.run_etl()"
    ).fetchone()
    assert run[0] == "ok", run
    # the reading held back before the dump and the new one are in the warehouse
    got = dict(
        conn.execute(
            """SELECT s.sensor_id, count(*) FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor s USING (sensor_key)
                WHERE s.sensor_id IN ('bk-3', 'bk-4', 'bk-6') GROUP BY 1"""
        ).fetchall()
    )
    assert got == {"bk-3": 1, "bk-4": 1, "bk-6": 1}, got
    # a new rule gets a new id
    conn.execute(
        """INSERT INTO iotpipe.alert_rules (name, kind, for_duration)
           VALUES ('bk-offline', 'offline', '1 hour')"""
    )


def test_dump_restore_every_row_and_a_working_pipeline(filled, kafka, tmp_path):
    c, n_kafka = filled
    dump = str(tmp_path / "iotpipe.dump")
    os.chmod(tmp_path, 0o777)
    # the source as pg_dump sees it: one exported snapshot for both
    with connect(autocommit=False) as snap:
        snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        sid = snap.execute("SELECT pg_export_snapshot()").fetchone()[0]
        r = run(
            [pg("pg_dump")]
            + conn_args()
            + ["-Fc", "--snapshot", sid, "-d", DB, "-f", dump]
        )
        assert r.returncode == 0, r.stderr
        before = contents(snap)
    assert before["iotpipe.alert_rules"][0] >= 1
    for t in ("iotpipe.kafka_offsets", "iotpipe.kafka_sources", "iotpipe.silences"):
        assert before[t][0] >= 1, t

    # 1. pg_restore into a new database of the same cluster (no workers there)
    c.execute(f"CREATE DATABASE {COPY_DB}")
    r = run([pg("pg_restore")] + conn_args() + ["-d", COPY_DB, dump])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    with connect(COPY_DB) as cp:
        after = contents(cp)
        assert set(after) == set(before)
        diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
        assert diff == {}, diff
        # the copy works; ids go on after the restored ones
        max_rule = cp.execute(
            "SELECT max(rule_id) FROM iotpipe.alert_rules"
        ).fetchone()[0]
        max_run = cp.execute("SELECT max(run_id) FROM iotpipe.etl_runs").fetchone()[0]
        check_works(cp)
        assert (
            cp.execute(
                "SELECT rule_id FROM iotpipe.alert_rules WHERE name = 'bk-offline'"
            ).fetchone()[0]
            > max_rule
        )
        assert (
            cp.execute("SELECT max(run_id) FROM iotpipe.etl_runs").fetchone()[0]
            > max_run
        )

    # 2. a plain-format dump through psql restores the same rows
    c.execute(f"CREATE DATABASE {PLAIN_DB}")
    with connect(autocommit=False) as snap:
        snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        sid = snap.execute("SELECT pg_export_snapshot()").fetchone()[0]
        dumped = run([pg("pg_dump")] + conn_args() + ["--snapshot", sid, "-d", DB])
        assert dumped.returncode == 0, dumped.stderr
        before_plain = contents(snap)
    r = run(
        [pg("psql")] + conn_args() + ["-qX", "-v", "ON_ERROR_STOP=1", "-d", PLAIN_DB],
        input=dumped.stdout,
    )
    assert r.returncode == 0 and "ERROR" not in r.stderr, r.stderr
    with connect(PLAIN_DB) as pl:
        after = contents(pl)
        diff = {
            k: (before_plain[k], after[k])
            for k in before_plain
            if before_plain[k] != after[k]
        }
        assert diff == {}, diff

    # 3. into a second cluster whose workers run in the restored database:
    # the Kafka source resumes at its restored offsets, exactly once
    d2 = DIR + "-restore"
    port2 = PORT + 11
    script = os.path.join(ROOT, "scripts/pgcluster.sh")
    subprocess.run([script, "start", d2, str(port2), "restored"], check=True)
    try:
        with connect(PLAIN_DB) as cp:
            dumped_offsets = dict(
                cp.execute(
                    "SELECT partition, next_offset FROM iotpipe.kafka_offsets WHERE topic = %s",
                    (TOPIC,),
                ).fetchall()
            )
            dumped_rows = kafka_rows(cp)[0]
        assert sum(dumped_offsets.values()) == dumped_rows == n_kafka
        # the source goes on in the suite's database until after the dump: stop it
        c.execute("SELECT iotpipe.kafka_stop(%s)", (TOPIC,))
        # the plain dump through one psql session, paused after CREATE
        # EXTENSION: the launcher there waits for the restore and makes no
        # partition of its own (the dumped ones would collide with it)
        script_text = dumped.stdout
        cut = (
            script_text.index(
                "\n", script_text.index("CREATE EXTENSION IF NOT EXISTS iotpipe")
            )
            + 1
        )
        info = f"host={d2} port={port2} dbname=restored user=postgres"
        restore = subprocess.Popen(
            [pg("psql")]
            + conn_args(d2, port2)
            + ["-qX", "-v", "ON_ERROR_STOP=1", "-d", "restored"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with psycopg.connect(info, autocommit=True) as rc:
            restore.stdin.write(script_text[:cut])
            restore.stdin.flush()
            st = poll(
                lambda: rc.execute(
                    "SELECT state, detail FROM iotpipe.status WHERE worker = 'launcher'"
                ).fetchone()
                if rc.execute(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'iotpipe'"
                ).fetchone()[0]
                else None,
                30,
                0.1,
                "the launcher to see the restore",
            )
            poll(
                lambda: rc.execute(
                    "SELECT state, detail FROM iotpipe.status WHERE worker = 'launcher'"
                )
                .fetchone()[1]
                .startswith("a restore is running (pid "),
                30,
                0.1,
                f"the launcher to wait for the restore (last {st})",
            )
            assert (
                rc.execute(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = 'iotpipe.readings'::regclass"
                ).fetchone()[0]
                == 0
            )
            out, err = restore.communicate(script_text[cut:], timeout=120)
            assert restore.returncode == 0 and "ERROR" not in err, err
            assert stored(rc) == dumped_offsets
            # after the restore the launcher starts the restored source
            poll(
                lambda: rc.execute(
                    "SELECT state FROM iotpipe.status WHERE worker = %s",
                    (f"kafka {TOPIC} #1",),
                ).fetchone()
                in (("running",), ("idle",)),
                60,
                0.2,
                "the restored source to run",
            )
            more = 200
            produce(
                kafka.bootstrap,
                TOPIC,
                (kmsg(i) for i in range(n_kafka, n_kafka + more)),
            )
            poll(
                lambda: sum(stored(rc).values()) == n_kafka + more,
                60,
                0.2,
                "the restored source to consume the new messages",
            )
            # messages 0 .. n_kafka + more - 1, each once
            assert kafka_rows(rc) == (
                n_kafka + more,
                n_kafka + more,
                0,
                n_kafka + more - 1,
            )
            # ingest and alerts in the restored cluster
            now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
            assert rc.execute(
                "SELECT * FROM iotpipe.ingest_json(%s)",
                ([msg(f"{PREFIX}-5", now + ".500Z", 99)],),
            ).fetchone() == (1, 0)
            assert (
                rc.execute(
                    """SELECT a.state FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id)
                        WHERE r.name = 'bk-hot' AND a.sensor_id = %s""",
                    (f"{PREFIX}-5",),
                ).fetchone()[0]
                == "firing"
            )
            # the warehouse goes on with this server's transactions: the
            # reading held back before the dump, the one no run had seen,
            # the new ones (Kafka and SQL), each once
            run1 = rc.execute("SELECT status, error FROM iotpipe.run_etl()").fetchone()
            assert run1 == ("ok", None), run1
            facts = {
                k: (n, m)
                for k, n, m in rc.execute(
                    """SELECT CASE WHEN s.sensor_id LIKE 'bk-k%' THEN 'kafka' ELSE s.sensor_id END,
                              count(*), max(f.copies)
                         FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor s USING (sensor_key)
                        WHERE s.sensor_id LIKE 'bk-%' GROUP BY 1"""
                ).fetchall()
            }
            assert facts == {
                "bk-1": (3, 1),
                "bk-2": (3, 1),
                "bk-3": (1, 1),
                "bk-5": (1, 1),
                "bk-6": (1, 1),
                "kafka": (n_kafka + more, 1),
            }, facts
            assert rc.execute(
                "SELECT * FROM iotpipe.ingest_json(%s)",
                ([msg(f"{PREFIX}-7", now + ".700Z", 20)],),
            ).fetchone() == (1, 0)
            run2 = rc.execute(
                "SELECT status, rows_read FROM iotpipe.run_etl()"
            ).fetchone()
            assert run2 == ("ok", 1), run2
        with open(os.path.join(d2, "server.log"), errors="replace") as f:
            log = f.read()
        assert "ERROR" not in log, log[-3000:]
    finally:
        subprocess.run([script, "stop", d2, "immediate"])
