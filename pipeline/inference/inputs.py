"""Input specs of the ``onnx`` stage and the builders that turn a batch into one model input tensor.

Three sources: ``frame`` (the record's image), ``fields`` (a feature vector of named fields) and
``window`` (the last ``length`` readings of named fields per key, oldest first).

>>> import numpy as np
>>> from pipeline.batch import Batch
>>> spec = WindowInput(source="window", fields=["t"], length=2, key=["device"])
>>> b = WindowBuilder(spec, np.float32, "stage 'x'")
>>> batch = Batch.from_records([{"ts": i, "tags": {"device": "a"}, "fields": {"t": float(i)}} for i in range(3)])
>>> x, ready = b.build(batch)
>>> ready.tolist(), x[:, :, 0].tolist()
([False, True, True], [[0.0, 1.0], [1.0, 2.0]])
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..batch import Batch
from ..keys import key_groups
from .preprocess import frame_problem, frames_to_tensor

DType = Literal["float32", "float16", "float64", "uint8", "int8", "int32", "int64"]


class FrameInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["frame"] = Field(description="Build this input from the record's `frame` (an image array).")
    size: tuple[int, int] | None = Field(None, description="[height, width] to resize to; default: the model's declared size.")
    color: Literal["gray", "rgb", "bgr"] = Field("gray", description="Channels the model expects.")
    frame_order: Literal["bgr", "rgb"] = Field("bgr", description="Channel order of incoming 3-channel frames (OpenCV gives bgr).")
    resize: Literal["area", "bilinear", "nearest"] = Field("area", description="Interpolation: `area` = true area averaging for any size (OpenCV INTER_AREA when shrinking), `bilinear` (half-pixel centres), `nearest`.")
    scale: float = Field(1 / 255, description="Multiply pixel values by this (1/255 maps uint8 to 0..1).")
    mean: list[float] | None = Field(None, description="Subtract per channel after scaling (e.g. ImageNet means).")
    std: list[float] | None = Field(None, description="Divide per channel after subtracting `mean`.")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description="Tensor layout the model expects.")
    dtype: DType | None = Field(None, description="Tensor dtype; default: the model's declared dtype.")


class FieldsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["fields"] = Field(description="Build this input as a vector of the record's named fields.")
    fields: list[str] = Field(min_length=1, description="Field names, in the order the model expects.")
    dtype: DType | None = Field(None, description="Tensor dtype; default: the model's declared dtype.")


class WindowInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: Literal["window"] = Field(description="Build this input from the last `length` readings per key.")
    fields: list[str] = Field(min_length=1, description="Field names per reading, in the order the model expects.")
    length: int = Field(ge=1, le=100_000, description="Readings per window (the record's own reading is the last).")
    key: list[str] = Field(default_factory=list, description="Tags that key the windows (one window per device, say).")
    flatten: bool = Field(False, description="Give the model [length * fields] instead of [length, fields].")
    dtype: DType | None = Field(None, description="Tensor dtype; default: the model's declared dtype.")


InputSpec = FrameInput | FieldsInput | WindowInput


def numeric_problems(batch: Batch, names: list[str], where: str) -> tuple[np.ndarray, dict[int, str]]:
    """Rows whose named fields are missing, not numbers, or not finite, with a reason each."""
    n = len(batch)
    cols = [batch.fields.get(name) for name in names]
    if all(c is not None and c.dtype.kind == "f" for c in cols):   # fast path: all present, all finite
        if all(np.isfinite(c).all() for c in cols):
            return np.zeros(n, bool), {}
    bad = np.zeros(n, bool)
    reasons: dict[int, str] = {}
    for name in names:
        col = batch.fields.get(name)
        if col is None:
            bad[:] = True
            for i in range(n):
                reasons.setdefault(i, f"{where}: field {name!r} is missing")
            continue
        if col.dtype == object:
            for i, v in enumerate(col):
                ok = isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(float(v))
                if not ok:
                    bad[i] = True
                    reasons.setdefault(i, f"{where}: field {name!r} is {v!r}, not a finite number")
        elif col.dtype.kind == "f":
            nonfinite = ~np.isfinite(col)
            for i in np.flatnonzero(nonfinite & ~bad):
                reasons.setdefault(int(i), f"{where}: field {name!r} is "
                                   + ("missing" if np.isnan(col[i]) else f"{col[i]}, not a finite number"))
            bad |= nonfinite
    return bad, reasons


def _matrix(batch: Batch, names: list[str], dtype=np.float64) -> np.ndarray:
    """(n, len(names)) of the named fields (already checked to be finite numbers), in ``dtype``."""
    out = np.empty((len(batch), len(names)), dtype)
    for j, name in enumerate(names):
        col = batch.fields[name]
        out[:, j] = col if col.dtype != object else col.astype(np.float64)
    return out


class FrameBuilder:
    stateful = False

    def __init__(self, spec: FrameInput, dtype, where: str, size: tuple[int, int]):
        self.spec, self.dtype, self.where, self.size = spec, np.dtype(dtype), where, size

    def problems(self, batch: Batch) -> tuple[np.ndarray, dict[int, str]]:
        n = len(batch)
        frames = batch.frames if batch.frames is not None else np.full(n, None, object)
        reasons = {}
        for i, f in enumerate(frames):
            why = frame_problem(f)
            if why:
                reasons[i] = f"{self.where}: {why}"
        bad = np.zeros(n, bool)
        bad[list(reasons)] = True
        return bad, reasons

    def build(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        s = self.spec
        x = frames_to_tensor(list(batch.frames), height=self.size[0], width=self.size[1], color=s.color,
                             order=s.frame_order, resize=s.resize, scale=s.scale, mean=s.mean, std=s.std,
                             layout=s.layout, dtype=self.dtype)
        return x, np.ones(len(batch), bool)

    def sample(self, n: int) -> np.ndarray:
        c = 1 if self.spec.color == "gray" else 3
        shape = (n, c, *self.size) if self.spec.layout == "NCHW" else (n, *self.size, c)
        return np.zeros(shape, self.dtype)


class FieldsBuilder:
    stateful = False

    def __init__(self, spec: FieldsInput, dtype, where: str):
        self.spec, self.dtype, self.where = spec, np.dtype(dtype), where

    def problems(self, batch: Batch):
        return numeric_problems(batch, self.spec.fields, self.where)

    def build(self, batch: Batch):
        return _matrix(batch, self.spec.fields, self.dtype), np.ones(len(batch), bool)

    def sample(self, n: int) -> np.ndarray:
        return np.zeros((n, len(self.spec.fields)), self.dtype)


class WindowBuilder:
    """Keeps the last ``length - 1`` readings per key; a record is ready once its window is full."""

    stateful = True

    def __init__(self, spec: WindowInput, dtype, where: str):
        self.spec, self.dtype, self.where = spec, np.dtype(dtype), where
        self.history: dict[tuple, np.ndarray] = {}

    def problems(self, batch: Batch):
        return numeric_problems(batch, self.spec.fields, self.where)

    def build(self, batch: Batch):
        L, F = self.spec.length, len(self.spec.fields)
        values = _matrix(batch, self.spec.fields, self.dtype)
        ready = np.zeros(len(batch), bool)
        parts = []
        for key, rows in key_groups(batch, self.spec.key):
            past = self.history.get(key)
            series = values[rows] if past is None else np.concatenate([past, values[rows]])
            first, m = len(series) - len(rows), len(rows)
            start = max(0, L - 1 - first)          # first new reading whose window is full
            if start < m:  # window of new reading j = series[first + j - L + 1 : first + j + 1], gathered in one copy
                ends = np.arange(first + start, first + m)
                parts.append((rows[start:], series[ends[:, None] + np.arange(1 - L, 1)]))
                ready[rows[start:]] = True
            self.history[key] = series[max(0, len(series) - (L - 1)):].copy()
        if len(parts) == 1 and len(parts[0][0]) == len(batch):
            x = parts[0][1]
        else:
            out = np.empty((len(batch), L, F), self.dtype)
            for rows, win in parts:
                out[rows] = win
            x = out[ready]
        if self.spec.flatten:
            x = x.reshape(len(x), L * F)
        return x, ready

    def sample(self, n: int) -> np.ndarray:
        L, F = self.spec.length, len(self.spec.fields)
        return np.zeros((n, L * F) if self.spec.flatten else (n, L, F), self.dtype)

    def snapshot(self):
        return {k: v.copy() for k, v in self.history.items()}

    def restore(self, state) -> None:
        self.history = {tuple(k): np.asarray(v, self.dtype) for k, v in state.items()}
