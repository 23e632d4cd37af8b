"""Decoding many ``json`` / ``json-batch`` messages at once: one set of columns per run of alike messages.

The ``mqtt`` source hands each subscription's decoder every message that arrived in one ``emit_interval``.
Consecutive messages that are *regular* (same keys in every reading, only numbers and booleans, no payload tags;
see :func:`_regular`) form a run, whose columns are built once for all its readings (one ``np.fromiter`` per key
instead of one per key and message, one tag column per tag instead of per-reading Python calls). Every other
message is decoded on its own by :meth:`Decoder.decode`, exactly as before, and so is every message of a run
whose columns turn out to be irregular after all (infinity, a boolean timestamp, a negative time ...): the result
is always the one decoding message by message gives (a test compares both on random traffic).

>>> from connectors.mqtt.codecs import CodecOptions
>>> dec, b, errors = Decoder(CodecOptions(codec="json")), RowBuilder(), []
>>> payloads = [b'{"ts": 1700000000, "t": 20.5}', b'{"ts": 1700000001, "t": [1]}', b'{"ts": 1700000002000, "t": 21}']
>>> tags = [{"dev": "a"}, {"dev": "b"}, {"dev": "a"}]
>>> decode_many(dec, payloads, tags, [1.0, 2.0, 3.0], None, b, lambda i, e: errors.append((i, e.reason)))
>>> [(r["ts"], r["tags"], r["fields"]) for r in b.build().to_records()]
[(1700000000.0, {'dev': 'a'}, {'t': 20.5}), (1700000002.0, {'dev': 'a'}, {'t': 21.0})]
>>> errors
[(1, 'wrong_type')]
"""

from __future__ import annotations

from itertools import repeat
from operator import itemgetter
from typing import Callable, Sequence

import numpy as np

from connectors.mqtt.codecs import Decoder, _fast_loads
from connectors.mqtt.rows import RowBuilder
from pipeline.batch import Batch
from pipeline.epoch import epoch_seconds


def decode_many(dec: Decoder, payloads: Sequence[bytes], tags: Sequence[dict[str, str]], arrivals: Sequence[float],
                props: Sequence[dict[str, str] | None] | None, b: RowBuilder,
                on_error: Callable[[int, Exception], None]) -> None:
    """Append the readings of messages to ``b`` in order; call ``on_error(index, exception)`` for each refused one.

    Message ``i`` is ``payloads[i]`` from a topic with ``tags[i]``, arrived at ``arrivals[i]``, with MQTT 5 user
    properties ``props[i]`` (``props`` may be None: no properties). ``exception`` is a :class:`DecodeError`, or
    any other exception a decoder bug raised (the message is then left out too). Equivalent to calling
    ``dec.decode`` on each message in turn. A bad field of a reading that was kept (``FieldError``, see
    ``connectors/mqtt/readings.py``) is reported through ``on_error`` too, after its message's readings were added.
    """
    msgs = _Messages(payloads, tags, arrivals, props)
    loads = _fast_loads
    if loads is None or not dec._columnar_ok or dec.o.codec not in ("json", "json-batch"):
        for i in range(len(payloads)):
            _one(dec, msgs, i, b, on_error)
        return
    batch = dec.o.codec == "json-batch"
    if not batch and _all_alike(dec, msgs, b):
        return
    batch_key, max_bytes = dec.o.batch_key, dec.o.max_payload_bytes
    run: list[int] = []          # indices of the messages in the current run
    rows: list[dict] = []        # their readings
    counts: list[int] = []       # readings per message (json-batch)
    keys = tag_keys = None       # the run's reading keys and topic tag names
    for i, payload in enumerate(payloads):
        readings = None
        if len(payload) <= max_bytes:
            try:
                obj = loads(payload)
            except ValueError:                  # orjson.JSONDecodeError: the per-message path explains
                obj = None
            if batch:
                outside = 0
                if type(obj) is dict:
                    outside, obj = 2 * len(obj), obj.get(batch_key)
                if type(obj) is list and len(obj) > 1 and type(obj[0]) is dict:   # as Decoder._json_batch
                    first = obj[0]
                    if payload.count(b'"') - outside == 2 * len(obj) * len(first):
                        readings = obj
            elif type(obj) is dict and payload.count(b'"') == 2 * len(obj):
                first, readings = obj, (obj,)
        if readings is not None and "tags" not in first:
            topic_tags = tags[i]
            if run and (first.keys() != keys or topic_tags.keys() != tag_keys):
                _flush(dec, msgs, run, rows, counts, b, on_error)
                run, rows, counts = [], [], []
            if not run:
                keys, tag_keys = first.keys(), topic_tags.keys()
            run.append(i)
            rows.extend(readings)
            counts.append(len(readings))
            continue
        if run:
            _flush(dec, msgs, run, rows, counts, b, on_error)
            run, rows, counts = [], [], []
        _one(dec, msgs, i, b, on_error)
    if run:
        _flush(dec, msgs, run, rows, counts, b, on_error)


def _all_alike(dec, msgs, b) -> bool:
    """json: when every message is a regular reading with the keys of the first, decode them as one run.

    The common case in a few C-level passes; False (nothing added) sends the caller message by message.
    """
    payloads, tags = msgs.payloads, msgs.tags
    n = len(payloads)
    if not n or max(map(len, payloads)) > dec.o.max_payload_bytes:
        return False
    try:
        objs = list(map(_fast_loads, payloads))
    except ValueError:
        return False
    first = objs[0]
    if type(first) is not dict or "tags" in first:
        return False
    if set(map(type, objs)) != {dict} or not all(map(first.keys().__eq__, map(dict.keys, objs))):
        return False
    if list(map(bytes.count, payloads, repeat(b'"', n))) != [2 * len(first)] * n:
        return False       # a string value (or a nested key)
    if not all(map(tags[0].keys().__eq__, map(dict.keys, tags))):
        return False
    try:
        cols = _columns(dec, msgs, range(n), objs, None)
    except (KeyError, TypeError, ValueError):
        return False
    if cols is None:
        return False
    b.add(cols)
    return True


class _Messages:
    __slots__ = ("payloads", "tags", "arrivals", "props")

    def __init__(self, payloads, tags, arrivals, props):
        self.payloads, self.tags, self.arrivals, self.props = payloads, tags, arrivals, props


def _one(dec, msgs: _Messages, i: int, b, on_error) -> None:
    try:
        dec.decode(msgs.payloads[i], b, msgs.tags[i], msgs.arrivals[i], msgs.props[i] if msgs.props else None)
    except Exception as e:      # noqa: BLE001 - the caller dead-letters it; Decoder.decode rolled the builder back
        on_error(i, e)
        return
    for e in dec.take_field_errors():      # bad fields of readings that were kept: dead-lettered alone
        on_error(i, e)


def _flush(dec, msgs, run, rows, counts, b, on_error) -> None:
    cols = None
    try:
        cols = _columns(dec, msgs, run, rows, counts)
    except (KeyError, TypeError, ValueError):
        pass
    if cols is not None:
        b.add(cols)
        return
    for i in run:            # irregular after all: message by message, exactly as without this module
        _one(dec, msgs, i, b, on_error)


def _first_is_bool(rows, counts, key, every_row) -> bool:
    """Whether the first reading of some message has a boolean ``key`` (Decoder._columns checks only that one)."""
    if every_row:
        return bool in set(map(type, map(itemgetter(key), rows)))
    starts = np.cumsum(counts[:-1]).tolist() if len(counts) > 1 else []
    return type(rows[0][key]) is bool or any(type(rows[j][key]) is bool for j in starts)


def _columns(dec, msgs, run, rows, counts) -> Batch | None:
    """Columns of the readings of a run, or None when message-by-message decoding could give another result.

    Raises KeyError (a reading lacks a key of the run) or TypeError / ValueError (a value is not a number or
    boolean): the caller then decodes message by message.
    """
    json_codec = dec.o.codec == "json"
    first = rows[0]
    n = len(rows)
    tsk = dec.o.timestamp_field
    fields: dict[str, np.ndarray] = {}
    ts = None
    for k in first:
        if k == tsk:
            # A boolean timestamp in a message's first reading is refused (json; json-batch goes per value then)
            if _first_is_bool(rows, counts, k, json_codec):
                return None
            ts = np.fromiter(map(itemgetter(k), rows), np.float64, count=n)
        elif type(first[k]) is bool:           # boolean column stays boolean, as the per-value path keeps it
            col = np.array(list(map(itemgetter(k), rows)))
            fields[k] = col if col.dtype == np.bool_ else col.astype(np.float64)
        else:
            fields[k] = np.fromiter(map(itemgetter(k), rows), np.float64, count=n)   # null -> NaN (absent)
    for k, col in fields.items():
        if col.dtype.kind == "f":
            if json_codec:
                # json: null leaves a field out (the column may not exist, or come later): message by message
                if not np.isfinite(col).all():
                    return None
            elif np.isinf(col).any():
                return None
    json_batch = not json_codec
    arrived = np.array([msgs.arrivals[i] for i in run], dtype=np.float64)
    arrived = np.repeat(arrived, counts) if json_batch else arrived      # per reading, its message's arrival
    ts_arrival = ts is None
    if ts is not None:
        if not dec._numeric_ts or not (np.isfinite(ts).all() and (ts >= 0).all()):
            return None
        if dec._divisor is not None:
            ts = ts / dec._divisor
        elif ts.max() > 1e11:
            ts = epoch_seconds(ts)
    else:
        ts = arrived.copy()
    tags = {}
    run_tags = [msgs.tags[i] for i in run]
    for name in run_tags[0]:
        col = np.empty(len(run), dtype=object)
        col[:] = [t[name] for t in run_tags]
        tags[name] = np.repeat(col, counts) if json_batch else col
    extra = {}
    if ts_arrival:
        src = np.empty(n, dtype=object)
        src.fill("arrival")
        extra["ts_source"] = src
    return Batch(ts, tags, fields, None, extra, arrived)
