"""Evaluate every detector on SKAB with the benchmark's protocol; print a markdown table.

    python benchmarks/eval_skab.py [--data ../shared/data/skab] [--only mad,hst]

Protocol (SKAB v0.9): each of the 34 anomaly files is one experiment and gets its own model (one
key per file, as one device per key in the `anomaly` stage).  The first 400 rows of a file are
learn-only; every later row is scored, then learned (online, as in the stage).  A row is predicted
anomalous when its score is >= the threshold.  Metrics over all scored rows of all files:
point-wise F1, FAR % (false alarms / normal rows), MAR % (missed / anomalous rows); and a
NAB-style changepoint score (Standard / LowFP / LowFN, 0 = no detections, 100 = perfect), where a
detection is the first row of a predicted anomaly run, and each labelled changepoint has a window
of 60 s after it: the first detection inside earns 2/(1+exp(5x))-1 (x = -1 at the window start,
0 at its end), a missed window costs A_FN, a detection outside every window costs A_FP.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.base import make_detector  # noqa: E402

FIELDS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
          "Thermocouple", "Voltage", "Volume Flow RateRMS"]
TRAIN_ROWS = 400
NAB_WINDOW_S = 60
PROFILES = {"Standard": (1.0, -0.11, -1.0), "LowFP": (1.0, -0.22, -1.0), "LowFN": (1.0, -0.11, -2.0)}

# (label, detector, params, threshold, protect): the default configuration comes first
DEFAULT_THRESHOLD = 0.8  # the anomaly stage's default; protect (do not learn flagged rows) = threshold
CONFIGS = [
    ("mad (default)", "mad", {}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("mad, learns every row", "mad", {}, DEFAULT_THRESHOLD, None),
    ("mad, no smoothing", "mad", {"smooth": 1}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("mad", "mad", {}, 0.5, 0.5),
    ("hst (native)", "hst", {"seed": 0}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("hst (native)", "hst", {"seed": 0}, 0.5, 0.5),
    ("river_hst (MinMaxScaler)", "river_hst", {"seed": 0}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("loda", "loda", {"seed": 0}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("loda", "loda", {"seed": 0}, 0.5, 0.5),
    ("one_class_svm", "one_class_svm", {}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("one_class_svm", "one_class_svm", {}, 0.5, 0.5),
    ("sad", "sad", {}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("sad", "sad", {}, 0.5, 0.5),
    ("gaussian", "gaussian", {}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("pad", "pad", {}, DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
    ("pad", "pad", {}, 0.5, 0.5),
]


def load(root: Path):
    import pandas as pd

    files = sorted(p for p in root.glob("*/*.csv") if p.parent.name != "anomaly-free")
    out = []
    for p in files:
        df = pd.read_csv(p, sep=";", parse_dates=["datetime"])
        df = df.sort_values("datetime")
        ts = df["datetime"].astype("int64").to_numpy() / 1e9
        out.append((p.relative_to(root).as_posix(), ts, df[FIELDS].to_numpy(float),
                    df["anomaly"].to_numpy(int), df["changepoint"].to_numpy(int)))
    return out


def run(files, name, params, threshold, protect):
    preds = []
    for _, ts, X, _, _ in files:
        det = make_detector(name, FIELDS, params)
        det.score_learn_many(X[:TRAIN_ROWS])  # learn-only part: scores ignored
        s, warm = det.score_learn_many(X[TRAIN_ROWS:], protect=protect)
        preds.append((s >= threshold) & ~warm)
    return preds


def pointwise(files, preds):
    y = np.concatenate([f[3][TRAIN_ROWS:] for f in files]).astype(bool)
    p = np.concatenate(preds)
    tp, fp, fn, tn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum(), (~y & ~p).sum()
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    return f1, 100 * fp / max(1, fp + tn), 100 * fn / max(1, fn + tp)


def nab(files, preds):
    scores = {}
    for prof, (a_tp, a_fp, a_fn) in PROFILES.items():
        s = s_perfect = s_null = 0.0
        for (_, ts, _, _, cp), pred in zip(files, preds):
            ts, cp = ts[TRAIN_ROWS:], cp[TRAIN_ROWS:]
            det_t = ts[pred & ~np.concatenate([[False], pred[:-1]])]  # rising edges
            windows = [(t, t + NAB_WINDOW_S) for t in ts[cp.astype(bool)]]
            used = np.zeros(len(det_t), dtype=bool)
            for lo, hi in windows:
                inside = np.flatnonzero((det_t >= lo) & (det_t <= hi))
                s_perfect += a_tp * (2 / (1 + math.exp(-5)) - 1)
                s_null += a_fn
                if len(inside):
                    x = (det_t[inside[0]] - hi) / (hi - lo)
                    s += a_tp * (2 / (1 + math.exp(5 * x)) - 1)
                    used[inside] = True
                else:
                    s += a_fn
            s += a_fp * (~used).sum()
        scores[prof] = 100 * (s - s_null) / (s_perfect - s_null)
    return scores


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "skab"))
    ap.add_argument("--only", default="", help="comma-separated detector names to run (default: all)")
    args = ap.parse_args(argv)
    root = Path(args.data)
    if not root.is_dir():
        print(f"SKAB data not found at {root} (expected ../shared/data/skab); skipping the evaluation.")
        return 0
    files = load(root)
    only = set(filter(None, args.only.split(",")))
    print(f"SKAB: {len(files)} files, {sum(len(f[1]) - TRAIN_ROWS for f in files)} scored rows\n")
    print("| configuration | F1 | FAR % | MAR % | NAB Standard | NAB LowFP | NAB LowFN | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    y_all = [np.ones(len(f[1]) - TRAIN_ROWS, dtype=bool) for f in files]
    rows = [("(baseline: every row anomalous)", y_all, 0.0)]
    for label, name, params, thr, protect in CONFIGS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        preds = run(files, name, params, thr, protect)
        rows.append((f"{label} {params or ''}: threshold {thr}, protect {protect}", preds, time.perf_counter() - t0))
    for label, preds, sec in rows:
        f1, far, mar = pointwise(files, preds)
        n = nab(files, preds)
        print(f"| {label} | {f1:.2f} | {far:.1f} | {mar:.1f} | {n['Standard']:.1f} | {n['LowFP']:.1f} "
              f"| {n['LowFN']:.1f} | {sec:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
