"""Payload codecs for the ``mqtt`` source: bytes of one MQTT message -> rows of a columnar batch.

Codecs (one per subscription, option ``codec``):

- ``json``: one reading, ``{"ts": 1700000000.5, "temp": 21.5, "ok": true, "tags": {"unit": "C"}}``;
- ``json-batch``: many readings, a list of such objects or ``{"readings": [...]}``;
- ``senml``: SenML JSON (RFC 8428): base name/time/value resolution; records with the same base name and
  time become one reading, the base name becomes the tag ``device`` (option ``senml_device_tag``);
- ``frame``: one binary frame, NumPy ``.npy`` bytes or raw bytes with ``dtype`` and ``shape`` from the
  config or from MQTT 5 user properties (``dtype``, ``shape`` as ``"480,640,3"``, optional ``ts``).

Timestamps (``timestamp_unit``): ``s``, ``ms``, ``us``, ``ns``, ``iso`` (ISO 8601 strings) or ``auto``
(ISO strings are parsed, numbers are read by magnitude: up to 1e11 s, 1e14 ms, 1e17 us, else ns; divided
exactly, as the ``replay`` source does, so both give the same times for the same data).
A reading without one gets the arrival time and the annotation ``ts_source="arrival"``.

What happens to each value of a JSON reading (text, nested objects, numbers sent as text, bad values) is in
``connectors/mqtt/readings.py``: a bad field is left out and reported alone (:meth:`Decoder.take_field_errors`)
when the rest of its reading is usable. A message that cannot be decoded raises :class:`DecodeError` with a
``reason`` from :data:`REASONS` and leaves the builder as it was before the message.

>>> dec = Decoder(CodecOptions(codec="json-batch"))
>>> b = RowBuilder()
>>> dec.decode(b'[{"ts": 1700000000000, "t": 20.5}, {"t": 21}]', b, {"site": "p1"}, arrival=1700000001.0)
2
>>> for r in b.build().to_records(): print(r)
{'ts': 1700000000.0, 'tags': {'site': 'p1'}, 'fields': {'t': 20.5}}
{'ts': 1700000001.0, 'tags': {'site': 'p1'}, 'fields': {'t': 21.0}, 'ts_source': 'arrival'}
>>> try:
...     dec.decode(b'[{"t": NaN}]', b, {}, arrival=0.0)
... except DecodeError as e:
...     print(e.reason, "|", e)
non_finite | reading [0] field 't' is NaN (NaN and Infinity are not readings)
"""

from __future__ import annotations

import datetime as _dt
import json
from operator import itemgetter
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from connectors.mqtt.rows import RowBuilder
from pipeline.batch import Batch
from pipeline.epoch import UNIT_DIVISORS, epoch_second, epoch_seconds

try:  # optional: 3-4x faster parsing; on any error the stdlib decoder runs to name the exact reason
    from orjson import JSONDecodeError as _OrjsonError, loads as _fast_loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads, _OrjsonError = None, ValueError

REASONS = (
    "payload_too_large",   # over max_payload_bytes
    "undecodable",         # not UTF-8 / not JSON / not a .npy file
    "json_too_deep",       # nesting deeper than max_json_depth
    "wrong_type",          # e.g. a string where a number belongs, a list where a reading belongs
    "missing_field",       # a configured field, or a SenML value, is absent
    "non_finite",          # NaN / Infinity
    "bad_timestamp",       # unparseable ISO string, negative or non-finite time
    "bad_frame",           # raw frame size does not match dtype x shape, unknown dtype
    "topic_mismatch",      # raised by the source when the topic does not fit topic_template
)

_DIVISOR = UNIT_DIVISORS


class DecodeError(ValueError):
    """A message that cannot be decoded. ``reason`` is one of REASONS; str(e) says what was wrong."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class CodecOptions(BaseModel):
    """How to decode the payloads of one subscription."""

    model_config = ConfigDict(extra="forbid")
    codec: Literal["json", "json-batch", "senml", "frame"] = Field(
        "json", description="Payload format: json (one reading), json-batch (many), senml (RFC 8428), frame (binary).")
    timestamp_field: str = Field("ts", min_length=1, description="JSON key of the timestamp (json, json-batch).")
    timestamp_unit: Literal["auto", "s", "ms", "us", "ns", "iso"] = Field(
        "auto", description="Unit of numeric timestamps, or iso for ISO 8601 strings; auto detects by magnitude.")
    tag_fields: list[str] = Field(
        default_factory=list, description="JSON keys whose values become tags (dotted names reach into nested objects).")
    text_fields: Literal["drop", "tags"] = Field(
        "drop", description="Other text values: drop (counted as text_fields_dropped, the reading is kept) or tags.")
    numbers_from_strings: bool = Field(False, description='Read numbers sent as text ("21.5") as numbers.')
    flatten_separator: str = Field(
        ".", min_length=1, max_length=4, description='Nested objects become fields joined by this: {"env": {"t": 1}} -> env.t.')
    fields: list[str] | None = Field(
        None, description="Only these JSON keys become fields and each must be present; default: every other key.")
    batch_key: str = Field("readings", min_length=1, description="json-batch: key of the list in an object payload.")
    senml_device_tag: str = Field("device", min_length=1, description="senml: tag that receives the base name.")
    frame_format: Literal["auto", "npy", "raw"] = Field(
        "auto", description="frame: npy, raw (needs dtype and shape) or auto (npy when the payload starts with its magic).")
    dtype: str | None = Field(None, description="frame: NumPy dtype of raw frames, e.g. uint8; MQTT 5 user property dtype wins.")
    shape: list[int] | None = Field(None, description="frame: shape of raw frames, e.g. [480, 640]; user property shape wins.")
    max_payload_bytes: int = Field(1_048_576, ge=1, le=268_435_455, description="Larger payloads are dead-lettered.")
    max_json_depth: int = Field(8, ge=2, le=64, description="Deeper JSON nesting is dead-lettered (json_too_deep).")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, v):
        if v is not None:
            try:
                np.dtype(v)
            except TypeError:
                raise ValueError(f"dtype {v!r} is not a NumPy dtype (e.g. uint8, float32, <u2)") from None
        return v


class NonFinite:
    """``NaN``/``Infinity``/``-Infinity`` in a payload (not JSON, but some devices send them): a bad value, never a
    number (not a float, so the vectorised paths refuse it and the per-value rules name the field)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


_json_decoder = json.JSONDecoder(parse_constant=NonFinite)


def _iso_seconds(s: str) -> float:
    try:
        d = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise DecodeError("bad_timestamp", f"timestamp {s[:40]!r} is not ISO 8601 (e.g. 2024-05-01T12:00:00Z)") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=_dt.timezone.utc)
    return d.timestamp()


def _check_depth(payload: bytes, max_depth: int) -> None:
    """Raise json_too_deep for nesting deeper than max_depth (brackets inside strings count too).

    Runs only when a message already failed with wrong_type: every codec expects scalars at depth <= 4, so
    deep nesting always fails the shape checks first; the parsers themselves stop at ~1000 levels.
    """
    if payload.count(b"[") + payload.count(b"{") <= max_depth:
        return
    a = np.frombuffer(payload, np.uint8)
    step = (a == 0x5B).astype(np.int8) + (a == 0x7B) - (a == 0x5D) - (a == 0x7D)
    depth = int(np.cumsum(step, dtype=np.int32).max())
    if depth > max_depth:
        raise DecodeError("json_too_deep", f"JSON nested {depth} levels deep, more than max_json_depth={max_depth}")


def _const(n: int, value) -> np.ndarray:
    """An object column holding one value (5x faster than np.full with dtype=object)."""
    a = np.empty(n, dtype=object)
    a.fill(value)
    return a


class Decoder:
    """Decodes payloads per :class:`CodecOptions` into a :class:`RowBuilder`."""

    def __init__(self, options: CodecOptions, columnar: bool = True):
        self.o = options
        self._columnar_ok = columnar and options.fields is None and not options.tag_fields
        unit = options.timestamp_unit
        self._divisor = _DIVISOR.get(unit)
        self._iso = unit in ("auto", "iso")
        self._numeric_ts = unit != "iso"
        from connectors.mqtt.readings import ReadingRules
        self._rules = ReadingRules(options)
        self._partial: list = []        # bad fields of readings that were kept (take_field_errors)
        if options.codec == "senml":
            from connectors.mqtt.senml import decode_senml
            self._decode = lambda *a: decode_senml(self, *a)
        elif options.codec == "frame":
            from connectors.mqtt.frames import decode_frame
            self._decode = lambda *a: decode_frame(self, *a)
        else:
            self._decode = self._json if options.codec == "json" else self._json_batch

    def decode(self, payload: bytes, builder: RowBuilder, topic_tags: dict[str, str], arrival: float,
               user_properties: dict[str, str] | None = None) -> int:
        """Append the readings of one message to ``builder``; return how many. Raises DecodeError."""
        if len(payload) > self.o.max_payload_bytes:
            raise DecodeError("payload_too_large",
                              f"payload is {len(payload)} bytes, more than max_payload_bytes={self.o.max_payload_bytes}")
        mark = builder.mark()
        builder.arrival = arrival          # every row of this message carries its arrival time
        self._partial = []
        try:
            return self._decode(payload, builder, topic_tags, arrival, user_properties or {})
        except DecodeError as e:
            builder.rollback(mark)
            self._partial = []
            if e.reason == "wrong_type" and self.o.codec != "frame":
                _check_depth(payload, self.o.max_json_depth)   # a nested value: name deep nesting if it is that
            raise
        except RecursionError:
            builder.rollback(mark)
            self._partial = []
            raise DecodeError("json_too_deep", "JSON nested too deep to parse") from None
        except BaseException:
            builder.rollback(mark)     # whatever went wrong, the message leaves no trace
            self._partial = []
            raise

    def take_field_errors(self) -> list:
        """Bad fields (FieldError) of the last decoded message, whose readings were kept without them."""
        errors, self._partial = self._partial, []
        return errors

    def take_counts(self) -> dict[str, int]:
        """Counters since the last call (``text_fields_dropped``), for the source to add to its metrics."""
        n, self._rules.dropped = self._rules.dropped, 0
        return {"text_fields_dropped": n} if n else {}

    # -- json -----------------------------------------------------------------------------------
    def parse_json(self, payload: bytes) -> Any:
        if _fast_loads is not None:
            try:
                return _fast_loads(payload)
            except _OrjsonError:
                pass  # NaN, huge integers, bad bytes...: let the stdlib parser accept or explain
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError("undecodable", f"payload is not UTF-8 ({e.reason} at byte {e.start})") from None
        try:
            return _json_decoder.decode(text)
        except json.JSONDecodeError as e:
            raise DecodeError("undecodable", f"payload is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None

    def _json(self, payload, b, topic_tags, arrival, props) -> int:
        obj = self.parse_json(payload)
        if type(obj) is not dict:
            raise DecodeError("wrong_type", f"json codec expects one object per message, got a {type(obj).__name__} "
                                            "(use codec: json-batch for lists)")
        self._reading(obj, b, topic_tags, arrival, 0, 1)
        return 1

    def _json_batch(self, payload, b, topic_tags, arrival, props) -> int:
        obj = self.parse_json(payload)
        quotes = 0                      # quote characters outside the readings (see _columns)
        if type(obj) is dict:
            quotes = 2 * len(obj)
            if self.o.batch_key not in obj:
                raise DecodeError("missing_field", f"json-batch object has no {self.o.batch_key!r} list "
                                                   f"(keys: {sorted(obj)[:10]})")
            obj = obj[self.o.batch_key]
        if type(obj) is not list:
            raise DecodeError("wrong_type", f"json-batch expects a list of readings, got a {type(obj).__name__}")
        if self._columnar_ok and len(obj) > 1:
            rows = self._columns(obj, payload.count(b'"') - quotes, topic_tags, arrival)
            if rows is not None:
                b.add(rows)
                return len(rows)
        refused: list[tuple[int, Any, DecodeError]] = []
        for i, r in enumerate(obj):
            mark = b.mark()
            try:
                if type(r) is not dict:
                    raise DecodeError("wrong_type", f"reading [{i}] is a {type(r).__name__}, not an object")
                self._reading(r, b, topic_tags, arrival, i, 2)
            except DecodeError as e:     # this reading only: the message's other readings are kept
                b.rollback(mark)
                refused.append((i, r, e))
        kept = len(obj) - len(refused)
        if refused and not kept:
            raise refused[0][2]          # nothing usable: the message is refused whole, as one dead letter
        from connectors.mqtt.readings import ReadingError

        for i, r, e in refused:
            self._partial.append(ReadingError.of(e, r, i, kept))
        return kept

    def _reading(self, obj: dict, b: RowBuilder, topic_tags, arrival: float, i: int, depth: int) -> None:
        """One reading, per the rules of connectors/mqtt/readings.py."""
        bad = self._rules.read(self, obj, b, topic_tags, arrival, i, depth)
        if bad:
            self._partial.extend(bad)

    def _columns(self, readings: list, quotes: int, topic_tags: dict[str, str], arrival: float) -> Batch | None:
        """Vectorised json-batch path for readings that all have the same keys and numeric/boolean values.

        ``quotes`` is the number of '"' in the payload that belong to the readings. When it is exactly two per key
        of every reading, no value is a string and no reading has a key the first one lacks (a missing key is a
        KeyError), so each column can go through np.fromiter. Returns None whenever anything is irregular; the
        per-value path then decodes the message (and names the exact problem). A test proves both paths agree.
        """
        first = readings[0]
        if type(first) is not dict or "tags" in first:
            return None
        keys = list(first)
        n = len(readings)
        if quotes != 2 * n * len(keys):
            return None
        tsk = self.o.timestamp_field
        fields: dict[str, np.ndarray] = {}
        ts = None
        try:
            for k in keys:
                values = map(itemgetter(k), readings)
                if type(first[k]) is bool and k != tsk:    # keep boolean columns boolean, as the per-value path does
                    col = np.array(list(values))
                    if col.dtype != np.bool_:
                        col = col.astype(np.float64)       # mixed with numbers: 0/1 like the per-value path
                else:
                    col = np.fromiter(values, np.float64, count=n)   # null -> NaN (absent), like the per-value path
                if k == tsk:
                    ts = col
                else:
                    fields[k] = col
        except (KeyError, TypeError, ValueError, OverflowError):     # OverflowError: an integer beyond float64
            return None
        if any(c.dtype.kind != "f" and c.dtype != np.bool_ for c in fields.values()):
            return None
        if any(c.dtype.kind == "f" and np.isinf(c).any() for c in fields.values()):
            return None
        extra = {}
        if ts is not None:
            if type(first[tsk]) is bool or not self._numeric_ts or not (np.isfinite(ts).all() and (ts >= 0).all()):
                return None
            if self._divisor is not None:
                ts = ts / self._divisor
            elif ts.max() > 1e11:           # not all in seconds (ts >= 0 here)
                ts = epoch_seconds(ts)
        else:
            ts = np.full(n, arrival)
            extra["ts_source"] = _const(n, "arrival")
        tags = {k: _const(n, v) for k, v in topic_tags.items()}
        return Batch(ts, tags, fields, None, extra, np.full(n, arrival))

    @staticmethod
    def _tag_value(k, v, i) -> str:
        if type(v) is str:
            return v
        if type(v) in (int, float, bool):
            return str(v)
        raise DecodeError("wrong_type", f"reading [{i}] tag {k!r} is a {type(v).__name__}, not a string")

    def timestamp(self, v, i: int) -> float:
        t = type(v)
        if t is str:
            if not self._iso:
                raise DecodeError("bad_timestamp", f"reading [{i}] timestamp {v[:40]!r} is a string but "
                                                   f"timestamp_unit is {self.o.timestamp_unit}")
            s = _iso_seconds(v)
        elif (t is float or t is int) and self._numeric_ts:
            if t is float and v - v:
                raise DecodeError("bad_timestamp", f"reading [{i}] timestamp is {v}")
            if self._divisor is not None:
                s = v / self._divisor
            else:
                s = epoch_second(v)
        else:
            raise DecodeError("bad_timestamp", f"reading [{i}] timestamp {str(v)[:40]!r} is a {t.__name__}; "
                                               f"timestamp_unit={self.o.timestamp_unit}")
        if s < 0:
            raise DecodeError("bad_timestamp", f"reading [{i}] timestamp {v!r} is before 1970")
        return float(s)
