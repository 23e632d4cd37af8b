"""The frame-difference algorithm behind the ``frame_diff`` stage: skip frames that look like the last *processed* one.

:class:`FrameDiffer` is the algorithm (no pipeline needed): per key it keeps the downscaled grayscale
copy of the last processed frame (the *reference*, not the previous frame, so slow drift accumulates
and is caught), compares each new frame with it, and decides: process, or reuse the last result.
A frame is processed when its distance is above the key's threshold, when a forced refresh is due
(``refresh_frames`` frames or ``refresh_seconds`` seconds since the reference), or when it is drawn
for an audit (``audit_rate`` of the frames it would have skipped, seeded, independent of batching).
Audited frames report their agreement back through :meth:`FrameDiffer.observe`, which drives the
:class:`cache.guard.AccuracyGuard` (adaptive threshold).

>>> import numpy as np
>>> fd = FrameDiffer(feature="pixel", threshold=0.01, downscale=4, audit_rate=0.0)
>>> still = np.zeros((48, 64), dtype=np.uint8)
>>> moved = still.copy(); moved[8:24, 8:24] = 255
>>> d = fd.decide(["cam"] * 3, [0.0, 0.1, 0.2], [still, still, moved])
>>> d.process.tolist(), d.reason.tolist(), d.frames_since.tolist()
([True, False, True], ['first', 'reuse', 'changed'], [0, 1, 0])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cache import features as F
from cache.guard import AccuracyGuard, uniform
from pipeline.keys import factorize, group_rows

REASONS = ("reuse", "first", "changed", "forced", "audit", "bad")
REUSE_DECAY = 0.995   # per frame, of the recent share of reused frames (about 200 frames)


@dataclass
class Decision:
    """Per-row outcome of :meth:`FrameDiffer.decide` (arrays of length n)."""
    process: np.ndarray       # bool: run the expensive stage on this row
    reason: np.ndarray        # object: one of REASONS
    distance: np.ndarray      # float: feature distance to the reference (NaN when there was none)
    frames_since: np.ndarray  # int: frames since the last processed frame of the key (0 when processed)
    age_s: np.ndarray         # float: seconds since the last processed frame of the key (0 when processed)
    threshold: np.ndarray     # float: the key's threshold used for the decision
    bad: dict                 # row index -> reason text (wrong shape, not numeric): dead-letter these


class FrameDiffer:
    """Per-key reference frames, feature distances, forced refresh, audits and the accuracy guard."""

    def __init__(self, feature: str = "pixel", threshold: float = 0.01, *, downscale: int = 16, sampling: str = "stride",
                 pixel_threshold: float = 25.0, blocks: int = 8, block_min: float = 0.05, bins: int = 32,
                 norm_ord: float = 2, relative: bool = True, refresh_frames: int | None = None,
                 refresh_seconds: float | None = None, audit_rate: float = 0.05, seed: int = 0,
                 adaptive: bool = False, target: float = 0.95, guard: dict | None = None,
                 confidence_power: float = 0.0, relative_target: bool = True):
        if feature not in F.FEATURES:
            raise ValueError(f"unknown feature {feature!r}; expected one of {F.FEATURES}")
        self.feature = feature
        self.downscale = int(downscale)
        self._min_height = 2 * self.downscale if sampling == "lines" else self.downscale   # `lines`: a row in 2 downscale
        self.sampling = sampling
        self.kw = dict(pixel_threshold=pixel_threshold, blocks=blocks, block_min=block_min, bins=bins,
                       ord=norm_ord, relative=relative)
        self.refresh_frames = refresh_frames
        self.refresh_seconds = refresh_seconds
        self.audit_rate = float(audit_rate)
        self.seed = int(seed)
        self.confidence_power = float(confidence_power)
        self.relative_target = bool(relative_target)   # the target is on all frames, processed ones included
        self.guard = AccuracyGuard(threshold, target, adaptive, **(guard or {}))
        self.keys: dict = {}   # key -> {"ref", "ref_ts", "since", "count", "shape", "run", counters}
        self._scratch: dict = {}   # buffers of the usual one-shape batch, reused between calls (refs are copies)

    # -- preparation -----------------------------------------------------------------------------
    def _prepare(self, data) -> tuple[list, dict]:
        """Reduce the items to their comparison form, one vectorised pass per frame shape.

        Returns ``(groups, bad)``: groups = [(row indices, stacked small copies)], bad = {row: reason}."""
        bad: dict = {}
        x0 = data[0] if len(data) else None
        if type(x0) is np.ndarray and all(type(x) is np.ndarray and x.shape == x0.shape and x.dtype == x0.dtype
                                          for x in data):
            g = self._group(np.arange(len(data)), data, x0.shape, x0.dtype.kind, bad,   # the usual batch: one shape
                            self._scratch)
            return ([g] if g is not None else []), bad
        by_sig: dict = {}
        for i, x in enumerate(data):                # one signature per row; the work is per shape
            if x is None:
                bad[i] = "record has no frame"
                continue
            sig = (x.shape, x.dtype.kind) if type(x) is np.ndarray else None
            by_sig.setdefault(sig, []).append(i)
        groups = []
        for sig, idx in by_sig.items():
            items = [data[i] for i in idx]
            if sig is None:                          # not an ndarray: try to read it as numbers
                arrays = []
                for i, x in zip(idx, items):
                    try:
                        arrays.append((i, np.asarray(x, dtype=np.float64)))
                    except (TypeError, ValueError):
                        bad[i] = f"not a numeric array ({type(x).__name__})"
                for i, a in arrays:                  # rare: one group per row
                    g = self._group([i], [a], a.shape, a.dtype.kind, bad)
                    if g is not None:
                        groups.append(g)
                continue
            g = self._group(idx, items, *sig, bad)
            if g is not None:
                groups.append(g)
        return groups, bad

    def _group(self, idx, items, shape, kind, bad, scratch=None):
        size = math.prod(shape)
        if size == 0 or kind not in "biuf":
            for i in idx:
                bad[i] = f"empty or non-numeric array (dtype kind {kind!r}, shape {shape})"
            return None
        if self.feature == "vector_norm":
            return np.asarray(idx), np.stack([np.asarray(x, np.float64).ravel() for x in items])
        if len(shape) not in (2, 3) or min(shape[:2]) < self.downscale or shape[0] < self._min_height:
            for i in idx:
                bad[i] = (f"frame shape {shape} is not (h, w) or (h, w, c) with h, w >= downscale={self.downscale}"
                          + (f" and h >= {self._min_height} (sampling: lines)" if self.sampling == "lines" else ""))
            return None
        return np.asarray(idx), F.prepare_list(items, self.downscale, self.sampling, scratch)

    # -- decisions -------------------------------------------------------------------------------
    def decide(self, keys, ts, data) -> Decision:
        """Decide for a batch of rows (keys, event timestamps in s, frames or vectors)."""
        n = len(data)
        if n == 1:                                  # a camera's batch of one: scalars, few numpy calls
            got = self.decide_single(keys[0], ts[0], data[0])
            if got is not None:
                hit, why, d, s, a, t = got
                return Decision(np.array([hit]), np.array([why], dtype=object), np.array([d], np.float64),
                                np.array([s], np.int64), np.array([a], np.float64), np.array([t], np.float64), {})
        ts = np.asarray(ts, dtype=np.float64)
        groups, bad = self._prepare(data)
        process = np.zeros(n, bool)
        reason = np.empty(n, dtype=object)
        reason.fill("reuse")
        dist = np.empty(n)
        dist.fill(np.nan)
        since = np.zeros(n, np.int64)
        age = np.zeros(n)
        thr = dist.copy()
        out = Decision(process, reason, dist, since, age, thr, bad)
        if not bad and len(groups) == 1:            # the usual micro-batch: one camera, one frame size
            uniques = [keys[0]] if n == 1 else factorize(keys)[1]
            st = self.keys.get(uniques[0]) if len(uniques) == 1 else None
            if len(uniques) == 1 and (st is None or st["shape"] == groups[0][1].shape[1:]):
                self._decide_key(uniques[0], np.arange(n), ts, groups[0][1], process, reason, dist, since, age, thr)
                return out
        group_of = np.full(n, -1)
        pos = np.zeros(n, np.int64)
        for g, (idx, _) in enumerate(groups):
            group_of[idx] = g
            pos[idx] = np.arange(len(idx))
        kept = np.flatnonzero(group_of >= 0)
        codes, uniques = factorize(keys[kept] if isinstance(keys, np.ndarray) else [keys[i] for i in kept])
        for k, rows in zip(uniques, (kept[g] for g in group_rows(codes, len(uniques)))):
            st = self.keys.get(k)
            gs = group_of[rows]
            want = st["shape"] if st is not None else groups[gs[0]][1].shape[1:]
            same = np.array([groups[g][1].shape[1:] == want for g in range(len(groups))])[gs]
            for i in rows[~same].tolist():          # a shape that differs from the key's reference is bad
                bad[i] = f"shape {np.shape(data[i])} differs from this key's earlier frames"
            rows = rows[same]
            if len(rows):
                gs = gs[same]
                small = (groups[gs[0]][1][pos[rows]] if (gs == gs[0]).all()
                         else np.stack([groups[g][1][p] for g, p in zip(gs, pos[rows])]))
                self._decide_key(k, rows, ts, small, process, reason, dist, since, age, thr)
        for i in bad:
            reason[i] = "bad"
        return out

    def _decide_key(self, k, rows, ts, small, process, reason, dist, since, age, thr):
        """Decide the rows of one key, in order. The loop runs once per processed frame (the reference
        changes there), over a galloping window of distances; every per-row result is written once, after it."""
        st = self.keys.get(k)
        m = len(rows)
        tr = ts[rows]
        first = st is None
        if first:
            st = self.keys[k] = {"ref": small[0].copy(), "ref_ts": float(tr[0]), "since": 0, "count": 0,
                                 "shape": small[0].shape, "run": 8, "frames": 0, "processed": 0,
                                 "audits": 0, "forced": 0}
            self._count(st, "first", 1)
        if m == 1 and not first:
            i = rows[0]
            process[i], reason[i], dist[i], since[i], age[i], thr[i] = self._decide_one(k, st, float(tr[0]), small)
            return
        pos = start = int(first)
        base_since, base_ts = st["since"], st["ref_ts"]
        u = uniform(self.seed, k, st["count"] + np.arange(m)) if self.audit_rate > 0 else None
        rate = self._audit_rate(k) if u is not None else 0.0      # the guard only moves on feedback, not here
        st["count"] += m
        t0 = self.guard.threshold(k)
        t = t0
        if self.confidence_power and st.get("confidence") is not None:
            t = t0 * max(st["confidence"], 1e-3) ** self.confidence_power
        d_all = np.empty(m)
        t_all = np.empty(m)
        hits, whys = ([0], ["first"]) if first else ([], [])
        while pos < m:
            w = min(m - pos, max(4, 2 * st["run"]))              # galloping window: expect a run like the last
            d = F.distance(self.feature, small[pos:pos + w], st["ref"], **self.kw)
            d_all[pos:pos + w] = d
            t_all[pos:pos + w] = t
            changed = d > t
            hit = changed
            forced = None
            if self.refresh_frames or self.refresh_seconds:
                forced = np.zeros(w, bool)
                if self.refresh_frames:
                    forced |= st["since"] + np.arange(1, w + 1) >= self.refresh_frames
                if self.refresh_seconds:
                    forced |= tr[pos:pos + w] - st["ref_ts"] >= self.refresh_seconds
                hit = hit | forced
            if u is not None:
                hit = hit | (u[pos:pos + w] < rate)
            j = int(hit.argmax())
            if not hit[j]:                                      # whole window reused
                st["since"] += w
                st["run"] = st["since"]
                pos += w
                self._count(st, "reuse", w)
                continue
            i = pos + j
            why = "changed" if changed[j] else ("forced" if forced is not None and forced[j] else "audit")
            hits.append(i)
            whys.append(why)
            self._count(st, "reuse", j)
            self._count(st, why, 1)
            st["run"] = st["since"] + j + 1
            st["ref"], st["ref_ts"], st["since"] = small[i].copy(), float(tr[i]), 0
            st["confidence"] = None                         # until the new result's confidence is reported
            t = t0
            pos = i + 1
        r = rows[start:]
        dist[r] = d_all[start:]
        thr[r] = t_all[start:]
        q = np.arange(m)
        last = np.full(m, -1)
        if hits:
            p = rows[hits]
            process[p] = True
            reason[p] = whys
            last[hits] = hits
            last = np.maximum.accumulate(last)                  # per row: the last processed row at or before it
        none = last < 0                                         # reference from an earlier batch
        since[rows] = np.where(none, base_since + q + 1, q - last)
        age[rows] = np.where(none, tr - base_ts, tr - tr[np.maximum(last, 0)])
    def decide_single(self, k, ts_i, x) -> tuple | None:
        """:meth:`decide` for one frame of a known key with the key's frame size, in scalars (with frames not in
        the cache, each numpy call costs microseconds): (processed, reason, distance, frames since, seconds
        since, threshold), the same decision as the general path. None: take the general path."""
        st = self.keys.get(k)
        if (st is None or self.feature == "vector_norm" or type(x) is not np.ndarray or x.ndim not in (2, 3)
                or x.dtype.kind not in "biuf" or x.size == 0 or min(x.shape[:2]) < self.downscale
                or x.shape[0] < self._min_height):
            return None
        small = F.prepare_list((x,), self.downscale, self.sampling, self._scratch)
        if small.shape[1:] != st["shape"]:
            return None
        return self._decide_one(k, st, float(ts_i), small)

    def _decide_one(self, k, st, ts_i, small):
        """:meth:`_decide_key` for one frame of a known key (a camera's batch of one), in scalars: same decisions.
        Returns (processed, reason, distance, frames since, seconds since, threshold)."""
        t = self.guard.threshold(k)
        if self.confidence_power and st.get("confidence") is not None:
            t *= max(st["confidence"], 1e-3) ** self.confidence_power
        d = F.distance(self.feature, small, st["ref"], **self.kw)[0]
        audit = self.audit_rate > 0 and uniform(self.seed, k, np.array([st["count"]]))[0] < self._audit_rate(k)
        st["count"] += 1
        s, a = st["since"] + 1, ts_i - st["ref_ts"]
        changed = d > t
        forced = bool((self.refresh_frames and s >= self.refresh_frames)
                      or (self.refresh_seconds and a >= self.refresh_seconds))
        if not (changed or forced or audit):
            st["since"] = st["run"] = s
            self._count(st, "reuse", 1)
            return False, "reuse", d, s, a, t
        why = "changed" if changed else ("forced" if forced else "audit")
        self._count(st, why, 1)
        st["run"] = s
        st["ref"], st["ref_ts"], st["since"] = small[0].copy(), ts_i, 0
        st["confidence"] = None
        return True, why, d, 0, 0.0, t

    def _audit_rate(self, k) -> float:
        """The base audit rate, raised by the guard while a key has little evidence (at most 1 in 2 frames)."""
        if not self.guard.adaptive or self.guard.boost == 1.0:
            return self.audit_rate
        st = self.keys.get(k)
        m = self.guard.audit_multiplier(k, self.reuse_share(st) if st is not None and self.relative_target else None)
        return self.audit_rate if m == 1.0 else min(max(self.audit_rate, 0.5), self.audit_rate * m)

    @staticmethod
    def _count(st, why, n):
        if n:       # recent share of reused frames (audits count as processed), decay 1/200 per frame
            d = REUSE_DECAY ** n
            st["reuse_ema"] = st.get("reuse_ema", 0.0) * d + (1.0 - d) * (why == "reuse")
        st["frames"] += n
        if why != "reuse":
            st["processed"] += n
        if why == "audit":
            st["audits"] += n
        elif why == "forced":
            st["forced"] += n

    # -- feedback, statistics, state -------------------------------------------------------------
    def observe_confidence(self, key, confidence: float) -> None:
        """Report how confident the result of the key's last processed frame was (0..1, e.g. the margin
        of a rounded count or top-1 minus top-2 probability). With ``confidence_power`` > 0 the threshold
        is scaled by ``confidence ** confidence_power`` until the next processed frame: a result near a
        decision boundary is reused only for smaller changes. Frames of the key that follow a processed frame
        in the same micro-batch use the unscaled threshold (its result is not known yet)."""
        st = self.keys.get(key)
        if st is not None:
            st["confidence"] = min(max(float(confidence), 0.0), 1.0)

    def observe(self, key, score: float) -> None:
        """Report an audit result: agreement (0..1) of the reused result with the fresh one."""
        st = self.keys.get(key)
        self.guard.observe(key, score, self.reuse_share(st) if st is not None and self.relative_target else None)

    @staticmethod
    def reuse_share(st) -> float | None:
        """Recent share of a key's frames that were reused: the decayed mean kept by ``_count``, divided by the
        weight its frames have so far (``1 - REUSE_DECAY ** frames``) so that a young key is not read as mostly
        processed (the running sum starts at 0; uncorrected, 100 frames at 70% reuse read as 27%, which lowered
        the guard's effective target from 0.86 to 0.63 for a 0.90 target and let it loosen on disagreements)."""
        weight = 1.0 - REUSE_DECAY ** st.get("frames", 0)
        return None if weight <= 0 else min(1.0, st.get("reuse_ema", 0.0) / weight)

    def stats(self) -> dict:
        """Per key: frames, processed, skipped, skip_rate, audits, forced, threshold, agreement, bound."""
        out = {}
        for k, st in self.keys.items():
            g = self.guard.stats(k)
            skipped = st["frames"] - st["processed"]
            out[k] = {"frames": st["frames"], "processed": st["processed"], "skipped": skipped,
                      "skip_rate": skipped / st["frames"] if st["frames"] else 0.0,
                      "audits": st["audits"], "forced": st["forced"], **g}
        return out

    def snapshot(self) -> dict:
        return {"keys": {k: {**v, "ref": v["ref"].copy()} for k, v in self.keys.items()},
                "guard": self.guard.snapshot()}

    def restore(self, state: dict | None) -> None:
        state = state or {}
        self.keys = {k: {**v, "ref": np.array(v["ref"])} for k, v in state.get("keys", {}).items()}
        self.guard.restore(state.get("guard"))
