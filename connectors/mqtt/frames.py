"""The ``frame`` codec: one binary frame per message -> one reading with a ``frame`` (numpy array).

NumPy ``.npy`` bytes (``frame_format: npy``, or ``auto`` when the payload starts with the .npy magic), or raw bytes
with ``dtype`` and ``shape`` from the subscription or from MQTT 5 user properties (``dtype``, ``shape`` as
``"480,640,3"``; the properties win). A user property ``ts`` gives the time, else the arrival time is used.

>>> import numpy as np
>>> from connectors.mqtt.codecs import CodecOptions, Decoder, RowBuilder
>>> b = RowBuilder()
>>> Decoder(CodecOptions(codec="frame", dtype="uint8", shape=[2, 3])).decode(bytes(range(6)), b, {"cam": "c1"}, 5.0)
1
>>> r = b.build().to_records()[0]
>>> r["frame"].tolist(), r["ts"], r["ts_source"]
([[0, 1, 2], [3, 4, 5]], 5.0, 'arrival')
"""

from __future__ import annotations

import io
import math

import numpy as np

from connectors.mqtt.codecs import DecodeError

_NPY_MAGIC = b"\x93NUMPY"


def decode_frame(dec, payload: bytes, b, topic_tags: dict[str, str], arrival: float, props: dict[str, str]) -> int:
    """One binary frame -> one reading with a ``frame``; see the module docstring."""
    fmt = dec.o.frame_format
    if fmt == "auto":
        fmt = "npy" if payload[:6] == _NPY_MAGIC else "raw"
    if fmt == "npy":
        try:
            frame = np.load(io.BytesIO(payload), allow_pickle=False)
        except Exception as e:  # numpy raises ValueError/OSError/EOFError for damaged files
            raise DecodeError("undecodable", f"payload is not a .npy array ({type(e).__name__}: {str(e)[:80]})") from None
        if frame.dtype.hasobject:
            raise DecodeError("bad_frame", "object arrays are not frames")
    else:
        dtype_s = props.get("dtype", dec.o.dtype)
        shape_s = props.get("shape")
        if dtype_s is None:
            raise DecodeError("bad_frame", "raw frame without dtype: set the subscription's dtype or send the "
                                           "MQTT 5 user property dtype")
        try:
            dtype = np.dtype(dtype_s)
            if dtype.hasobject:
                raise TypeError("object dtype")
            shape = ([int(x) for x in shape_s.split(",") if x.strip()] if shape_s is not None
                     else list(dec.o.shape) if dec.o.shape is not None else [-1])
        except (TypeError, ValueError) as e:
            raise DecodeError("bad_frame", f"raw frame dtype {dtype_s!r} / shape {shape_s!r} invalid: {e}") from None
        want = math.prod(shape) * dtype.itemsize
        if (-1 not in shape and want != len(payload)) or len(payload) % dtype.itemsize:
            raise DecodeError("bad_frame", f"raw frame is {len(payload)} bytes, dtype {dtype} x shape {shape} "
                                           f"needs {want}")
        frame = np.frombuffer(payload, dtype).reshape(shape)
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        raise DecodeError("non_finite", "frame contains NaN or Infinity")
    ts = props.get("ts")
    if ts is None:
        b.begin_row(arrival, topic_tags, arrival_ts=True)
    else:
        try:
            num = float(ts)
        except ValueError:
            num = ts
        b.begin_row(dec.timestamp(num, 0), topic_tags)
    b.frame(frame)
    b.end_row()
    return 1
