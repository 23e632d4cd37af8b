"""NDJSON encoding of batches, shared by the file and stdout sinks.

>>> from pipeline.batch import Batch
>>> ndjson_lines(Batch.from_records([{"ts": 1.5, "tags": {"d": "a"}, "fields": {"t": 2.0, "ok": True}}]))
b'{"ts":1.5,"tags":{"d":"a"},"fields":{"t":2.0,"ok":true}}\\n'
"""

from __future__ import annotations

import json
import math

import numpy as np

from ..batch import Batch

try:
    import orjson

    def _dumps(obj) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY, default=_default)
except ImportError:  # pragma: no cover - orjson is optional
    orjson = None

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":"), default=_default, allow_nan=False).encode()


def _default(value):
    if isinstance(value, np.ndarray):
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return str(value)


def ndjson_lines(batch: Batch) -> bytes:
    """One JSON object per record; a frame is written as its shape and dtype, not its pixels."""
    records = batch.to_records()
    for rec in records:
        if "frame" in rec:
            rec["frame"] = _default(rec["frame"])
    return b"".join(_dumps(r) + b"\n" for r in records)
