"""Payloads in the formats the ``mqtt`` source decodes: ``json``, ``json-batch``, ``senml`` and ``frame`` (.npy).

>>> ts = np.array([1767225600.0, 1767225600.5])
>>> fields = {"temperature": np.array([21.5, 21.75])}
>>> encode_readings("json", "room1", ts, fields)
[b'{"ts":1767225600.0,"temperature":21.5}', b'{"ts":1767225600.5,"temperature":21.75}']
>>> encode_readings("json-batch", "room1", ts, fields, batch_size=2)
[b'{"readings":[{"ts":1767225600.0,"temperature":21.5},{"ts":1767225600.5,"temperature":21.75}]}']
>>> encode_readings("senml", "room1", ts, fields, batch_size=2)[0].decode()
'[{"bn":"room1:","bt":1767225600.0,"n":"temperature","u":"Cel","v":21.5},{"t":0.5,"n":"temperature","u":"Cel","v":21.75}]'
>>> frame = np.zeros((2, 3), np.uint8)
>>> (np.load(io.BytesIO(encode_frame(frame))) == frame).all()
np.True_
"""

from __future__ import annotations

import io
import json

import numpy as np

from .data import UNITS

CODECS = ("json", "json-batch", "senml", "frame")
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _rows(ts: np.ndarray, fields: dict[str, np.ndarray]) -> list[dict]:
    names = list(fields)
    columns = [np.round(ts, 3).tolist()] + [fields[k].tolist() for k in names]
    keys = ["ts"] + names
    return [dict(zip(keys, values)) for values in zip(*columns)]


def encode_readings(codec: str, device: str, ts: np.ndarray, fields: dict[str, np.ndarray],
                    batch_size: int = 1) -> list[bytes]:
    """Messages for ``len(ts)`` readings of one device: one per reading (json) or ``batch_size`` per message."""
    rows = _rows(ts, fields)
    if codec == "json":
        return [_dumps(r).encode() for r in rows]
    if codec == "json-batch":
        return [_dumps({"readings": rows[i:i + batch_size]}).encode() for i in range(0, len(rows), batch_size)]
    if codec == "senml":
        out = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i:i + batch_size]
            t0 = chunk[0]["ts"]
            pack = []
            for j, r in enumerate(chunk):
                for name, v in r.items():
                    if name == "ts":
                        continue
                    rec = {"bn": f"{device}:", "bt": t0} if not pack else ({"t": round(r["ts"] - t0, 3)} if j else {})
                    rec["n"] = name
                    if name in UNITS:
                        rec["u"] = UNITS[name]
                    rec["v"] = v
                    pack.append(rec)
            out.append(_dumps(pack).encode())
        return out
    raise ValueError(f"codec {codec!r} does not carry readings: use one of json, json-batch, senml")


def encode_frame(frame: np.ndarray) -> bytes:
    """A frame as NumPy ``.npy`` bytes (dtype and shape travel in the header)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(frame), allow_pickle=False)
    return buf.getvalue()
