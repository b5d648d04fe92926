#!/usr/bin/env python3
"""Dashboard page query timings over a large raw table (target: every page's queries <= 1 s
with 20M raw readings; DESIGN.md).

Builds its own cluster (default /tmp/iot-dbench, port 55510) with a private PostgreSQL
tree (scripts/pginstall.sh), loads N raw readings (default 20M: 1000 sensors x 20000
readings, one a second per sensor, ending now) with parallel INSERT ... SELECT
generate_series chunks, the matching iotpipe.sensors rows, alert rules, alerts, dead
letters and Kafka offsets, runs the warehouse ETL (iotpipe.run_etl()), then times every
query of every page (dashboard/queries.py, as the iotpipe_operator role) --runs times and
reports the median against the 1 s budget.

Baseline in the same run: the naive queries a dashboard would run without the
iotpipe.sensors table and the warehouse (latest state and history straight from the raw
table), timed once each, with the ratio naive / dashboard.

    .venv/bin/python bench/dashboard_bench.py                 # full size (load takes minutes)
    .venv/bin/python bench/dashboard_bench.py --rows 2000000  # quick
    .venv/bin/python bench/dashboard_bench.py --reuse          # keep the loaded cluster
"""

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import psycopg  # noqa: E402

from dashboard import db as ddb  # noqa: E402
from dashboard import queries as q  # noqa: E402

LOCATIONS = [
    "plant-a/line-1", "plant-a/line-2", "plant-b/furnace", "plant-b/assembly",
    "warehouse/cold-room", "warehouse/dock", "datacenter/row-1", "office/floor-2",
]  # fmt: skip
BUDGET_S = 1.0


def sh(*args, **kw):
    return subprocess.run(list(args), check=True, cwd=ROOT, **kw)


def setup_cluster(a):
    env = dict(os.environ, PGINSTALL=a.pginstall)
    sh("scripts/pginstall.sh", a.pginstall, env=env, stdout=subprocess.DEVNULL)
    sh("scripts/pgcluster.sh", "start", a.dir, str(a.port), "iotpipe",
       "--conf", "shared_buffers = 2GB", "--conf", "max_parallel_workers_per_gather = 2",
       "--conf", "iotpipe.etl_interval = 0", env=env)  # fmt: skip


def conninfo(a, dbname="iotpipe"):
    return f"host={a.dir} port={a.port} dbname={dbname} user=postgres"


def load(a):
    n_per = a.rows // a.sensors
    total = n_per * a.sensors
    end = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    t0 = end - dt.timedelta(seconds=n_per)
    with psycopg.connect(conninfo(a), autocommit=True) as c:
        c.execute("CREATE EXTENSION iotpipe")
        c.execute(
            "SELECT iotpipe.create_partitions(%s::date - 1, %s::date + 1)", (t0, end)
        )
    print(f"loading {total:,} readings ({a.sensors} sensors x {n_per:,}, {t0:%H:%M} .. {end:%H:%M} UTC) ...",
          flush=True)  # fmt: skip
    started = time.monotonic()
    chunk = max(1, a.sensors // 40)
    blocks = [
        (lo, min(lo + chunk - 1, a.sensors)) for lo in range(1, a.sensors + 1, chunk)
    ]
    lock = threading.Lock()
    done = [0]

    def worker():
        with psycopg.connect(conninfo(a), autocommit=True) as c:
            c.execute("SET synchronous_commit = off")
            while True:
                with lock:
                    if not blocks:
                        return
                    lo, hi = blocks.pop(0)
                # one reading a second per sensor, sensors offset by a few ms; a slow daily wave
                c.execute(
                    """
                    INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location, ingested_at)
                    SELECT 'sensor-' || lpad(s::text, 5, '0'),
                           %(t0)s + make_interval(secs => i + s * 0.001),
                           round((15 + (s %% 8) * 3 + 3 * sin(i / 13750.0) + random())::numeric, 2)::float8,
                           round((40 + (s %% 5) * 5 + 5 * cos(i / 13750.0) + random())::numeric, 2)::float8,
                           (%(locs)s::text[])[1 + s %% 8],
                           %(t0)s + make_interval(secs => i + s * 0.001 + 0.05)
                      FROM generate_series(%(lo)s::int, %(hi)s::int) s,
                           generate_series(0, %(n)s - 1) i
                    """,
                    {"t0": t0, "locs": LOCATIONS, "lo": lo, "hi": hi, "n": n_per},
                )
                with lock:
                    before = done[0] * 10 // total
                    done[0] += (hi - lo + 1) * n_per
                    if done[0] * 10 // total != before:
                        print(
                            f"  {done[0]:,} rows, {time.monotonic() - started:.0f} s",
                            flush=True,
                        )

    threads = [threading.Thread(target=worker) for _ in range(a.jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    load_s = time.monotonic() - started
    with psycopg.connect(conninfo(a), autocommit=True) as c:
        c.execute(
            """
            INSERT INTO iotpipe.sensors (sensor_id, location, first_seen, last_seen, last_ingested_at,
                                         last_temperature, last_humidity, readings_total)
            SELECT 'sensor-' || lpad(s::text, 5, '0'), (%(locs)s::text[])[1 + s %% 8],
                   %(t0)s + make_interval(secs => s * 0.001),
                   %(t0)s + make_interval(secs => %(n)s - 1 + s * 0.001), now(),
                   15 + (s %% 8) * 3, 40 + (s %% 5) * 5, %(n)s
              FROM generate_series(1, %(ns)s) s
            """,
            {"t0": t0, "locs": LOCATIONS, "n": n_per, "ns": a.sensors},
        )
        c.execute(
            """
            INSERT INTO iotpipe.alert_rules (name, kind, metric, location, op, threshold, clear_threshold, severity)
            VALUES ('overheating', 'threshold', 'temperature', NULL, '>', 45, 42, 'critical'),
                   ('cold room', 'threshold', 'temperature', 'warehouse/cold-room', '>', 8, 6, 'warning'),
                   ('humid', 'threshold', 'humidity', NULL, '>', 95, 90, 'info')
            """
        )
        # 20000 historical alerts (resolved) and 50 firing ones, spread over the load window
        c.execute(
            """
            INSERT INTO iotpipe.alerts (rule_id, sensor_id, severity, state, value, started_at, resolved_at)
            SELECT 1 + g %% 3, 'sensor-' || lpad((1 + g %% %(ns)s)::text, 5, '0'),
                   (ARRAY['critical', 'warning', 'info'])[1 + g %% 3], 'resolved', 50,
                   %(t0)s + make_interval(secs => g), %(t0)s + make_interval(secs => g + 30)
              FROM generate_series(1, 20000) g
            """,
            {"t0": t0, "ns": a.sensors},
        )
        c.execute(
            """
            INSERT INTO iotpipe.alerts (rule_id, sensor_id, severity, state, value, started_at)
            SELECT 1 + g %% 3, 'sensor-' || lpad((1 + g * 7 %% %(ns)s)::text, 5, '0'),
                   (ARRAY['critical', 'warning', 'info'])[1 + g %% 3], 'firing', 50, now() - make_interval(secs => g)
              FROM generate_series(1, 50) g
            """,
            {"ns": a.sensors},
        )
        c.execute(
            """
            INSERT INTO iotpipe.dead_letters (received_at, source, payload, error)
            SELECT now() - make_interval(secs => g), 'kafka', convert_to('bad message ' || g, 'UTF8'),
                   (ARRAY['invalid JSON: unexpected character', 'missing ts', 'humidity outside 0-100',
                          'temperature below absolute zero'])[1 + g % 4]
              FROM generate_series(1, 50000) g
            """
        )
        c.execute(
            "INSERT INTO iotpipe.kafka_offsets (topic, partition, next_offset)"
            " SELECT 'iot.readings', p, 1000000 FROM generate_series(0, 7) p"
        )
        c.execute(
            "INSERT INTO iotpipe.kafka_watermarks (topic, partition, low_watermark, high_watermark)"
            " SELECT 'iot.readings', p, 0, 1000000 + p * 10 FROM generate_series(0, 7) p"
        )
        c.execute("VACUUM ANALYZE")
        print("running the warehouse ETL over everything ...", flush=True)
        t = time.monotonic()
        c.execute("SELECT iotpipe.run_etl()")
        etl_s = time.monotonic() - t
        c.execute("VACUUM ANALYZE")
    print(f"loaded in {load_s:.0f} s ({total / load_s:,.0f} rows/s)" +
          (f", ETL {etl_s:.0f} s" if etl_s else ""), flush=True)  # fmt: skip


def page_queries(c):
    """(page, query name, callable) for every query the pages run, with realistic arguments."""
    sensor = "sensor-00042"
    loc = "plant-b/furnace"
    now = dt.datetime.now(dt.timezone.utc)
    today = now.date()
    week = today - dt.timedelta(days=6)
    out = [
        (
            "Operations",
            "kpis (sensors, firing alerts, readings/s)",
            lambda: q.kpis(c, 30),
        ),
        ("Operations", "total_readings (rate sampler)", lambda: q.total_readings(c)),
        ("Operations", "locations", lambda: q.locations(c)),
        (
            "Operations",
            "sensor_table (all, 200 rows + sparklines)",
            lambda: q.sensor_table(c, None, 30),
        ),
        (
            "Operations",
            "sensor_table (one location)",
            lambda: q.sensor_table(c, loc, 30),
        ),
        ("Operations", "sensor_ids", lambda: q.sensor_ids(c, None)),
        (
            "Operations",
            "sensor_series (5 min)",
            lambda: q.sensor_series(c, sensor, 300),
        ),
        (
            "Operations",
            "location_series (5 min, ~125 sensors)",
            lambda: q.location_series(c, loc, 300, 2.5),
        ),
        (
            "Operations",
            "chart_rules",
            lambda: q.chart_rules(c, "temperature", sensor, loc),
        ),
        (
            "Operations",
            "chart_alerts",
            lambda: q.chart_alerts(c, now - dt.timedelta(minutes=5), None, loc),
        ),
        ("Operations", "alert_feed", lambda: q.alert_feed(c, 30)),
        (
            "Operations",
            "alerts_after (poll fallback)",
            lambda: q.alerts_after(c, q.max_alert_id(c) - 10),
        ),
        ("System", "workers (iotpipe.status)", lambda: q.workers(c)),
        ("System", "kpis", lambda: q.kpis(c, 30)),
        (
            "System",
            "dw_readings_per_hour (48 h)",
            lambda: q.dw_readings_per_hour(c, 48),
        ),
        ("System", "kafka_lag", lambda: q.kafka_lag(c)),
        ("System", "etl_runs", lambda: q.etl_runs(c, 20)),
        ("System", "dead_letter_reasons (24 h)", lambda: q.dead_letter_reasons(c, 24)),
        ("System", "dead_letters_recent", lambda: q.dead_letters_recent(c, 50)),
        ("Analytics", "dw_bounds", lambda: q.dw_bounds(c)),
        ("Analytics", "dw_locations", lambda: q.dw_locations(c)),
        ("Analytics", "dw_hourly (7 days)", lambda: q.dw_hourly(c, week, today)),
        (
            "Analytics",
            "dw_completeness (7 days)",
            lambda: q.dw_completeness(c, week, today),
        ),
        (
            "Report",
            "alerts_in_period (7 days)",
            lambda: q.alerts_in_period(c, now - dt.timedelta(days=7), now),
        ),
        (
            "Report",
            "top_alerts (7 days)",
            lambda: q.top_alerts(c, now - dt.timedelta(days=7), now),
        ),
        (
            "Report",
            "dead_letters_in_period",
            lambda: q.dead_letters_in_period(c, now - dt.timedelta(days=7), now),
        ),
    ]
    return out


NAIVE = [
    ("sensor_table (all, 200 rows + sparklines)",
     "latest value per sensor from raw (DISTINCT ON over readings)",
     "SELECT DISTINCT ON (sensor_id) sensor_id, ts, temperature, humidity FROM iotpipe.readings"
     " ORDER BY sensor_id, ts DESC"),
    ("kpis (sensors, firing alerts, readings/s)",
     "sensors seen in the last 30 s from raw (ts range, no ts index)",
     "SELECT count(DISTINCT sensor_id) FROM iotpipe.readings"
     " WHERE ts > (SELECT max(last_seen) FROM iotpipe.sensors) - interval '30 s'"),
    ("dw_hourly (7 days)",
     "hourly trend per location from raw (7 days)",
     "SELECT date_trunc('hour', ts), location, avg(temperature), min(temperature), max(temperature), count(*)"
     " FROM iotpipe.readings WHERE ts > now() - interval '7 days' GROUP BY 1, 2"),
]  # fmt: skip


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def apptest_pages(a):
    """Full page runs in Streamlit's AppTest (SQL + Python rendering), median of a.runs."""
    from streamlit.testing.v1 import AppTest

    os.environ["IOTPIPE_DASHBOARD_URL"] = (
        f"postgresql://postgres@127.0.0.1:{a.port}/iotpipe"
    )
    out = {}
    for page in (None, "pages/analytics.py", "pages/system.py"):
        times = []
        for _ in range(a.runs):
            at = AppTest.from_file(
                os.path.join(ROOT, "dashboard", "app.py"), default_timeout=120
            )
            if page:
                at.switch_page(page)
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
            assert not at.exception, [e.value for e in at.exception]
        out[
            {
                None: "Operations",
                "pages/analytics.py": "Analytics",
                "pages/system.py": "System",
            }[page]
        ] = times
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/iot-dbench")
    ap.add_argument("--port", type=int, default=55510)
    ap.add_argument("--pginstall", default="/tmp/iot-dbench-pg")
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--jobs", type=int, default=2, help="parallel loading connections")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--reuse", action="store_true", help="use the already loaded cluster"
    )
    ap.add_argument("--stop", action="store_true", help="stop the cluster at the end")
    a = ap.parse_args()

    if not a.reuse:
        setup_cluster(a)
        load(a)
    with psycopg.connect(conninfo(a), autocommit=True) as c:
        raw = c.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
        size = c.execute("SELECT pg_size_pretty(sum(pg_total_relation_size(inhrelid))) FROM pg_inherits"
                         " WHERE inhparent = 'iotpipe.readings'::regclass").fetchone()[0]  # fmt: skip
    print(f"\nraw readings: {raw:,} ({size} with indexes); load average {os.getloadavg()[0]:.2f}; "
          f"median of {a.runs} runs per query, as iotpipe_operator\n")  # fmt: skip

    c = ddb.connect(f"postgresql://postgres@127.0.0.1:{a.port}/iotpipe")
    rows = []
    for page, name, fn in page_queries(c):
        try:
            fn()  # warm
            times = [timed(fn) for _ in range(a.runs)]
            rows.append((page, name, statistics.median(times), max(times), None))
        except Exception as e:  # noqa: BLE001 - report, do not hide
            rows.append((page, name, None, None, ddb.describe_error(e, name)))
    print(f"{'page':<11} {'query':<48} {'median ms':>10} {'max ms':>8} {'/ 1 s':>7}")
    for page, name, med, mx, err in rows:
        if err:
            print(f"{page:<11} {name:<48} {'n/a':>10}  {err}")
        else:
            flag = "" if med <= BUDGET_S else "  OVER BUDGET"
            print(
                f"{page:<11} {name:<48} {med * 1000:>10.1f} {mx * 1000:>8.1f} {med / BUDGET_S:>7.3f}{flag}"
            )
    print()
    pages = {}
    for page, _, med, _, err in rows:
        pages.setdefault(page, 0.0)
        pages[page] += med or 0.0
    for page, tot in pages.items():
        print(f"page {page:<10} sum of query medians {tot * 1000:8.1f} ms  ({tot / BUDGET_S:.3f} of the 1 s budget)"
              f"{'' if tot <= BUDGET_S else '  OVER BUDGET'}")  # fmt: skip

    print("\nbaseline: naive queries on the raw table (once each, 120 s cap)")
    c.execute("SET statement_timeout = '120s'")
    ours_by_name = {name: med for _, name, med, _, _ in rows}
    for ours_name, name, sql in NAIVE:
        try:
            t = timed(lambda: c.execute(sql).fetchall())
            ours = ours_by_name.get(ours_name) or 0
            print(
                f"  {name:<66} {t * 1000:10.1f} ms   naive / dashboard query = {t / ours if ours else float('nan'):.0f}x"
            )
        except psycopg.errors.QueryCanceled:
            print(f"  {name:<66} > 120 s (cancelled)")
    c.close()

    print("\nfull page runs in AppTest (SQL + rendering), median ms:")
    for page, times in apptest_pages(a).items():
        print(
            f"  {page:<10} {statistics.median(times) * 1000:8.1f}   (runs: {', '.join(f'{t * 1000:.0f}' for t in times)})"
        )

    if a.stop:
        sh(
            "scripts/pgcluster.sh",
            "stop",
            a.dir,
            env=dict(os.environ, PGINSTALL=a.pginstall),
        )


if __name__ == "__main__":
    main()
