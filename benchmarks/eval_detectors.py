"""Evaluate every detector of the `anomaly` stage, with baselines, on data it was not tuned on.

    python benchmarks/eval_detectors.py                 # the held-out tables (corpus and SKAB), a few minutes
    python benchmarks/eval_detectors.py --only residual,mad --no-skab
    python benchmarks/eval_detectors.py --skab-only --data /path/to/skab
    python benchmarks/eval_detectors.py --tune          # the tuning grid of the default, on the tuning half only
    python benchmarks/eval_detectors.py --half tune     # the same tables, tuned AND scored on the tuning half (development)

Method (fixed before any held-out figure was looked at; docs/detectors.md has the reasoning):
- corpus: benchmarks/corpus.py, 98 generated series in 11 anomalous families plus 8 anomaly-free
  types; even seeds are the tuning half, odd seeds the held-out half.  SKAB (../shared/data/skab):
  even-numbered files tune, odd-numbered files report.
- every detector runs as the stage runs it: a fresh model per series, rows in micro-batches of 100,
  score then learn, `learn: normal` (protect = the stage's default threshold) where it applies.
- ONE threshold per corpus and detector and NAB profile, the one that maximises that profile's score
  on the tuning half (benchmarks/nab.py), is applied to the held-out half.  Baselines: never alert,
  always alert, a rolling z-score over the previous 100 readings.
- false alerts per 10,000 readings: flagged rows of the held-out anomaly-free series after the
  probationary 15%, at the tuned threshold and (for the stage's detectors) at the stage's default.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import FAMILIES, FREE, Series, corpus  # noqa: E402
from nab import PROBATION, PROFILES, SeriesScorer, candidate_thresholds, corpus_score  # noqa: E402

from detectors.base import make_detector  # noqa: E402

SKAB_FIELDS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
               "Thermocouple", "Voltage", "Volume Flow RateRMS"]
BATCH = 100
OLD_THRESHOLD = 0.8  # the stage's threshold for every detector but `residual`
ALERT_RATE = 1e-4  # the stage's default `alert_rate` for `residual`: threshold 1 - 1e-4

# label -> (detector or baseline, params, stage default threshold or None)
DETECTORS = {
    "never alert (baseline)": ("never", {}, None),
    "always alert (baseline)": ("always", {}, None),
    "rolling z-score, 100 (baseline)": ("zscore", {}, None),
    "residual (new default)": ("residual", {}, 1 - ALERT_RATE),
    "residual, season 1d": ("residual", {"season": 86_400.0}, 1 - ALERT_RATE),
    "residual, no adapt": ("residual", {"adapt": None}, 1 - ALERT_RATE),
    "mad (previous default)": ("mad", {}, OLD_THRESHOLD),
    "hst": ("hst", {}, OLD_THRESHOLD),
    "river_hst (MinMaxScaler + river HST)": ("river_hst", {}, OLD_THRESHOLD),
    "loda": ("loda", {}, OLD_THRESHOLD),
    "one_class_svm": ("one_class_svm", {}, OLD_THRESHOLD),
    "sad": ("sad", {}, OLD_THRESHOLD),
    "gaussian": ("gaussian", {}, OLD_THRESHOLD),
    "pad": ("pad", {}, OLD_THRESHOLD),
}
TUNE_GRID = [dict(alpha=a, alpha_fast=f, beta=b, adapt=ad) for a in (0.05, 0.1) for f in (0.5, 0.8)
             for b in (0.005, 0.02) for ad in (30, None)]


def rolling_z(X: np.ndarray, window: int = 100) -> np.ndarray:
    """|x - mean| / std over the previous `window` rows, largest over the fields, as z / (1 + z)."""
    n = len(X)
    c1 = np.vstack([np.zeros((1, X.shape[1])), np.cumsum(X, axis=0)])
    c2 = np.vstack([np.zeros((1, X.shape[1])), np.cumsum(X * X, axis=0)])
    i = np.arange(n)
    lo = np.maximum(0, i - window)
    cnt = (i - lo)[:, None].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (c1[i] - c1[lo]) / cnt
        std = np.sqrt(np.maximum((c2[i] - c2[lo]) / cnt - mean * mean, 0.0))
        z = np.abs(X - mean) / std
    z = np.where(std > 1e-9 * np.maximum(1, np.abs(mean)), z, np.where(np.abs(X - mean) > 1e-9, np.inf, 0.0))
    z = np.nan_to_num(z.max(axis=1), nan=0.0)
    z[: window] = 0.0
    return z / (1 + z)


def scores_of(kind: str, params: dict, protect: float | None, ts: np.ndarray, X: np.ndarray) -> np.ndarray:
    if kind == "never":
        return np.full(len(X), -np.inf)
    if kind == "always":
        return np.ones(len(X))
    if kind == "zscore":
        return rolling_z(X)
    det = make_detector(kind, [f"f{j}" for j in range(X.shape[1])], params)
    timed = getattr(det, "uses_time", False)
    out = []
    for i in range(0, len(X), BATCH):
        if timed:
            s, _ = det.score_learn_many(X[i:i + BATCH], protect, None, ts=ts[i:i + BATCH])
        else:
            s, _ = det.score_learn_many(X[i:i + BATCH], protect)
        out.append(s)
    return np.concatenate(out)


def run(kind, params, default_thr, series: list[Series]) -> list[np.ndarray]:
    protect = default_thr if kind not in ("never", "always", "zscore", "residual") else None
    return [scores_of(kind, params, protect, s.ts, s.x.reshape(len(s.x), -1)) for s in series]


def tune(kind, tune_scores, tune_series) -> dict:
    """The best threshold per profile on the tuning half."""
    if kind in ("never", "always"):
        return {p: (np.inf if kind == "never" else 1.0) for p in PROFILES}
    scorers = [SeriesScorer(s, len(x.x), x.events) for s, x in zip(tune_scores, tune_series)]
    T = candidate_thresholds(tune_scores)
    return {p: float(T[int(np.nanargmax(corpus_score(scorers, T, p)))]) for p in PROFILES}


def false_alerts(scores, series, thr) -> float:
    """Flagged rows per 10,000 scored readings of the anomaly-free series."""
    flagged = total = 0
    for s, x in zip(scores, series):
        if not x.events:
            start = int(PROBATION * len(s))
            flagged += int((s[start:] >= thr).sum())
            total += len(s) - start
    return 1e4 * flagged / max(1, total)


def false_alerts_by_type(scores, series, thr) -> dict[str, tuple[int, int, float]]:
    """Per anomaly-free type: (flagged rows, scored rows, the most flagged per 10,000 on one of its series)."""
    out = {}
    for s, x in zip(scores, series):
        if not x.events:
            start = int(PROBATION * len(s))
            k, n = int((s[start:] >= thr).sum()), len(s) - start
            f, t, worst = out.get(x.family, (0, 0, 0.0))
            out[x.family] = (f + k, t + n, max(worst, 1e4 * k / max(1, n)))
    return out


def evaluate(label, tune_series, report_series, groups) -> dict:
    kind, params, default_thr = DETECTORS[label]
    t0 = time.process_time()
    tune_scores = run(kind, params, default_thr, tune_series)
    rep_scores = run(kind, params, default_thr, report_series)
    sec = time.process_time() - t0
    thr = tune(kind, tune_scores, tune_series)
    scorers = [SeriesScorer(s, len(x.x), x.events) for s, x in zip(rep_scores, report_series)]
    out = {"label": label, "thr": thr, "sec": sec, "scores": rep_scores}
    for p in PROFILES:
        out[p] = float(corpus_score(scorers, np.array([thr[p]]), p)[0])
    out["groups"] = {g: float(corpus_score([scorers[i] for i in idx], np.array([thr["Standard"]]), "Standard")[0])
                     for g, idx in groups.items()}
    if default_thr is not None:
        out["default_std"] = float(corpus_score(scorers, np.array([default_thr]), "Standard")[0])
    out["fa"] = false_alerts(rep_scores, report_series, thr["Standard"])
    out["fa_default"] = false_alerts(rep_scores, report_series, default_thr) if default_thr is not None else None
    if default_thr is not None:
        out["fa_types"] = false_alerts_by_type(rep_scores, report_series, default_thr)
    return out


def fmt(v, spec=".1f"):
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def corpus_tables(labels, half: str = "report") -> None:
    tune_s = corpus("tune")
    rep_s = tune_s if half == "tune" else corpus("report")
    groups = {f: [i for i, s in enumerate(rep_s) if s.family == f] for f in FAMILIES}
    n_free = sum(len(s.x) for s in rep_s if not s.events)
    what = ("TUNING half (thresholds tuned and scored on it: for development, not a result)" if half == "tune" else
            f"held-out half: {len(rep_s)} series ({len(tune_s)} more tuned the thresholds)")
    print(f"## Generated corpus, {what}, {sum(len(s.x) for s in rep_s):,} readings, {n_free:,} of them anomaly-free\n")
    results = [evaluate(lb, tune_s, rep_s, groups) for lb in labels]
    print("| detector | NAB Standard | LowFP | LowFN | threshold (tuned) | false alerts / 10k | "
          "at the stage default: NAB Standard | false alerts / 10k | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['label']} | {fmt(r['Standard'])} | {fmt(r['LowFP'])} | {fmt(r['LowFN'])} | "
              f"{fmt(r['thr']['Standard'], '.6g')} | {fmt(r['fa'], '.2f')} | {fmt(r.get('default_std'))} | "
              f"{fmt(r['fa_default'], '.2f')} | {r['sec']:.1f} |")
    print(f"\n### NAB Standard per family ({'tuning' if half == 'tune' else 'held-out'} half, the tuned corpus threshold)\n")
    print("| detector | " + " | ".join(FAMILIES) + " |")
    print("|---|" + "---|" * len(FAMILIES))
    for r in results:
        print(f"| {r['label']} | " + " | ".join(fmt(r["groups"][f], ".0f") for f in FAMILIES) + " |")
    print(f"\n### False alerts per anomaly-free type at the stage default threshold ({'tuning' if half == 'tune' else 'held-out'} "
          "half): flagged rows / scored rows (the most on one series, per 10,000)\n")
    print("| detector | " + " | ".join(t.removeprefix("free_") for t in FREE) + " | worst series / 10k |")
    print("|---|" + "---|" * (len(FREE) + 1))
    for r in results:
        if "fa_types" in r:
            cells = [r["fa_types"].get(t, (0, 0, 0.0)) for t in FREE]
            print(f"| {r['label']} | " + " | ".join(f"{f} / {n:,}" for f, n, _ in cells)
                  + f" | {max(w for _, _, w in cells):.2f} |")
    print(flush=True)


def load_skab(root: Path):
    import pandas as pd

    files = sorted(p for p in root.glob("*/*.csv") if p.parent.name != "anomaly-free")
    out = []
    for i, p in enumerate(files):
        df = pd.read_csv(p, sep=";", parse_dates=["datetime"]).sort_values("datetime")
        y = df["anomaly"].to_numpy(int)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], y, [0]])))
        ev = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if a >= PROBATION * len(y)]
        s = Series(p.parent.name, i, df["datetime"].astype("int64").to_numpy() / 1e9, df[SKAB_FIELDS].to_numpy(float),
                   ev)
        s.labels = y
        out.append(s)
    return out


def skab_table(root: Path, labels, half: str = "report") -> None:
    if not root.is_dir():
        print(f"SKAB data not found at {root} (expected ../shared/data/skab); skipping SKAB.")
        return
    files = load_skab(root)
    tune_s, rep_s = files[0::2], files[1::2]
    if half == "tune":
        rep_s = tune_s
        print(f"## SKAB v0.9, TUNING half: {len(rep_s)} files (thresholds tuned and scored on them: development only)\n")
    else:
        print(f"## SKAB v0.9, held-out half: {len(rep_s)} files (the other {len(tune_s)} tuned the thresholds)\n")
    print("| detector | NAB Standard | LowFP | LowFN | F1 | FAR % | MAR % | CPU s |")
    print("|---|---|---|---|---|---|---|---|")
    for lb in labels:
        r = evaluate(lb, tune_s, rep_s, {})
        y, p = [], []
        for s, x in zip(r["scores"], rep_s):
            start = int(PROBATION * len(s))
            y.append(x.labels[start:].astype(bool))
            p.append(s[start:] >= r["thr"]["Standard"])
        y, p = np.concatenate(y), np.concatenate(p)
        tp, fp, fn, tn = (y & p).sum(), (~y & p).sum(), (y & ~p).sum(), (~y & ~p).sum()
        f1 = 2 * tp / max(1, 2 * tp + fp + fn)
        print(f"| {lb} | {fmt(r['Standard'])} | {fmt(r['LowFP'])} | {fmt(r['LowFN'])} | {f1:.2f} | "
              f"{100 * fp / max(1, fp + tn):.1f} | {100 * fn / max(1, fn + tp):.1f} | {r['sec']:.1f} |", flush=True)


def tune_grid() -> None:
    """The default's parameters, chosen on the tuning half only (its own threshold per configuration)."""
    tune_s = corpus("tune")
    groups = {f: [i for i, s in enumerate(tune_s) if s.family == f] for f in FAMILIES}
    print("| params (tuning half only) | NAB Standard | worst family | false alerts / 10k at 1 - 1e-4 |")
    print("|---|---|---|---|")
    for params in TUNE_GRID:
        DETECTORS["_grid"] = ("residual", params, 1 - ALERT_RATE)
        r = evaluate("_grid", tune_s, tune_s, groups)
        worst = min(r["groups"].values())
        print(f"| {params} | {r['Standard']:.1f} | {worst:.0f} | {r['fa_default']:.2f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "skab"))
    ap.add_argument("--only", default="", help="comma-separated detector names (baselines always run)")
    ap.add_argument("--no-skab", action="store_true", help="only the generated corpus")
    ap.add_argument("--skab-only", action="store_true", help="only SKAB")
    ap.add_argument("--half", choices=["report", "tune"], default="report",
                    help="`tune`: tune and score on the tuning half (for development); default: the held-out half")
    ap.add_argument("--tune", action="store_true", help="print the tuning grid (tuning half only) and stop")
    args = ap.parse_args(argv)
    if args.tune:
        tune_grid()
        return 0
    only = set(filter(None, args.only.split(",")))
    labels = [lb for lb, (kind, _, _) in DETECTORS.items()
              if not only or kind in only or kind in ("never", "always", "zscore")]
    if not args.skab_only:
        corpus_tables(labels, args.half)
    if not args.no_skab:
        skab_table(Path(args.data), labels, args.half)
    return 0


if __name__ == "__main__":
    sys.exit(main())
