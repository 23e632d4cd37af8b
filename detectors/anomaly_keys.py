"""The `anomaly` stage key by key: a `KeyState` per key (detectors other than `residual`, `adaptive`, `drift`).

`PerKeyPath` is the part of `detectors.anomaly.Anomaly` that loops over the keys of a batch; with
`residual` and neither `adaptive` nor `drift` the stage uses `KeyBank` (all keys at once) instead.
"""
from __future__ import annotations

import numpy as np

from .base import make_detector
from .keystate import AdaptiveThreshold, Debounce, KeyState
from .state import load_model


class PerKeyPath:
    """Mixed into `Anomaly`: models in ``self.models`` (key -> KeyState), one key at a time."""

    def _new(self, now: float) -> KeyState:
        c = self.config
        drift = None
        if c.drift != "none":
            from river import drift as rdrift

            drift = [rdrift.ADWIN() if c.drift == "adwin" else rdrift.PageHinkley() for _ in self.fields]
        return KeyState(
            detector=make_detector(c.detector, self.fields, c.detector_params()),
            last=np.full(len(self.fields), np.nan),
            threshold=AdaptiveThreshold(c.effective_threshold, c.adaptive) if c.adaptive else None,
            debounce=Debounce(c.alert_after, c.clear_after),
            drift=drift, last_seen=now)

    def _get(self, key: tuple, now: float) -> KeyState:
        st = self.models.get(key)
        if st is None:
            path = self.spilled.pop(key, None)
            if path is not None:
                st = load_model(path.read_bytes(), str(path))
                path.unlink(missing_ok=True)
                self.ctx.count("models_reloaded")
            else:
                st = self._new(now)
                self.ctx.count("models_created")
            self.models[key] = st
        st.last_seen = now
        self.dirty.add(key)
        return st

    def _process_keys(self, batch, codes, keys, X, bad, keep, any_bad, now, score, cols, count, events) -> None:
        """Key by key, each key's `KeyState` (detectors other than `residual`, `adaptive`, `drift`)."""
        c = self.config
        order = np.argsort(codes, kind="stable")
        bounds = np.flatnonzero(np.diff(codes[order])) + 1
        for rows in np.split(order, bounds):
            key = keys[codes[rows[0]]]
            rows = rows[keep[rows]]
            if not len(rows):
                continue
            st = self._get(key, now)
            Xk = X[rows]
            if not any_bad:  # the common case: every reading usable and learned
                learn = np.ones(len(rows), dtype=bool)
                st.last = Xk[-1].copy()
            else:
                badk = bad[rows]
                learn = ~badk.any(axis=1)
                if c.bad_values == "impute_last" and badk.any():
                    Xk = _forward_fill(Xk, badk, st.last)
                usable = np.isfinite(Xk).all(axis=1)
                if c.bad_values == "impute_last":
                    st.last = Xk[-1].copy()         # each field's last good value, as the fill within a batch
                elif learn.any():
                    st.last = Xk[learn][-1].copy()
                rows, Xk, learn = rows[usable], Xk[usable], learn[usable]
                if not len(rows):
                    continue
            cuts = self._drift(st, key, Xk, learn, rows, batch.ts, events)
            threshold = self.threshold
            protect = threshold if c.learn == "normal" else None
            s, warm = np.zeros(len(rows)), np.zeros(len(rows), dtype=bool)
            tsk = batch.ts[rows]
            for a, b in zip([0, *cuts], [*cuts, len(rows)]):  # relearn: a fresh model from the drift row on
                if a > 0:
                    st.detector = make_detector(c.detector, self.fields, c.detector_params())
                if getattr(st.detector, "uses_time", False):
                    s[a:b], warm[a:b] = st.detector.score_learn_many(Xk[a:b], protect, learn[a:b], ts=tsk[a:b])
                else:
                    s[a:b], warm[a:b] = st.detector.score_learn_many(Xk[a:b], protect, learn[a:b])
            flags = st.threshold.flags(s, warm) if st.threshold else (s >= threshold) & ~warm
            state, opened, cnt, closed = st.debounce.apply(flags, batch.ts[rows])
            score[rows], count[rows] = s, cnt
            cols["is_anomaly"][rows], cols["warming_up"][rows], cols["anomaly_alert"][rows] = state, warm, opened
            for start, end, k, r in closed:
                events.append((int(rows[r]), self._event(key, end, "anomaly_end",
                                                         {"anomaly_count": k, "duration_s": end - start})))

    def _drift(self, st: KeyState, key: tuple, Xk: np.ndarray, learn: np.ndarray, rows: np.ndarray,
               ts: np.ndarray, events: list) -> list[int]:
        """Feed the good rows to the per-field drift detectors; return the rows where the model restarts."""
        if st.drift is None:
            return []
        cuts = set()
        good = np.flatnonzero(learn)
        for j, det in enumerate(st.drift):
            for i, v in zip(good.tolist(), Xk[good, j].tolist()):
                det.update(v)
                if det.drift_detected:
                    self.ctx.count("drifts")
                    events.append((int(rows[i]), self._event(key, float(ts[rows[i]]), "drift", {},
                                                             drift_field=self.fields[j])))
                    if self.config.relearn_on_drift:  # from the next row on (maybe the next batch's)
                        cuts.add(i + 1)
        return sorted(cuts)


def _forward_fill(X: np.ndarray, bad: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Replace bad cells by the previous good value of the same column (or `last` from earlier batches)."""
    X = np.vstack([last[None, :], np.where(bad, np.nan, X)])
    idx = np.where(np.isfinite(X), np.arange(len(X))[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    return X[idx, np.arange(X.shape[1])][1:]
