"""One JSON reading -> one row, tolerantly: what the ``json`` and ``json-batch`` codecs do with each value.

- numbers and booleans are fields; ``null`` means absent;
- a nested object is flattened to dotted names (``{"env": {"t": 21}}`` -> field ``env.t``; the separator is
  ``flatten_separator``), nested as deep as ``max_json_depth`` allows;
- a key listed in ``tag_fields`` (dotted names work) becomes a tag;
- a text value becomes a number with ``numbers_from_strings: true`` when it reads as one (``"21.5"``), a tag with
  ``text_fields: tags``, and is otherwise dropped and counted (``text_fields_dropped``), never the reading;
- a bad value (``NaN``/``Infinity``, a list, an object in ``tag_fields``) is a *bad field*: it is left out and
  dead-lettered on its own (:class:`FieldError`) when the reading has another usable field; a reading with no
  usable field at all is refused whole, as before.

>>> from connectors.mqtt.codecs import CodecOptions, Decoder, RowBuilder
>>> dec, b = Decoder(CodecOptions(tag_fields=["meta.site"], numbers_from_strings=True)), RowBuilder()
>>> dec.decode(b'{"ts": 1700000000, "env": {"t": 21.5, "h": "40"}, "meta": {"site": "p1"}, "status": "ok",'
...            b' "raw": [1, 2]}', b, {}, arrival=0.0)
1
>>> b.build().to_records()
[{'ts': 1700000000.0, 'tags': {'meta.site': 'p1'}, 'fields': {'env.t': 21.5, 'env.h': 40.0}}]
>>> [(e.reason, str(e)) for e in dec.take_field_errors()]
[('wrong_type', "reading [0] field 'raw' is a list ([1, 2]), not a number, boolean, text or object; the reading's other fields were kept")]
>>> dec.take_counts()
{'text_fields_dropped': 1}
"""

from __future__ import annotations

import logging

from connectors.mqtt.codecs import DecodeError, NonFinite

log = logging.getLogger("connectors.mqtt")
FLOAT_MAX = 1.7976931348623157e308      # a JSON integer beyond this is no 64-bit float
_WARN_NAMES = 200     # distinct dropped text fields warned about per decoder (then only counted)


class FieldError(DecodeError):
    """One bad field of a reading that was otherwise kept: dead-lettered alone."""

    payload: bytes | None = None     # what the dead letter carries instead of the whole message (None: the message)


class ReadingError(FieldError):
    """One refused reading of a json-batch message whose other readings were kept: dead-lettered alone.

    The dead letter carries that reading only (as JSON), not the message, so replaying dead letters cannot
    ingest the kept readings a second time.
    """

    @classmethod
    def of(cls, e: DecodeError, reading, i: int, kept: int, unit: str = "reading") -> "ReadingError":
        import json

        where = "" if f"[{i}]" in e.detail else f"{unit} [{i}]: "
        err = cls(e.reason, f"{where}{e.detail}; this {unit} was dead-lettered alone, the message's other {kept} "
                            f"{unit}{'s were' if kept != 1 else ' was'} kept")
        err.payload = json.dumps(reading, default=repr).encode()
        return err


def _number(s: str) -> float | None:
    try:
        x = float(s)
    except ValueError:
        return None
    return x if x - x == 0 else None      # "nan" / "inf" stay text


class ReadingRules:
    """The per-value rules of one subscription (see the module docstring)."""

    def __init__(self, options) -> None:
        self.o = options
        self.top_skip = {options.timestamp_field, "tags"}
        self.tag_names = set(options.tag_fields)
        self.only = set(options.fields) if options.fields is not None else None
        self.text_tags = options.text_fields == "tags"
        self.from_strings = options.numbers_from_strings
        self.sep = options.flatten_separator
        self.dropped = 0
        self.warned: set[str] = set()

    def read(self, dec, obj: dict, b, topic_tags, arrival: float, i: int, depth: int) -> list[FieldError]:
        """Append ``obj`` as one row; return its bad fields (the row kept). Raises DecodeError to refuse it whole."""
        ts_raw = obj.get(self.o.timestamp_field)
        if ts_raw is None:
            b.begin_row(arrival, topic_tags, arrival_ts=True)
        else:
            b.begin_row(dec.timestamp(ts_raw, i), topic_tags)
        if "tags" in obj:
            tags = obj["tags"]
            if type(tags) is not dict:
                raise DecodeError("wrong_type", f"reading [{i}] 'tags' is a {type(tags).__name__}, not an object")
            for k, v in tags.items():
                b.tag(k, dec._tag_value(k, v, i))
        bad: list[FieldError] = []
        seen: set[str] | None = set() if self.only is not None else None
        n = self._values(b, obj.items(), "", i, depth, bad, seen)
        if seen is not None and len(seen) < len(self.only):
            missing = sorted(self.only - seen)[0]
            raise DecodeError("missing_field", f"reading [{i}] has no field {missing!r} (listed in the subscription's fields)")
        if bad and not n:
            first = bad[0]
            raise DecodeError(first.reason, first.detail)
        b.end_row()
        for e in bad:
            e.detail += "; the reading's other fields were kept"
            e.args = (e.detail,)
        return bad

    def _values(self, b, items, prefix: str, i: int, depth: int, bad: list, seen: set | None) -> int:
        n = 0
        only, tag_names = self.only, self.tag_names
        skip = self.top_skip if not prefix else ()
        for k, v in items:
            if k in skip:
                continue
            name = prefix + k if prefix else k
            t = type(v)
            if t is dict:
                if depth >= self.o.max_json_depth:
                    raise DecodeError("json_too_deep", f"reading [{i}] field {name!r} nests objects deeper than "
                                                       f"max_json_depth={self.o.max_json_depth}")
                n += self._values(b, v.items(), name + self.sep, i, depth + 1, bad, seen)
                continue
            if name in tag_names:
                if v is None:
                    continue
                if t is list:
                    bad.append(FieldError("wrong_type", f"reading [{i}] tag {name!r} is a list, not a string"))
                else:
                    b.tag(name, v if t is str else str(v))
                continue
            if only is not None:
                if name not in only:
                    continue
                seen.add(name)
            if t is float:
                if v - v:     # inf - inf is NaN; NaN is truthy, 0.0 is not
                    bad.append(FieldError("non_finite", f"reading [{i}] field {name!r} is {v} "
                                                        "(NaN and Infinity are not readings)"))
                    continue
            elif t is int:
                if not -FLOAT_MAX <= v <= FLOAT_MAX:       # a valid JSON integer of 309+ digits: no float64
                    bad.append(FieldError("non_finite", f"reading [{i}] field {name!r} is an integer of "
                                                        f"{len(str(abs(v)))} digits, beyond a 64-bit float"))
                    continue
            elif t is not bool:
                if v is None:
                    continue   # null = absent
                if t is NonFinite:
                    bad.append(FieldError("non_finite", f"reading [{i}] field {name!r} is {v!r} "
                                                        "(NaN and Infinity are not readings)"))
                    continue
                if t is not str:
                    bad.append(FieldError("wrong_type", f"reading [{i}] field {name!r} is a {t.__name__} "
                                                        f"({str(v)[:30]}), not a number, boolean, text or object"))
                    continue
                if self.from_strings:
                    x = _number(v)
                    if x is not None:
                        b.field(name, x)
                        n += 1
                        continue
                if only is not None:
                    bad.append(FieldError("wrong_type", f"reading [{i}] field {name!r} is text ({v[:30]!r}) but is "
                                                        "listed in fields (numbers_from_strings parses numeric text)"))
                elif self.text_tags:
                    b.tag(name, v)
                else:
                    self._drop(name)
                continue
            b.field(name, v)
            n += 1
        return n

    def _drop(self, name: str) -> None:
        self.dropped += 1
        if name not in self.warned and len(self.warned) < _WARN_NAMES:
            self.warned.add(name)
            log.warning("field %r is text, not a number: dropped and counted as text_fields_dropped (list it in "
                        "tag_fields, or set text_fields: tags, to keep it as a tag; numbers_from_strings: true "
                        "parses numbers sent as text)", name)
