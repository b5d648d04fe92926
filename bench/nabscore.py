"""NAB's scoring rules, reimplemented (bench/nab_anomaly.py uses them).

Written from the rules of the Numenta Anomaly Benchmark (Lavin & Ahmad,
"Evaluating Real-time Anomaly Detection Algorithms -- the Numenta Anomaly
Benchmark", 2015; nab/sweeper.py): for one series of rows with labelled
anomaly windows and the row indices where a detector fired,

* the first `probationary` rows (15 % of the series, at most 750 rows) are
  not scored: detections there count for nothing;
* in a window the *first* detection earns A_TP * sigma(y) / sigma(-1) where
  sigma(y) = 2 / (1 + exp(5 y)) - 1 is the scaled sigmoid and y the relative
  position in the window: -1 at its first row, 0 just past its last
  (y = -(right - i + 1) / width); later detections in the same window count
  for nothing;
* a window without a detection costs A_FN (-1);
* a detection outside every window costs A_FP * sigma(y'): y' = |i - right|
  / (width - 1) measured from the end of the window before it (a detection
  just after a window costs almost nothing, one far from it the full A_FP),
  or the full A_FP (sigma = -1) when no window precedes it; y' > 3 counts as
  -1 as well;
* the corpus score is normalized between the null detector (never fires:
  every window a miss) and the perfect one (every window detected at its
  first row: A_TP per window): 100 * (S - S_null) / (S_perfect - S_null).

Profiles (NAB's config/profiles.json): standard A_TP 1, A_FN -1, A_FP -0.11;
reward_low_FP: A_FP -0.22.
"""

import math

PROFILES = {
    "standard": {"tp": 1.0, "fn": 1.0, "fp": 0.11},
    "reward_low_FP": {"tp": 1.0, "fn": 1.0, "fp": 0.22},
}


def scaled_sigmoid(y):
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probationary_length(nrows, percent=0.15):
    return min(math.floor(percent * nrows), percent * 5000)


def window_indices(timestamps, windows):
    """Labelled windows (start, end) as row index pairs: the first row at or
    after the start, the last row at or before the end."""
    out = []
    for w0, w1 in windows:
        lo = next(i for i, t in enumerate(timestamps) if t >= w0)
        hi = max(i for i, t in enumerate(timestamps) if t <= w1)
        out.append((lo, hi))
    return out


def score_series(nrows, wins, detections, profile):
    """Raw NAB score of one series.

    nrows: number of rows; wins: [(first_row, last_row)] sorted; detections:
    row indices where the detector fired.  Returns a dict: score, tp (windows
    detected), fn, fp (scored detections outside the windows), fp_cost, null,
    perfect, and the same counts for the probationary period left out.
    """
    cost = PROFILES[profile]
    prob = probationary_length(nrows)
    max_tp = scaled_sigmoid(-1.0)
    best = {}
    fp = 0
    fp_cost = 0.0
    ignored = 0
    for i in sorted(set(detections)):
        if i < prob:
            ignored += 1
            continue
        inside = next((k for k, (lo, hi) in enumerate(wins) if lo <= i <= hi), None)
        if inside is not None:
            lo, hi = wins[inside]
            width = hi - lo + 1
            y = -(hi - i + 1) / width
            s = scaled_sigmoid(y) * cost["tp"] / max_tp
            best[inside] = max(best.get(inside, -2.0), s)
            continue
        prev = [w for w in wins if w[1] < i]
        if not prev:
            u = -1.0
        else:
            lo, hi = prev[-1]
            width = hi - lo + 1
            u = scaled_sigmoid(abs(hi - i) / (width - 1))
        fp += 1
        fp_cost += u * cost["fp"]
    # windows lying wholly in the probationary period are not scored
    scored = [k for k, (lo, hi) in enumerate(wins) if hi >= prob]
    tp_score = sum(best.get(k, -cost["fn"]) for k in scored)
    return {
        "score": tp_score + fp_cost,
        "tp": sum(1 for k in scored if k in best),
        "fn": sum(1 for k in scored if k not in best),
        "fp": fp,
        "fp_cost": fp_cost,
        "null": -cost["fn"] * len(scored),
        "perfect": cost["tp"] * len(scored),
        "probationary_ignored": ignored,
    }


def normalized(raw, null, perfect):
    if perfect == null:
        return None
    return 100.0 * (raw - null) / (perfect - null)
