"""Accuracy guard: an adaptive reuse threshold driven by audits and a Wilson lower bound on agreement.

A stage that reuses results (``frame_diff``, the redundancy cache) processes a small, seeded random
fraction of the inputs it would have reused (*audits*) and reports how well the reused result agreed
with the fresh one (a score in ``[0, 1]``). The guard keeps, per key, exponentially decayed counts of
audits and agreement (over about ``window`` audits), and a Wilson score lower bound on the agreement
rate. When an audit disagrees and the bound is below the target, or a second audit disagrees within
``min_audits`` audits of the first (sequential evidence that the scene changed, even after a long
agreeing history), the threshold is multiplied by ``tighten`` at once; when the bound is comfortably
above the target (``target + margin``) after at least ``min_audits`` audits, it grows by ``loosen``
(slowly: one step per ``min_audits`` audits at most) up to ``max_threshold``. :meth:`AccuracyGuard.audit_multiplier` tells
the caller to audit ``boost`` times more often while a key has fewer than ``min_audits`` audits and
for ``min_audits`` audits after a disagreement, so that a new key or a changed scene gets evidence
within a few hundred frames and the quiet steady state costs only the base audit rate.

>>> g = AccuracyGuard(threshold=0.02, target=0.95, adaptive=True)
>>> g.observe("cam1", 0.0)         # a reused result turned out wrong: tighten at once
>>> g.threshold("cam1")
0.01
>>> for _ in range(150): g.observe("cam1", 1.0)
>>> round(g.threshold("cam1"), 4) > 0.01   # 150 agreeing audits later it has loosened again
True
"""

from __future__ import annotations

import math
import zlib

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def wilson_lower(successes: float, n: float, z: float = 1.0) -> float:
    """Wilson score lower bound of a binomial proportion (0 when ``n == 0``).

    >>> round(wilson_lower(19, 20, z=1.96), 3)
    0.764
    """
    if n <= 0:
        return 0.0
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(max(p * (1 - p) / n + z2 / (4 * n * n), 0.0))
    return max(0.0, (centre - spread) / (1 + z2 / n))


def key_hash(key) -> int:
    """A stable 32-bit hash of a key (``hash(str)`` is salted per process, this is not)."""
    return zlib.crc32(str(key).encode("utf-8"))


def uniform(seed: int, key, counters: np.ndarray) -> np.ndarray:
    """Deterministic uniforms in [0, 1) for (seed, key, counter): splitmix64, vectorised.

    The draw depends only on the key and the per-key frame counter, never on how the stream was cut
    into batches, so a restart or a different batch size audits exactly the same frames.
    """
    with np.errstate(over="ignore"):
        x = (np.asarray(counters, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.uint64((int(seed) * 0x100000001B3 + key_hash(key)) & 0xFFFFFFFFFFFFFFFF)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class AccuracyGuard:
    """Per-key adaptive threshold (see module docstring). ``adaptive=False`` keeps the threshold fixed
    but still keeps the agreement statistics."""

    def __init__(self, threshold: float, target: float = 0.95, adaptive: bool = False, *,
                 min_threshold: float | None = None, max_threshold: float | None = None,
                 tighten: float = 0.5, loosen: float = 1.1, margin: float = 0.02, z: float = 1.0,
                 window: int = 200, min_audits: int = 10, agree_at: float = 1.0, boost: float = 1.0,
                 loosen_every: int | None = None):
        self.initial = float(threshold)
        self.target = float(target)
        self.adaptive = bool(adaptive)
        self.min_threshold = float(min_threshold if min_threshold is not None else threshold / 64)
        self.max_threshold = float(max_threshold if max_threshold is not None else threshold * 4)
        self.tighten, self.loosen, self.margin, self.z = float(tighten), float(loosen), float(margin), float(z)
        self.decay = 1.0 - 1.0 / max(int(window), 1)
        self.min_audits = int(min_audits)
        self.loosen_every = int(loosen_every if loosen_every is not None else min_audits)   # audits between steps up
        self.agree_at = float(agree_at)
        self.boost = float(boost)
        self.keys: dict = {}

    def _state(self, key) -> dict:
        st = self.keys.get(key)
        if st is None:
            st = self.keys[key] = {"threshold": self.initial, "n": 0.0, "s": 0.0, "audits": 0,
                                   "agree_sum": 0.0, "tightened": 0, "loosened": 0, "alarm": 0}
        return st

    def threshold(self, key) -> float:
        st = self.keys.get(key)
        return self.initial if st is None else st["threshold"]

    def audit_multiplier(self, key, reuse_fraction: float | None = None) -> float:
        """How many times the base audit rate to audit ``key`` now: ``boost`` while it has fewer than
        ``min_audits`` audits, within ``min_audits`` audits of a disagreement, or while its agreement bound is below
        the target (:meth:`effective_target` of ``reuse_fraction``: the evidence cannot confirm it yet; a handful of
        agreeing audits is no proof on a 400-frame clip whose reused results are 15% wrong), else 1."""
        if not self.adaptive or self.boost == 1.0:
            return 1.0
        st = self.keys.get(key)
        if st is None or st["audits"] < self.min_audits or st.get("alarm", 0) > 0:
            return self.boost
        if wilson_lower(st["s"], st["n"], self.z) < round(self.effective_target(reuse_fraction), 12):
            return self.boost
        return 1.0

    def bound(self, key) -> float:
        st = self.keys.get(key)
        return 0.0 if st is None else wilson_lower(st["s"], st["n"], self.z)

    def effective_target(self, reuse_fraction: float | None) -> float:
        """Agreement the *reused* results need so that all results (processed ones agree by definition)
        meet ``target``: ``1 - (1 - target) / reuse_fraction``.

        >>> round(AccuracyGuard(0.1, target=0.95).effective_target(0.5), 6)
        0.9
        """
        if reuse_fraction is None or reuse_fraction <= 0:
            return self.target
        return max(0.0, 1.0 - (1.0 - self.target) / min(1.0, reuse_fraction))

    def observe(self, key, score: float, reuse_fraction: float | None = None) -> None:
        """Record one audit: ``score`` is the agreement of the reused result with the fresh one (0..1).

        With ``reuse_fraction`` (the share of recent results that were reused) the bound is compared with
        :meth:`effective_target` (the target is on all results, and processed ones are exact). The threshold loosens
        at most one step per ``loosen_every`` audits (default ``min_audits``) since it last moved: the bound is mostly about the tighter
        thresholds the audits were drawn under, and the frames a looser one adds agree less (loosening on every
        agreeing audit overshot on a view it was not tuned on: 0.04 -> 0.064, strict 0.90 missed at 0.897)."""
        score = min(max(float(score), 0.0), 1.0)
        st = self._state(key)
        st["n"] = st["n"] * self.decay + 1.0
        st["s"] = st["s"] * self.decay + score
        st["audits"] += 1
        st["agree_sum"] += score
        if not self.adaptive:
            return
        lb = wilson_lower(st["s"], st["n"], self.z)
        target = round(self.effective_target(reuse_fraction), 12)
        recent = st.get("alarm", 0) > 0               # an earlier disagreement within min_audits audits
        st["alarm"] = self.min_audits if score < self.agree_at else max(0, st.get("alarm", 0) - 1)
        st["steady"] = st.get("steady", 0) + 1      # audits since the threshold last moved (or since a restore)
        if score < self.agree_at and (lb < target or recent):
            st["threshold"] = max(self.min_threshold, st["threshold"] * self.tighten)
            st["tightened"] += 1
            st["steady"] = 0
        elif st["n"] >= self.min_audits and lb >= target + self.margin and st["steady"] >= self.loosen_every:
            st["threshold"] = min(self.max_threshold, st["threshold"] * self.loosen)
            st["loosened"] += 1
            st["steady"] = 0

    def stats(self, key) -> dict:
        st = self.keys.get(key) or self._state(key)
        return {"threshold": st["threshold"], "audits": st["audits"],
                "agreement": st["agree_sum"] / st["audits"] if st["audits"] else None,
                "agreement_lower_bound": wilson_lower(st["s"], st["n"], self.z),
                "tightened": st["tightened"], "loosened": st["loosened"]}

    def snapshot(self) -> dict:
        return {k: dict(v) for k, v in self.keys.items()}

    def restore(self, state: dict | None) -> None:
        self.keys = {k: dict(v) for k, v in (state or {}).items()}
