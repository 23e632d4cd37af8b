"""deadband: report by exception, as process historians do it.

A reading of a key passes when one of its fields moved more than ``deviation`` (absolute) or
``percent`` (of the last passed value) away from the last *passed* reading, or when ``max_interval``
seconds elapsed since the last passed reading; but never sooner than ``min_interval`` seconds after
it. The first reading of a key always passes. Suppressed readings are counted; every passed reading
carries how many were suppressed before it.

:class:`Deadband` is the algorithm; it works on a whole micro-batch at once per key (a window of rows
is compared with the last passed value in one numpy expression, the window grows with the run length).

>>> import numpy as np
>>> db = Deadband(deviation=0.5, max_interval=10.0)
>>> v = np.array([[20.0], [20.2], [20.4], [20.6], [20.7], [19.9], [20.0]])
>>> d = db.decide(["pump"] * 7, [0, 1, 2, 3, 4, 5, 16], v)
>>> d.passed.tolist()
[True, False, False, True, False, True, True]
>>> d.suppressed_before.tolist()
[0, 0, 0, 2, 0, 1, 0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DeadbandDecision:
    passed: np.ndarray             # bool (n,)
    reason: np.ndarray             # object (n,): first | moved | max_interval | suppressed
    suppressed_before: np.ndarray  # int (n,): readings of the key suppressed since the last passed one


class Deadband:
    """Per-key last passed values and timestamps (see module docstring)."""

    def __init__(self, deviation: float | None = None, percent: float | None = None,
                 max_interval: float | None = None, min_interval: float = 0.0):
        if deviation is None and percent is None and max_interval is None:
            raise ValueError("deadband needs at least one of deviation, percent, max_interval")
        self.deviation = deviation
        self.percent = percent
        self.max_interval = max_interval
        self.min_interval = float(min_interval or 0.0)
        self.keys: dict = {}   # key -> {"last": (f,) float, "ts": float, "pending": int, counters}

    def _moved(self, vals: np.ndarray, last: np.ndarray) -> np.ndarray:
        diff = np.abs(vals - last[None])
        moved = np.zeros(len(vals), bool)
        with np.errstate(invalid="ignore"):
            if self.deviation is not None:
                moved |= np.any(diff > self.deviation, axis=1)
            if self.percent is not None:
                moved |= np.any(diff > np.abs(last)[None] * (self.percent / 100.0), axis=1)
            # a field absent from the last passed reading but present now counts as moved
            moved |= np.any(np.isnan(last)[None] & ~np.isnan(vals), axis=1)
        return moved

    def decide(self, keys, ts, values) -> DeadbandDecision:
        """``values``: float array (n, f), NaN = field absent in that reading."""
        values = np.asarray(values, dtype=np.float64).reshape(len(keys), -1)
        ts = np.asarray(ts, dtype=np.float64)
        n = len(values)
        passed = np.zeros(n, bool)
        reason = np.full(n, "suppressed", dtype=object)
        before = np.zeros(n, np.int64)
        rows_by_key: dict = {}
        for i, k in enumerate(keys):
            rows_by_key.setdefault(k, []).append(i)
        for k, rows in rows_by_key.items():
            self._decide_key(k, np.asarray(rows), ts, values, passed, reason, before)
        return DeadbandDecision(passed, reason, before)

    def _decide_key(self, k, rows, ts, values, passed, reason, before):
        st = self.keys.get(k)
        pos, m = 0, len(rows)
        if st is None:
            i = rows[0]
            st = self.keys[k] = {"last": values[i].copy(), "ts": float(ts[i]), "pending": 0, "run": 8,
                                 "seen": 1, "passed": 1}
            passed[i], reason[i] = True, "first"
            pos = 1
        while pos < m:
            w = min(m - pos, max(4, 2 * st["run"]))
            r = rows[pos:pos + w]
            last = st["last"]
            if len(last) != values.shape[1]:     # field set changed: treat all as moved
                last = np.full(values.shape[1], np.nan)
            elapsed = ts[r] - st["ts"]
            moved = self._moved(values[r], last)
            late = elapsed >= self.max_interval if self.max_interval is not None else np.zeros(w, bool)
            ok = (moved | late) & (elapsed >= self.min_interval)
            j = int(np.argmax(ok)) if ok.any() else w
            st["seen"] += min(j + 1, w)
            if j == w:
                st["pending"] += w
                st["run"] = st["pending"]
                pos += w
                continue
            i = r[j]
            passed[i] = True
            reason[i] = "moved" if moved[j] else "max_interval"
            before[i] = st["pending"] + j
            st["passed"] += 1
            st["run"] = st["pending"] + j + 1
            st["pending"] = 0
            # absent fields keep their last passed value
            st["last"] = np.where(np.isnan(values[i]), last, values[i])
            st["ts"] = float(ts[i])
            pos += j + 1

    def stats(self) -> dict:
        return {k: {"seen": v["seen"], "passed": v["passed"], "suppressed": v["seen"] - v["passed"]}
                for k, v in self.keys.items()}

    def snapshot(self) -> dict:
        return {k: {**v, "last": v["last"].copy()} for k, v in self.keys.items()}

    def restore(self, state: dict | None) -> None:
        self.keys = {k: {**v, "last": np.array(v["last"], dtype=np.float64)} for k, v in (state or {}).items()}
