#!/usr/bin/env python3
"""Replay NAB series through the alert engine and score the alerts with NAB's rules.

Each series of ../shared/data/nab (the ambient temperature series and the 17
series of tuning/, NAB's folder layout, windows in tuning/windows.json) is
fed through iotpipe.ingest_json() as one sensor's temperature, in order,
each row with its own event time.  Rules are scoped to the bench's sensors:

  * an `anomaly` rule with the defaults (statistic 'robust', threshold NULL =
    the statistic's default, window_size, min_samples, warmup as the table's
    defaults) unless --statistic / --threshold / --window / --min-samples /
    --warmup say otherwise;
  * with --drift also a `drift` rule (defaults likewise, --drift-threshold).

Every alert of a rule counts as one detection at its started_at (the row of
that event time).  Per series it prints: rows, windows hit / labelled, alerts
in total, alerts outside the windows (after the probationary period: NAB
does not score the first 15 % of a series, at most 750 rows) and the raw NAB
score under the standard and reward-low-FP profiles; then totals, and the
scores normalized between the never-firing detector (0) and the perfect one
(100) over the tuning set, over the ambient series and over both
(bench/nabscore.py holds the scoring rules and where they come from).

Usage: bench/nab_anomaly.py [--drift] [--only anomaly|drift] [--statistic zscore|robust]
                            [--threshold X] [--dsn DSN] [--series SUBSTRING]
Starts its own cluster unless --dsn is given.
"""

import argparse
import csv
import json
import os
from datetime import datetime, timezone

import nabscore
import psycopg
from benchlib import cluster_or_dsn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAB = os.environ.get(
    "IOTPIPE_NAB_DIR", os.path.join(os.path.dirname(ROOT), "shared", "data", "nab")
)


def _ts(s):
    return datetime.strptime(s.split(".")[0], "%Y-%m-%d %H:%M:%S").replace(
        tzinfo=timezone.utc
    )


def load_series():
    """[(group, relative name, rows [(ts, value)], windows [(start, end)])]"""
    out = []
    tuning = os.path.join(NAB, "tuning")
    with open(os.path.join(tuning, "windows.json")) as f:
        wins = json.load(f)
    for rel in sorted(wins):
        out.append(("tuning", rel, os.path.join(tuning, rel), wins[rel]))
    with open(os.path.join(NAB, "ambient_temperature_windows.json")) as f:
        amb = json.load(f)
    for rel, w in amb.items():
        out.append(("ambient", rel, os.path.join(NAB, os.path.basename(rel)), w))
    series = []
    for group, rel, path, w in out:
        with open(path) as f:
            rows = [(_ts(r["timestamp"]), float(r["value"])) for r in csv.DictReader(f)]
        series.append((group, rel, rows, [(_ts(a), _ts(b)) for a, b in w]))
    return series


def sensor_of(rel):
    return "nab-" + os.path.basename(rel).removesuffix(".csv")[:56]


def create_rules(c, a):
    c.execute("DELETE FROM iotpipe.alert_rules WHERE name LIKE 'nab-%'")
    rules = {}
    if a.only != "drift":
        cols = {"statistic": a.statistic, "threshold": a.threshold}
        cols.update(window_size=a.window, min_samples=a.min_samples, warmup=a.warmup)
        rules["anomaly"] = _rule(c, "nab-anomaly", "anomaly", cols)
    if a.drift or a.only == "drift":
        cols = {"threshold": a.drift_threshold, "window_size": a.window}
        cols.update(min_samples=a.min_samples, warmup=a.warmup)
        rules["drift"] = _rule(c, "nab-drift", "drift", cols)
    return rules


def _rule(c, name, kind, cols):
    cols = {k: v for k, v in cols.items() if v is not None}
    names = ", ".join(["name", "kind", "metric", "location"] + list(cols))
    marks = ", ".join(["%s"] * (4 + len(cols)))
    return c.execute(
        f"INSERT INTO iotpipe.alert_rules ({names}) VALUES ({marks}) RETURNING rule_id",
        [name, kind, "temperature", "nab"] + list(cols.values()),
    ).fetchone()[0]


def replay(c, rel, rows, rule_ids):
    sensor = sensor_of(rel)
    c.execute("DELETE FROM iotpipe.alerts WHERE sensor_id = %s", (sensor,))
    msgs = [
        json.dumps(
            {
                "sensor_id": sensor,
                "ts": ts.isoformat(),
                "temperature": v,
                "location": "nab",
            }
        )
        for ts, v in rows
    ]
    for i in range(0, len(msgs), 1000):
        acc, rej = c.execute(
            "SELECT * FROM iotpipe.ingest_json(%s::text[])", (msgs[i : i + 1000],)
        ).fetchone()
        assert rej == 0, (rel, acc, rej)
    return c.execute(
        "SELECT rule_id, started_at, value, reading, baseline, scale, score FROM iotpipe.alerts "
        " WHERE sensor_id = %s AND rule_id = ANY (%s) ORDER BY started_at",
        (sensor, list(rule_ids)),
    ).fetchall()


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--statistic")
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--window", type=int)
    ap.add_argument("--min-samples", type=int)
    ap.add_argument("--warmup")
    ap.add_argument("--drift", action="store_true", help="a drift rule as well")
    ap.add_argument("--drift-threshold", type=float)
    ap.add_argument("--only", choices=("anomaly", "drift"))
    ap.add_argument("--series", help="only series whose name contains this")
    ap.add_argument("--alerts", action="store_true", help="print every alert")
    ap.add_argument("--dsn")
    ap.add_argument("--dir", default="/tmp/iotpipe-bench-nab")
    ap.add_argument("--port", type=int, default=55474)
    a = ap.parse_args()
    with cluster_or_dsn(a.dsn, a.dir, a.port) as dsn:
        run(a, dsn)


def run(a, dsn):
    series = load_series()
    if a.series:
        series = [s for s in series if a.series in s[1]]
    # a fresh backend: the engine keeps per-sensor state of earlier replays
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS iotpipe")
        c.execute("DELETE FROM iotpipe.readings WHERE sensor_id LIKE 'nab-%'")
        c.execute("DELETE FROM iotpipe.sensors WHERE sensor_id LIKE 'nab-%'")
        rules = create_rules(c, a)
        desc = c.execute(
            "SELECT kind, statistic, coalesce(threshold::text, 'default'), window_size, "
            "min_samples, warmup FROM iotpipe.alert_rules WHERE rule_id = ANY (%s) ORDER BY rule_id",
            (list(rules.values()),),
        ).fetchall()
    for d in desc:
        stat = f" statistic {d[1]}," if d[0] == "anomaly" else ""
        print(
            f"rule {d[0]}:{stat} threshold {d[2]}, window_size {d[3]}, min_samples {d[4]}, warmup {d[5]}"
        )
    hdr = (
        f"{'series':52s} {'rows':>5s} {'hit':>5s} {'alerts':>6s} {'outside':>7s} "
        f"{'standard':>8s} {'low FP':>8s}"
    )
    print(hdr)
    totals = {}
    with psycopg.connect(dsn, autocommit=True) as c:
        for group, rel, rows, windows in series:
            alerts = replay(c, rel, rows, rules.values())
            index = {ts: i for i, (ts, _) in enumerate(rows)}
            det = [index[al[1]] for al in alerts]
            wins = nabscore.window_indices([t for t, _ in rows], windows)
            res = {
                p: nabscore.score_series(len(rows), wins, det, p)
                for p in nabscore.PROFILES
            }
            st = res["standard"]
            print(
                f"{rel:52s} {len(rows):5d} {st['tp']:>2d}/{st['tp'] + st['fn']:<2d} {len(alerts):6d} "
                f"{st['fp']:7d} {st['score']:8.3f} {res['reward_low_FP']['score']:8.3f}"
            )
            if a.alerts:
                kinds = {v: k for k, v in rules.items()}
                for al in alerts:
                    i = index[al[1]]
                    where = next(
                        (
                            f"window {k + 1}"
                            for k, (lo, hi) in enumerate(wins)
                            if lo <= i <= hi
                        ),
                        "probationary"
                        if i < nabscore.probationary_length(len(rows))
                        else "outside",
                    )
                    print(
                        f"    {kinds[al[0]]:7s} {al[1]:%Y-%m-%d %H:%M} value {al[2]:8.2f} reading {al[3]:9.3f} "
                        f"baseline {al[4]:9.3f} scale {al[5]:8.3f} score {al[6]:8.2f}  {where}"
                    )
            for key in (group, "all"):
                t = totals.setdefault(key, {"tp": 0, "fn": 0, "fp": 0, "alerts": 0})
                t["tp"] += st["tp"]
                t["fn"] += st["fn"]
                t["fp"] += st["fp"]
                t["alerts"] += len(alerts)
                for p, r in res.items():
                    s = t.setdefault(p, [0.0, 0.0, 0.0])
                    s[0] += r["score"]
                    s[1] += r["null"]
                    s[2] += r["perfect"]
    for key, t in totals.items():
        norm = {p: nabscore.normalized(*t[p]) for p in nabscore.PROFILES}
        print(
            f"total {key:8s}: windows hit {t['tp']}/{t['tp'] + t['fn']}, alerts {t['alerts']}, "
            f"outside the windows {t['fp']}; NAB standard {norm['standard']:.1f}, "
            f"reward low FP {norm['reward_low_FP']:.1f}"
        )


if __name__ == "__main__":
    main()
