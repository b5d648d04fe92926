#!/usr/bin/env python3
"""ETL benchmark: iotpipe.run_etl() against its baselines, in one run.

On its own cluster (scripts/pgcluster.sh, default /tmp/iot-etl-bench, port
55460) it loads --rows raw readings (default 5M) over --sensors sensors
(1,000) and --days days (30) straight into iotpipe.readings with
generate_series (daily cycle, noise, spikes, stuck runs, 0.5 % duplicates
arriving later, 1 % of sensors moving), then measures:

  floor   a bare INSERT ... SELECT ... GROUP BY of the hourly aggregate
  etl     iotpipe.run_etl() from an empty warehouse
  pandas  the same transform hand-written in pandas: read, dedup (first
          ingested wins), flag (outlier, stuck, duplicate), aggregate, write
          facts and hourly rows back with COPY
  incr    run_etl() after 1 % more readings (the next hours of every sensor)

Prints medians of --repeat runs (pandas once unless --pandas-repeat) and
the ratios against the targets: etl <= 2x floor, etl >= 10x faster than
pandas, incremental <= 5 % of the full run.

  .venv/bin/python bench/etl_bench.py              # full size
  .venv/bin/python bench/etl_bench.py --rows 200000 --repeat 1   # quick
"""

import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
import pandas as pd
import psycopg
from benchlib import private_cluster

DB = "iotpipe_bench"

LOAD_SQL = """
INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location)
SELECT 'sensor-' || lpad(s::text, 4, '0'),
       ts,
       CASE WHEN stuck THEN round((base + amp * sin(2 * pi() * blockfrac))::numeric, 2)::float8
            ELSE round((base + amp * sin(2 * pi() * dayfrac) + (random() - 0.5) * 0.6
                        + CASE WHEN random() < 0.001 THEN 20 ELSE 0 END)::numeric, 2)::float8 END,
       CASE WHEN stuck THEN round((60 - 1.5 * amp * sin(2 * pi() * blockfrac))::numeric, 2)::float8
            ELSE round((60 - 1.5 * amp * sin(2 * pi() * dayfrac) + (random() - 0.5) * 2)::numeric, 2)::float8 END,
       CASE WHEN s % 100 = 0 AND i >= %(half)s THEN 'moved/zone-' || (s % 8)
            ELSE (ARRAY['plant-a/line-1', 'plant-a/line-2', 'plant-b/furnace', 'plant-b/assembly',
                        'warehouse/cold-room', 'warehouse/dock', 'datacenter/row-1',
                        'office/floor-2'])[s %% 8 + 1] END
  FROM (SELECT s, i,
               %(start)s::timestamptz + make_interval(secs => i * %(step)s + (s * 7919) %% %(stepi)s) AS ts,
               ((i * %(step)s + (s * 7919) %% %(stepi)s) %% 86400) / 86400.0 AS dayfrac,
               (((i / 32) * 32 * %(step)s + (s * 7919) %% %(stepi)s) %% 86400) / 86400.0 AS blockfrac,
               5 + (s %% 8) * 4 + (s %% 10) / 10.0 AS base,
               1 + (s %% 5) AS amp,
               hashint4(s * 100003 + i / 32) %% 300 = 0 AS stuck
          FROM generate_series(%(i0)s, %(i1)s) i, generate_series(1, %(sensors)s) s) g
"""

DUP_SQL = """
INSERT INTO iotpipe.readings (sensor_id, ts, temperature, humidity, location)
SELECT sensor_id, ts, temperature + 1, humidity, location
  FROM iotpipe.readings TABLESAMPLE BERNOULLI (0.5) REPEATABLE (7)
"""

FLOOR_SQL = """
INSERT INTO bench_floor
SELECT sensor_id, date_trunc('hour', ts, 'UTC'), count(*),
       avg(temperature), min(temperature), max(temperature), stddev_samp(temperature),
       avg(humidity), min(humidity), max(humidity), stddev_samp(humidity)
  FROM iotpipe.readings
 GROUP BY 1, 2
"""


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def load(conn, a, i0, i1):
    step = a.days * 86400 / (a.rows / a.sensors)
    params = dict(
        start="'2026-01-01 00:00:00+00'",
        step=repr(step),
        stepi=str(max(int(step), 1)),
        half=str(int(a.rows / a.sensors / 2)),
        i0=str(i0),
        i1=str(i1),
        sensors=str(a.sensors),
    )
    sql = LOAD_SQL
    for k, v in params.items():
        sql = sql.replace(f"%({k})s", v)
    sql = sql.replace("%%", "%")
    conn.execute("SELECT setseed(0.42)")
    conn.execute(sql)


# ---------------------------------------------------------------- pandas


def pandas_etl(dsn):
    """The classic hand-written job: pull, transform in memory, push back."""
    with psycopg.connect(dsn, autocommit=True) as c:
        buf = io.BytesIO()
        with c.cursor().copy(
            "COPY (SELECT sensor_id, ts, temperature, humidity, location, ingest_xid::text::bigint AS xid"
            " FROM iotpipe.readings) TO STDOUT WITH (FORMAT csv, HEADER)"
        ) as cp:
            for chunk in cp:
                buf.write(chunk)
        buf.seek(0)
        df = pd.read_csv(buf)
        df["ts"] = pd.to_datetime(df["ts"], format="ISO8601", utc=True)
        # dedup: first ingested wins (stable sort keeps the physical order within a transaction)
        df = df.sort_values(["sensor_id", "ts", "xid"], kind="stable")
        copies = df.groupby(["sensor_id", "ts"], sort=False).size().to_numpy()
        df = df.drop_duplicates(["sensor_id", "ts"], keep="first").reset_index(
            drop=True
        )
        df["copies"] = copies
        df["is_duplicate"] = df["copies"] > 1
        df["hour_start"] = df["ts"].dt.floor("h")
        # outlier: leave-one-out z against the sensor's readings in the hour and its neighbours
        g = df.groupby(["sensor_id", "hour_start"])
        flags = np.zeros(len(df), dtype=bool)
        for m in ("temperature", "humidity"):
            x = df[m]
            hs = pd.DataFrame(
                {
                    "n": g[m].count(),
                    "s": g[m].sum(),
                    "q": (x * x).groupby([df["sensor_id"], df["hour_start"]]).sum(),
                }
            ).reset_index()
            tot = hs[["sensor_id", "hour_start"]].copy()
            tot[["n", "s", "q"]] = 0.0
            for off in (-1, 0, 1):
                sh_ = hs.copy()
                sh_["hour_start"] = sh_["hour_start"] + pd.Timedelta(hours=off)
                tot = tot.merge(
                    sh_, on=["sensor_id", "hour_start"], how="left", suffixes=("", "_o")
                )
                for k in ("n", "s", "q"):
                    tot[k] += tot.pop(k + "_o").fillna(0)
            w = df[["sensor_id", "hour_start"]].merge(
                tot, on=["sensor_id", "hour_start"], how="left"
            )
            n = w["n"].to_numpy() - 1
            s = w["s"].to_numpy() - x.fillna(0).to_numpy()
            q = w["q"].to_numpy() - (x * x).fillna(0).to_numpy()
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = s / n
                var = np.maximum((q - s * s / n) / (n - 1), 0)
                dev = np.abs(x.to_numpy() - mean)
                flags |= (
                    (x.notna().to_numpy())
                    & (n >= 5)
                    & (dev > 4 * np.maximum(np.sqrt(var), 0.1))
                )
        df["is_outlier"] = flags
        # stuck: this reading and the four before it identical, within an hour
        gs = df.groupby("sensor_id", sort=False)
        stuck = (df["ts"] - gs["ts"].shift(4)) <= pd.Timedelta(hours=1)
        for k in range(1, 5):
            stuck &= (df["temperature"] == gs["temperature"].shift(k)) & (
                df["humidity"] == gs["humidity"].shift(k)
            )
        df["is_stuck"] = stuck.fillna(False)
        # hourly aggregate
        df["anomaly"] = df["is_outlier"] | df["is_stuck"]
        hourly = (
            df.groupby(["sensor_id", "hour_start"])
            .agg(
                readings=("ts", "size"),
                temperature_avg=("temperature", "mean"),
                temperature_min=("temperature", "min"),
                temperature_max=("temperature", "max"),
                temperature_stddev=("temperature", "std"),
                humidity_avg=("humidity", "mean"),
                humidity_min=("humidity", "min"),
                humidity_max=("humidity", "max"),
                humidity_stddev=("humidity", "std"),
                anomalies=("anomaly", "sum"),
                outliers=("is_outlier", "sum"),
                stuck=("is_stuck", "sum"),
                duplicates=("is_duplicate", "sum"),
            )
            .reset_index()
        )
        # write back
        c.execute("TRUNCATE bench_pandas_fact, bench_pandas_hourly")
        facts = df[
            [
                "sensor_id",
                "ts",
                "temperature",
                "humidity",
                "copies",
                "is_duplicate",
                "is_outlier",
                "is_stuck",
            ]
        ]
        for table, frame in (
            ("bench_pandas_fact", facts),
            ("bench_pandas_hourly", hourly),
        ):
            out = io.StringIO()
            frame.to_csv(out, index=False, header=False)
            with c.cursor().copy(f"COPY {table} FROM STDIN WITH (FORMAT csv)") as cp:
                cp.write(out.getvalue())
        return len(df), len(hourly)


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of floor, etl and incremental (median)",
    )
    ap.add_argument(
        "--pandas-repeat", type=int, default=1, help="0 skips pandas (quick looks)"
    )
    ap.add_argument("--dir", default="/tmp/iot-etl-bench")
    ap.add_argument("--port", type=int, default=55460)
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    a = ap.parse_args()

    with private_cluster(
        a.dir, a.port, DB, conf=["iotpipe.etl_interval = 0"], keep=a.keep
    ) as dsn:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION iotpipe")
            c.execute("SET work_mem = '1GB'")  # the floor aggregates in memory too
            c.execute(
                f"SELECT iotpipe.create_partitions('2025-12-31', date '2026-01-01' + {a.days + 2})"
            )
            per = a.rows // a.sensors
            t = timed(lambda: load(c, a, 0, per - 1))
            t2 = timed(lambda: c.execute(DUP_SQL))
            c.execute("VACUUM ANALYZE iotpipe.readings")
            raw = c.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
            print(
                f"loaded {raw:,} raw readings ({a.sensors} sensors, {a.days} days, 0.5 % duplicates) "
                f"in {t + t2:.1f} s"
            )

            c.execute(
                "CREATE TABLE bench_floor (sensor_id text, hour_start timestamptz, readings bigint,"
                " t_avg float8, t_min float8, t_max float8, t_sd float8,"
                " h_avg float8, h_min float8, h_max float8, h_sd float8)"
            )
            c.execute(
                "CREATE TABLE bench_pandas_fact (sensor_id text, ts timestamptz, temperature float8,"
                " humidity float8, copies int, is_duplicate bool, is_outlier bool, is_stuck bool)"
            )
            c.execute(
                "CREATE TABLE bench_pandas_hourly (sensor_id text, hour_start timestamptz, readings int,"
                " t_avg float8, t_min float8, t_max float8, t_sd float8, h_avg float8, h_min float8,"
                " h_max float8, h_sd float8, anomalies int, outliers int, stuck int, duplicates int)"
            )
            c.execute("CHECKPOINT")

            floor, etl = [], []
            for r in range(a.repeat):
                # TRUNCATE in the same transaction, as run_etl does on an empty warehouse
                floor.append(
                    timed(
                        lambda: c.execute(
                            "BEGIN; TRUNCATE bench_floor; " + FLOOR_SQL + "; COMMIT"
                        )
                    )
                )
                c.execute("SELECT iotpipe.reset_warehouse()")
                c.execute("CHECKPOINT")
                etl.append(timed(lambda: c.execute("SELECT iotpipe.run_etl()")))
                print(
                    f"  run {r + 1}: floor {floor[-1]:.2f} s, run_etl {etl[-1]:.2f} s",
                    flush=True,
                )
            run = c.execute(
                "SELECT rows_read, rows_written, hours_refreshed FROM iotpipe.etl_runs"
                " ORDER BY run_id DESC LIMIT 1"
            ).fetchone()
            print(
                f"  run_etl read {run[0]:,} rows, wrote {run[1]:,} facts and {run[2]:,} hourly rows"
            )

            pandas_t = []
            for _ in range(a.pandas_repeat):
                pandas_t.append(timed(lambda: pandas_etl(dsn)))
                print(f"  pandas {pandas_t[-1]:.2f} s", flush=True)
            # the two transforms agree
            diff = (
                None
                if not pandas_t
                else c.execute("""
                SELECT count(*) FROM (
                  SELECT d.sensor_id, h.hour_start, h.readings, h.anomalies, h.duplicates,
                         round(h.temperature_avg::numeric, 6)
                    FROM iotpipe_dw.fact_sensor_hourly h JOIN iotpipe_dw.dim_sensor d USING (sensor_key)
                  EXCEPT
                  SELECT sensor_id, hour_start, readings, anomalies, duplicates, round(t_avg::numeric, 6)
                    FROM bench_pandas_hourly) x""").fetchone()[0]
            )
            if diff is not None:
                print(f"  hourly rows where pandas and run_etl disagree: {diff}")

            incr, incr_rows = [], 0
            extra = max(per // 100, 1)
            for r in range(a.repeat):
                i0 = per + r * extra
                load(c, a, i0, i0 + extra - 1)
                incr.append(timed(lambda: c.execute("SELECT iotpipe.run_etl()")))
                incr_rows = c.execute(
                    "SELECT rows_read FROM iotpipe.etl_runs ORDER BY run_id DESC LIMIT 1"
                ).fetchone()[0]
                print(
                    f"  incremental run {r + 1}: {incr_rows:,} new rows in {incr[-1]:.3f} s",
                    flush=True,
                )

    mf, me, mi = (statistics.median(x) for x in (floor, etl, incr))
    mp = statistics.median(pandas_t) if pandas_t else float("nan")
    print()
    print(
        f"raw rows {raw:,}; medians of {a.repeat} (pandas {a.pandas_repeat}); machine: {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(f"  floor  INSERT ... SELECT ... GROUP BY     {mf:8.2f} s")
    print(
        f"  etl    run_etl() from empty               {me:8.2f} s   {me / mf:5.2f}x floor     (target <= 2x)"
    )
    print(
        f"  pandas read, dedup, flag, aggregate, write {mp:8.2f} s   run_etl {mp / me:5.1f}x faster (target >= 10x)"
    )
    print(
        f"  incr   run_etl() after +1 % ({incr_rows:,} rows) {mi:8.3f} s   {100 * mi / me:5.1f} % of full (target <= 5 %)"
    )
    ok = me <= 2 * mf and mp >= 10 * me and mi <= 0.05 * me
    print("targets met" if ok else "targets NOT all met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
