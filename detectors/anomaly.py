"""The ``anomaly`` stage: one online detector per key (device) that scores, then learns, every reading.

Each output record gets the fields ``anomaly_score`` (in [0, 1], comparable across keys),
``is_anomaly`` (after thresholding and debouncing), ``warming_up`` (the key's model has seen too
little to judge: score 0, never an anomaly), ``anomaly_alert`` (True on the row that opens an
episode) and ``anomaly_count`` (flagged rows in the open episode).  When an episode closes, or a
field drifts, an event record is added with the key's tags and ``event: anomaly_end`` (fields
``anomaly_count``, ``duration_s``) or ``event: drift`` (``drift_field``).
Bad values (NaN, inf, strings, missing fields) follow ``bad_values``: ``dead_letter`` the record,
``skip`` it (passed on unscored), or ``impute_last`` (the key's last good value; scored, not learned).
They are counted (``bad_values``) and never learned.

With the default detector (`residual`) the score is 1 - the reading's tail probability on its own
key, and the default threshold flags about one normal reading in 10,000 (`alert_rate: 1e-4`):

>>> import numpy as np
>>> from pipeline.testing import run_stage
>>> rng = np.random.default_rng(0)
>>> recs = [{"ts": float(i), "tags": {"device": "p1"}, "fields": {"t": round(20 + rng.normal(0, 0.2), 2)}}
...         for i in range(400)]
>>> recs.append({"ts": 400.0, "tags": {"device": "p1"}, "fields": {"t": 23.0}})
>>> out = run_stage(Anomaly, {"fields": ["t"]}, recs)
>>> out[0]["fields"]["warming_up"], out[-1]["fields"]["warming_up"], sum(r["fields"]["is_anomaly"] for r in out)
(True, False, 1)
>>> round(out[-1]["fields"]["anomaly_score"], 4), out[-1]["fields"]["is_anomaly"], out[-1]["fields"]["anomaly_alert"]
(1.0, True, True)
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline.batch import Batch
from pipeline.config import Duration, StageConfig
from pipeline.keys import key_codes
from pipeline.stage import Context, Stage, StateChanges
from pipeline.statefiles import private_dir, write_private

from .anomaly_bank import KeyBank
from .anomaly_keys import PerKeyPath
from .base import DETECTORS, detector_class, make_detector
from .keystate import KeyState
from .state import dump_model, load_model

DEFAULT_ALERT_RATE = 1e-4  # `residual`: one normal reading in 10,000 flagged
OUT_FIELDS = ("anomaly_score", "is_anomaly", "warming_up", "anomaly_alert", "anomaly_count")


class AnomalyConfig(StageConfig):
    type: Literal["anomaly"]
    fields: list[str] = Field(min_length=1, description="Numeric fields the detector watches (one model sees them all).")
    key: list[str] = Field(["device"], description="Tags that select a model: one model per distinct key (per device by default).")
    detector: Literal[tuple(DETECTORS)] = Field(  # type: ignore[valid-type]
        "residual", description="Detector: " + ", ".join(DETECTORS) + ". `residual` (robust residuals of EWMA and "
        "linear forecasts, with trend and stuck channels, calibrated per key to a tail probability) scored best on "
        "held-out data (docs/detectors.md).")
    params: dict[str, Any] = Field(default_factory=dict, description="Detector parameters, e.g. `{window: 256}` for mad or `{n_trees: 10, height: 8}` for hst.")
    threshold: float | None = Field(None, gt=0, le=1, description="Score at or above which a row is anomalous (with `adaptive`: the lowest threshold). Default: `1 - alert_rate` for `residual`, 0.8 for the others.")
    alert_rate: float | None = Field(None, gt=0, lt=0.5, description="`residual` only: the share of normal readings that may be flagged, e.g. 1e-4 (one in 10,000; the default); sets `threshold` to `1 - alert_rate`, since its score is 1 - the reading's tail probability on its own key.")
    season: Duration | None = Field(None, gt=0, description="`residual` only: length of a cycle in event time (e.g. `1d`, `7d`); each key learns a seasonal profile over it, so the cycle does not alarm.")
    adapt: int | Duration | None = Field(None, gt=0, description="`residual` only: after this many readings (an integer) or this long (a duration such as `2h`) away from the forecast, a new level is normal, flagged or not. Default: 60 readings.")
    adaptive: float | None = Field(None, gt=0.5, lt=1, description="Adaptive threshold: the per-key quantile (e.g. 0.995) of recent normal scores, never below `threshold`.")
    learn: Literal["normal", "all"] = Field("normal", description="`normal`: rows scoring >= threshold are not learned (a stuck anomaly stays visible); `all`: learn every row. `residual` learns every row with bounded influence and ignores this (see `adapt`).")
    alert_after: int = Field(1, ge=1, le=10_000, description="Flagged rows in a row before an episode opens (debounce).")
    clear_after: int = Field(1, ge=1, le=10_000, description="Clear rows in a row before an episode closes (one `anomaly_end` event with the count).")
    bad_values: Literal["dead_letter", "skip", "impute_last"] = Field("dead_letter", description="What to do with NaN, inf, non-numbers and missing fields.")
    drift: Literal["none", "adwin", "page_hinkley"] = Field("none", description="Per-field drift detection (river) that emits `event: drift` records.")
    relearn_on_drift: bool = Field(False, description="Start the key's model afresh (warming up again) after a drift.")
    idle_spill: Duration | None = Field(None, gt=0, description="Write models of keys idle this long (processing time) to `state_dir` and drop them from memory.")

    @property
    def calibrated(self) -> bool:
        return bool(getattr(detector_class(self.detector), "calibrated", False))

    @property
    def effective_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return 1 - (self.alert_rate or DEFAULT_ALERT_RATE) if self.calibrated else 0.8

    def detector_params(self) -> dict[str, Any]:
        extra = {k: getattr(self, k) for k in ("season", "adapt") if getattr(self, k) is not None}
        return {**self.params, **extra}

    @model_validator(mode="after")
    def _detector_params(self):
        used = [k for k in ("alert_rate", "season", "adapt") if getattr(self, k) is not None]
        if used and not self.calibrated:
            raise ValueError(f"{', '.join(used)} apply to detector 'residual' only, not {self.detector!r}")
        if self.alert_rate is not None and self.threshold is not None:
            raise ValueError("give `threshold` or `alert_rate`, not both (alert_rate sets threshold = 1 - alert_rate)")
        try:
            make_detector(self.detector, self.fields, self.detector_params())
        except (TypeError, ValueError) as exc:
            import inspect

            names = [p for p in inspect.signature(detector_class(self.detector)).parameters if p != "fields"]
            raise ValueError(f"params for detector {self.detector!r} are invalid: {exc}; "
                             f"accepted: {', '.join(names)}") from None
        return self


class Anomaly(PerKeyPath, Stage):
    """Per-key online anomaly detection with thresholds, debouncing, drift events and spill (module docstring)."""

    Config = AnomalyConfig
    EXAMPLE = {"fields": ["temperature", "pressure"], "key": ["device"], "detector": "residual", "alert_rate": 1e-4}

    def __init__(self, config: AnomalyConfig, ctx: Context):
        super().__init__(config, ctx)
        self.fields = list(config.fields)
        self.models: dict[tuple, KeyState] = {}
        self.spilled: dict[tuple, Path] = {}
        self.dirty: set[tuple] = set()  # keys whose state changed since the last checkpoint
        self._taken: set[tuple] = set()  # keys handed to a checkpoint that is not saved yet
        self.spill_dir = Path(ctx.state_dir) / "anomaly" / ctx.stage_id
        self.where = f"anomaly {ctx.stage_id!r}"
        self.threshold = config.effective_threshold
        self.bank = self._new_bank()
        if self.bank is not None:
            self.models = self.bank.slots  # key -> slot: the keys' states live in the bank's arrays

    def _new_bank(self) -> KeyBank | None:
        """The cross-key engine, for `residual` without `adaptive` or `drift` (those run key by key)."""
        c = self.config
        if c.detector != "residual" or c.adaptive is not None or c.drift != "none":
            return None
        proto = make_detector(c.detector, self.fields, c.detector_params())
        return KeyBank(proto, c.effective_threshold, c.alert_after, c.clear_after)

    def _keystate(self, key: tuple) -> KeyState:
        return self.bank.keystate(key) if self.bank is not None else self.models[key]

    def _put(self, key: tuple, st: KeyState, where: str) -> None:
        if self.bank is not None:
            self.bank.adopt(key, st, where)
        else:
            self.models[key] = st

    # ------------------------------------------------------------------ models
    def _slot(self, key: tuple) -> int:
        """`_get` for the bank: the key's slot, created or reloaded from its spill file."""
        slot = self.bank.slots.get(key)
        if slot is None:
            path = self.spilled.pop(key, None)
            if path is not None:
                self.bank.adopt(key, load_model(path.read_bytes(), str(path)), str(path))
                path.unlink(missing_ok=True)
                self.ctx.count("models_reloaded")
            else:
                self.bank.new(key)
                self.ctx.count("models_created")
            slot = self.bank.slots[key]
        self.dirty.add(key)
        return slot

    def _spill_idle(self, now: float) -> None:
        if self.config.idle_spill is None:
            return
        if self.bank is not None:
            seen = self.bank.a.last_seen[[self.bank.slots[k] for k in self.bank.slots]]
            idle = [k for k, t in zip(list(self.bank.slots), seen.tolist()) if now - t >= self.config.idle_spill]
        else:
            idle = [k for k, st in self.models.items() if now - st.last_seen >= self.config.idle_spill]
        if idle:
            private_dir(self.spill_dir)
        for k in idle:  # not fsynced: after a crash the checkpoint, not the spill folder, is what counts
            write_private(self._spill_path(k), dump_model(self._keystate(k)), durable=False)
            if self.bank is not None:
                self.bank.drop(k)
            else:
                del self.models[k]
            self.spilled[k] = self._spill_path(k)
        if idle:
            self.ctx.count("models_spilled", len(idle))

    # ------------------------------------------------------------------ batch
    def _matrix(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        n, X = len(batch), np.full((len(batch), len(self.fields)), np.nan)
        for j, name in enumerate(self.fields):
            col = batch.fields.get(name)
            if col is None:
                continue
            if col.dtype == object:
                col = np.array([v if isinstance(v, (int, float, np.number)) else np.nan for v in col], dtype=np.float64)
            X[:, j] = col.astype(np.float64)
        return X, ~np.isfinite(X) if n else np.zeros((0, len(self.fields)), bool)

    def _reason(self, batch: Batch, i: int, bad_row: np.ndarray) -> str:
        j = int(np.flatnonzero(bad_row)[0])
        col = batch.fields.get(self.fields[j])
        value = "missing" if col is None or (col.dtype != object and np.isnan(col[i])) else repr(col[i])
        key = ", ".join(f"{k}={batch.tags[k][i]!r}" for k in self.config.key if k in batch.tags)
        return f"{self.where}: field {self.fields[j]!r} is {value}, not a finite number" + (f" ({key})" if key else "")

    def process(self, batch: Batch) -> Batch:
        n = len(batch)
        if n == 0:
            return batch
        c, now = self.config, self.ctx.clock()
        X, bad = self._matrix(batch)
        row_bad = bad.any(axis=1)
        any_bad = bool(row_bad.any())
        keep = np.ones(n, dtype=bool)
        if any_bad:
            self.ctx.count("bad_values", int(row_bad.sum()))
            if c.bad_values == "dead_letter":
                idx = np.flatnonzero(row_bad)
                self.ctx.dead_letter(batch.take(idx), [self._reason(batch, i, bad[i]) for i in idx])
                keep = ~row_bad
        score = np.full(n, np.nan)
        cols = {name: np.zeros(n, dtype=bool) for name in ("is_anomaly", "warming_up", "anomaly_alert")}
        count = np.zeros(n)
        events: list[dict] = []
        codes, keys = key_codes(batch, self.config.key)
        if self.bank is not None:
            self._process_bank(batch, codes, keys, X, bad, keep, now, score, cols, count, events)
        else:
            self._process_keys(batch, codes, keys, X, bad, keep, any_bad, now, score, cols, count, events)
        out = batch.with_fields(anomaly_score=score, anomaly_count=count, **cols)
        if not keep.all():
            out = out.take(keep)
        self._spill_idle(now)
        if events:  # each event goes right after the reading that raised it: same output for any batching
            pos = np.concatenate([np.flatnonzero(keep), [p for p, _ in events]]).astype(np.float64)
            pos[len(out):] += 0.5
            out = Batch.concat([out, Batch.from_records([e for _, e in events])])
            out = out.take(np.argsort(pos, kind="stable"))
        return out

    def _process_bank(self, batch, codes, keys, X, bad, keep, now, score, cols, count, events) -> None:
        """All keys at once (`KeyBank`): the same outputs as `_process_keys`, without a loop over keys."""
        bank = self.bank
        rows = np.flatnonzero(keep)
        present = np.unique(codes[rows])
        named = [keys[code] for code in present.tolist()]
        found = [bank.slots.get(k) for k in named]
        slot_of = np.full(len(keys), -1, dtype=np.int64)
        slot_of[present] = [self._slot(k) if slot is None else slot for k, slot in zip(named, found)]
        self.dirty.update(named)
        s = slot_of[codes[rows]]
        bank.a.last_seen[s] = now
        Xr, learn = bank.impute(s, X[rows], bad[rows], self.config.bad_values == "impute_last")
        usable = np.flatnonzero(np.isfinite(Xr).all(axis=1))
        u, su, ts = rows[usable], s[usable], batch.ts[rows[usable]]
        sc, warm = bank.det.score_learn(su, Xr[usable], ts, learn[usable])
        state, opened, cnt, closed = bank.debounce(su, (sc >= self.threshold) & ~warm, ts)
        score[u], count[u] = sc, cnt
        cols["is_anomaly"][u], cols["warming_up"][u], cols["anomaly_alert"][u] = state, warm, opened
        for r, start, end, k in closed:
            events.append((int(u[r]), self._event(bank.keys[su[r]], end, "anomaly_end",
                                                  {"anomaly_count": k, "duration_s": end - start})))

    def _event(self, key: tuple, ts: float, kind: str, fields: dict, **extra) -> dict:
        tags = {k: v for k, v in zip(self.config.key, key) if v is not None}
        base = {"anomaly_score": None, "is_anomaly": False, "warming_up": False, "anomaly_alert": False,
                "anomaly_count": 0.0}  # same columns as readings, so bool columns stay bool after concat
        return {"ts": ts, "tags": tags, "fields": {**base, **fields}, "event": kind, **extra}

    def tick(self, now: float) -> None:
        self._spill_idle(self.ctx.clock())
        return None

    # ------------------------------------------------------------------ state
    def gauges(self) -> dict[str, float]:
        return {"keys": len(self.models) + len(self.spilled), "keys_spilled": len(self.spilled)}

    # One checkpoint entry per key: {"model": framed bytes (detectors.state), "spilled": bool}. A checkpoint
    # writes only the keys that saw a reading since the previous one (`dirty`).
    def _spill_path(self, key: tuple) -> Path:
        return self.spill_dir / (hashlib.sha1(repr(key).encode()).hexdigest() + ".state")

    def _entry(self, key: tuple) -> dict | None:
        if key in self.models:
            return {"model": dump_model(self._keystate(key)), "spilled": False}
        path = self.spilled.get(key)
        return {"model": path.read_bytes(), "spilled": True} if path is not None and path.exists() else None

    def snapshot(self) -> dict:
        """Every key's entry (a whole snapshot; checkpoints use `snapshot_changes`)."""
        return {k: self._entry(k) for k in [*self.models, *self.spilled]}

    def restore(self, state: dict) -> None:
        self.restore_entries(state)

    def snapshot_changes(self) -> StateChanges:
        self._taken |= self.dirty  # a checkpoint that failed to save is retried with the next one
        self.dirty = set()
        return StateChanges({k: self._entry(k) for k in self._taken})

    def state_saved(self) -> None:
        self._taken = set()

    def restore_entries(self, entries: dict) -> None:
        self.models, self.spilled, self.dirty, self._taken = {}, {}, set(), set()
        self.bank = self._new_bank()
        if self.bank is not None:
            self.models = self.bank.slots
        if self.spill_dir.is_dir():  # spilled after the checkpoint: the checkpoint's entries replace them
            for stale in self.spill_dir.glob("*.state"):
                stale.unlink()
        for k, entry in entries.items():
            if entry["spilled"]:
                write_private(self._spill_path(k), entry["model"], durable=False)
                self.spilled[k] = self._spill_path(k)
            else:
                where = f"{self.where}, model of key {k!r}"
                self._put(k, load_model(entry["model"], where, hint=""), where)
