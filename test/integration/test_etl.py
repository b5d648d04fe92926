"""The batch ETL under concurrent ingest, and the analyst queries of docs/warehouse.md.

- test_concurrent_ingest_exactly_once: writers ingest through
  iotpipe.ingest_json (duplicates across writers, late readings, transactions
  held open across ETL runs, rolled-back transactions) while run_etl() runs in
  a loop; afterwards the warehouse equals an aggregation of the raw table
  computed from scratch, and a rebuild from scratch gives the same warehouse.
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
