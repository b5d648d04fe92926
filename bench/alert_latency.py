#!/usr/bin/env python3
"""Alert latency: reading produced -> NOTIFY iotpipe_alerts received.

A producer sends --rate readings/s (default 20,000) from --sensors sensors at
a steady pace (a slice every 5 ms), each with its send time as event time; a
--breach share of them (default 0.2 %) is 120 °C, above the rule
"lat-hot" (temperature > 100, clear below 90), and the next reading of that
sensor is normal again, so every breach fires one alert and resolves it.  A
separate connection LISTENs on iotpipe_alerts and stamps each notification
on arrival.  Latency = arrival - send time of the reading that caused it
(same machine clock).  Prints p50/p95/p99/max for fires and resolves and the
rate actually sustained (produced, and stored in iotpipe.readings).

Paths:
  kafka (default): confluent-kafka producer (linger.ms 1) into a topic of
      its own on a broker of its own (test/kafka, --kafka-port, 4
      partitions), consumed by iotpipe.kafka_start() workers (2 by default);
      iotpipe.flush_interval is set to --flush-ms and
      iotpipe.kafka_poll_timeout to --poll-ms for the run (by default the
      product's defaults, 10 ms and 100 ms).
  sql: the producer calls iotpipe.ingest_json() with each slice.

Starts its own cluster unless --dsn is given.  Usage:
  bench/alert_latency.py [--path kafka|sql] [--rate 20000] [--seconds 20] [--dsn DSN]
"""

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone

import psycopg
from benchlib import cluster_or_dsn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test", "kafka"))
LOC = "lat-bench"


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def iso_us(us):
    return (
        (EPOCH + timedelta(microseconds=us))
        .isoformat(timespec="microseconds")
        .replace("+00:00", "Z")
    )


def micros(iso):
    return (datetime.fromisoformat(iso.replace("Z", "+00:00")) - EPOCH) // timedelta(
        microseconds=1
    )


def listen(dsn, stop, ready, count, outq):
    arrivals = []
    with psycopg.connect(dsn, autocommit=True) as lc:
        lc.execute("LISTEN iotpipe_alerts")
        ready.set()
        while not stop.is_set():
            for n in lc.notifies(timeout=0.2):
                arrivals.append((time.time(), n.payload))
                count.value += 1
    outq.put(arrivals)


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--path", choices=["kafka", "sql"], default="kafka")
    ap.add_argument("--rate", type=float, default=20000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--sensors", type=int, default=1000)
    ap.add_argument("--breach", type=float, default=0.002)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--warmup", type=float, default=3, help="seconds sent before measuring"
    )
    ap.add_argument("--flush-ms", type=int, default=10)
    ap.add_argument(
        "--poll-ms",
        type=int,
        default=100,
        help="iotpipe.kafka_poll_timeout for the run",
    )
    ap.add_argument("--dsn", help="use this database instead of starting a cluster")
    ap.add_argument("--dir", default="/tmp/iotpipe-bench-latency")
    ap.add_argument("--port", type=int, default=55473)
    ap.add_argument("--kafka-dir", default="/tmp/iotpipe-bench-latency-kafka")
    ap.add_argument("--kafka-port", type=int, default=19192)
    a = ap.parse_args()
    with cluster_or_dsn(a.dsn, a.dir, a.port) as a.dsn:
        broker = None
        try:
            if a.path == "kafka":
                from kafka_harness import KafkaBroker

                broker = KafkaBroker(a.kafka_dir, a.kafka_port)
                broker.start()
            run(a, broker)
        finally:
            if broker is not None:
                broker.stop()


def run(a, broker):
    admin = psycopg.connect(a.dsn, autocommit=True)
    admin.execute("CREATE EXTENSION IF NOT EXISTS iotpipe")
    admin.execute("DELETE FROM iotpipe.alert_rules WHERE name = 'lat-hot'")
    admin.execute("DELETE FROM iotpipe.readings WHERE location = %s", (LOC,))
    rule = admin.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, location, op, threshold, clear_threshold, severity) "
        "VALUES ('lat-hot', 'threshold', 'temperature', %s, '>', 100, 90, 'critical') RETURNING rule_id",
        (LOC,),
    ).fetchone()[0]
    topic = None
    if broker is not None:
        topic = f"lat-{os.getpid()}"
        broker.create_topic(topic, 4)
        admin.execute(f"ALTER SYSTEM SET iotpipe.flush_interval = '{a.flush_ms}ms'")
        # rd_kafka_consume_batch_queue() waits for a full batch or this timeout
        admin.execute(f"ALTER SYSTEM SET iotpipe.kafka_poll_timeout = '{a.poll_ms}ms'")
        admin.execute("SELECT pg_reload_conf()")
        admin.execute(
            "SELECT iotpipe.kafka_start(%s, %s, %s, %s, %s)",
            (
                broker.bootstrap,
                topic,
                f"lat-{os.getpid()}",
                a.workers,
                json.dumps({"fetch.wait.max.ms": "5", "auto.offset.reset": "earliest"}),
            ),
        )
        # the workers run when their status says so
        deadline = time.time() + 60
        while time.time() < deadline:
            n = admin.execute(
                "SELECT count(*) FROM iotpipe.status WHERE kind = 'kafka' AND worker LIKE %s "
                "AND state IN ('idle', 'running')",
                (f"%{topic}%",),
            ).fetchone()[0]
            if n >= a.workers:
                break
            time.sleep(0.2)
        else:
            raise SystemExit(
                "kafka workers did not start: "
                + repr(
                    admin.execute(
                        "SELECT worker, state, last_error FROM iotpipe.status"
                    ).fetchall()
                )
            )

    load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
    # listener: a process of its own (no GIL shared with the producer)
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    ready = ctx.Event()
    count = ctx.Value("i", 0)
    outq = ctx.Queue()
    lp = ctx.Process(target=listen, args=(a.dsn, stop, ready, count, outq), daemon=True)
    lp.start()
    if not ready.wait(10):
        raise SystemExit("listener did not start")

    # producer
    if broker is not None:
        from confluent_kafka import Producer

        prod = Producer(
            {
                "bootstrap.servers": broker.bootstrap,
                "linger.ms": 1,
                "acks": 1,
                "queue.buffering.max.messages": 1000000,
            }
        )

        def send(batch):
            for key, value in batch:
                while True:
                    try:
                        prod.produce(topic, value=value, key=key)
                        break
                    except BufferError:
                        prod.poll(0.001)
            prod.poll(0)
    else:
        pc = psycopg.connect(a.dsn, autocommit=True)

        def send(batch):
            pc.execute(
                "SELECT iotpipe.ingest_json(%s::text[])",
                ([v.decode() for _, v in batch],),
            )

    sent_at = {}  # (sensor, ts) -> send time, for breaches and their resolving reading
    slice_s = 0.005
    per_slice = a.rate * slice_s
    every = max(1, int(round(1 / a.breach))) if a.breach > 0 else 0
    hot_next = set()
    i = 0
    carry = 0.0
    t0 = time.time()
    next_t = t0
    end = t0 + a.warmup + a.seconds
    t_measure = t0 + a.warmup
    produced = 0
    while True:
        now = time.time()
        if now >= end:
            break
        if now < next_t:
            time.sleep(next_t - now)
        carry += per_slice
        n = int(carry)
        carry -= n
        batch = []
        ts_now = time.time()
        ts_us = int(ts_now * 1e6)
        ts_s = iso_us(ts_us)
        for _ in range(n):
            s = i % a.sensors
            sid = f"lat-{s:05d}"
            measured = ts_now >= t_measure
            if every and i % every == every // 2 and sid not in hot_next:
                t = 120.0
                hot_next.add(sid)
                if measured:
                    sent_at[(sid, ts_us, "firing")] = ts_now
            else:
                t = 20.0 + (i % 7) * 0.1
                if sid in hot_next:
                    hot_next.discard(sid)
                    if measured:
                        sent_at[(sid, ts_us, "resolved")] = ts_now
            msg = f'{{"sensor_id":"{sid}","ts":"{ts_s}","temperature":{t},"location":"{LOC}"}}'
            batch.append((sid.encode(), msg.encode()))
            i += 1
        send(batch)
        produced += n
        next_t += slice_s
    t_end = time.time()
    if broker is not None:
        prod.flush(30)
    # wait until everything is stored and notified
    deadline = time.time() + 60
    stored = 0
    while time.time() < deadline:
        stored = admin.execute(
            "SELECT count(*) FROM iotpipe.readings WHERE location = %s", (LOC,)
        ).fetchone()[0]
        if stored >= produced and count.value >= len(sent_at):
            break
        time.sleep(0.2)
    t_stored = time.time()
    time.sleep(0.5)
    stop.set()
    arrivals = outq.get(timeout=30)
    lp.join(10)

    lat = {"firing": [], "resolved": []}
    unmatched = 0
    for arrival, payload in arrivals:
        p = json.loads(payload)
        if p["rule_id"] != rule:
            continue
        k = (p["sensor_id"], micros(p["ts"]), p["state"])
        if k not in sent_at:
            unmatched += 1  # warm-up
            continue
        lat[p["state"]].append((arrival - sent_at[k]) * 1000)

    dur = t_end - t0
    path = (
        "Kafka (confluent-kafka producer -> broker -> iotpipe Kafka workers)"
        if broker
        else "iotpipe.ingest_json() from one producer connection"
    )
    print(f"path: {path}; load average before the run: {load0}")
    if broker:
        print(
            f"      {a.workers} workers, 4 partitions, iotpipe.flush_interval = {a.flush_ms} ms, "
            f"iotpipe.kafka_poll_timeout = {a.poll_ms} ms"
        )
    print(
        f"produced {produced:,} readings in {dur:.1f} s: {produced / dur:,.0f} readings/s "
        f"(target {a.rate:,.0f}); stored {stored:,} "
        f"(all stored {t_stored - t_end:.1f} s after the last send)"
    )
    print(
        f"alerts expected: {len(sent_at):,} events; notifications matched: "
        f"{sum(len(v) for v in lat.values()):,}; unmatched {unmatched}"
    )
    for state, xs in lat.items():
        if xs:
            print(
                f"{state:9s} n={len(xs):5d}  p50 {pct(xs, 50):7.1f} ms  p95 {pct(xs, 95):7.1f} ms  "
                f"p99 {pct(xs, 99):7.1f} ms  max {max(xs):7.1f} ms  mean {statistics.mean(xs):6.1f} ms"
            )
    both = lat["firing"] + lat["resolved"]
    if both:
        ok = pct(both, 50) <= 20 and pct(both, 99) <= 100
        print(
            f"all       n={len(both):5d}  p50 {pct(both, 50):7.1f} ms  p99 {pct(both, 99):7.1f} ms  "
            f"(target p50 <= 20 ms, p99 <= 100 ms: {'met' if ok else 'MISSED'})"
        )

    if broker is not None:
        admin.execute("SELECT iotpipe.kafka_stop(%s)", (topic,))
        admin.execute("ALTER SYSTEM RESET iotpipe.flush_interval")
        admin.execute("ALTER SYSTEM RESET iotpipe.kafka_poll_timeout")
        admin.execute("SELECT pg_reload_conf()")
    admin.execute("DELETE FROM iotpipe.alert_rules WHERE rule_id = %s", (rule,))
    admin.close()


if __name__ == "__main__":
    main()
