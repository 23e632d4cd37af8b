"""The windowed NAB score (Lavin & Ahmad 2015, "Evaluating real-time anomaly detection algorithms"), vectorised
over candidate thresholds so that one threshold per corpus can be chosen on the tuning half.

Per series of n rows with k labelled events:
- the first 15% of the rows are the probationary period: not scored (no event starts there);
- each event gets a window of ``round(0.1 * n / k)`` rows centred on its first row, extended to
  the event's last row when the event is longer (so a flag inside a labelled anomaly is never a
  false positive);
- inside a window only the first flagged row counts: it earns ``A_TP * sigma(y)``, with
  ``sigma(y) = 2 / (1 + exp(5 y)) - 1`` and y the row's position relative to the window's end
  (-1 at the window's first row, 0 at its last); a window without a flag costs ``A_FN``;
- every flagged row outside all windows costs ``A_FP``;
- a corpus (or a family) is normalised: ``100 * (S - S_null) / (S_perfect - S_null)``, where the
  null detector never flags and the perfect one flags each window's first row only.
"""
from __future__ import annotations

import numpy as np

PROFILES = {"Standard": (1.0, 0.11, 1.0), "LowFP": (1.0, 0.22, 1.0), "LowFN": (1.0, 0.11, 2.0)}  # A_TP, A_FP, A_FN
PROBATION = 0.15


def sigma(y):
    return 2.0 / (1.0 + np.exp(5.0 * np.asarray(y, dtype=np.float64))) - 1.0


def windows(n: int, events: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """NAB windows [a, b) in rows for the events of a series of n rows (merged where they overlap)."""
    if not events:
        return []
    half = max(1, round(0.1 * n / len(events))) // 2
    start = int(PROBATION * n)
    out: list[list[int]] = []
    for s, e in sorted(events):
        a, b = max(start, s - half), min(n, max(s + half, e))
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


class SeriesScorer:
    """Everything the score of one series needs, precomputed; `counts(T)` evaluates many thresholds at once."""

    def __init__(self, scores: np.ndarray, n: int, events: list[tuple[int, int]]):
        scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
        self.wins = windows(n, events)
        inside = np.zeros(n, dtype=bool)
        for a, b in self.wins:
            inside[a:b] = True
        scored = np.zeros(n, dtype=bool)
        scored[int(PROBATION * n):] = True
        self.outside = np.sort(scores[scored & ~inside])
        self.n_scored_outside = int((scored & ~inside).sum())
        self.prefix = [np.maximum.accumulate(scores[a:b]) for a, b in self.wins]
        self.best = [float(sigma(-(b - 1 - a) / (b - a))) for a, b in self.wins]  # a flag on the first row

    def counts(self, T: np.ndarray):
        """For thresholds T: (false-positive rows, sum of sigma over detected windows, missed windows)."""
        T = np.asarray(T, dtype=np.float64)
        fp = len(self.outside) - np.searchsorted(self.outside, T, side="left")
        tp_sum = np.zeros(len(T))
        missed = np.zeros(len(T))
        for (a, b), pm in zip(self.wins, self.prefix):
            j = np.searchsorted(pm, T, side="left")  # the first row whose score reaches T
            hit = j < len(pm)
            y = -(b - 1 - (a + np.minimum(j, len(pm) - 1))) / (b - a)
            tp_sum += np.where(hit, sigma(y), 0.0)
            missed += ~hit
        return fp, tp_sum, missed


def corpus_score(scorers: list[SeriesScorer], T: np.ndarray, profile: str) -> np.ndarray:
    """Normalised NAB score of a group of series for each threshold in T (NaN when it has no windows)."""
    a_tp, a_fp, a_fn = PROFILES[profile]
    s = np.zeros(len(T))
    perfect = null = 0.0
    for sc in scorers:
        fp, tp_sum, missed = sc.counts(T)
        s += a_tp * tp_sum - a_fn * missed - a_fp * fp
        perfect += a_tp * sum(sc.best)
        null -= a_fn * len(sc.wins)
    if perfect == null:
        return np.full(len(T), np.nan)
    return 100.0 * (s - null) / (perfect - null)


def candidate_thresholds(scores: list[np.ndarray], k: int = 300) -> np.ndarray:
    """Thresholds to try: score quantiles, dense in the upper tail, plus +inf (never alert)."""
    allv = np.concatenate([np.nan_to_num(np.asarray(s, dtype=np.float64), nan=-np.inf) for s in scores])
    allv = allv[np.isfinite(allv)]
    if not len(allv):
        return np.array([np.inf])
    q = np.unique(np.concatenate([1 - np.geomspace(1e-6, 1.0, k), np.linspace(0, 1, 21)]).clip(0, 1))
    return np.unique(np.concatenate([np.quantile(allv, q), np.nextafter(np.quantile(allv, q), np.inf), [np.inf]]))
