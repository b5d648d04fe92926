#!/usr/bin/env python3
"""Kafka -> iotpipe.readings vs COPY vs a hand-written Python consumer.

Starts its own PostgreSQL cluster (iotpipe preloaded) and its own Kafka
broker, generates N contract messages with iotpipe.simulate(), produces them
to a 4-partition topic keyed by sensor_id, then for several rounds times, on
the same table (truncated in between, CHECKPOINT before each run):

  * copy:      one COPY FROM STDIN of the same rows (text format) -- the floor
               any loader is measured against
  * kafka xW:  iotpipe.kafka_start(workers => W) draining the pre-loaded topic
               from offset 0 (W = 1 and 2), until iotpipe.kafka_offsets says
               every message is committed
  * python:    the classic hand-written pipeline: confluent-kafka consumer,
               json.loads per message, psycopg COPY per batch, commit, then
               a synchronous Kafka offset commit per batch

Kafka rates are reported two ways: "steady" counts from the first committed
batch to the last (the pipeline's throughput), "wall" from kafka_start() (adds
the worker start and group join, about a second).  Ratios use steady rates;
the Python baseline is timed the same way (from its first committed batch).

Usage: bench/kafka_bench.py [--messages 1000000] [--rounds 3]
"""

import argparse
import io
import json
import os
import statistics
import sys
import time

import psycopg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test", "kafka"))

from benchlib import copy_readings, private_cluster  # noqa: E402
from kafka_harness import KafkaBroker, high_watermarks, produce  # noqa: E402

TOPIC = "bench"
NULL = "\\N"  # COPY text format


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--dir", default="/tmp/iot-kbench")
    ap.add_argument("--port", type=int, default=55490)
    ap.add_argument("--broker-dir", default="/tmp/iot-kbench-broker")
    ap.add_argument("--broker-port", type=int, default=19392)
    ap.add_argument("--python-batch", type=int, default=5000)
    ap.add_argument("--skip-python", action="store_true")
    ap.add_argument(
        "--batch-size",
        type=int,
        help="iotpipe.batch_size for the run (default: the server's)",
    )
    a = ap.parse_args()

    with private_cluster(a.dir, a.port) as dsn:
        broker = KafkaBroker(a.broker_dir, a.broker_port)
        try:
            broker.start()
            return run(a, broker, dsn)
        finally:
            broker.stop()


def reset(c):
    c.execute("TRUNCATE iotpipe.readings, iotpipe.sensors, iotpipe.dead_letters")
    c.execute("DELETE FROM iotpipe.kafka_offsets")
    c.execute("DELETE FROM iotpipe.kafka_watermarks")
    c.execute("CHECKPOINT")


def run_copy(c, copy_data, n):
    reset(c)
    el = copy_readings(c, copy_data)
    got = c.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
    assert got == n, got
    return n / el


def run_kafka(c, bootstrap, n, workers, group):
    reset(c)
    t0 = time.perf_counter()
    c.execute(
        "SELECT iotpipe.kafka_start(%s, %s, %s, %s)", (bootstrap, TOPIC, group, workers)
    )
    t_first = None
    first_done = 0
    deadline = time.monotonic() + 600
    while True:
        done = c.execute(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM iotpipe.kafka_offsets"
        ).fetchone()[0]
        now = time.perf_counter()
        if done > 0 and t_first is None:
            t_first, first_done = now, done
        if done >= n:
            break
        assert time.monotonic() < deadline, f"drain stuck at {done} of {n}"
        time.sleep(0.02)
    t_end = time.perf_counter()
    c.execute("SELECT iotpipe.kafka_stop(%s)", (TOPIC,))
    deadline = time.monotonic() + 60
    while c.execute(
        "SELECT count(*) FROM iotpipe.status WHERE kind = 'kafka' AND pid IS NOT NULL"
    ).fetchone()[0]:
        assert time.monotonic() < deadline, "kafka workers did not stop"
        time.sleep(0.1)
    got = c.execute(
        "SELECT count(*), count(DISTINCT (sensor_id, ts)) FROM iotpipe.readings"
    ).fetchone()
    assert got == (n, n), got
    steady = (n - first_done) / (t_end - t_first) if t_end > t_first else float("nan")
    return steady, n / (t_end - t0)


def run_python(c, dsn, bootstrap, n, group, batch):
    """The classic hand-written pipeline (at-least-once)."""
    from confluent_kafka import Consumer

    reset(c)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([TOPIC])
    got = 0
    t_first = None
    first_done = 0
    t0 = time.perf_counter()
    with psycopg.connect(dsn) as pg:
        while got < n:
            msgs = consumer.consume(num_messages=batch, timeout=0.5)
            if not msgs:
                continue
            buf = io.StringIO()
            rows = 0
            for m in msgs:
                if m.error():
                    continue
                d = json.loads(m.value())
                buf.write(
                    f"{d['sensor_id']}\t{d['ts']}\t{d.get('temperature', NULL)}\t"
                    f"{d.get('humidity', NULL)}\t{d.get('location', NULL)}\n"
                )
                rows += 1
            with pg.cursor() as cur:
                with cur.copy(
                    "COPY iotpipe.readings (sensor_id, ts, temperature, humidity, location) FROM STDIN"
                ) as cp:
                    cp.write(buf.getvalue())
            pg.commit()
            consumer.commit(asynchronous=False)
            got += rows
            if t_first is None:
                t_first, first_done = time.perf_counter(), got
    t_end = time.perf_counter()
    consumer.close()
    cnt = c.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
    assert cnt == n, cnt
    return (n - first_done) / (t_end - t_first), n / (t_end - t0)


def run(a, broker, dsn):
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS iotpipe")
        if a.batch_size:
            c.execute(f"ALTER SYSTEM SET iotpipe.batch_size = {int(a.batch_size)}")
            c.execute("SELECT pg_reload_conf()")
        c.execute("SELECT iotpipe.create_partitions('2026-01-01', '2026-01-03')")
        t = time.perf_counter()
        msgs = [
            r[0]
            for r in c.execute(
                "SELECT m FROM iotpipe.simulate(1000, %s, 1, '2026-01-01 00:00:00+00') m",
                (a.messages,),
            )
        ]
        n = len(msgs)
        buf = io.StringIO()
        keyed = []
        for m in msgs:
            d = json.loads(m)
            buf.write(
                f"{d['sensor_id']}\t{d['ts']}\t{d['temperature']}\t{d['humidity']}\t{d['location']}\n"
            )
            keyed.append((d["sensor_id"].encode(), m.encode()))
        copy_data = buf.getvalue().encode()
        del msgs, buf
        print(f"generated {n:,} messages in {time.perf_counter() - t:.1f} s")

        broker.create_topic(TOPIC, a.partitions)
        t = time.perf_counter()
        produce(broker.bootstrap, TOPIC, keyed)
        del keyed
        hw = high_watermarks(broker.bootstrap, TOPIC)
        assert sum(hw.values()) == n, hw
        print(
            f"produced them to {a.partitions} partitions in {time.perf_counter() - t:.1f} s: {hw}"
        )

        res = {
            "copy": [],
            "k1": [],
            "k2": [],
            "k1w": [],
            "k2w": [],
            "py": [],
            "pyw": [],
        }
        for r in range(a.rounds):
            res["copy"].append(run_copy(c, copy_data, n))
            s, w = run_kafka(c, broker.bootstrap, n, 1, f"bench-r{r}-w1")
            res["k1"].append(s)
            res["k1w"].append(w)
            s, w = run_kafka(c, broker.bootstrap, n, 2, f"bench-r{r}-w2")
            res["k2"].append(s)
            res["k2w"].append(w)
            line = (
                f"round {r + 1}: COPY {res['copy'][-1]:,.0f}   kafka x1 {res['k1'][-1]:,.0f} "
                f"(wall {res['k1w'][-1]:,.0f})   kafka x2 {res['k2'][-1]:,.0f} (wall {res['k2w'][-1]:,.0f})"
            )
            if not a.skip_python:
                s, w = run_python(
                    c, dsn, broker.bootstrap, n, f"bench-py-r{r}", a.python_batch
                )
                res["py"].append(s)
                res["pyw"].append(w)
                line += f"   python {res['py'][-1]:,.0f} (wall {res['pyw'][-1]:,.0f})"
            print(line + "   msgs/s", flush=True)

    med = {k: statistics.median(v) for k, v in res.items() if v}
    print()
    print(
        f"messages per run:              {n:,} on {a.partitions} partitions, {a.rounds} rounds, medians"
    )
    print(f"baseline COPY:                 {med['copy']:,.0f} rows/s")
    print(
        f"kafka drain, 1 worker:         {med['k1']:,.0f} msgs/s steady ({med['k1w']:,.0f} wall)"
    )
    print(
        f"kafka drain, 2 workers:        {med['k2']:,.0f} msgs/s steady ({med['k2w']:,.0f} wall)"
    )
    if "py" in med:
        print(
            f"python consumer + COPY:        {med['py']:,.0f} msgs/s steady ({med['pyw']:,.0f} wall)"
        )
    for k, label in (("k1", "1 worker "), ("k2", "2 workers")):
        line = f"ratio kafka {label} / COPY:    {med[k] / med['copy']:.2f} (target >= 0.50)"
        if "py" in med:
            line += f"   / python: {med[k] / med['py']:.2f} (target >= 3)"
        print(line)
    # the machine is shared: ratios within each round are steadier than ratios of medians
    rounds = range(len(res["copy"]))
    line = "median of per-round ratios:    kafka x1/COPY {:.2f}, kafka x2/COPY {:.2f}".format(
        statistics.median(res["k1"][r] / res["copy"][r] for r in rounds),
        statistics.median(res["k2"][r] / res["copy"][r] for r in rounds),
    )
    if "py" in med:
        line += ", kafka x1/python {:.2f}, kafka x2/python {:.2f}".format(
            statistics.median(res["k1"][r] / res["py"][r] for r in rounds),
            statistics.median(res["k2"][r] / res["py"][r] for r in rounds),
        )
    print(line)
    load = os.getloadavg()
    print(
        f"load average at the end:       {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores; shared machine)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
