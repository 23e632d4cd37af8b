"""The ``frame_diff`` stage: mark frames that look like the last processed frame of their key as ``reused``.

Every record passes through (none is dropped). Each gets ``reused`` (True: the expensive stage downstream
skips it and attaches the key's last result), ``reuse_reason`` (reuse, first, changed, forced, audit),
``diff_by`` (this stage's id), and the fields ``staleness_frames`` (frames since the key's last processed
frame), ``staleness_s`` (seconds since it, in record time) and ``frame_diff`` (the feature distance). For
audited records the downstream stage reports whether the reused result would have been right, which
drives the adaptive threshold (see :mod:`cache.guard`). Records without a frame (or,
with ``vector_fields``, without those fields), or with a frame whose shape differs from the key's
earlier frames, are dead-lettered. The algorithm is :class:`cache.differ.FrameDiffer`.

>>> import numpy as np
>>> from pipeline.testing import run_stage
>>> still = np.zeros((48, 64), np.uint8); moved = still.copy(); moved[:24] = 200
>>> out = run_stage(FrameDiff, {"threshold": 0.05, "downscale": 4, "audit_rate": 0},
...     [{"ts": i, "tags": {"device": "cam1"}, "frame": f} for i, f in enumerate([still, still, moved])])
>>> [(r["reused"], r["reuse_reason"], r["fields"]["staleness_frames"]) for r in out]
[(False, 'first', 0.0), (True, 'reuse', 1.0), (False, 'changed', 0.0)]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cache.differ import FrameDiffer
from cache.reuse import key_column
from pipeline.batch import Batch
from pipeline.config import Duration, StageConfig
from pipeline.stage import Context, Stage


class FrameDiffConfig(StageConfig):
    type: Literal["frame_diff"]
    key: list[str] = Field(default_factory=lambda: ["device"], description="Tags that identify a camera/device; each key has its own reference frame.")
    feature: Literal["pixel", "block", "histogram", "vector_norm"] = Field(
        "pixel", description="Distance to the reference: `pixel` = fraction of changed pixels, `block` = fraction of "
        "changed grid cells (area), `histogram` = gray-level histogram distance, `vector_norm` = norm of the "
        "difference of numeric vectors (a spectrum in `frame`, or `vector_fields`).")
    threshold: float = Field(0.01, gt=0, description="Distance above which a frame is processed (the adaptive guard moves it per key).")
    downscale: int = Field(16, ge=1, le=64, description="Frames are compared on a grayscale copy shrunk by this factor in both axes "
                           "(16: a 48x36 copy of a 768x576 frame, one row in 16 read).")
    sampling: Literal["sparse", "stride", "lines", "area"] = Field(
        "stride", description="How a cell of the small copy is read: its centre pixel's green channel (`stride`, the default: "
        "one strided copy per frame, no arithmetic), the luma of two pixels of its middle row (`sparse`, the earlier "
        "default, with `downscale: 8`: twice the rows read, see docs/redundancy.md), the luma of one pixel of cells `2 x downscale` high and `downscale / 2` "
        "wide (`lines`: half the rows of `sparse` read, cheaper, skips differently), or the luma of every pixel (`area`).")
    pixel_threshold: float = Field(25.0, ge=0, description="Gray-level change (0..255) that makes a pixel count as changed (`pixel`, `block`).")
    blocks: int = Field(8, ge=1, le=256, description="Grid size for `block` (blocks x blocks cells).")
    block_min: float = Field(0.05, ge=0, le=1, description="Fraction of changed pixels that makes a cell count as changed (`block`).")
    bins: int = Field(32, ge=2, le=256, description="Histogram bins (`histogram`).")
    norm: Literal[1, 2, "inf"] = Field(2, description="Vector norm for `vector_norm`.")
    relative: bool = Field(True, description="`vector_norm`: divide by the norm of the reference vector.")
    vector_fields: list[str] | None = Field(None, description="`vector_norm` on these numeric fields instead of the frame.")
    refresh_frames: int | None = Field(None, ge=1, description="Process at least every N-th frame of a key (forced refresh). "
                                       "Caps the skip rate at 1 - 1/N whatever the scene: prefer `refresh_seconds`.")
    refresh_seconds: Duration | None = Field(None, gt=0, description="Process a key's frame at least this often (record time), "
                                             "e.g. `2s`: bounds how stale a result can get, independent of the frame rate.")
    adaptive: bool = Field(False, description="Adapt the threshold per key from audits (tighten at once, loosen slowly).")
    target: float = Field(0.95, gt=0, le=1, description="Agreement target of the adaptive guard (Wilson lower bound).")
    audit_rate: float = Field(0.05, ge=0, le=1, description="Fraction of would-be-reused frames processed anyway to measure agreement.")
    seed: int = Field(0, description="Seed of the audit draws (deterministic per key and frame number).")
    min_threshold: float | None = Field(None, gt=0, description="Lowest threshold the guard may reach (default threshold/64).")
    max_threshold: float | None = Field(None, gt=0, description="Highest threshold the guard may reach (default 4 x threshold).")
    guard_min_audits: int = Field(10, ge=1, le=10_000, description="Audits needed before the guard loosens the threshold; "
                                  "also how long (in audits) the raised audit rate lasts after a disagreement.")
    guard_window: int = Field(200, ge=5, le=100_000, description="Audits the agreement bound remembers (exponential decay): "
                              "shorter forgets an old scene sooner, longer can prove a tighter target.")
    audit_boost: float = Field(4.0, ge=1, le=100, description="Adaptive guard: audit this many times more often while a key "
                               "has fewer than `guard_min_audits` audits and after a disagreement (at most every other frame).")
    guard_tighten: float = Field(0.5, gt=0, lt=1, description="Factor applied to the threshold when an audit disagrees and the bound is below target.")
    guard_loosen: float = Field(1.1, gt=1, le=4, description="Factor applied when the bound is comfortably above target (at most once per "
                                 "`guard_min_audits` audits since the threshold last moved).")
    guard_margin: float = Field(0.02, ge=0, le=0.5, description="How far above the target the bound must be to loosen.")
    confidence_power: float = Field(0.0, ge=0, le=8, description="Scale the threshold by (confidence of the key's last result) ** this; "
                                    "the downstream stage reports confidence (onnx: `reuse: {confidence: rounding}`). 0 = off.")

    @model_validator(mode="after")
    def _vector_fields_need_vector_norm(self):
        if self.vector_fields and self.feature != "vector_norm":
            raise ValueError(f"vector_fields needs feature: vector_norm (got feature: {self.feature})")
        return self


class FrameDiff(Stage):
    """Mark near-duplicate frames (vs. the key's last processed frame) as ``reused``; see module docstring."""

    Config = FrameDiffConfig
    EXAMPLE = {"threshold": 0.01, "downscale": 8, "refresh_seconds": "30s"}

    def __init__(self, config: FrameDiffConfig, ctx: Context):
        super().__init__(config, ctx)
        c = config
        self.differ = FrameDiffer(
            c.feature, c.threshold, downscale=c.downscale, sampling=c.sampling, pixel_threshold=c.pixel_threshold,
            blocks=c.blocks, block_min=c.block_min, bins=c.bins, norm_ord=np.inf if c.norm == "inf" else c.norm,
            relative=c.relative, refresh_frames=c.refresh_frames, refresh_seconds=c.refresh_seconds,
            audit_rate=c.audit_rate, seed=c.seed, adaptive=c.adaptive, target=c.target,
            guard={"min_threshold": c.min_threshold, "max_threshold": c.max_threshold, "min_audits": c.guard_min_audits,
                   "tighten": c.guard_tighten, "loosen": c.guard_loosen, "margin": c.guard_margin,
                   "window": c.guard_window, "boost": c.audit_boost},
            confidence_power=c.confidence_power)
        ctx.peers.add(ctx.item_id, self)   # reachable by the onnx stage's audits (the graph replaces it when built)

    def _data(self, batch: Batch):
        """(items to compare: the frames column or a float matrix of ``vector_fields``, {row: reason})."""
        n = len(batch)
        where = f"stage {self.ctx.item_id!r}"
        if self.config.vector_fields:
            missing = [f for f in self.config.vector_fields if f not in batch.fields]
            if missing:
                return None, {i: f"{where}: field {missing[0]!r} is missing" for i in range(n)}
            try:
                m = np.column_stack([np.asarray(batch.fields[f], dtype=np.float64) for f in self.config.vector_fields])
                ok = np.isfinite(m).all(axis=1)
            except (TypeError, ValueError):             # an object column with a non-number somewhere
                m = np.full((n, len(self.config.vector_fields)), np.nan)
                for i in range(n):
                    try:
                        m[i] = [float(batch.fields[f][i]) for f in self.config.vector_fields]
                    except (TypeError, ValueError):
                        pass
                ok = np.isfinite(m).all(axis=1)
            bad = {int(i): f"{where}: fields {self.config.vector_fields} are not all finite numbers"
                   for i in np.flatnonzero(~ok)}
            return list(m), bad
        if batch.frames is None:
            return None, {i: f"{where}: record has no frame" for i in range(n)}
        return batch.frames, {}

    def process(self, batch: Batch) -> Batch:
        n = len(batch)
        if n == 1 and batch.frames is not None and not self.config.vector_fields:
            out = self._process_one(batch)
            if out is not None:
                return out
        data, bad = self._data(batch)
        keys = key_column(batch, self.config.key)
        if data is None:
            d = self.differ.decide(keys[:0], batch.ts[:0], [])
            rows = np.zeros(0, np.int64)
        elif bad:
            good = np.ones(n, bool)
            good[list(bad)] = False
            rows = np.flatnonzero(good)
            d = self.differ.decide(keys[rows], batch.ts[rows], [data[i] for i in rows])
        else:
            rows = None
            d = self.differ.decide(keys, batch.ts, data)
        for j, why in d.bad.items():
            i = int(j if rows is None else rows[j])
            bad[i] = f"stage {self.ctx.item_id!r}: {why} (key {keys[i]!r})"
        out = batch
        keep = slice(None)
        if bad:
            good = np.ones(n, bool)
            good[list(bad)] = False
            self.ctx.dead_letter(batch.take(~good), [bad[i] for i in sorted(bad)])
            out = batch.take(good)
            keep = good if rows is None else good[rows]
        process = d.process[keep]
        reason = d.reason[keep]
        m = len(reason)
        n_processed = int(np.count_nonzero(process))
        self.ctx.count("reused", m - n_processed)
        if n_processed:                               # reasons other than "reuse" only on processed rows
            why = reason[process]
            self.ctx.count("audited", int(np.count_nonzero(why == "audit")))
            self.ctx.count("forced", int(np.count_nonzero(why == "forced")))
        reused = np.logical_not(process).astype(object)     # Python bools, one object per row
        by = np.full(m, self.ctx.item_id, dtype=object)
        return Batch(out.ts, out.tags, {**out.fields, "staleness_frames": d.frames_since[keep].astype(np.float64),
                                        "staleness_s": d.age_s[keep], "frame_diff": d.distance[keep]},
                     out.frames, {**out.extra, "reused": reused, "reuse_reason": reason, "diff_by": by}, out.arrival)

    def _process_one(self, batch: Batch) -> Batch | None:
        """:meth:`process` for a batch of one record (a camera delivering frame by frame), from scalars: the same
        output in a third of the numpy calls. None: the general path."""
        keys = key_column(batch, self.config.key)
        got = self.differ.decide_single(keys[0], batch.ts[0], batch.frames[0])
        if got is None:
            return None
        hit, why, d, s, a, _ = got
        if not hit:
            self.ctx.count("reused", 1)
        elif why != "changed":
            self.ctx.count("audited" if why == "audit" else "forced", 1)
        num = np.array([[float(s)], [float(a)], [float(d)]])           # one array per kind, a row per column
        obj = np.empty((3, 1), dtype=object)
        obj[:, 0] = not hit, why, self.ctx.item_id
        return Batch(batch.ts, batch.tags, {**batch.fields, "staleness_frames": num[0], "staleness_s": num[1],
                                            "frame_diff": num[2]},
                     batch.frames, {**batch.extra, "reused": obj[0], "reuse_reason": obj[1], "diff_by": obj[2]},
                     batch.arrival)

    def observe_confidence(self, key: str, confidence: float) -> None:
        """Confidence (0..1) of the key's latest result, from downstream (see ``confidence_power``)."""
        self.differ.observe_confidence(key, confidence)

    def observe(self, key: str, score: float) -> None:
        """Audit feedback from downstream: agreement (0..1) of the reused result with the fresh one."""
        self.differ.observe(key, score)

    def stats(self) -> dict:
        """Per key: frames, processed, skipped, skip_rate, audits, forced, threshold, agreement, bound."""
        return self.differ.stats()

    def snapshot(self):
        return self.differ.snapshot()

    def restore(self, state) -> None:
        self.differ.restore(state)

    @classmethod
    def sample_records(cls) -> list[dict]:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (48, 64), dtype=np.uint8)
        return [{"ts": 1000.0 + i, "tags": {"device": f"cam{i % 2}"}, "frame": base if i % 5 else 255 - base}
                for i in range(20)]

    @classmethod
    def sample_bad_record(cls) -> dict:
        return {"ts": 1030.0, "tags": {"device": "cam0"}, "frame": np.zeros((3, 3, 3, 3), np.uint8)}
