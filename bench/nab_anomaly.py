#!/usr/bin/env python3
"""Replay the NAB series ambient_temperature_system_failure.csv through the
alert engine as one sensor with an anomaly rule, and score it against the
two labelled anomaly windows (ambient_temperature_windows.json).

Each CSV row (hourly, value in °F) becomes one reading of sensor
"nab-ambient" through iotpipe.ingest_json(), in order, with its own event
time.  The rule is kind 'anomaly' on temperature: z = |x - EWMA mean| /
EWM standard deviation (span --window readings, judged after --min-samples),
fire when z > --z, resolve when z < --clear (default --z).  Prints the
alerts, which labelled windows were hit (an alert started inside), and how
many alerts started outside the windows.  --sweep tries a grid of z and
window and prints one line per setting.

Usage: bench/nab_anomaly.py [--z 3.5] [--window 168] [--dsn DSN] [--sweep]
Starts its own cluster unless --dsn is given.
"""

import argparse
import csv
import json
import os
from datetime import datetime, timezone

import psycopg
from benchlib import cluster_or_dsn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAB = os.environ.get(
    "IOTPIPE_NAB_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data", "nab")
)
SENSOR = "nab-ambient"


def load():
    rows = []
    with open(os.path.join(NAB, "ambient_temperature_system_failure.csv")) as f:
        for r in csv.DictReader(f):
            ts = datetime.strptime(r["timestamp"], "%Y-%m-%d %H:%M:%S").replace(
                tzinfo=timezone.utc
            )
            rows.append((ts, float(r["value"])))
    with open(os.path.join(NAB, "ambient_temperature_windows.json")) as f:
        wins = next(iter(json.load(f).values()))
    windows = [
        tuple(
            datetime.strptime(x, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
            for x in w
        )
        for w in wins
    ]
    return rows, windows


def replay(dsn, rows, windows, z, clear, window, min_samples):
    # a fresh backend: the engine's per-sensor state of an earlier replay
    # would take these (same) event times for late readings
    with psycopg.connect(dsn, autocommit=True) as c:
        return _replay(c, rows, windows, z, clear, window, min_samples)


def _replay(c, rows, windows, z, clear, window, min_samples):
    c.execute("DELETE FROM iotpipe.alert_rules WHERE name = 'nab-anomaly'")
    c.execute("DELETE FROM iotpipe.readings WHERE sensor_id = %s", (SENSOR,))
    c.execute("DELETE FROM iotpipe.sensors WHERE sensor_id = %s", (SENSOR,))
    rule = c.execute(
        "INSERT INTO iotpipe.alert_rules (name, kind, metric, sensor_id, threshold, clear_threshold, "
        "window_size, min_samples, severity) VALUES ('nab-anomaly', 'anomaly', 'temperature', %s, %s, %s, %s, %s, "
        "'warning') RETURNING rule_id",
        (SENSOR, z, clear, window, min_samples),
    ).fetchone()[0]
    msgs = [
        json.dumps(
            {
                "sensor_id": SENSOR,
                "ts": ts.isoformat(),
                "temperature": v,
                "location": "nab",
            }
        )
        for ts, v in rows
    ]
    acc, rej = c.execute(
        "SELECT * FROM iotpipe.ingest_json(%s::text[])", (msgs,)
    ).fetchone()
    assert acc == len(rows) and rej == 0, (acc, rej)
    alerts = c.execute(
        "SELECT started_at, resolved_at, value, reading FROM iotpipe.alerts WHERE rule_id = %s "
        "ORDER BY started_at",
        (rule,),
    ).fetchall()
    c.execute("DELETE FROM iotpipe.alert_rules WHERE rule_id = %s", (rule,))
    hits = [[a for a in alerts if w0 <= a[0] <= w1] for w0, w1 in windows]
    outside = [a for a in alerts if not any(w0 <= a[0] <= w1 for w0, w1 in windows)]
    return alerts, hits, outside


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--z", type=float, default=3.5)
    ap.add_argument("--clear", type=float)
    ap.add_argument("--window", type=int, default=168)
    ap.add_argument("--min-samples", type=int, default=168)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--dsn")
    ap.add_argument("--dir", default="/tmp/iotpipe-bench-nab")
    ap.add_argument("--port", type=int, default=55474)
    a = ap.parse_args()
    with cluster_or_dsn(a.dsn, a.dir, a.port) as a.dsn:
        nab_run(a)


def nab_run(a):
    rows, windows = load()
    with psycopg.connect(a.dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS iotpipe")
        print(
            f"{len(rows)} readings {rows[0][0]:%Y-%m-%d} .. {rows[-1][0]:%Y-%m-%d}; labelled windows: "
            + "; ".join(
                f"{w0:%Y-%m-%d %H:%M} .. {w1:%Y-%m-%d %H:%M}" for w0, w1 in windows
            )
        )
        if a.sweep:
            for window in (12, 24, 48, 96, 168):
                for z in (3, 3.5, 4, 5, 6):
                    alerts, hits, outside = replay(
                        a.dsn,
                        rows,
                        windows,
                        z,
                        None,
                        window,
                        max(a.min_samples, window),
                    )
                    print(
                        f"window {window:4d}  z > {z:3.1f}: {len(alerts):3d} alerts; windows hit: "
                        f"{['yes' if h else 'no' for h in hits]}; outside the windows: {len(outside)}"
                    )
            return
        alerts, hits, outside = replay(
            a.dsn, rows, windows, a.z, a.clear, a.window, a.min_samples
        )
        print(
            f"rule: anomaly on temperature, z > {a.z} (clear below {a.clear or a.z}), EWMA span "
            f"{a.window} readings, judged after {a.min_samples}"
        )
        for a_ in alerts:
            where = next(
                (
                    f"window {i + 1}"
                    for i, (w0, w1) in enumerate(windows)
                    if w0 <= a_[0] <= w1
                ),
                "outside",
            )
            print(
                f"  {a_[0]:%Y-%m-%d %H:%M}  z {a_[2]:6.2f}  reading {a_[3]:6.2f}  {where}"
            )
        for i, h in enumerate(hits):
            print(
                f"labelled window {i + 1}: {'HIT' if h else 'missed'} ({len(h)} alerts inside)"
            )
        print(f"alerts outside the labelled windows: {len(outside)} (of {len(alerts)})")


if __name__ == "__main__":
    main()
