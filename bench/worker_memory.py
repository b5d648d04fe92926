#!/usr/bin/env python3
"""Worker memory over a long run: is the simulator worker's memory flat?

Starts its own cluster, runs the simulator (direct sink: the ingest core, the
sensors upkeep and the alert engine with a few rules) at --rate readings/s for
--minutes, and samples the worker process every --every seconds:

  * RssAnon: private anonymous memory (palloc'd memory, caches) - a leak shows here
  * VmRSS:   resident set, which also grows as the process touches more of
             shared_buffers (not a leak; reported for completeness)

After a one-minute warm-up the target is RssAnon flat within +-10 %: the script
prints the median of the first and the last minute, the min/max over the run
and the deviation, plus the rate actually sustained.

Usage: bench/worker_memory.py [--rate 20000] [--minutes 10] [--every 5]
"""

import argparse
import os
import statistics
import sys
import time

import psycopg
from benchlib import private_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mem(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon"):
                out[k] = int(v.split()[0])
    return out


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=float, default=20000)
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--every", type=float, default=5)
    ap.add_argument("--dir", default="/tmp/iotpipe-bench-memory")
    ap.add_argument("--port", type=int, default=55540)
    a = ap.parse_args()

    with private_cluster(a.dir, a.port) as dsn:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION iotpipe")
            c.execute(
                "INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, clear_threshold, for_duration)"
                " VALUES ('hot', 'threshold', 'temperature', '>', 45, 42, '2 s'),"
                "        ('humid', 'threshold', 'humidity', '>', 95, 90, '0')"
            )
            c.execute(
                "SELECT iotpipe.simulator_start(sensors => %s, rate => %s, malformed_ratio => 0.001)",
                (a.sensors, a.rate),
            )
            pid = None
            deadline = time.monotonic() + 30
            while pid is None and time.monotonic() < deadline:
                pid = c.execute(
                    "SELECT pid FROM iotpipe.status WHERE worker = 'simulator' AND state = 'running'"
                ).fetchone()
                pid = pid[0] if pid else None
                time.sleep(0.2)
            if pid is None:
                sys.exit("the simulator did not start")
            samples = []
            t0 = time.monotonic()
            m0 = c.execute(
                "SELECT messages FROM iotpipe.status WHERE worker = 'simulator'"
            ).fetchone()[0]
            while time.monotonic() - t0 < a.minutes * 60:
                time.sleep(a.every)
                m = mem(pid)
                samples.append((time.monotonic() - t0, m["RssAnon"], m["VmRSS"]))
                print(
                    f"{samples[-1][0]:6.0f} s  RssAnon {m['RssAnon'] / 1024:7.1f} MB  VmRSS {m['VmRSS'] / 1024:7.1f} MB",
                    flush=True,
                )
            m1 = c.execute(
                "SELECT messages FROM iotpipe.status WHERE worker = 'simulator'"
            ).fetchone()[0]
            rate = (m1 - m0) / (time.monotonic() - t0)
            c.execute("SELECT iotpipe.simulator_stop()")

    warm = [s for s in samples if s[0] >= 60] or samples
    first = [s[1] for s in warm if s[0] < warm[0][0] + 60]
    last = [s[1] for s in warm if s[0] > warm[-1][0] - 60]
    lo, hi = min(s[1] for s in warm), max(s[1] for s in warm)
    base = statistics.median(first)
    print()
    print(
        f"rate sustained:                 {rate:,.0f} readings/s (asked {a.rate:,.0f})"
    )
    print(f"RssAnon first minute (median):  {base / 1024:.1f} MB")
    print(f"RssAnon last minute (median):   {statistics.median(last) / 1024:.1f} MB")
    print(f"RssAnon min / max after warm-up: {lo / 1024:.1f} / {hi / 1024:.1f} MB")
    print(
        f"deviation from the first minute: {100 * (hi - base) / base:+.1f} % / {100 * (lo - base) / base:+.1f} %"
        "  (target within +-10 %)"
    )
    print(
        f"VmRSS last (includes touched shared_buffers): {samples[-1][2] / 1024:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
