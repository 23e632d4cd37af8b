"""Development diagnostics for the residual detector, never on the held-out half: per family and series,
the false-positive rows and each event's detection delay at the threshold tuned on the same pool.

    python benchmarks/diagnose_detectors.py [--pool tune,dev] [--params '{"adapt": null}'] [--families a,b]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import FAMILIES, corpus  # noqa: E402
from eval_detectors import scores_of, tune  # noqa: E402
from nab import SeriesScorer, corpus_score  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", default="tune,dev", help="comma-separated corpus halves: tune, dev (never report)")
    ap.add_argument("--params", default="{}", help="residual parameters as JSON")
    ap.add_argument("--families", default="", help="comma-separated families to list series of")
    a = ap.parse_args()
    if "report" in a.pool:
        raise SystemExit("the report half is held out: not for diagnostics")
    series = [s for h in a.pool.split(",") for s in corpus(h)]
    params = json.loads(a.params)
    res = {}
    for kind in ("zscore", "residual"):
        sc = [scores_of(kind, params if kind == "residual" else {}, None, s.ts, s.x.reshape(len(s.x), -1))
              for s in series]
        thr = tune(kind, sc, series)["Standard"]
        scorers = [SeriesScorer(x, len(s.x), s.events) for x, s in zip(sc, series)]
        total = float(corpus_score(scorers, np.array([thr]), "Standard")[0])
        fams = {f: float(corpus_score([scorers[i] for i, s in enumerate(series) if s.family == f],
                                      np.array([thr]), "Standard")[0]) for f in FAMILIES}
        res[kind] = (sc, thr, scorers)
        print(f"{kind}: threshold {thr:.6g}, Standard {total:.1f}; per family "
              + ", ".join(f"{f} {v:.0f}" for f, v in fams.items()))
    want = set(filter(None, a.families.split(",")))
    for kind, (sc, thr, scorers) in res.items():
        print(f"\n## {kind} at {thr:.6g}")
        for s, x, so in zip(series, sc, scorers):
            if want and s.family not in want:
                continue
            fp = int((so.outside >= thr).sum())
            dets = []
            for (ws, we), (es, _) in zip(so.wins, sorted(s.events)):
                hit = np.flatnonzero(x[ws:we] >= thr)
                dets.append("miss" if not len(hit) else f"{ws + hit[0] - es:+d}")
            top = np.sort(so.outside)[-3:][::-1]
            print(f"{s.family:18s} seed {s.seed:2d}: fp {fp:3d}  events {dets}  top outside "
                  f"{[round(float(v), 6) for v in top]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
