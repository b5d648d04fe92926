#!/usr/bin/env python3
"""Ingest core vs COPY, same rows, same table, same run.

Starts its own cluster (iotpipe preloaded), generates N contract messages with
iotpipe.simulate(), then for several rounds:

  * ingest:  iotpipe.ingest_json(text[]) in calls of --chunk messages
             (parse + validate + COPY-from-memory + sensors upsert + alert hook)
  * copy:    one COPY FROM STDIN of the same rows (text format) into
             iotpipe.readings — the floor any loader is measured against
  * simulator: the simulator worker at rate 0 (as fast as it can), direct sink

and prints rows/s for each, medians over rounds, and the ratio ingest/COPY.

Usage: bench/ingest_bench.py [--messages 1000000] [--rounds 3] [--chunk 10000]
"""

import argparse
import io
import json
import os
import statistics
import struct
import sys
import time

import psycopg
from benchlib import copy_readings, private_cluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT_ARRAY_OID = 1009


class PrebuiltTextArray:
    """A text[] parameter encoded once, before timing (as the COPY data is)."""

    def __init__(self, items):
        parts = [struct.pack("!iiiii", 1, 0, 25, len(items), 1)]
        for m in items:
            b = m.encode()
            parts.append(struct.pack("!i", len(b)))
            parts.append(b)
        self.data = b"".join(parts)


class PrebuiltTextArrayDumper(psycopg.adapt.Dumper):
    format = psycopg.pq.Format.BINARY
    oid = TEXT_ARRAY_OID

    def dump(self, obj):
        return obj.data


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--dir", default="/tmp/iotpipe-bench-ingest")
    ap.add_argument("--port", type=int, default=55530)
    ap.add_argument("--sim-seconds", type=float, default=10.0)
    a = ap.parse_args()

    with private_cluster(a.dir, a.port) as dsn:
        return run(a, dsn)


def run(a, dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS iotpipe")
        c.execute("SELECT iotpipe.create_partitions('2026-01-01', '2026-01-03')")
        t = time.perf_counter()
        msgs = [
            r[0]
            for r in c.execute(
                "SELECT m FROM iotpipe.simulate(1000, %s, 1, '2026-01-01 00:00:00+00') m",
                (a.messages,),
            )
        ]
        print(
            f"generated {len(msgs):,} messages ({sum(map(len, msgs)) / len(msgs):.0f} bytes avg) "
            f"in {time.perf_counter() - t:.1f} s"
        )
        # the same rows for COPY
        buf = io.StringIO()
        for m in msgs:
            d = json.loads(m)
            buf.write(
                f"{d['sensor_id']}\t{d['ts']}\t{d['temperature']}\t{d['humidity']}\t{d['location']}\n"
            )
        copy_data = buf.getvalue().encode()
        # both sides get their data encoded before the clock starts: the COPY
        # text above, and the binary text[] parameters here
        c.adapters.register_dumper(PrebuiltTextArray, PrebuiltTextArrayDumper)
        chunks = [
            PrebuiltTextArray(msgs[i : i + a.chunk])
            for i in range(0, len(msgs), a.chunk)
        ]

        def run_ingest():
            c.execute(
                "TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters"
            )
            c.execute("CHECKPOINT")
            t = time.perf_counter()
            accepted = 0
            for ch in chunks:
                accepted += c.execute(
                    "SELECT accepted FROM iotpipe.ingest_json(%b)", (ch,)
                ).fetchone()[0]
            el = time.perf_counter() - t
            assert accepted == len(msgs), accepted
            return len(msgs) / el

        def run_copy():
            c.execute(
                "TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters"
            )
            c.execute("CHECKPOINT")
            el = copy_readings(c, copy_data)
            n = c.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
            assert n == len(msgs), n
            return len(msgs) / el

        # paired rounds, alternating which goes first, so that drift in the
        # machine's load hits both sides alike; the ratio is the median of
        # the per-round ratios
        ingest_rates, copy_rates, ratios = [], [], []
        for r in range(a.rounds):
            if r % 2 == 0:
                ir, cr = run_ingest(), run_copy()
            else:
                cr, ir = run_copy(), run_ingest()
            ingest_rates.append(ir)
            copy_rates.append(cr)
            ratios.append(ir / cr)
            print(
                f"round {r + 1}: ingest_json {ir:,.0f} rows/s   COPY {cr:,.0f} rows/s   ratio {ir / cr:.2f}",
                flush=True,
            )

        # the simulator worker, direct sink, as fast as it can
        c.execute("TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters")
        c.execute(
            "SELECT iotpipe.simulator_start(sensors => 1000, rate => 0, malformed_ratio => 0)"
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if c.execute(
                "SELECT count(*) FROM iotpipe.status WHERE worker = 'simulator' AND state = 'running'"
            ).fetchone()[0]:
                break
            time.sleep(0.1)
        time.sleep(1)
        m1 = c.execute(
            "SELECT rows FROM iotpipe.status WHERE worker = 'simulator'"
        ).fetchone()[0]
        t1 = time.perf_counter()
        time.sleep(a.sim_seconds)
        m2 = c.execute(
            "SELECT rows FROM iotpipe.status WHERE worker = 'simulator'"
        ).fetchone()[0]
        sim_rate = (m2 - m1) / (time.perf_counter() - t1)
        c.execute("SELECT iotpipe.simulator_stop()")

    ing = statistics.median(ingest_rates)
    cp = statistics.median(copy_rates)
    print()
    print(f"messages per round:            {len(msgs):,}")
    print(f"baseline COPY (median):        {cp:,.0f} rows/s")
    print(f"ingest_json (median):          {ing:,.0f} rows/s")
    print(
        f"simulator direct (rate 0):     {sim_rate:,.0f} rows/s (generates its messages too)"
    )
    print(
        f"ratio ingest_json / COPY:      {statistics.median(ratios):.2f}  (median of paired rounds; target >= 0.70)"
    )
    print(f"ratio simulator / COPY:        {sim_rate / cp:.2f}")
    load = os.getloadavg()
    print(
        f"load average during run:       {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores; shared machine)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
