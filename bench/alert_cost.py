#!/usr/bin/env python3
"""Cost of the alert engine: ingest rate with 100 enabled rules vs none, same run.

Starts its own cluster (iotpipe preloaded) unless --dsn is given, generates
--messages simulator messages per round with iotpipe.simulate() (1000 sensors;
two continuous streams cut into slices, so every reading is new to the engine
and the 100-rule rounds see one gap-free stream), stores them server-side,
then alternates rounds (ABBA order) of

  * 0 rules:   iotpipe.ingest_json(msgs) with every bench rule disabled
  * 100 rules: the same call with 100 rules enabled (--rules realistic:
               per-location and global rules, see rules_sql; --rules global:
               all 100 in scope of every sensor; --never-fire: thresholds out
               of reach, the evaluation alone; --storm: global rules firing
               on every spike, the alert write path too)

iotpipe.readings is truncated before each round.  Prints rows/s per round, the
medians, the ratio (100 rules / 0 rules) and how many alerts fired and resolved;
also the same ratio per CPU second of the ingesting backend (/proc/PID/stat),
which the other load of a shared machine disturbs far less than wall time.

  * --rules anomaly-drift: instead of the 100, one `anomaly` rule and one
               `drift` rule on temperature with their defaults (statistic
               robust), for every sensor: the cost of the statistics alone
               (issue 13; target: at most 10 %, ratio >= 0.90)

Usage: bench/alert_cost.py [--messages 200000] [--rounds 5] [--rules realistic|global|anomaly-drift]
                           [--never-fire] [--storm] [--dsn DSN]
Target: 100 rules cost at most 15 % of ingest throughput (ratio >= 0.85).
"""

import argparse
import os
import statistics
import time

import psycopg
from benchlib import cluster_or_dsn


# the simulator's locations and their baseline temperatures (src/simgen.c)
LOCATIONS = {
    "plant-a/line-1": 24,
    "plant-a/line-2": 26,
    "plant-b/furnace": 35,
    "plant-b/assembly": 22,
    "warehouse/cold-room": 4,
    "warehouse/dock": 15,
    "datacenter/row-1": 21,
    "office/floor-2": 21.5,
}


def rules_sql(mode="realistic"):
    """100 rules.

    realistic (default): what an operator sets up: per location 5 hot
      thresholds (warning .. critical, one needing 1 minute of breach), a
      temperature anomaly, a rising-rate and a too-dry rule; a humidity
      anomaly for 7 locations; globally 10 cold, 5 humidity, 4 rate and 10
      offline rules.  A reading meets 38 or 39 of the 100 rules.
    global: all 100 rules in scope of every sensor (40 overlapping hot
      thresholds, 10 cold, 5 humidity, 20 rate, 15 anomaly, 10 offline):
      with --never-fire it prices the evaluation alone, with --storm the
      fire/resolve path of an alert storm as well.
    """
    rows = []
    if mode == "anomaly-drift":
        # the defaults, warm-up included: 0 so that the rounds judge every reading
        return (
            "INSERT INTO iotpipe.alert_rules (name, kind, metric, warmup, enabled) VALUES "
            "('bench-anomaly', 'anomaly', 'temperature', '0', false), "
            "('bench-drift', 'drift', 'temperature', '0', false)"
        )
    if mode == "realistic":
        for loc, base in LOCATIONS.items():
            for k in range(5):
                dur = "1 minute" if k == 0 else "0"
                rows.append(
                    f"('bench-hot-{loc}-{k}', '{loc}', 'threshold', 'temperature', '>', "
                    f"{base + 12 + 3 * k}, {base + 9 + 3 * k}, '{dur}', 60, 30)"
                )
            rows.append(
                f"('bench-anom-t-{loc}', '{loc}', 'anomaly', 'temperature', NULL, 6, NULL, '0', 120, 30)"
            )
            rows.append(
                f"('bench-rate-{loc}', '{loc}', 'rate', 'temperature', '>', 10, NULL, '0', 60, 30)"
            )
            rows.append(
                f"('bench-dry-{loc}', '{loc}', 'threshold', 'humidity', '<', 3, 5, '0', 60, 30)"
            )
        for loc in list(LOCATIONS)[:7]:
            rows.append(
                f"('bench-anom-h-{loc}', '{loc}', 'anomaly', 'humidity', NULL, 6, NULL, '0', 120, 30)"
            )
        for i in range(4):
            op, thr = (">", 20 + 5 * i) if i % 2 == 0 else ("<", -20 - 5 * i)
            rows.append(
                f"('bench-rate-{i}', NULL, 'rate', 'temperature', '{op}', {thr}, NULL, '0', 60, 30)"
            )
    else:
        hot0, rate0, z0, zstep = (
            (40, 5, 4, 0.3) if mode == "storm" else (48, 12, 6, 0.5)
        )
        for i in range(40):
            dur = "1 minute" if i % 4 == 0 else "0"
            rows.append(
                f"('bench-hot-{i}', NULL, 'threshold', 'temperature', '>', {hot0 + i}, {hot0 + i - 3}, "
                f"'{dur}', 60, 30)"
            )
        for i in range(20):  # smoothed rate (1 minute), rising and falling
            op, thr = (">", rate0 + i) if i % 2 == 0 else ("<", -rate0 - i)
            rows.append(
                f"('bench-rate-{i}', NULL, 'rate', 'temperature', '{op}', {thr}, NULL, '0', 60, 30)"
            )
        for i in range(15):  # anomaly z-score, three windows
            metric = "temperature" if i % 3 else "humidity"
            rows.append(
                f"('bench-anom-{i}', NULL, 'anomaly', '{metric}', NULL, {z0 + zstep * i}, NULL, '0', "
                f"{(60, 120, 240)[i % 3]}, 30)"
            )
    for i in range(10):  # cold
        rows.append(
            f"('bench-cold-{i}', NULL, 'threshold', 'temperature', '<', {-8 - i}, {-5 - i}, '0', 60, 30)"
        )
    for i in range(5):  # humidity
        rows.append(
            f"('bench-humid-{i}', NULL, 'threshold', 'humidity', '>', {90 + i}, {87 + i}, '0', 60, 30)"
        )
    for i in range(10):
        rows.append(
            f"('bench-offline-{i}', NULL, 'offline', NULL, NULL, NULL, NULL, '{1 + i} days', 60, 30)"
        )
    assert len(rows) == 100, len(rows)
    return (
        "INSERT INTO iotpipe.alert_rules (name, location, kind, metric, op, threshold, clear_threshold, "
        "for_duration, window_size, min_samples, enabled) "
        "SELECT n, l, k, m, o, t::float8, c::float8, d::interval, w, s, false FROM (VALUES "
        + ", ".join(rows)
        + ") v(n, l, k, m, o, t, c, d, w, s)"
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5, help="rounds per configuration")
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument(
        "--storm", action="store_true", help="aggressive thresholds: many alerts"
    )
    ap.add_argument(
        "--never-fire",
        action="store_true",
        help="unreachable thresholds: evaluation cost only",
    )
    ap.add_argument(
        "--rules",
        choices=["realistic", "global", "anomaly-drift"],
        default="realistic",
        help="rule set (rules_sql)",
    )
    ap.add_argument("--dsn", help="use this database instead of starting a cluster")
    ap.add_argument("--dir", default="/tmp/iotpipe-bench-alerts")
    ap.add_argument("--port", type=int, default=55472)
    a = ap.parse_args()
    with cluster_or_dsn(a.dsn, a.dir, a.port) as dsn:
        run(a, dsn)


def run(a, dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS iotpipe")
        c.execute("DELETE FROM iotpipe.alert_rules WHERE name LIKE 'bench-%'")
        c.execute(rules_sql("storm" if a.storm else a.rules))
        nrules = c.execute(
            "SELECT count(*) FROM iotpipe.alert_rules WHERE name LIKE 'bench-%'"
        ).fetchone()[0]
        target = 0.90 if a.rules == "anomaly-drift" else 0.85
        if a.never_fire:
            c.execute(
                "UPDATE iotpipe.alert_rules SET clear_threshold = NULL, threshold = CASE WHEN kind IN ('anomaly', 'drift') "
                "THEN 1e9 WHEN op = '>' THEN 1e9 ELSE -1e9 END WHERE name LIKE 'bench-%' AND kind <> 'offline'"
            )
        if a.never_fire:
            c.execute(
                "UPDATE iotpipe.alert_rules SET clear_threshold = NULL, threshold = CASE WHEN kind IN ('anomaly', 'drift') "
                "THEN 1e9 WHEN op = '>' THEN 1e9 ELSE -1e9 END WHERE name LIKE 'bench-%' AND kind <> 'offline'"
            )
        # Two continuous simulator streams cut into slices: the 100-rule rounds
        # take consecutive slices of stream A (seed 7), so the engine's
        # per-sensor statistics see no gaps (a gap is a real level jump and
        # would fire anomaly/rate alerts); the 0-rule rounds take stream B
        # (seed 8, a month later).  Slice 0 of A warms the engine up.
        c.execute("DROP TABLE IF EXISTS bench_alert_msgs")
        c.execute(
            "CREATE UNLOGGED TABLE bench_alert_msgs (stream text, slice int, msgs text[], "
            "PRIMARY KEY (stream, slice))"
        )
        t = time.perf_counter()
        for stream, seed, start, n in (
            ("A", 7, "2026-01-01", a.rounds + 1),
            ("B", 8, "2026-02-01", a.rounds),
        ):
            c.execute(
                "INSERT INTO bench_alert_msgs SELECT %s, (n - 1) / %s, array_agg(m ORDER BY n) "
                "  FROM iotpipe.simulate(%s, %s, %s, %s) WITH ORDINALITY AS g(m, n) GROUP BY 2",
                (stream, a.messages, a.sensors, a.messages * n, seed, start),
            )
        print(
            f"generated {2 * a.rounds + 1} x {a.messages:,} messages ({a.sensors} sensors) "
            f"in {time.perf_counter() - t:.1f} s"
        )

        pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        cpu_rates = {0: [], 100: []}

        def backend_cpu():
            # utime + stime of the backend (fields 14 and 15 of /proc/PID/stat)
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def ingest(stream, r, n=None):
            c.execute("TRUNCATE iotpipe.readings")
            t0 = time.perf_counter()
            cpu0 = backend_cpu()
            acc, rej = c.execute(
                "SELECT i.* FROM bench_alert_msgs b, iotpipe.ingest_json(b.msgs) i WHERE b.stream = %s AND b.slice = %s",
                (stream, r),
            ).fetchone()
            dt = time.perf_counter() - t0
            cpu = backend_cpu() - cpu0
            assert acc == a.messages and rej == 0, (acc, rej)
            if n is not None and cpu > 0:
                cpu_rates[n].append(acc / cpu)
            return acc / dt

        def set_rules(on):
            c.execute(
                "UPDATE iotpipe.alert_rules SET enabled = %s WHERE name LIKE 'bench-%%'",
                (on,),
            )

        # warm-up round (partitions, caches, the engine's per-sensor state)
        set_rules(True)
        ingest("A", 0)
        c.execute("TRUNCATE iotpipe.alerts")
        next_slice = {"A": 1, "B": 0}
        rates = {0: [], 100: []}
        order = []
        for i in range(a.rounds):
            order += [0, 100] if i % 2 == 0 else [100, 0]
        fired = 0
        for r, n in enumerate(order, start=1):
            set_rules(n == 100)
            before = c.execute("SELECT count(*) FROM iotpipe.alerts").fetchone()[0]
            stream = "A" if n == 100 else "B"
            rate = ingest(stream, next_slice[stream], n)
            next_slice[stream] += 1
            fired += (
                c.execute("SELECT count(*) FROM iotpipe.alerts").fetchone()[0] - before
            )
            rates[n].append(rate)
            print(f"round {r:2d}: {nrules if n else 0:3d} rules  {rate:10,.0f} rows/s")
        resolved = c.execute(
            "SELECT count(*) FROM iotpipe.alerts WHERE state = 'resolved'"
        ).fetchone()[0]
        set_rules(False)
        m0, m100 = statistics.median(rates[0]), statistics.median(rates[100])
        print()
        print(
            f"baseline, 0 rules:   median {m0:10,.0f} rows/s  (runs: {', '.join(f'{x:,.0f}' for x in rates[0])})"
        )
        print(
            f"{nrules} enabled rules:   median {m100:10,.0f} rows/s  (runs: {', '.join(f'{x:,.0f}' for x in rates[100])})"
        )
        print(
            f"ratio {nrules} rules / 0 rules: {m100 / m0:.3f}  -> engine cost {100 * (1 - m100 / m0):.1f} % "
            f"(target <= {100 - 100 * target:.0f} %: {'met' if m100 / m0 >= target else 'MISSED'})"
        )
        if cpu_rates[0] and cpu_rates[100]:
            c0, c100 = (
                statistics.median(cpu_rates[0]),
                statistics.median(cpu_rates[100]),
            )
            print(
                f"per CPU second of the ingesting backend (what other load on the machine "
                f"disturbs least): 0 rules median {c0:10,.0f} rows/s, {nrules} rules {c100:10,.0f} rows/s, "
                f"ratio {c100 / c0:.3f} -> cost {100 * (1 - c100 / c0):.1f} %"
            )
        print(
            f"alerts during the {nrules}-rule rounds: {fired} fired, {resolved} resolved "
            f"({fired / (a.rounds * a.messages) * 1000:.2f} per 1000 readings)"
        )
        by_kind = c.execute(
            "SELECT r.kind, count(*) FROM iotpipe.alerts a JOIN iotpipe.alert_rules r USING (rule_id) "
            " WHERE r.name LIKE 'bench-%' GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        print("alerts by rule kind: " + ", ".join(f"{k} {n}" for k, n in by_kind))
        c.execute("DELETE FROM iotpipe.alert_rules WHERE name LIKE 'bench-%'")
        c.execute("DROP TABLE bench_alert_msgs")


if __name__ == "__main__":
    main()
