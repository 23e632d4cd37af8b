"""`residual`: robust residuals of a seasonal EWMA forecast, calibrated per key to a tail probability.

Per field, the forecast of a reading is ``level + profile[phase]``: `level` is an exponentially
weighted mean (rate `alpha`) of the deseasonalised readings, each clipped to ``clip`` scales around
the level (bounded influence: a spike moves it by at most ``alpha * clip`` scales), and `profile`
is an optional per-key seasonal profile over `season` seconds of event time, in `season_bins` bins.
There are two levels per field, a slow one (`alpha`) and a fast one (`alpha_fast`, its readings
clipped around the median of its previous three readings rather than the segment's anchor, so it
follows a random walk), and a third forecast, Brown's linear (double exponential) smoothing of the
slow level: with S2 an EWMA (rate `alpha`) of the slow level S1, ``S1 + (S1 - S2) / (1 - alpha)``
follows a slope (a daily cycle's flank) without the slow level's lag or the fast one's noise.  Each
field is judged by the forecast whose recent residuals were smallest.
The raw score of a row is the largest ``|reading - forecast| / scale`` over the fields, where
`scale` is a clipped EWMA (rate `beta`) of the absolute residuals, floored at half the field's
resolution (the third smallest step between readings seen: a spike on a constant series makes only
two) so that quantised or constant series do not divide by nothing.

A second, trend channel catches slow drifts that an EWMA follows: per field, the slow level against
a baseline that follows it at `trend_rate` (0.02), ``max(0, |level - baseline| - 2 alpha clip
scale) / tscale`` (tscale: a clipped EWMA of ``|level - baseline|``); the largest field wins.
Each channel has its own `TailCalibrator` (the trend's starts after twice as many samples): p is
how often this key's own normal readings score as high, and the score is ``1 - min(1, 2 min(p,
p_trend))`` (Bonferroni), so one threshold means the same on every key.  ``trend_rate=None``
turns the channel off (score ``1 - p``).

Learning is never gated by the threshold.  When the readings of a field stay more than ``clip``
scales away from the forecast for `adapt` rows (an int) or seconds (a float), the level jumps to
the mean of that run: the new regime is normal from then on, flagged or not.

The scale, profile and calibration are frozen for `refresh` rows (one segment); the level moves
every row.  Any batching of the stream gives the same scores.  State is plain data (`state()`).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> det = ResidualDetector(["t"])
>>> s, warm = det.score_learn_many(20 + rng.normal(0, 0.5, (2000, 1)))
>>> bool(warm[0]), bool(warm[-1]), bool((s[warm == 0] < 0.9999).all())
(True, False, True)
>>> s, warm = det.score_learn_many(np.array([[21.0], [30.0]]))
>>> [round(float(v), 4) for v in s]
[0.8647, 1.0]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from .calibrate import TailCalibrator, plain
from . import residual_forms as forms
from .stuck import FIELDS as STUCK_FIELDS
from .stuck import freeze as stuck_freeze
from .stuck import fresh as stuck_fresh
from .stuck import quiet as stuck_quiet
from .stuck import step as stuck_step

__all__ = ["ResidualDetector"]

WAIT = 7  # a warm-up whose rows are all one value waits for a change, at most WAIT * min_samples rows more
STEPS = 3  # the resolution is the STEPS-th smallest positive step seen between a field's readings
RECENT = 3  # the fast forecast's readings are clipped around the median of the previous RECENT learned ones


class ResidualDetector:
    """See the module docstring.  `fields` are watched together: the key's raw score is the largest field's."""

    calibrated = True  # anomaly_score is 1 - tail probability: `alert_rate` applies
    uses_time = True  # score_learn_many takes the rows' event times (seasonal phase, `adapt` in seconds)

    def __init__(self, fields: Sequence[str], alpha: float = 0.1, alpha_fast: float = 0.5, beta: float = 0.005,
                 clip: float = 4.0,
                 season: float | None = None, season_bins: int = 288, season_rate: float = 0.1,
                 adapt: float | int | None = 60, refresh: int = 32, min_samples: int = 32,
                 half_life: int = 20_000, tail: float = 0.02, calibration_samples: int = 256,
                 trend_rate: float | None = 0.02, stuck: bool = True):
        if not (0 < alpha <= 0.95 and 0 < alpha_fast <= 0.95 and 0 < beta <= 1 and 0 < season_rate <= 1):
            raise ValueError(f"residual: alpha and alpha_fast must be in (0, 0.95], beta and season_rate in (0, 1]; "
                             f"got {alpha}, {alpha_fast}, {beta}, {season_rate}")
        if clip <= 0 or not 1 <= refresh <= 128 or min_samples < 2 or season_bins < 2:
            raise ValueError("residual: need clip > 0, 1 <= refresh <= 128, min_samples >= 2, season_bins >= 2")
        if season is not None and season <= 0:
            raise ValueError(f"residual: season must be a positive duration in seconds, got {season}")
        if adapt is not None and adapt <= 0:
            raise ValueError(f"residual: adapt must be > 0 (rows as an int, seconds as a float), got {adapt}")
        if trend_rate is not None and not 0 < trend_rate < 1:
            raise ValueError(f"residual: trend_rate must be in (0, 1) or None, got {trend_rate}")
        d = len(fields)
        self.fields = tuple(fields)
        self.trend_rate = trend_rate
        self.alpha = np.repeat([alpha, alpha_fast], d)  # columns: the slow forecast of each field, then the fast
        self.beta, self.clip, self.refresh, self.min_samples = beta, clip, refresh, min_samples
        self.season, self.season_bins, self.season_rate = season, season_bins, season_rate
        self.adapt_rows = adapt if isinstance(adapt, int) and not isinstance(adapt, bool) else None
        self.adapt_s = float(adapt) if adapt is not None and self.adapt_rows is None else None
        self.hold = self.adapt_rows or (128 if self.adapt_s else 0)  # rows held back from the calibrator
        self.held = np.zeros((0, 2))  # raw scores held back: the residual channel's, the trend channel's
        self.cal = TailCalibrator(half_life=half_life, tail=tail, refresh=refresh, min_samples=calibration_samples)
        self.tcal = TailCalibrator(half_life=half_life, tail=tail, refresh=refresh,  # the trend channel's: its
                                   min_samples=2 * calibration_samples)  # raw scores are autocorrelated, so twice as many
        self.n = 0  # rows learned
        self.since = 0  # rows learned in the current segment
        c = 2 * d
        self.level = np.zeros(c)
        self.anchor = np.zeros(c)  # the level at the segment start: clipping is centred here
        self.scale = np.zeros(c)  # frozen for the segment
        self.seg_y = np.zeros((0, c))  # clipped deseasonalised readings learned in this segment
        self.seg_r = np.zeros((0, c))  # their clipped absolute residuals (the scale learns them at the end)
        self.steps = np.full((STEPS, d), np.inf)  # the STEPS smallest positive changes between readings seen
        self.floor = np.zeros(2 * d)  # the least scale: half the resolution
        self.last = np.full(d, np.nan)
        self.recent = np.zeros((RECENT, d))  # the last RECENT learned deseasonalised readings (fast clipping centre)
        self.profile = np.zeros((season_bins if season else 0, d))
        self.visits = np.zeros(season_bins if season else 0)  # segments that updated each bin
        self.pending_bins: list[int] = []  # seasonal bins and residuals of the segment, learned at its end
        self.pending_res: list[list[float]] = []
        self.warm_rows: list[list[float]] = []
        self.warm_waited = 0  # rows the warm-up waited past min_samples for the readings to change
        self.t0 = 0.0  # the first min_samples rows, to start level and scale
        self.base = np.zeros(d)  # the trend baseline: an EWMA (rate trend_rate) of the slow level
        self.base_anchor = np.zeros(d)  # the baseline at the segment start
        self.tscale = np.zeros(d)  # frozen for the segment: EWMA (rate beta) of |slow level - baseline|
        self.seg_t = np.zeros((0, d))  # the segment's clipped |slow level - baseline| (tscale learns them at its end)
        self.run = np.zeros(c, dtype=np.int64)  # rows in a row more than `clip` scales away, same side
        self.run_sign = np.zeros(c)
        self.run_start = np.zeros(c)  # event time of the run's first row
        self.run_sum = np.zeros(c)  # sum of the run's deseasonalised readings
        self.smooth2 = np.zeros(d)  # Brown's second smoothing: an EWMA (rate alpha) of the slow level
        self.smooth2_anchor = np.zeros(d)  # at the segment start
        self.lin_scale = np.zeros(d)  # frozen for the segment: the linear forecast's residual scale
        self.seg_lin = np.zeros((0, d))  # the segment's clipped absolute residuals of the linear forecast
        self.stuck = bool(stuck)
        for k, v in stuck_fresh(d).items():  # the stuck channel (`detectors.stuck`): srun, srep, ..., per field
            setattr(self, k, v)

    @property
    def warming_up(self) -> bool:
        return self.n < self.min_samples or not self.cal.ready

    @property
    def nbytes(self) -> int:
        arrays = [v for v in vars(self).values() if isinstance(v, np.ndarray)]
        return sum(a.nbytes for a in arrays) + 10 * self.cal.count.nbytes  # 2 x (histogram (3) and its table (2))

    # ------------------------------------------------------------------ scoring
    def _phase(self, ts: np.ndarray) -> np.ndarray:
        return (np.floor(np.mod(ts, self.season) / self.season * self.season_bins)).astype(np.int64) % self.season_bins

    def score_learn_many(self, X: np.ndarray, protect: float | None = None, learn: np.ndarray | None = None,
                         ts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Score then learn each row in order.  `protect` is ignored: learning is never gated by the
        threshold (bounded influence instead); rows with `learn[i]` False are scored, not learned."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(self.fields))
        n = len(X)
        if ts is None:
            if self.season is not None or self.adapt_s is not None:
                raise ValueError("residual: `season` and a duration `adapt` need the rows' event times")
            ts = np.zeros(n)
        learn = np.ones(n, dtype=bool) if learn is None else np.asarray(learn, dtype=bool)
        scores, warming = np.zeros(n), np.zeros(n, dtype=bool)
        pos = 0
        while pos < n:
            if self.n < self.min_samples:  # warm-up: collect rows, score nothing
                if learn[pos]:
                    self._warm(X[pos], ts[pos])
                warming[pos] = True
                pos += 1
                continue
            m = min(n - pos, self.refresh - self.since, self.cal.frozen_rows())
            used = self._segment(X[pos:pos + m], ts[pos:pos + m], learn[pos:pos + m], scores[pos:pos + m],
                                 warming[pos:pos + m])
            pos += used
        return scores, warming

    def _warm(self, x: np.ndarray, t: float) -> None:
        self._note_step(x[None, :])
        if not self.warm_rows:
            self.t0 = float(t)  # event time of the first reading learned
        self.warm_rows.append(x.tolist())
        self.n += 1
        if self.n == self.min_samples:
            W = np.array(self.warm_rows)
            if (W == W[0]).all() and self.warm_waited < WAIT * self.min_samples:
                # nothing has changed yet (a pump still off, a bursty series between bursts): a spread of zero
                # would make the first change look a billion scales away for hundreds of rows and teach the
                # calibrator that; wait for a change, keeping the last min_samples - 1 rows (n counts the kept)
                self.warm_rows = self.warm_rows[1:]
                self.n -= 1
                self.warm_waited += 1
                return
            self.level = np.tile(np.median(W, axis=0), 2)
            self.anchor = self.level.copy()
            dev = np.abs(np.diff(W, axis=0)).mean(axis=0) * 1.2533 / np.sqrt(2)  # noise from successive changes
            self.floor = self._floor()
            spread = np.abs(W - np.median(W, axis=0)).mean(axis=0) * 1.2533  # the slow forecast's residuals
            self.scale = np.maximum(np.concatenate([spread, np.sqrt(2) * dev]), self.floor)
            self.base = self.level[:len(dev)].copy()
            self.base_anchor = self.base.copy()
            a = self.alpha[0]
            self.tscale = dev * np.sqrt(a / (2 - a))  # the spread of an EWMA of white noise
            self.recent = W[-RECENT:].copy()
            self.smooth2 = self.base.copy()
            self.smooth2_anchor = self.base.copy()
            self.lin_scale = self.scale[len(dev):].copy()  # the fast forecast's: noise from successive changes
            self.warm_rows = []

    def _note_step(self, X: np.ndarray) -> None:
        if not len(X):
            return
        full = np.concatenate((self.last[None, :], X))
        d = np.abs(full[1:] - full[:-1])
        d[~(d > 0)] = np.inf
        self.steps = np.sort(np.concatenate((self.steps, d)), axis=0)[:STEPS]
        self.last = full[-1].copy()

    def _floor(self) -> np.ndarray:
        step = self.steps[-1]  # the resolution: a step seen STEPS times (a spike on a constant is only two)
        step = np.where(np.isfinite(step), step, 0.0)
        return np.maximum(0.5 * np.tile(step, 2), 1e-9 * np.maximum(1.0, np.abs(self.level)))

    def _segment(self, X, ts, learn, out_scores, out_warm) -> int:
        """Score and learn up to one segment; returns how many rows it consumed (fewer when a run adapts)."""
        m = len(X)
        Xd = X
        if self.season is not None:
            ph = self._phase(ts)
            Xd = X - self.profile[ph]  # deseasonalised (an unvisited bin's profile is 0)
        d = len(self.fields)
        Y = np.concatenate((Xd, Xd), axis=1)  # once per forecast
        scale = np.maximum(self.scale, self.floor)
        band = self.clip * scale
        # bounded influence on the level: the slow forecast's readings are clipped to `clip` scales around the
        # segment's anchor, the fast one's around the median of the previous RECENT learned readings (so it
        # follows a random walk within a segment, and a spike still moves it by at most alpha_fast * clip scales)
        every = bool(learn.all())
        idx = np.flatnonzero(learn)
        hist = np.concatenate((self.recent, Xd[idx]))
        centre = np.repeat(self.anchor[None, :], m, axis=0)
        if len(idx):
            med = np.median(np.lib.stride_tricks.sliding_window_view(hist, RECENT, axis=0), axis=-1)[:len(idx)]
            centre[idx, d:] = med
        Yc = np.minimum(np.maximum(Y, centre - band), centre + band)
        # level after each learned row: L_j = r^(j+1) anchor + alpha r^j sum_k r^-k y_k over the segment's
        # learned rows, a cumsum, so any split of the segment gives the same floats; unlearned rows carry it on
        k0 = len(self.seg_y)
        seg_y = np.concatenate((self.seg_y, Yc if every else Yc[idx]))
        levels = forms.levels(seg_y, self.anchor, self.alpha)
        L_after = np.empty((m, 2 * d))
        if every:
            L_after = levels[k0:]
        elif len(idx):
            filled = np.zeros((m, 2 * d))
            filled[idx] = levels[k0:]
            k = np.maximum.accumulate(np.where(learn, np.arange(m), -1))
            L_after = np.where((k >= 0)[:, None], filled[np.maximum(k, 0)], self.level)
        else:
            L_after[:] = self.level
        L_before = np.concatenate((self.level[None, :], L_after[:-1]))
        R = Y - L_before
        z = np.abs(R) / scale
        # Brown's linear forecast from the slow level (S1) and its own EWMA (S2), both before the row
        g = self.alpha[:d]
        S2_after = forms.smooth(levels[:, :d], k0, learn, idx, every, m, g, self.smooth2_anchor, self.smooth2)
        S2_before = np.concatenate((self.smooth2[None, :], S2_after[:-1]))
        R_lin = Xd - (L_before[:, :d] + (L_before[:, :d] - S2_before) / (1 - g))
        lin_scale = np.maximum(self.lin_scale, self.floor[:d])
        z_lin = np.abs(R_lin) / lin_scale
        raw = forms.pick_raw(z[:, :d], z[:, d:], z_lin, scale[:d], scale[d:], lin_scale)
        traw = np.zeros(m)
        if self.trend_rate is not None:  # a slow drift: the slow level against its own, much slower, baseline
            B_after = self._baseline(levels[:, :d], k0, learn, idx, every, m)
            B_before = np.concatenate((self.base[None, :], B_after[:-1]))
            T = np.abs(L_before[:, :d] - B_before)
            tscale = np.maximum(self.tscale, self.floor[:d])
            reach = 2 * self.alpha[:d] * band[:d]  # how far two readings can move the slow level: not a drift
            traw = (np.maximum(T - reach, 0.0) / tscale).max(axis=1)
        # runs of rows more than `clip` scales away on one side: a new regime once long enough
        sign = np.where(np.abs(R) > band, np.sign(R), 0.0) * learn[:, None]
        cut, jump, run_len = self._adapt_row(sign, Y, ts, learn)
        used = m if cut is None else cut + 1
        p_stuck = self._stuck_rows(X[:used], ts[:used], learn[:used])
        cal_warm = not self.cal.ready
        if cal_warm:
            out_scores[:used] = 0.0
        else:  # the channels, each on its own: the smallest tail probability times their number (Bonferroni)
            p, k = self.cal.tail_probability(raw[:used]), 1
            if self.trend_rate is not None:
                p, k = np.minimum(p, self.tcal.tail_probability(traw[:used])), k + 1
            if self.stuck:  # counted where a watched field repeats
                p, k = np.minimum(p, p_stuck[0]), k + p_stuck[1]
            out_scores[:used] = 1.0 - np.minimum(1.0, k * p)
        out_warm[:used] = cal_warm
        lrn = learn[:used]
        self._calibrate(np.stack((raw[:used][lrn], traw[:used][lrn]), axis=1), run_len, ts[:used][lrn])
        n_new = int(lrn.sum())
        self.seg_y = seg_y[:k0 + n_new]
        absr = np.abs(R[:used][lrn])
        self.seg_r = np.concatenate([self.seg_r, np.minimum(absr, self.clip * scale)])  # bounded influence
        if cut is None:
            self.level = L_after[-1].copy()
        else:  # adapt (at whatever row of the call): a column whose run became a regime restarts at its mean
            self.level = np.where(np.isnan(jump), L_after[used - 1], jump)
        self.seg_lin = np.concatenate([self.seg_lin, np.minimum(np.abs(R_lin[:used][lrn]), self.clip * lin_scale)])
        self.smooth2 = S2_after[used - 1].copy()
        if cut is not None:  # adapt: the second smoothing restarts with the slow level (no slope from a jump)
            self.smooth2 = np.where(np.isnan(jump[:d]), self.smooth2, jump[:d])
        if self.trend_rate is not None:
            self.seg_t = np.concatenate([self.seg_t, np.minimum(T[:used][lrn], self.clip * tscale)])
            self.base = B_after[used - 1].copy()
            if cut is not None:  # adapt: the baseline restarts with the slow level, a regime is not a drift
                self.base = np.where(np.isnan(jump[:d]), self.base, jump[:d])
        self._note_step(X[:used][lrn])
        self.recent = np.concatenate((self.recent, Xd[:used][lrn]))[-RECENT:]
        if self.season is not None and lrn.any():
            ph = self._phase(ts[:used])[lrn]
            self.pending_bins.extend(ph.tolist())
            self.pending_res.extend((X[:used][lrn] - L_before[:used][lrn][:, :d]).tolist())
        self.n += int(lrn.sum())
        self.since += used
        if self.since >= self.refresh or cut is not None:
            self._end_segment()
        return used

    def _stuck_rows(self, X, ts, learn) -> tuple[np.ndarray, np.ndarray] | None:
        """The stuck channel row by row (`detectors.stuck.step`): each row's tail probability and whether
        the key has a watched field; learns the learned rows' repeats."""
        if not self.stuck:
            return None
        m = len(X)
        out, watched = np.ones(m), np.zeros(m, dtype=bool)
        view = {k: getattr(self, k)[None, :] for k in STUCK_FIELDS}  # views: `step` updates the state in place
        flat = {k: getattr(self, k) for k in STUCK_FIELDS}
        decay = 0.5 ** (1.0 / self.cal.half_life)
        idx = np.flatnonzero(learn)  # a row not learned (imputed) is not judged and teaches nothing: p = 1
        if not len(idx):
            return out, watched
        Xl = X[idx]
        prev = np.concatenate((self.last[None, :], Xl[:-1]))  # each learned row's previous learned reading
        rep = (Xl == prev).any(axis=1)
        busy = rep | np.concatenate(([bool(self.srun.any())], rep[:-1]))  # a repeat, or a run's end, or open
        i = 0
        while i < len(idx):
            if not busy[i]:  # a stretch of quiet rows (no repeat, no run open): `stuck_quiet`, the same floats
                j = i + 1 + int(np.argmax(np.append(busy[i + 1:], True)))
                stuck_quiet(flat, j - i, decay, float(ts[idx[j - 1]]))
                i = j
                continue
            row = idx[i]
            p, w = stuck_step(X[row:row + 1], prev[i:i + 1], view, ts[row:row + 1], learn[row:row + 1],
                              self.adapt_rows, self.adapt_s, decay)
            out[row], watched[row] = p[0], w[0]
            i += 1
        return out, watched

    def _baseline(self, slow_levels, k0, learn, idx, every, m) -> np.ndarray:
        """The trend baseline after each row: an EWMA (rate trend_rate) of the slow level."""
        return forms.smooth(slow_levels, k0, learn, idx, every, m, self.trend_rate, self.base_anchor, self.base)

    def _calibrate(self, raw: np.ndarray, dropped: int, now: np.ndarray) -> None:
        """Raw scores reach the calibrator `hold` learned rows late; those of a run that became a regime
        (`dropped` rows, the most recent, still held) never do, so a change the model adapted to does not blunt it.
        As if row by row: what is more than `hold` rows old goes first, then the run is dropped (a run adapts
        only at a call's last row), so the calibrator gets the same rows at the same rows whatever the calls."""
        if self.season is not None:  # the first two cycles: the profile is not there yet, its errors would mislead
            raw = raw[now - self.t0 >= 2 * self.season]
        held = np.concatenate((self.held, raw))
        if len(held) > self.hold:
            self.cal.learn(held[:len(held) - self.hold, 0])
            self.tcal.learn(held[:len(held) - self.hold, 1])
            held = held[len(held) - self.hold:]
        if dropped:
            held = held[:max(0, len(held) - dropped)]
        self.held = held

    def _adapt_row(self, sign, Y, ts, learn) -> tuple[int | None, np.ndarray | None, int]:
        """Update the per-field runs row by row over `sign`; return the row where one becomes a regime."""
        if self.adapt_rows is None and self.adapt_s is None:
            return None, None, 0
        hot = np.flatnonzero(learn & (sign != 0).any(axis=1))  # rows that extend or start a run
        if not len(hot):
            if learn.any():
                self.run[:], self.run_sign[:] = 0, 0.0
            return None, None, 0
        learned_before = np.cumsum(learn) - learn  # learned rows before each row
        prev = -1
        for i in hot.tolist():  # a loop over the rare rows out of band only
            if learned_before[i] - (learned_before[prev] + 1 if prev >= 0 else 0) > 0:
                self.run[:], self.run_sign[:] = 0, 0.0  # a learned row in band in between ends every run
            prev = i
            s = sign[i]
            cont = (s != 0) & (s == self.run_sign)
            self.run = np.where(cont, self.run + 1, (s != 0).astype(np.int64))
            self.run_start = np.where(cont, self.run_start, ts[i])
            self.run_sum = np.where(cont, self.run_sum + Y[i], np.where(s != 0, Y[i], 0.0))
            self.run_sign = s
            long = (self.run >= self.adapt_rows) if self.adapt_rows else \
                (self.run > 0) & (ts[i] - self.run_start >= self.adapt_s)
            if long.any():
                jump = np.full_like(self.level, np.nan)  # NaN: the column keeps its own level
                jump[long] = self.run_sum[long] / self.run[long]
                run_len = int(self.run[long].max())
                self.run = np.where(long, 0, self.run)
                self.run_sign = np.where(long, 0.0, self.run_sign)
                return i, jump, run_len
        if learned_before[-1] + learn[-1] - learned_before[prev] - 1 > 0:  # in-band rows after the last hot one
            self.run[:], self.run_sign[:] = 0, 0.0
        return None, None, 0

    def _learn_scale(self, scale: np.ndarray, seg: np.ndarray) -> np.ndarray:
        """A scale learns a segment's clipped absolute residuals: an EWMA (rate beta), times 1.2533 (mean
        absolute deviation to sigma)."""
        k = len(seg)
        if not k:
            return scale
        w = self.beta * (1 - self.beta) ** np.arange(k - 1, -1, -1.0)
        return (1 - self.beta) ** k * scale + 1.2533 * (w @ seg)

    def _end_segment(self) -> None:
        self.since = 0
        if self.stuck:
            self.sq1, self.sq = stuck_freeze({k: getattr(self, k) for k in STUCK_FIELDS})
        self.anchor = self.level.copy()
        self.floor = self._floor()  # frozen with the rest for the next segment
        self.scale = self._learn_scale(self.scale, self.seg_r)
        self.lin_scale = self._learn_scale(self.lin_scale, self.seg_lin)
        self.tscale = self._learn_scale(self.tscale, self.seg_t)
        self.seg_y, self.seg_r, self.seg_lin, self.seg_t = (a[:0] for a in (self.seg_y, self.seg_r, self.seg_lin,
                                                                            self.seg_t))
        self.smooth2_anchor = self.smooth2.copy()
        self.base_anchor = self.base.copy()
        if self.season is not None and self.pending_bins:
            bins = np.array(self.pending_bins)
            res = np.array(self.pending_res)
            sums = np.zeros_like(self.profile)
            np.add.at(sums, bins, res)
            cnt = np.bincount(bins, minlength=self.season_bins)[:, None]
            hit = cnt[:, 0] > 0
            target = np.where(hit[:, None], sums / np.maximum(cnt, 1), self.profile)
            self.visits += hit
            rate = np.where(hit, np.maximum(self.season_rate, 1 / np.maximum(self.visits, 1)), 0.0)[:, None]
            self.profile = self.profile + rate * (target - self.profile)
            self.pending_bins, self.pending_res = [], []

    # ------------------------------------------------------------------ state (plain data)
    def state(self) -> dict:
        return plain({k: (v.state() if k in ("cal", "tcal") else v) for k, v in vars(self).items()})

    @classmethod
    def from_state(cls, state: dict) -> "ResidualDetector":
        det = cls.__new__(cls)
        state = forms.upgrade_state(state)
        for k, v in state.items():
            if k in ("cal", "tcal"):
                v = TailCalibrator.from_state(v)
            elif k == "fields":
                v = tuple(v)
            setattr(det, k, v)
        return det

    def snapshot(self) -> bytes:
        """`state()` as framed bytes (`detectors.state`: data only, never a pickle)."""
        from .state import dump_model

        return dump_model(self.state())

    def restore(self, state: bytes) -> None:
        from .state import load_model

        twin = type(self).from_state(load_model(state, f"{type(self).__name__} state"))
        self.__dict__.clear()
        self.__dict__.update(vars(twin))
