"""The batch ETL under concurrent ingest, and the analyst queries of docs/warehouse.md.

- test_concurrent_ingest_exactly_once: writers ingest through
  iotpipe.ingest_json (duplicates across writers, late readings, transactions
  held open across ETL runs, rolled-back transactions) while run_etl() runs in
  a loop; afterwards the warehouse equals an aggregation of the raw table
  computed from scratch, and a rebuild from scratch gives the same warehouse.
- test_flags_match_sql_reference: readings arriving in four shuffled parts
  (late data, duplicates, a transaction with an older xid committing last,
  stuck runs, spikes, gaps, NULLs, a sensor that moves), one run_etl() per
  part: every fact and its flags, and the hourly flag counts, equal an
  independent set-based SQL computation of the contract from the raw table.
- test_warehouse_doc_queries: every ```sql block of docs/warehouse.md runs
  against a loaded warehouse and returns rows.
"""

import json
import os
import random
import re
import threading
import time
from datetime import datetime, timedelta, timezone

from psycopg.types.string import TextLoader

from conftest import ROOT, connect, poll

T0 = datetime(2026, 5, 4, 8, 0, tzinfo=timezone.utc)

# the warehouse, by natural keys, for my sensors
WAREHOUSE_HOURLY = """
SELECT s.sensor_id, h.hour_start, h.readings, h.temperature_n,
       round(h.temperature_avg::numeric, 6), h.temperature_min, h.temperature_max,
       round(h.temperature_stddev::numeric, 6), h.humidity_n, round(h.humidity_avg::numeric, 6),
       h.humidity_min, h.humidity_max, round(h.humidity_stddev::numeric, 6), h.duplicates
  FROM iotpipe_dw.fact_sensor_hourly h JOIN iotpipe_dw.dim_sensor s USING (sensor_key)
 WHERE s.sensor_id LIKE %(prefix)s
"""

# the same aggregate straight from iotpipe.readings: first ingested copy wins
RAW_HOURLY = """
WITH first AS (
    SELECT DISTINCT ON (sensor_id, ts) sensor_id, ts, temperature, humidity,
           count(*) OVER (PARTITION BY sensor_id, ts) AS copies
      FROM iotpipe.readings
     WHERE sensor_id LIKE %(prefix)s
     ORDER BY sensor_id, ts, ingest_xid, ctid
)
SELECT sensor_id, date_trunc('hour', ts, 'UTC'), count(*), count(temperature),
       round(avg(temperature)::numeric, 6), min(temperature), max(temperature),
       round(stddev_samp(temperature)::numeric, 6), count(humidity), round(avg(humidity)::numeric, 6),
       min(humidity), max(humidity), round(stddev_samp(humidity)::numeric, 6),
       count(*) FILTER (WHERE copies > 1)
  FROM first
 GROUP BY 1, 2
"""

FACTS = """
SELECT s.sensor_id, f.ts, f.temperature, f.humidity, f.copies, f.is_outlier, f.is_stuck
  FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor s USING (sensor_key)
 WHERE s.sensor_id LIKE %(prefix)s
"""


def message(sensor, ts, temperature, humidity, location):
    return json.dumps(
        {
            "sensor_id": sensor,
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "temperature": round(temperature, 2),
            "humidity": round(humidity, 2),
            "location": location,
        }
    )


def writer(no, prefix, stop_at, errors, stats):
    """Ingest batches; some held open across ETL runs, some rolled back."""
    rnd = random.Random(no)
    try:
        with connect(autocommit=False) as c:
            batch_no = 0
            while time.monotonic() < stop_at:
                batch_no += 1
                msgs = []
                for _ in range(rnd.randint(20, 80)):
                    # 8 sensors shared by all writers; ts on a 30 s grid over 6 hours, so
                    # the same (sensor, ts) is written by several writers and arrives late
                    sensor = f"{prefix}{rnd.randint(1, 8)}"
                    ts = T0 + timedelta(seconds=30 * rnd.randint(0, 719))
                    base = 20 + int(sensor[-1])
                    spike = 30 if rnd.random() < 0.01 else 0
                    msgs.append(
                        message(
                            sensor,
                            ts,
                            base + rnd.gauss(0, 0.3) + spike,
                            50 + rnd.gauss(0, 1),
                            "conc/a",
                        )
                    )
                c.execute("SELECT * FROM iotpipe.ingest_json(%s)", (msgs,))
                if rnd.random() < 0.2:
                    time.sleep(
                        rnd.uniform(0.1, 0.6)
                    )  # in progress across a run's snapshot
                if rnd.random() < 0.1:
                    c.rollback()
                    stats["rolled_back"] += 1
                else:
                    c.commit()
                    stats["batches"] += 1
                time.sleep(rnd.uniform(0, 0.05))
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_concurrent_ingest_exactly_once(db):
    prefix = "conc-"
    db.execute("SET client_min_messages = warning")
    db.execute("SELECT iotpipe.reset_warehouse()")
    db.execute("DELETE FROM iotpipe.readings WHERE sensor_id LIKE %s", (prefix + "%",))

    errors, stats = [], {"batches": 0, "rolled_back": 0}
    stop_at = time.monotonic() + 8
    threads = [
        threading.Thread(target=writer, args=(n, prefix, stop_at, errors, stats))
        for n in range(3)
    ]
    for t in threads:
        t.start()
    runs = 0
    with connect() as etl:
        etl.execute("SET client_min_messages = warning")
        while any(t.is_alive() for t in threads):
            status = etl.execute(
                "SELECT status, error FROM iotpipe.run_etl()"
            ).fetchone()
            assert status == ("ok", None)
            runs += 1
        for t in threads:
            t.join()
        assert not errors, errors
        etl.execute("SELECT iotpipe.run_etl()")
        # nothing left: a further run reads nothing
        assert etl.execute("SELECT rows_read FROM iotpipe.run_etl()").fetchone()[0] == 0
    assert runs >= 3 and stats["batches"] >= 20 and stats["rolled_back"] >= 1, (
        runs,
        stats,
    )

    p = {"prefix": prefix + "%"}
    raw_rows = db.execute(
        "SELECT count(*) FROM iotpipe.readings WHERE sensor_id LIKE %(prefix)s", p
    ).fetchone()[0]
    copies = db.execute(
        "SELECT sum(f.copies) FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor s USING (sensor_key)"
        " WHERE s.sensor_id LIKE %(prefix)s",
        p,
    ).fetchone()[0]
    assert (
        copies == raw_rows
    ), "copies add up to the raw rows: none missed, none counted twice"

    warehouse = set(db.execute(WAREHOUSE_HOURLY, p).fetchall())
    raw = set(db.execute(RAW_HOURLY, p).fetchall())
    assert warehouse == raw, (sorted(warehouse - raw)[:5], sorted(raw - warehouse)[:5])
    assert sum(r[13] for r in raw) > 0, "duplicates were exercised"

    # flags and all: a rebuild from scratch gives the same warehouse
    facts = set(db.execute(FACTS, p).fetchall())
    hourly = set(
        db.execute(
            WAREHOUSE_HOURLY.replace("h.duplicates", "h.duplicates, h.anomalies"), p
        ).fetchall()
    )
    db.execute("SELECT iotpipe.reset_warehouse()")
    db.execute("SELECT iotpipe.run_etl()")
    assert set(db.execute(FACTS, p).fetchall()) == facts
    assert (
        set(
            db.execute(
                WAREHOUSE_HOURLY.replace("h.duplicates", "h.duplicates, h.anomalies"), p
            ).fetchall()
        )
        == hourly
    )


# The contract of docs/warehouse.md written as plain SQL, from the raw table
# and dim_sensor: dedup (first ingested wins), the leave-one-out outlier test
# over the hour and its neighbours, the stuck test over the four previous
# readings; a value outside the value bounds (README: non-finite, below
# absolute zero, above 10,000 degrees C, humidity outside 0-100, all only
# possible by a hand-made INSERT) is an outlier and left out of the hour's
# statistics.  An oracle for src/etl_transform.c, which computes the same in
# one loop.
REFERENCE_FACTS = """
WITH keyed AS (
    SELECT d.sensor_key, r.ts, r.temperature, r.humidity, r.ingest_xid, r.ctid AS ord
      FROM iotpipe.readings r
      JOIN iotpipe_dw.dim_sensor d
        ON d.sensor_id = r.sensor_id AND r.ts >= d.valid_from AND r.ts < d.valid_to
     WHERE r.sensor_id LIKE %(prefix)s
), dedup AS (
    SELECT DISTINCT ON (sensor_key, ts) sensor_key, ts, temperature, humidity, ingest_xid,
           count(*) OVER (PARTITION BY sensor_key, ts) AS copies
      FROM keyed
     ORDER BY sensor_key, ts, ingest_xid, ord
), plausible AS (
    SELECT *, CASE WHEN temperature BETWEEN -273.15 AND 10000 THEN temperature END AS tv,
              CASE WHEN humidity BETWEEN 0 AND 100 THEN humidity END AS hv
      FROM dedup
), hours AS (
    SELECT sensor_key, date_trunc('hour', ts, 'UTC') AS h,
           count(tv) AS tn, coalesce(sum(tv), 0) AS ts_,
           coalesce(sum(tv * tv), 0) AS tq,
           count(hv) AS hn, coalesce(sum(hv), 0) AS hs_,
           coalesce(sum(hv * hv), 0) AS hq
      FROM plausible GROUP BY 1, 2
), win AS (
    SELECT a.sensor_key, a.h, sum(b.tn) AS tn, sum(b.ts_) AS ts_, sum(b.tq) AS tq,
           sum(b.hn) AS hn, sum(b.hs_) AS hs_, sum(b.hq) AS hq
      FROM hours a
      JOIN hours b ON b.sensor_key = a.sensor_key
                  AND b.h BETWEEN a.h - interval '1 hour' AND a.h + interval '1 hour'
     GROUP BY 1, 2
), lagged AS (
    SELECT d.*,
           (lag(d.ts, 4) OVER s >= d.ts - interval '1 hour'
            AND d.temperature IS NOT DISTINCT FROM lag(d.temperature, 1) OVER s
            AND d.temperature IS NOT DISTINCT FROM lag(d.temperature, 2) OVER s
            AND d.temperature IS NOT DISTINCT FROM lag(d.temperature, 3) OVER s
            AND d.temperature IS NOT DISTINCT FROM lag(d.temperature, 4) OVER s
            AND d.humidity IS NOT DISTINCT FROM lag(d.humidity, 1) OVER s
            AND d.humidity IS NOT DISTINCT FROM lag(d.humidity, 2) OVER s
            AND d.humidity IS NOT DISTINCT FROM lag(d.humidity, 3) OVER s
            AND d.humidity IS NOT DISTINCT FROM lag(d.humidity, 4) OVER s) IS TRUE AS stuck
      FROM plausible d
    WINDOW s AS (PARTITION BY d.sensor_key ORDER BY d.ts)
)
SELECT l.sensor_key, l.ts, l.temperature::text, l.humidity::text, l.copies::int, l.ingest_xid::text,
       (l.temperature IS NOT NULL AND l.tv IS NULL)
       OR (l.humidity IS NOT NULL AND l.hv IS NULL)
       OR coalesce(l.tv IS NOT NULL AND w.tn >= 6
                AND abs(l.tv - (w.ts_ - l.tv) / (w.tn - 1))
                    > 4 * greatest(sqrt(greatest((w.tq - l.tv ^ 2
                                                  - (w.ts_ - l.tv) ^ 2 / (w.tn - 1))
                                                 / (w.tn - 2), 0)), 0.1), false)
       OR coalesce(l.hv IS NOT NULL AND w.hn >= 6
                AND abs(l.hv - (w.hs_ - l.hv) / (w.hn - 1))
                    > 4 * greatest(sqrt(greatest((w.hq - l.hv ^ 2
                                                  - (w.hs_ - l.hv) ^ 2 / (w.hn - 1))
                                                 / (w.hn - 2), 0)), 0.1), false) AS outlier,
       l.stuck
  FROM lagged l
  JOIN win w ON w.sensor_key = l.sensor_key AND w.h = date_trunc('hour', l.ts, 'UTC')
"""

LOADED_FACTS = """
SELECT f.sensor_key, f.ts, f.temperature::text, f.humidity::text, f.copies, f.ingest_xid::text,
       f.is_outlier, f.is_stuck
  FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor s USING (sensor_key)
 WHERE s.sensor_id LIKE %(prefix)s
"""

# a day of six sensors, one reading a minute; part = arrival order
REF_READINGS = """
INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location)
SELECT 'ref-' || s,
       timestamptz '2026-06-01 00:00+00' + i * interval '1 minute',
       CASE WHEN s = 2 AND i BETWEEN 300 AND 310 THEN 21.25          -- stuck 11 readings
            -- not finite: the contract rejects these, a hand-made INSERT may not
            WHEN s = 5 AND i %% 97 = 0 THEN 'NaN'
            WHEN s = 5 AND i %% 89 = 0 THEN 'Infinity'
            WHEN s = 4 AND i BETWEEN 900 AND 903 THEN 23.5           -- only 4: not stuck
            ELSE round((18 + s + 2 * sin(i / 229.0) + (hashint4(i * 31 + s) %% 100) / 250.0
                        + CASE WHEN hashint4(i + s * 7919) %% 150 = 0 THEN 9 ELSE 0 END)::numeric, 2)
       END,
       CASE WHEN s = 2 AND i BETWEEN 300 AND 310 THEN 44
            WHEN s = 4 AND i BETWEEN 900 AND 903 THEN 41
            WHEN hashint4(i * 3 + s) %% 97 = 0 THEN NULL
            ELSE round((50 + (hashint4(i + s) %% 100) / 40.0
                        - CASE WHEN hashint4(i * 11 + s) %% 180 = 0 THEN 20 ELSE 0 END)::numeric, 2)
       END,
       CASE WHEN s = 6 AND i >= 700 THEN 'ref/b' ELSE 'ref/a' END
  FROM generate_series(1, 6) s, generate_series(0, 1439) i
 WHERE abs(hashint4(i * 7 + s)) %% 4 = %(part)s
   AND NOT (s = 3 AND (i / 60) %% 7 = 3)                            -- whole hours missing
"""


def test_flags_match_sql_reference(db):
    prefix = "ref-"
    p = {"prefix": prefix + "%"}
    db.execute("SET client_min_messages = warning")
    db.execute("SELECT iotpipe.reset_warehouse()")
    db.execute("DELETE FROM iotpipe.readings WHERE sensor_id LIKE %(prefix)s", p)
    db.execute("SELECT iotpipe.create_partitions('2026-06-01', '2026-06-02')")
    older = connect(autocommit=False)
    try:
        older_xid = None
        for part in range(4):
            if part == 2:
                # a transaction that started earlier (smaller xid) commits last
                older_xid = older.execute(
                    "SELECT pg_current_xact_id()::text"
                ).fetchone()[0]
            db.execute(REF_READINGS, {"part": part})
            if part >= 1:
                # copies of earlier readings, arriving later with other values
                db.execute(
                    "INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location)"
                    " SELECT sensor_id, ts, temperature + 0.5, humidity, location"
                    "   FROM iotpipe.readings"
                    "  WHERE sensor_id LIKE %(prefix)s AND ingest_xid <> pg_current_xact_id()"
                    "    AND hashint4(extract(epoch FROM ts)::int + %(part)s) %% 40 = 0",
                    {**p, "part": part},
                )
            if part == 2:
                # the older transaction re-sends some of part 2 with other values: it wins
                older.execute(
                    "INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location)"
                    " SELECT sensor_id, ts, temperature - 3, humidity, location"
                    "   FROM iotpipe.readings"
                    "  WHERE sensor_id LIKE %(prefix)s AND hashint4(extract(epoch FROM ts)::int) %% 25 = 0",
                    p,
                )
            run = db.execute("SELECT status, error FROM iotpipe.run_etl()").fetchone()
            assert run == ("ok", None)
            if part == 2:
                older.commit()
                run = db.execute(
                    "SELECT status, rows_written FROM iotpipe.run_etl()"
                ).fetchone()
                assert run[0] == "ok" and run[1] > 0
    finally:
        older.close()

    loaded = set(db.execute(LOADED_FACTS, p).fetchall())
    reference = set(db.execute(REFERENCE_FACTS, p).fetchall())
    assert loaded == reference, (
        sorted(loaded - reference)[:5],
        sorted(reference - loaded)[:5],
    )

    # the data exercised every rule
    assert sum(1 for f in loaded if f[6]) >= 20, "outliers"
    assert sum(1 for f in loaded if f[7]) >= 3, "stuck runs"
    assert sum(1 for f in loaded if f[4] > 1) >= 50, "duplicates"
    assert (
        sum(1 for f in loaded if f[5] == older_xid) >= 10
    ), "the older transaction's copies won"
    assert sum(1 for f in loaded if f[3] is None) >= 20, "NULL humidities"
    versions = db.execute(
        "SELECT count(*) FROM iotpipe_dw.dim_sensor WHERE sensor_id = 'ref-6'"
    ).fetchone()[0]
    assert versions == 2

    # and the hourly rows count the flags of their facts
    hourly = set(
        db.execute(
            "SELECT h.sensor_key, h.hour_start, h.readings, h.anomalies, h.outliers, h.stuck,"
            "       h.duplicates, h.temperature_min::text, h.temperature_max::text,"
            "       h.humidity_min::text, h.humidity_max::text"
            "  FROM iotpipe_dw.fact_sensor_hourly h JOIN iotpipe_dw.dim_sensor s USING (sensor_key)"
            " WHERE s.sensor_id LIKE %(prefix)s",
            p,
        ).fetchall()
    )
    expected = set(
        db.execute(
            "SELECT sensor_key, date_trunc('hour', ts, 'UTC'), count(*)::int,"
            "       count(*) FILTER (WHERE outlier OR stuck)::int,"
            "       count(*) FILTER (WHERE outlier)::int, count(*) FILTER (WHERE stuck)::int,"
            "       count(*) FILTER (WHERE copies > 1)::int,"
            "       min(t)::text, max(t)::text, min(hu)::text, max(hu)::text"
            "  FROM (SELECT r.*,"
            "               CASE WHEN temperature::float8 BETWEEN -273.15 AND 10000"
            "                    THEN temperature::float8 END AS t,"
            "               CASE WHEN humidity::float8 BETWEEN 0 AND 100"
            "                    THEN humidity::float8 END AS hu"
            "          FROM (" + REFERENCE_FACTS + ") r) r GROUP BY 1, 2",
            p,
        ).fetchall()
    )
    assert hourly == expected, (
        sorted(hourly - expected)[:5],
        sorted(expected - hourly)[:5],
    )


def doc_queries():
    with open(os.path.join(ROOT, "docs", "warehouse.md")) as f:
        text = f.read()
    return re.findall(r"```sql\n(.*?)```", text, re.S)


def test_warehouse_doc_queries(db):
    queries = doc_queries()
    assert len(queries) >= 6
    db.execute("SET client_min_messages = warning")
    db.execute("SELECT iotpipe.reset_warehouse()")
    db.execute("DELETE FROM iotpipe.readings WHERE sensor_id LIKE 'doc-%'")
    # two months of 12 sensors, one reading every 20 minutes, a move, spikes,
    # a stuck stretch and some duplicates
    db.execute("SELECT iotpipe.create_partitions('2026-03-01', '2026-04-30')")
    db.execute("""
        INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location)
        SELECT 'doc-' || s,
               timestamptz '2026-03-01 00:00+00' + i * interval '20 minutes',
               CASE WHEN s = 3 AND i BETWEEN 100 AND 130 THEN 19.5
                    ELSE 15 + s + 3 * sin(i / 72.0 * pi()) + (hashint4(i * 31 + s) % 100) / 200.0
                         + CASE WHEN hashint4(i + s * 7919) % 500 = 0 THEN 25 ELSE 0 END END,
               CASE WHEN s = 3 AND i BETWEEN 100 AND 130 THEN 40 ELSE 50 + (hashint4(i + s) % 100) / 20.0 END,
               CASE WHEN s = 5 AND i > 2500 THEN 'doc/moved'
                    ELSE 'doc/area-' || (s % 4) END
          FROM generate_series(1, 12) s, generate_series(0, 4319) i
         WHERE hashint4(i * 13 + s) % 50 <> 0""")
    db.execute("""
        INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location)
        SELECT sensor_id, ts, temperature + 1, humidity, location FROM iotpipe.readings
         WHERE sensor_id LIKE 'doc-%' AND hashint4(extract(epoch FROM ts)::int) % 100 = 0""")
    run = db.execute("SELECT status, rows_read FROM iotpipe.run_etl()").fetchone()
    assert run[0] == "ok" and run[1] > 50000
    as_analyst = connect()
    try:
        as_analyst.execute("SET ROLE iotpipe_analyst")
        # valid_from is -infinity for first versions: read times as text
        for t in ("timestamptz", "timestamp", "date"):
            as_analyst.adapters.register_loader(t, TextLoader)
        for q in queries:
            rows = as_analyst.execute(q).fetchall()
            assert rows, f"no rows from:\n{q}"
    finally:
        as_analyst.close()


def test_launcher_schedules_etl(db):
    """iotpipe.etl_interval > 0: the launcher runs run_etl() by itself."""
    db.execute("SET client_min_messages = warning")
    db.execute("SELECT iotpipe.run_etl()")
    last = db.execute("SELECT max(run_id) FROM iotpipe.etl_runs").fetchone()[0]
    db.execute(
        "SELECT * FROM iotpipe.ingest_json(%s)",
        ([message("sched-1", T0, 21.5, 40.0, "sched/a")],),
    )
    try:
        db.execute("ALTER SYSTEM SET iotpipe.etl_interval = 1")
        db.execute("SELECT pg_reload_conf()")
        poll(
            lambda: db.execute(
                "SELECT count(*) FROM iotpipe_dw.fact_reading f JOIN iotpipe_dw.dim_sensor s USING (sensor_key)"
                " WHERE s.sensor_id = 'sched-1'"
            ).fetchone()[0]
            == 1,
            timeout=30,
            what="the launcher's ETL run to load sched-1",
        )
    finally:
        db.execute("ALTER SYSTEM RESET iotpipe.etl_interval")
        db.execute("SELECT pg_reload_conf()")
    runs = db.execute(
        "SELECT count(*) FROM iotpipe.etl_runs WHERE run_id > %s AND status = 'ok'",
        (last,),
    ).fetchone()
    assert runs[0] >= 1
