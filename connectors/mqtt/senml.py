"""The ``senml`` codec: SenML JSON (RFC 8428) packs -> readings.

Base name/time/value resolve per record (``bn`` + ``n``, ``bt`` + ``t``, ``bv`` + ``v``); times below 2**28 are
relative to the arrival time. Records with the same base name and time become one reading whose fields are the
record names (``value`` when empty, ``<name>_sum`` for ``s``) and whose tag ``device`` (``senml_device_tag``) is the
base name without a trailing ``:`` or ``/``; a name that comes again at the same time starts another reading (before,
its later value replaced the earlier one, silently). String and data values (``vs``, ``vd``) are dropped and counted
(``text_fields_dropped``); any other bad record is dead-lettered alone (``ReadingError``) and the pack's other records
kept. A pack with nothing usable, or with a bad base value (``bn``, ``bt``, ``bv``: every later record depends on
it), is refused whole.

>>> from connectors.mqtt.codecs import CodecOptions, Decoder, RowBuilder
>>> b = RowBuilder()
>>> Decoder(CodecOptions(codec="senml")).decode(
...     b'[{"bn": "urn:dev:ow:10e2073a:", "bt": 1700000000, "n": "temp", "v": 23.1}, {"n": "hum", "v": 40}]', b, {}, 0.0)
1
>>> b.build().to_records()
[{'ts': 1700000000.0, 'tags': {'device': 'urn:dev:ow:10e2073a'}, 'fields': {'temp': 23.1, 'hum': 40.0}}]
"""

from __future__ import annotations

from typing import Any

from connectors.mqtt.codecs import DecodeError, NonFinite
from connectors.mqtt.readings import FLOAT_MAX

_RELATIVE = 2 ** 28   # RFC 8428 4.5.3: times below this are relative to "now"


def decode_senml(dec, payload: bytes, b, topic_tags: dict[str, str], arrival: float, props) -> int:
    """SenML JSON (RFC 8428) -> readings; see the module docstring."""
    pack = dec.parse_json(payload)
    if type(pack) is dict:
        pack = [pack]
    if type(pack) is not list or not pack:
        raise DecodeError("wrong_type", "SenML pack must be a non-empty array of records")
    bn, bt, bv = "", 0.0, 0.0
    rows: dict[tuple[str, float], list[dict[str, Any]]] = {}    # a name twice at one time: a second row
    nth: dict[tuple[str, float, str], int] = {}                  # the row the next value of a name at a time goes in
    no_time = True
    refused: list[tuple[int, Any, DecodeError]] = []
    for i, rec in enumerate(pack):
        if type(rec) is not dict:
            refused.append((i, rec, DecodeError("wrong_type", f"SenML record [{i}] is a {type(rec).__name__}, "
                                                              "not an object")))
            continue
        bn = _get(rec, "bn", str, bn, i)      # a bad base value changes every later record: the pack is refused
        bt = _get(rec, "bt", (int, float), bt, i)
        bv = _get(rec, "bv", (int, float), bv, i)
        try:
            n, when, v = _record(rec, i, bn, bt, bv, arrival)
        except DecodeError as e:               # this record only: the pack's other records are kept
            refused.append((i, rec, e))
            continue
        if "t" in rec or "bt" in rec:
            no_time = False
        dev = bn.rstrip(":/") if bn else ""
        at = rows.setdefault((dev, when), [{}])
        j = nth.get((dev, when, n), 0)          # before, the later value silently replaced the earlier one
        nth[(dev, when, n)] = j + 1
        if j == len(at):
            at.append({})
        at[j][n] = v
    if refused and not rows:
        raise refused[0][2]                   # nothing usable: refused whole, as one dead letter
    if refused:
        from connectors.mqtt.readings import ReadingError

        for i, rec, e in refused:
            if type(e) is _TextValue:         # string/data values: dropped and counted, like json text fields
                dec._rules.dropped += 1
            else:
                dec._partial.append(ReadingError.of(e, rec, i, len(pack) - len(refused), "record"))
    n_rows = 0
    for (dev, when), at in rows.items():
        for fields in at:
            b.begin_row(when, topic_tags, arrival_ts=no_time)
            if dev:
                b.tag(dec.o.senml_device_tag, dev)
            for k, v in fields.items():
                b.field(k, v)
            b.end_row()
            n_rows += 1
    return n_rows

class _TextValue(DecodeError):
    """A string or data value (vs, vd): not a reading."""


def _record(rec: dict, i: int, bn: str, bt: float, bv: float, arrival: float) -> tuple[str, float, Any]:
    """(field name, event time, value) of one record, base values resolved; raises DecodeError."""
    n = _get(rec, "n", str, "", i)
    t = _get(rec, "t", (int, float), 0.0, i)
    if "v" in rec:
        v = _get(rec, "v", (int, float), 0.0, i) + bv
    elif "vb" in rec:
        v = _get(rec, "vb", bool, False, i)
    elif "vs" in rec or "vd" in rec:
        raise _TextValue("wrong_type", f"SenML record [{i}] ({bn + n!r}) has a string/data value; "
                                        "only numeric (v) and boolean (vb) values are readings")
    elif "s" in rec:
        v, n = _get(rec, "s", (int, float), 0.0, i), (n or "value") + "_sum"
    else:
        raise DecodeError("missing_field", f"SenML record [{i}] ({bn + n!r}) has no value (v, vb or s)")
    if type(v) is float and v - v:
        raise DecodeError("non_finite", f"SenML record [{i}] value is {v}")
    when = bt + t
    if when < _RELATIVE:
        when = arrival + when
    return n or "value", when, v


def _get(rec: dict, key: str, types, default, i: int):
    if key not in rec:
        return default
    v = rec[key]
    if type(v) is NonFinite:
        raise DecodeError("non_finite", f"SenML record [{i}] {key!r} is {v!r}")
    if not ((type(v) in types) if isinstance(types, tuple) else (type(v) is types)):   # bool is not a number here
        raise DecodeError("wrong_type", f"SenML record [{i}] {key!r} is a {type(v).__name__} ({str(v)[:30]!r})")
    if type(v) is int and not -FLOAT_MAX <= v <= FLOAT_MAX:
        raise DecodeError("non_finite", f"SenML record [{i}] {key!r} is an integer of {len(str(abs(v)))} digits, "
                                        "beyond a 64-bit float")
    return v
