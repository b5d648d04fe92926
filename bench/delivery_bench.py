#!/usr/bin/env python3
"""Alert delivery (issue 12): latency, notification rate, cost of routes.

  --mode latency  readings produced into Kafka at --rate (default 20,000/s)
                  from 1,000 sensors, a --breach share (0.2 %) above the rule
                  (each resolved by the sensor's next reading), consumed by 2
                  iotpipe Kafka workers; a webhook receiver and a route send
                  every fire and resolve to a local sink (a process of its
                  own).  Latency = request received at the sink - send time
                  of the reading that caused it.  p50 / p99 / max.
  --mode rate     --alerts (1,000) alerts firing in one transaction, one
                  webhook receiver: notifications/s from the commit to the
                  last request received (iotpipe.notify_concurrency as set).
  --mode routes   ingest rate (ingest_json, calls of 10k, --messages per
                  round, the same breach share) with 10 routes configured
                  (8 per location, 2 global by severity, to 10 enabled
                  receivers on the sink) vs no route, alternating rounds
                  (ABBA), same run: the ratio of the medians.

Starts its own cluster (and broker) unless --dsn is given.
Usage: bench/delivery_bench.py --mode latency|rate|routes [options]
"""

import argparse
import http.server
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
from benchlib import cluster_or_dsn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "test", "kafka"))
LOCS = [f"dlvb-{i}" for i in range(8)]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))]


def iso_us(us):
    t = EPOCH + timedelta(microseconds=us)
    return t.isoformat(timespec="microseconds").replace("+00:00", "Z")


def micros(iso):
    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (t - EPOCH) // timedelta(microseconds=1)


def sink(port, ready, stop, outq):
    """Answer 200 and record (arrival time, body) of every request."""
    got = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(n)
            got.append((time.time(), body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 1024  # the default 5 drops concurrent connects
        daemon_threads = True

    srv = Server(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    ready.set()
    stop.wait()
    srv.shutdown()
    srv.server_close()
    outq.put(got)


class Sink:
    def __init__(self, port):
        ctx = multiprocessing.get_context("fork")
        self.stop_ev, self.ready, self.q = ctx.Event(), ctx.Event(), ctx.Queue()
        self.p = ctx.Process(
            target=sink, args=(port, self.ready, self.stop_ev, self.q), daemon=True
        )
        self.p.start()
        if not self.ready.wait(10):
            raise SystemExit("sink did not start")

    def stop(self):
        self.stop_ev.set()
        got = self.q.get(timeout=60)
        self.p.join(10)
        return got


def setup(admin, url, routes):
    admin.execute("CREATE EXTENSION IF NOT EXISTS iotpipe")
    admin.execute("DELETE FROM iotpipe.routes")
    admin.execute("DELETE FROM iotpipe.receivers")
    admin.execute("TRUNCATE iotpipe.notifications, iotpipe.notification_attempts")
    admin.execute("DELETE FROM iotpipe.alert_rules WHERE name LIKE 'dlvb-%'")
    rule = admin.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, op, threshold, clear_threshold,"
        " severity) VALUES ('dlvb-hot', 'threshold', 'temperature', '>', 100, 90, 'critical')"
        " RETURNING rule_id"
    ).fetchone()[0]
    if routes == 1:
        admin.execute(
            "INSERT INTO iotpipe.receivers (name, kind, url) VALUES ('dlvb', 'webhook', %s)",
            (url,),
        )
        admin.execute("INSERT INTO iotpipe.routes (receiver) VALUES ('dlvb')")
    elif routes == 10:
        for i in range(10):
            admin.execute(
                "INSERT INTO iotpipe.receivers (name, kind, url) VALUES (%s, 'webhook', %s)",
                (f"dlvb-{i}", url),
            )
        for i, loc in enumerate(LOCS):
            admin.execute(
                "INSERT INTO iotpipe.routes (receiver, location, position, continue)"
                " VALUES (%s, %s, %s, true)",
                (f"dlvb-{i}", loc, i),
            )
        admin.execute(
            "INSERT INTO iotpipe.routes (receiver, min_severity, position, continue)"
            " VALUES ('dlvb-8', 'critical', 8, true), ('dlvb-9', 'warning', 9, false)"
        )
    # the notifier runs when a receiver is enabled
    deadline = time.time() + 30
    while routes and time.time() < deadline:
        if admin.execute(
            "SELECT 1 FROM iotpipe.status WHERE worker = 'notifier' AND pid IS NOT NULL"
        ).fetchone():
            break
        time.sleep(0.1)
    return rule


def messages(n, sensors, breach, start_us, step_us, sent_at=None, t_send=None):
    """n readings, sensor i % sensors, every 1/breach-th one at 120 °C (the sensor's
    next reading resolves it)."""
    out = []
    every = max(1, int(round(1 / breach))) if breach > 0 else 0
    hot = set()
    for i in range(n):
        s = i % sensors
        sid = f"dlvb-{s:05d}"
        us = start_us + (i // sensors) * step_us
        if every and i % every == every // 2 and sid not in hot:
            t = 120.0
            hot.add(sid)
        else:
            t = 20.0 + (i % 7) * 0.1
            hot.discard(sid)
        out.append(
            f'{{"sensor_id":"{sid}","ts":"{iso_us(us)}","temperature":{t},'
            f'"location":"{LOCS[s % len(LOCS)]}"}}'
        )
    return out


# ------------------------------------------------------------------ modes


def mode_rate(a, admin):
    snk = Sink(a.sink_port)
    setup(admin, f"http://127.0.0.1:{a.sink_port}/rate", routes=1)
    now_us = int((time.time() - 600) * 1e6)
    msgs = [
        f'{{"sensor_id":"dlvb-r{i:05d}","ts":"{iso_us(now_us)}","temperature":120,'
        f'"location":"{LOCS[0]}"}}'
        for i in range(a.alerts)
    ]
    t0 = time.time()
    admin.execute("SELECT * FROM iotpipe.ingest_json(%s)", (msgs,))
    t_commit = time.time()
    deadline = time.time() + 120
    while time.time() < deadline:
        n = admin.execute(
            "SELECT count(*) FROM iotpipe.notifications WHERE state = 'sent'"
        ).fetchone()[0]
        if n >= a.alerts:
            break
        time.sleep(0.05)
    got = snk.stop()
    last = max(t for t, _ in got)
    first = min(t for t, _ in got)
    conc = admin.execute("SHOW iotpipe.notify_concurrency").fetchone()[0]
    print(
        f"{a.alerts} alerts fired in one transaction ({t_commit - t0:.2f} s incl. commit);"
        f" {len(got)} requests received, notify_concurrency {conc}"
    )
    print(
        f"first request {1000 * (first - t_commit):.0f} ms after the commit, last"
        f" {last - t_commit:.2f} s after: {len(got) / (last - t_commit):,.0f} notifications/s"
        f" (from the first request: {len(got) / max(last - first, 1e-9):,.0f}/s)"
    )


def mode_routes(a, admin):
    snk = Sink(a.sink_port)
    url = f"http://127.0.0.1:{a.sink_port}/routes"
    start_us = int((time.time() - 3600) * 1e6)
    order = ["none", "10", "10", "none"] * max(1, a.rounds // 4)
    res = {"none": [], "10": []}
    notes = {"none": [], "10": []}
    for k, mode in enumerate(order):
        setup(admin, url, routes=0 if mode == "none" else 10)
        admin.execute("TRUNCATE iotpipe.readings")
        msgs = messages(a.messages, 1000, a.breach, start_us + k * 10**9, 1000)
        t = time.perf_counter()
        for j in range(0, len(msgs), 10000):
            admin.execute(
                "SELECT * FROM iotpipe.ingest_json(%s)", (msgs[j : j + 10000],)
            )
        dt = time.perf_counter() - t
        n = admin.execute("SELECT count(*) FROM iotpipe.notifications").fetchone()[0]
        res[mode].append(len(msgs) / dt)
        notes[mode].append(n)
        print(
            f"round {k + 1} ({mode:>4} routes): {len(msgs) / dt:,.0f} rows/s,"
            f" {n} notifications queued"
        )
    snk.stop()
    m0, m10 = statistics.median(res["none"]), statistics.median(res["10"])
    print(
        f"median: no route {m0:,.0f} rows/s, 10 routes {m10:,.0f} rows/s:"
        f" ratio {m10 / m0:.3f} (target >= 0.95)"
    )


def mode_latency(a, admin):
    from confluent_kafka import Producer
    from kafka_harness import KafkaBroker

    snk = Sink(a.sink_port)
    rule = setup(admin, f"http://127.0.0.1:{a.sink_port}/lat", routes=1)
    sql = a.path == "sql"
    broker = None if sql else KafkaBroker(a.kafka_dir, a.kafka_port)
    topic = f"dlvb-{os.getpid()}"
    if sql:
        pc = psycopg.connect(a.dsn, autocommit=True)
        pending = []

        class SqlProducer:
            def produce(self, topic, value, key):
                pending.append(value.decode())

            def poll(self, t):
                if pending:
                    pc.execute("SELECT iotpipe.ingest_json(%s::text[])", (pending,))
                    pending.clear()

            def flush(self, t):
                self.poll(0)

    try:
        if sql:
            prod = SqlProducer()
            return run_latency(a, admin, snk, rule, prod, topic)
        broker.start()
        broker.create_topic(topic, 4)
        admin.execute(
            "SELECT iotpipe.kafka_start(%s, %s, %s, 2, %s)",
            (
                broker.bootstrap,
                topic,
                topic,
                json.dumps({"fetch.wait.max.ms": "5", "auto.offset.reset": "earliest"}),
            ),
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if (
                admin.execute(
                    "SELECT count(*) FROM iotpipe.status WHERE kind = 'kafka'"
                    " AND state IN ('idle', 'running')"
                ).fetchone()[0]
                >= 2
            ):
                break
            time.sleep(0.2)
        prod = Producer(
            {"bootstrap.servers": broker.bootstrap, "linger.ms": 1, "acks": 1,
             "queue.buffering.max.messages": 1000000}
        )  # fmt: skip
        return run_latency(a, admin, snk, rule, prod, topic)
    finally:
        if broker is not None:
            # the workers first: a consumer whose broker is gone is slow to stop
            admin.execute("SELECT iotpipe.kafka_stop(%s)", (topic,))
            broker.stop()


def run_latency(a, admin, snk, rule, prod, topic):
    sent_at = {}
    slice_s, per_slice, carry, i = 0.005, a.rate * 0.005, 0.0, 0
    every = max(1, int(round(1 / a.breach)))
    hot = set()
    t0 = time.time()
    next_t, end, t_measure = t0, t0 + a.warmup + a.seconds, t0 + a.warmup
    produced = 0
    while time.time() < end:
        now = time.time()
        if now < next_t:
            time.sleep(next_t - now)
        carry += per_slice
        n = int(carry)
        carry -= n
        ts_now = time.time()
        ts_us = int(ts_now * 1e6)
        ts_s = iso_us(ts_us)
        for _ in range(n):
            s = i % 1000
            sid = f"dlvb-{s:05d}"
            if i % every == every // 2 and sid not in hot:
                t = 120.0
                hot.add(sid)
                state = "firing"
            else:
                t = 20.0
                state = "resolved" if sid in hot else None
                hot.discard(sid)
            if state and ts_now >= t_measure:
                sent_at[(sid, ts_us, state)] = ts_now
            v = f'{{"sensor_id":"{sid}","ts":"{ts_s}","temperature":{t},"location":"{LOCS[s % 8]}"}}'
            while True:
                try:
                    prod.produce(topic, value=v.encode(), key=sid.encode())
                    break
                except BufferError:
                    prod.poll(0.001)
            i += 1
        prod.poll(0)
        produced += n
        next_t += slice_s
    t_end = time.time()
    prod.flush(30)
    deadline = time.time() + 60
    while time.time() < deadline:
        if (
            admin.execute(
                "SELECT count(*) FROM iotpipe.notifications WHERE state = 'pending'"
            ).fetchone()[0]
            == 0
            and admin.execute("SELECT count(*) FROM iotpipe.readings").fetchone()[0]
            >= produced
        ):
            break
        time.sleep(0.2)
    time.sleep(0.5)
    got = snk.stop()
    lat = []
    for arrival, body in got:
        al = json.loads(body)["alerts"][0]
        if al.get("rule_id") != rule:
            continue
        k = (al["sensor_id"], micros(al["ts"]), al["state"])
        if k in sent_at:
            lat.append((arrival - sent_at[k]) * 1000)
    print(
        f"produced {produced:,} readings in {t_end - t0:.1f} s:"
        f" {produced / (t_end - t0):,.0f}/s (target {a.rate:,.0f});"
        f" {len(sent_at)} alert events measured, {len(lat)} webhook requests matched"
    )
    print(
        f"produce -> webhook received: p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms,"
        f" max {max(lat) if lat else float('nan'):.1f} ms"
    )


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--mode", choices=["latency", "rate", "routes"], required=True)
    ap.add_argument(
        "--path",
        choices=["kafka", "sql"],
        default="kafka",
        help="latency: through Kafka, or iotpipe.ingest_json() per 5 ms slice",
    )
    ap.add_argument("--rate", type=float, default=20000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=3)
    ap.add_argument("--breach", type=float, default=0.002)
    ap.add_argument("--alerts", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--dsn")
    ap.add_argument("--dir", default="/tmp/iotpipe-bench-delivery")
    ap.add_argument("--port", type=int, default=55479)
    ap.add_argument("--sink-port", type=int, default=18599)
    ap.add_argument("--kafka-dir", default="/tmp/iotpipe-bench-delivery-kafka")
    ap.add_argument("--kafka-port", type=int, default=19193)
    a = ap.parse_args()
    conf = []
    if a.concurrency:
        conf.append(f"iotpipe.notify_concurrency = {a.concurrency}")
    with cluster_or_dsn(a.dsn, a.dir, a.port, conf=conf) as dsn:
        a.dsn = dsn
        admin = psycopg.connect(dsn, autocommit=True)
        print(
            f"load average before the run: {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
        )
        {"latency": mode_latency, "rate": mode_rate, "routes": mode_routes}[a.mode](
            a, admin
        )


if __name__ == "__main__":
    main()
