"""The cross-key engine of `residual`: the states of all keys of one stage as arrays, a batch in rank passes.

`ResidualBank` is an exact port of `ResidualDetector` (and its `TailCalibrator`) for many keys at once:
slot ``i`` holds what one detector holds (level, scale, runs, calibrator histogram, ...), and a batch is
processed in one vectorised pass per rank (the r-th row of every key in the batch, all keys at once).
Per key the rows are processed in the same "calls" as `ResidualDetector.score_learn_many` (a call ends
at the segment end, when the calibrator's frozen rows are used up, when a run adapts, or at the end of
the key's rows in the batch), so the scores and warming flags are the same floats as the per-key
detector fed the same rows (tests/detectors/test_residual_bank.py).

Each step of the per-row algorithm is one function below, named as in `ResidualDetector`:
`_warm` (warm-up), `_start_calls`, `_forecast` (deseasonalise, clip to the band: the slow columns around
the anchor, the fast ones around the median of the key's previous three readings), `_learn_level` (the
closed-form prefix sum, run sequentially), `_linear` (Brown's forecast, its second smoothing's prefix sum,
and the raw score of the forecast with the smallest scale), `_trend` (the slow level against its baseline,
the same prefix sum), `_adapt_row` (runs of rows out of band), `_stuck` (detectors/stuck.py, one row of
every key), the calibrated score (two calibrators, the residual channel's and the trend channel's, and the
stuck channel's tail probability), `_note_step` (the three smallest steps), then at a call's end
`_calibrate` (hold, feed the calibrators: `CalibratorBank` in detectors/calibrate_bank.py, drop a run that
became a regime) and `_end_segment` (`_learn_scale` for each scale, floor, the stuck channel's frozen
chances, profile).

`export(slot)` gives a key's state as `ResidualDetector.state()` data and `load(slot, state)` takes one
(detectors/residual_bank_state.py), so checkpoints and spill files stay those of a per-key detector.
"""
from __future__ import annotations

import numpy as np

from .calibrate_bank import CalibratorBank
from .residual import RECENT, STEPS, WAIT, ResidualDetector
from .residual_forms import pick_raw
from .residual_bank_state import export_slot, load_slot
from .stuck import FIELDS as STUCK_FIELDS
from .stuck import freeze as stuck_freeze
from .stuck import step as stuck_step
from .slots import SlotArrays, rank_passes

__all__ = ["ResidualBank"]


class ResidualBank:
    """One `ResidualDetector` per slot, as arrays; `proto` (a fresh detector) gives the parameters."""

    def __init__(self, proto: ResidualDetector, capacity: int = 16):
        p = proto
        self.template = p.state()
        d = len(p.fields)
        c = 2 * d
        self.d, self.c = d, c
        self.alpha, self.beta, self.clip = p.alpha, p.beta, p.clip
        self.R, self.M = p.refresh, p.min_samples
        self.season, self.bins, self.season_rate = p.season, p.season_bins, p.season_rate
        self.adapt_rows, self.adapt_s, self.H = p.adapt_rows, p.adapt_s, p.hold
        self.trend_rate = p.trend_rate
        self.stuck = p.stuck
        # the powers of the level's closed form, computed as ResidualDetector._segment computes them
        j = np.arange(self.R + 1)[:, None]
        r = 1 - self.alpha
        self.A, self.B, self.C = r ** (j + 1), self.alpha * r ** j, r ** -j
        if self.trend_rate is not None:  # and those of the trend baseline's (ResidualDetector._baseline)
            g = self.trend_rate
            self.gA, self.gB, self.gC = (1 - g) ** (j + 1), g * (1 - g) ** j, (1 - g) ** -j
        self.w = [None] + [self.beta * (1 - self.beta) ** np.arange(k - 1, -1, -1.0) for k in range(1, self.R + 1)]
        self.keep = np.array([1.0] + [(1 - self.beta) ** k for k in range(1, self.R + 1)])
        R, H, B = self.R, self.H, self.bins
        f8, i8 = np.float64, np.int64
        specs = {
            "n": ((), i8, 0), "since": ((), i8, 0), "t0": ((), f8, 0.0), "warm_waited": ((), i8, 0),
            "level": ((c,), f8, 0.0), "anchor": ((c,), f8, 0.0), "scale": ((c,), f8, 0.0), "floor": ((c,), f8, 0.0),
            "steps": ((STEPS, d), f8, np.inf), "last": ((d,), f8, np.nan), "warm": ((self.M, d), f8, 0.0),
            "recent": ((RECENT, d), f8, 0.0),
            "seg_len": ((), i8, 0), "seg_sum": ((c,), f8, 0.0), "seg_y": ((R, c), f8, 0.0), "seg_r": ((R, c), f8, 0.0),
            "run": ((c,), i8, 0), "run_sign": ((c,), f8, 0.0), "run_start": ((c,), f8, 0.0), "run_sum": ((c,), f8, 0.0),
            "held": ((H + R, 2), f8, 0.0), "held_len": ((), i8, 0),
            # the linear forecast: Brown's second smoothing of the slow level, its running sum, its scale
            "smooth2": ((d,), f8, 0.0), "smooth2_anchor": ((d,), f8, 0.0), "s2_sum": ((d,), f8, 0.0),
            "lin_scale": ((d,), f8, 0.0), "seg_lin": ((R, d), f8, 0.0),
            # the stuck channel (detectors.stuck)
            "srun": ((d,), i8, 0), "srep": ((d,), f8, 0.0), "srows": ((d,), f8, 0.0), "scont": ((d,), f8, 0.0),
            "sstop": ((d,), f8, 0.0), "sq1": ((d,), f8, 0.5), "sq": ((d,), f8, 0.5), "sstart": ((d,), f8, 0.0),
            "srmax": ((d,), f8, 0.0),
            # within a batch only: the rows left in the open call of each key
            "call_left": ((), i8, 0),
        }
        if self.trend_rate is not None:  # without it the trend state stays as the warm-up left it
            specs.update({"base": ((d,), f8, 0.0), "base_anchor": ((d,), f8, 0.0), "tscale": ((d,), f8, 0.0),
                          "base_sum": ((d,), f8, 0.0), "seg_t": ((R, d), f8, 0.0)})
        else:
            specs.update({"base": ((d,), f8, 0.0), "tscale": ((d,), f8, 0.0)})
        if self.season is not None:
            specs.update({"profile": ((B, d), f8, 0.0), "visits": ((B,), f8, 0.0),
                          "pbins": ((R,), i8, 0), "pres": ((R, d), f8, 0.0)})
        self.a = SlotArrays(specs, capacity)
        self.cal = CalibratorBank(p.cal, capacity)
        self.tcal = CalibratorBank(p.tcal, capacity)  # the trend channel's (it learns zeros when that is off)

    def grow(self, need: int) -> None:
        """Room for slots 0 .. need - 1."""
        for arrays in (self.a, self.cal.a, self.tcal.a):
            arrays.grow(need)

    def reset(self, slots: np.ndarray) -> None:
        """Slots `slots` back to a fresh key's state."""
        for arrays in (self.a, self.cal.a, self.tcal.a):
            arrays.reset(slots)

    @property
    def bytes_per_key(self) -> int:
        return (self.a.nbytes + self.cal.a.nbytes + self.tcal.a.nbytes) // max(self.a.capacity, 1)

    # ------------------------------------------------------------------ a batch
    def score_learn(self, slots: np.ndarray, X: np.ndarray, ts: np.ndarray, learn: np.ndarray):
        """Score then learn each row (of key slot `slots[i]`) in order; returns (scores, warming)."""
        n = len(slots)
        scores, warming = np.zeros(n), np.zeros(n, dtype=bool)
        if n == 0:
            return scores, warming
        a = self.a
        for rows, left in rank_passes(slots):
            s = slots[rows]
            cold = a.n[s] < self.M
            if cold.any():
                i = np.flatnonzero(cold)
                self._warm(s[i], X[rows[i]], ts[rows[i]], learn[rows[i]])
                warming[rows[i]] = True
                if cold.all():
                    continue
                i = np.flatnonzero(~cold)
                rows, left, s = rows[i], left[i], s[i]
            scores[rows], warming[rows] = self._rows(s, X[rows], ts[rows], learn[rows], left)
        return scores, warming

    def _rows(self, s, X, ts, learn, left):
        """One row of each slot `s` (distinct) past its warm-up: the body of `ResidualDetector._segment`."""
        a, d = self.a, self.d
        self._start_calls(s, left)
        Y, Yc, Xd, scale, band, phase = self._forecast(s, X, ts)
        L_before = a.level[s]
        li = np.flatnonzero(learn)
        sl = s[li]
        self._learn_level(sl, Yc[li])
        Rz = Y - L_before
        absR = np.abs(Rz)
        raw = self._linear(s, li, Xd, L_before, absR, scale)
        traw = np.zeros(len(s))
        if self.trend_rate is not None:
            traw = self._trend(s, li, L_before, scale, band)
        cut, run_len, jump = self._adapt_row(s, Rz, absR, band, Y, ts, learn)
        stuck = self._stuck(s, X, ts, learn) if self.stuck else None
        ready = self.cal.a.ready[s]
        out = np.zeros(len(s))
        if ready.any():  # the channels: the smallest tail probability times their number (Bonferroni)
            k = np.flatnonzero(ready)
            p, n = self.cal.tail_probability(s[k], raw[k]), 1
            if self.trend_rate is not None:
                p, n = np.minimum(p, self.tcal.tail_probability(s[k], traw[k])), n + 1
            if stuck is not None:  # counted where a watched field repeats
                p, n = np.minimum(p, stuck[0][k]), n + stuck[1][k]
            out[k] = 1.0 - np.minimum(1.0, n * p)
        self._hold(s, raw, traw, ts, learn)
        j = a.seg_len[sl]
        a.seg_r[sl, j] = np.minimum(absR[li], band[li])  # bounded influence
        if self.season is not None:
            a.pbins[sl, j] = phase[li]
            a.pres[sl, j] = X[li] - L_before[li, :d]
        a.seg_len[sl] += 1
        self._note_step(sl, X[li])
        a.recent[sl] = np.concatenate((a.recent[sl, 1:], Xd[li, None, :]), axis=1)
        a.n[sl] += 1
        a.since[s] += 1
        a.call_left[s] -= 1
        ends = np.flatnonzero((a.call_left[s] == 0) | cut)
        if len(ends):
            e = s[ends]
            c = np.flatnonzero(cut)
            if len(c):  # adapt (the call's last row): a column whose run became a regime restarts at its mean
                sc = s[c]
                a.level[sc] = np.where(np.isnan(jump), a.level[sc], jump)
                a.smooth2[sc] = np.where(np.isnan(jump[:, :d]), a.smooth2[sc], jump[:, :d])  # no slope from a jump
                if self.trend_rate is not None:  # the baseline restarts with the slow level: a regime is no drift
                    a.base[sc] = np.where(np.isnan(jump[:, :d]), a.base[sc], jump[:, :d])
            a.call_left[e] = 0
            self._calibrate(e, run_len[ends])
            seg = e[(a.since[e] >= self.R) | cut[ends]]
            if len(seg):
                self._end_segment(seg)
        return out, ~ready

    # ------------------------------------------------------------------ the steps, one function each
    def _warm(self, s, X, ts, learn) -> None:
        """`ResidualDetector._warm` for the learned rows: collect, then start level and scale."""
        a = self.a
        i = np.flatnonzero(learn)
        if not len(i):
            return
        s, X, ts = s[i], X[i], ts[i]
        self._note_step(s, X)
        first = a.n[s] == 0
        a.t0[s[first]] = ts[first]  # event time of the first reading learned
        a.warm[s, a.n[s]] = X
        a.n[s] += 1
        for slot in s[a.n[s] == self.M].tolist():
            W = a.warm[slot]
            if (W == W[0]).all() and a.warm_waited[slot] < WAIT * self.M:  # nothing changed yet: wait for a change
                a.warm[slot, :-1] = W[1:].copy()
                a.n[slot] -= 1
                a.warm_waited[slot] += 1
                continue
            level = np.tile(np.median(W, axis=0), 2)
            a.level[slot] = level
            a.anchor[slot] = level
            dev = np.abs(np.diff(W, axis=0)).mean(axis=0) * 1.2533 / np.sqrt(2)  # noise from successive changes
            floor = self._floor(a.steps[slot, -1], level)
            a.floor[slot] = floor
            spread = np.abs(W - np.median(W, axis=0)).mean(axis=0) * 1.2533  # the slow forecast's residuals
            a.scale[slot] = np.maximum(np.concatenate([spread, np.sqrt(2) * dev]), floor)
            a.base[slot] = level[:self.d]
            alpha = self.alpha[0]
            a.tscale[slot] = dev * np.sqrt(alpha / (2 - alpha))  # the spread of an EWMA of white noise
            a.recent[slot] = W[-RECENT:]
            a.smooth2[slot] = level[:self.d]
            a.smooth2_anchor[slot] = level[:self.d]
            a.lin_scale[slot] = a.scale[slot, self.d:]
            if self.trend_rate is not None:
                a.base_anchor[slot] = level[:self.d]

    def _start_calls(self, s, left) -> None:
        """Keys without an open call open one: as many rows as `score_learn_many` gives one `_segment` call."""
        a = self.a
        i = np.flatnonzero(a.call_left[s] == 0)
        if len(i):
            o = s[i]
            a.call_left[o] = np.minimum(np.minimum(left[i], self.R - a.since[o]), self.cal.frozen_rows(o))

    def _phase(self, ts):
        return (np.floor(np.mod(ts, self.season) / self.season * self.bins)).astype(np.int64) % self.bins

    def _forecast(self, s, X, ts):
        """Deseasonalised readings (once per forecast), the frozen scale, the band, the clipped readings: the
        slow columns' around the segment's anchor, the fast ones' around the median of the previous RECENT."""
        a = self.a
        phase = None
        Xd = X
        if self.season is not None:
            phase = self._phase(ts)
            Xd = X - a.profile[s, phase]
        Y = np.concatenate((Xd, Xd), axis=1)
        scale = np.maximum(a.scale[s], a.floor[s])
        band = self.clip * scale
        centre = a.anchor[s]
        centre[:, self.d:] = np.median(a.recent[s], axis=1)
        Yc = np.minimum(np.maximum(Y, centre - band), centre + band)  # bounded influence on the level
        return Y, Yc, Xd, scale, band, phase

    def _learn_level(self, s, Yc) -> None:
        """L_j = r^(j+1) anchor + alpha r^j sum_k r^-k y_k, the sum run row by row (np.cumsum's order)."""
        a = self.a
        j = a.seg_len[s]
        term = Yc * self.C[j]
        S = np.where((j == 0)[:, None], term, a.seg_sum[s] + term)
        a.seg_sum[s] = S
        a.seg_y[s, j] = Yc
        a.level[s] = self.A[j] * a.anchor[s] + self.B[j] * S

    def _trend(self, s, li, L_before, scale, band):
        """The trend channel's raw score (the slow level against its baseline before the row), then the
        baseline learns the learned rows' slow levels: B_j = r^(j+1) B_anchor + g r^j sum_k r^-k L_k."""
        a, d = self.a, self.d
        T = np.abs(L_before[:, :d] - a.base[s])
        floor = a.floor[s, :d]
        tscale = np.maximum(a.tscale[s], floor)
        reach = 2 * self.alpha[:d] * band[:, :d]  # how far two readings can move the slow level: not a drift
        traw = (np.maximum(T - reach, 0.0) / tscale).max(axis=1)
        sl = s[li]
        j = a.seg_len[sl]
        a.seg_t[sl, j] = np.minimum(T[li], self.clip * tscale[li])
        term = a.level[sl, :d] * self.gC[j]
        S = np.where((j == 0)[:, None], term, a.base_sum[sl] + term)
        a.base_sum[sl] = S
        a.base[sl] = self.gA[j] * a.base_anchor[sl] + self.gB[j] * S
        return traw

    def _linear(self, s, li, Xd, L_before, absR, scale):
        """The raw score with the linear forecast (Brown's: the slow level and its EWMA S2, before the row),
        then S2 learns the learned rows' slow levels: S2_j = r^(j+1) S2_anchor + a r^j sum_k r^-k L_k."""
        a, d = self.a, self.d
        g = self.alpha[:d]
        S1 = L_before[:, :d]
        R_lin = Xd - (S1 + (S1 - a.smooth2[s]) / (1 - g))
        lin_scale = np.maximum(a.lin_scale[s], a.floor[s, :d])
        z = absR / scale
        raw = pick_raw(z[:, :d], z[:, d:], np.abs(R_lin) / lin_scale, scale[:, :d], scale[:, d:], lin_scale)
        sl = s[li]
        j = a.seg_len[sl]
        a.seg_lin[sl, j] = np.minimum(np.abs(R_lin[li]), self.clip * lin_scale[li])
        term = a.level[sl, :d] * self.C[j, :d]
        S = np.where((j == 0)[:, None], term, a.s2_sum[sl] + term)
        a.s2_sum[sl] = S
        a.smooth2[sl] = self.A[j, :d] * a.smooth2_anchor[sl] + self.B[j, :d] * S
        return raw

    def _stuck(self, s, X, ts, learn):
        """The stuck channel for one row of each key (`detectors.stuck.step`, before `_note_step` moves `last`)."""
        a = self.a
        st = {k: getattr(a, k)[s] for k in STUCK_FIELDS}  # copies (fancy indexing), written back below
        out = stuck_step(X, a.last[s], st, ts, learn, self.adapt_rows, self.adapt_s, 0.5 ** (1.0 / self.cal.half_life))
        for k, v in st.items():
            getattr(a, k)[s] = v
        return out

    def _adapt_row(self, s, Rz, absR, band, Y, ts, learn):
        """`ResidualDetector._adapt_row` for one row per key: returns (cut, run_len, jump of the cut keys)."""
        cut, run_len = np.zeros(len(s), dtype=bool), np.zeros(len(s), dtype=np.int64)
        if self.adapt_rows is None and self.adapt_s is None:
            return cut, run_len, None
        a = self.a
        sign = np.where(absR > band, np.sign(Rz), 0.0)
        hot = learn & (sign != 0).any(axis=1)
        calm = s[learn & ~hot]  # a learned row in band ends every run
        a.run[calm], a.run_sign[calm] = 0, 0.0
        h = np.flatnonzero(hot)
        if not len(h):
            return cut, run_len, None
        sh, sg, th = s[h], sign[h], ts[h][:, None]
        cont = (sg != 0) & (sg == a.run_sign[sh])
        run = np.where(cont, a.run[sh] + 1, (sg != 0).astype(np.int64))
        start = np.where(cont, a.run_start[sh], th)
        total = np.where(cont, a.run_sum[sh] + Y[h], np.where(sg != 0, Y[h], 0.0))
        long = (run >= self.adapt_rows) if self.adapt_rows else (run > 0) & (th - start >= self.adapt_s)
        jump = None
        k = np.flatnonzero(long.any(axis=1))
        if len(k):
            lk = long[k]
            jump = np.where(lk, total[k] / np.maximum(run[k], 1), np.nan)  # NaN: the column keeps its own level
            run_len[h[k]] = np.where(lk, run[k], 0).max(axis=1)
            cut[h[k]] = True
            run[k] = np.where(lk, 0, run[k])
            sg[k] = np.where(lk, 0.0, sg[k])
        a.run[sh], a.run_sign[sh], a.run_start[sh], a.run_sum[sh] = run, sg, start, total
        return cut, run_len, jump

    def _hold(self, s, raw, traw, ts, learn) -> None:
        """Queue the learned rows' raw scores (the calibrator gets them at the call's end, `hold` rows late)."""
        a = self.a
        keep = learn
        if self.season is not None:  # the first two cycles: the profile is not there yet
            keep = learn & (ts - a.t0[s] >= 2 * self.season)
        k = s[keep]
        a.held[k, a.held_len[k], 0] = raw[keep]
        a.held[k, a.held_len[k], 1] = traw[keep]
        a.held_len[k] += 1

    def _note_step(self, s, X) -> None:
        """Resolution: the STEPS smallest positive changes between learned readings."""
        a = self.a
        diff = np.abs(X - a.last[s])
        diff[~(diff > 0)] = np.inf
        a.steps[s] = np.sort(np.concatenate((a.steps[s], diff[:, None, :]), axis=1), axis=1)[:, :STEPS]
        a.last[s] = X

    def _calibrate(self, e, dropped) -> None:
        """`ResidualDetector._calibrate` at the end of a call: pass on what is more than `hold` rows old,
        then drop a run that became a regime."""
        a, H = self.a, self.H
        hl = a.held_len[e]
        push = np.maximum(hl - H, 0)
        p = np.flatnonzero(push)
        if len(p):
            ep, pu = e[p], push[p]
            rows = np.repeat(ep, pu)
            col = np.arange(len(rows)) - np.repeat(np.cumsum(pu) - pu, pu)
            self.cal.add(ep, pu, a.held[rows, col, 0])
            self.tcal.add(ep, pu, a.held[rows, col, 1])
            if H:
                idx = np.minimum(pu[:, None] + np.arange(H), H + self.R - 1)
                a.held[ep, :H] = np.take_along_axis(a.held[ep], idx[:, :, None], axis=1)
            hl = hl.copy()
            hl[p] -= pu
        a.held_len[e] = np.maximum(hl - dropped, 0)

    @staticmethod
    def _floor(step, level):
        step = np.where(np.isfinite(step), step, 0.0)
        return np.maximum(0.5 * np.tile(step, 2), 1e-9 * np.maximum(1.0, np.abs(level)))

    def _end_segment(self, g) -> None:
        """`ResidualDetector._end_segment`: a new anchor and floor; the scale learns the segment's residuals."""
        a = self.a
        a.since[g] = 0
        if self.stuck:
            a.sq1[g], a.sq[g] = stuck_freeze({k: getattr(a, k)[g] for k in STUCK_FIELDS})
        a.anchor[g] = a.level[g]
        step = a.steps[g, -1]  # the resolution: a step seen STEPS times (a spike on a constant is only two)
        step = np.where(np.isfinite(step), step, 0.0)
        a.floor[g] = np.maximum(0.5 * np.concatenate((step, step), axis=1), 1e-9 * np.maximum(1.0, np.abs(a.level[g])))
        k = a.seg_len[g]
        has = np.flatnonzero(k)
        if len(has):
            gh, kh = g[has], k[has]
            self._learn_scale(a.scale, a.seg_r, gh, kh)
            self._learn_scale(a.lin_scale, a.seg_lin, gh, kh)
            if self.trend_rate is not None:
                self._learn_scale(a.tscale, a.seg_t, gh, kh)
        a.smooth2_anchor[g] = a.smooth2[g]
        if self.trend_rate is not None:
            a.base_anchor[g] = a.base[g]
        if self.season is not None:
            for slot, kk in zip(g.tolist(), k.tolist()):
                if kk:
                    self._learn_profile(slot, a.pbins[slot, :kk], a.pres[slot, :kk])
        a.seg_len[g] = 0

    def _learn_scale(self, scale, seg, gh, kh) -> None:
        """`ResidualDetector._learn_scale` for slots `gh` with `kh` (> 0) residuals each in the segment."""
        dots = np.array([self.w[kk] @ seg[slot, :kk] for slot, kk in zip(gh.tolist(), kh.tolist())])
        scale[gh] = self.keep[kh][:, None] * scale[gh] + 1.2533 * dots

    def _learn_profile(self, slot: int, bins: np.ndarray, res: np.ndarray) -> None:
        a = self.a
        profile = a.profile[slot]
        sums = np.zeros_like(profile)
        np.add.at(sums, bins, res)
        cnt = np.bincount(bins, minlength=self.bins)[:, None]
        hit = cnt[:, 0] > 0
        target = np.where(hit[:, None], sums / np.maximum(cnt, 1), profile)
        a.visits[slot] += hit
        rate = np.where(hit, np.maximum(self.season_rate, 1 / np.maximum(a.visits[slot], 1)), 0.0)[:, None]
        a.profile[slot] = profile + rate * (target - profile)

    # ------------------------------------------------------------------ one key's state as detector data
    def export(self, slot: int) -> dict:
        """Slot `slot` as `ResidualDetector.state()` data."""
        return export_slot(self, slot)

    def load(self, slot: int, st: dict) -> None:
        """Put `ResidualDetector.state()` data (this bank's parameters) into slot `slot`."""
        load_slot(self, slot, st)
