"""Columnar micro-batches: the physical shape of records between stages.

A record (the logical shape) is a dict::

    {"ts": 1700000000.0, "tags": {"device": "pump7"}, "fields": {"temperature": 21.5}}

with an optional ``"frame"`` (a numpy array) and any other annotation keys a stage adds.
A :class:`Batch` holds many records as numpy columns so that stages work per micro-batch.

``arrival`` (float64 epoch seconds, NaN = unknown; or None for the whole batch) is when each row reached the
gateway: the ``mqtt`` source stamps each message as it receives it and its journal keeps the stamp, so a replay
after a crash carries the original time; the runtime stamps the rows of other sources when it takes them. It is
not part of the record (sinks never see it); stages that judge a reading against "now" (``window``'s
``max_future``) judge it against its arrival instead, so the result does not depend on when it was processed.

>>> b = Batch.from_records([
...     {"ts": 1.0, "tags": {"device": "a"}, "fields": {"t": 20.0}},
...     {"ts": 2.0, "tags": {"device": "b"}, "fields": {"t": 21.0, "p": 1.5}},
... ])
>>> len(b), b.fields["p"].tolist()
(2, [nan, 1.5])
>>> b.to_records()[0]
{'ts': 1.0, 'tags': {'device': 'a'}, 'fields': {'t': 20.0}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

_RESERVED = ("ts", "tags", "fields", "frame")


def _object_array(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _field_column(values: list[Any]) -> np.ndarray:
    """Best typed column for one field: float64 (NaN = absent), bool, or object when a value is not a number."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (bool, np.bool_)) for v in present) and len(present) == len(values):
        return np.array(values, dtype=bool)
    if all(v is None or _is_number(v) or isinstance(v, (bool, np.bool_)) for v in values):
        return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    return _object_array(values)


@dataclass(frozen=True)
class Batch:
    """An immutable columnar batch of records (see module docstring)."""

    ts: np.ndarray
    tags: dict[str, np.ndarray] = field(default_factory=dict)
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    frames: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    arrival: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    # ------------------------------------------------------------------ construction
    @classmethod
    def empty(cls) -> "Batch":
        return cls(ts=np.empty(0, dtype=np.float64))

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]]) -> "Batch":
        """Build a batch from record dicts. A missing ``ts`` is NaN (a source decides what to do with it)."""
        records = list(records)
        n = len(records)
        ts = np.empty(n, dtype=np.float64)
        tag_cols: dict[str, list[Any]] = {}
        field_cols: dict[str, list[Any]] = {}
        extra_cols: dict[str, list[Any]] = {}
        frames: list[Any] | None = None
        def column(cols: dict[str, list[Any]], name: str) -> list[Any]:
            col = cols.get(name)
            if col is None:
                col = cols[name] = [None] * n
            return col

        for i, rec in enumerate(records):
            t = rec.get("ts")
            ts[i] = float(t) if _is_number(t) else math.nan
            for k, v in (rec.get("tags") or {}).items():
                column(tag_cols, k)[i] = None if v is None else str(v)
            for k, v in (rec.get("fields") or {}).items():
                column(field_cols, k)[i] = v
            if rec.get("frame") is not None:
                if frames is None:
                    frames = [None] * n
                frames[i] = rec["frame"]
            for k, v in rec.items():
                if k not in _RESERVED:
                    column(extra_cols, k)[i] = v
        return cls(
            ts=ts,
            tags={k: _object_array(v) for k, v in tag_cols.items()},
            fields={k: _field_column(v) for k, v in field_cols.items()},
            frames=None if frames is None else _object_array(frames),
            extra={k: _object_array(v) for k, v in extra_cols.items()},
        )

    @classmethod
    def concat(cls, batches: Sequence["Batch"]) -> "Batch":
        """Concatenate batches; columns missing in some batch are filled with absent values."""
        batches = [b for b in batches if len(b)]
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]

        def merge(attr: str, fill_kind: str) -> dict[str, np.ndarray]:
            names: dict[str, None] = {}
            for b in batches:
                names.update(dict.fromkeys(getattr(b, attr)))
            out = {}
            for name in names:
                parts = []
                for b in batches:
                    col = getattr(b, attr).get(name)
                    if col is None:
                        col = np.full(len(b), np.nan) if fill_kind == "field" else np.full(len(b), None, dtype=object)
                    parts.append(col)
                dtypes = {p.dtype for p in parts}
                if len(dtypes) > 1 and fill_kind == "field":
                    if all(d.kind in "fb" for d in dtypes):
                        parts = [p.astype(np.float64) for p in parts]
                    else:
                        parts = [p.astype(object) for p in parts]
                out[name] = np.concatenate(parts)
            return out

        arrival = None
        if any(b.arrival is not None for b in batches):
            arrival = np.concatenate([b.arrival if b.arrival is not None else np.full(len(b), np.nan) for b in batches])
        frames = None
        if any(b.frames is not None for b in batches):
            frames = np.concatenate(
                [b.frames if b.frames is not None else np.full(len(b), None, dtype=object) for b in batches]
            )
        return cls(
            ts=np.concatenate([b.ts for b in batches]),
            tags=merge("tags", "tag"),
            fields=merge("fields", "field"),
            frames=frames,
            extra=merge("extra", "tag"),
            arrival=arrival,
        )

    # ------------------------------------------------------------------ selection / derivation
    def take(self, index: np.ndarray | Sequence[int] | slice) -> "Batch":
        """Rows selected by a boolean mask, an index array or a slice, as a new batch."""
        if not isinstance(index, slice):
            index = np.asarray(index)
        return Batch(
            ts=self.ts[index],
            tags={k: v[index] for k, v in self.tags.items()},
            fields={k: v[index] for k, v in self.fields.items()},
            frames=None if self.frames is None else self.frames[index],
            extra={k: v[index] for k, v in self.extra.items()},
            arrival=None if self.arrival is None else self.arrival[index],
        )

    def with_fields(self, **cols: np.ndarray) -> "Batch":
        return Batch(self.ts, self.tags, {**self.fields, **cols}, self.frames, self.extra, self.arrival)

    def with_tags(self, **cols: np.ndarray) -> "Batch":
        return Batch(self.ts, {**self.tags, **cols}, self.fields, self.frames, self.extra, self.arrival)

    def with_extra(self, **cols: np.ndarray) -> "Batch":
        return Batch(self.ts, self.tags, self.fields, self.frames, {**self.extra, **cols}, self.arrival)

    def without_fields(self, *names: str) -> "Batch":
        return Batch(self.ts, self.tags, {k: v for k, v in self.fields.items() if k not in names}, self.frames,
                     self.extra, self.arrival)

    def with_ts(self, ts: np.ndarray) -> "Batch":
        return Batch(np.asarray(ts, dtype=np.float64), self.tags, self.fields, self.frames, self.extra, self.arrival)

    def with_arrival(self, arrival: np.ndarray) -> "Batch":
        arrival = np.asarray(arrival, dtype=np.float64)
        if arrival.shape != (len(self.ts),):  # one per row: a broadcast would misjudge max_future silently
            raise ValueError(f"Batch.with_arrival: {arrival.shape} arrival times for {len(self.ts)} rows")
        return Batch(self.ts, self.tags, self.fields, self.frames, self.extra, arrival)

    def arrival_or(self, now: float) -> np.ndarray:
        """Per row, its arrival time; ``now`` where it is unknown (no arrival column, or NaN)."""
        if self.arrival is None:
            return np.full(len(self), float(now))
        return np.where(np.isnan(self.arrival), float(now), self.arrival)

    def column(self, name: str) -> np.ndarray | None:
        """A field, else a tag, else an annotation column by name (None if absent)."""
        if name in self.fields:
            return self.fields[name]
        if name in self.tags:
            return self.tags[name]
        if name == "ts":
            return self.ts
        return self.extra.get(name)

    # ------------------------------------------------------------------ output
    def to_records(self) -> list[dict[str, Any]]:
        """Record dicts; absent tags/fields (None / NaN) are left out."""
        n = len(self)
        tags = _row_dicts(self.tags, n)
        fields = _row_dicts(self.fields, n)
        out = [{"ts": t, "tags": tg, "fields": f} for t, tg, f in zip(self.ts.tolist(), tags, fields)]
        if self.frames is not None:
            for rec, frame in zip(out, self.frames):
                if frame is not None:
                    rec["frame"] = frame
        for k, v in self.extra.items():
            for rec, x in zip(out, v.tolist()):
                if x is not None:
                    rec[k] = x
        return out


def _missing(col: np.ndarray) -> np.ndarray | None:
    """Mask of absent values (None, NaN) in a column, or None when every value is present."""
    if col.dtype.kind == "f":
        mask = np.isnan(col)
    elif col.dtype == object:
        mask = np.fromiter((v is None or (isinstance(v, float) and v != v) for v in col), dtype=bool, count=len(col))
    else:
        return None
    return mask if mask.any() else None


def _row_dicts(columns: dict[str, np.ndarray], n: int) -> list[dict[str, Any]]:
    """One dict per row from named columns, in column order, leaving absent values out.

    When no value is absent the rows are zipped in C; otherwise each row is built value by value.
    """
    names = list(columns)
    values = [col.tolist() for col in columns.values()]
    masks = [_missing(col) for col in columns.values()]
    if not names:
        return [{} for _ in range(n)]
    if all(m is None for m in masks):
        return [dict(zip(names, row)) for row in zip(*values)]
    present = [np.ones(n, dtype=bool).tolist() if m is None else (~m).tolist() for m in masks]
    cols = list(zip(names, values, present))
    return [{name: v[i] for name, v, ok in cols if ok[i]} for i in range(n)]
