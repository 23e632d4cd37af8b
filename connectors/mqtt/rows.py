"""RowBuilder: collects decoded readings column by column into a Batch, with per-message rollback.

Codecs append values to Python lists (cheap per value); ``build()`` turns the lists into numpy columns
once per micro-batch. A column that appears in some rows only is padded (NaN for fields, None for tags).
Each row also carries the arrival time of its message (``Batch.arrival``): whoever decodes a message sets
``arrival`` first (``Decoder.decode`` does), and every row begun or added until the next one gets it.

>>> b = RowBuilder()
>>> b.arrival = 100.0
>>> b.begin_row(1.0, {"site": "a"}); b.field("x", 1); b.end_row()
>>> m = b.mark()
>>> b.begin_row(2.0, {}); b.field("y", 2.5)          # a message that fails half-way ...
>>> b.rollback(m)                                      # ... leaves no trace
>>> b.arrival = 103.0
>>> b.begin_row(3.0, {}, arrival_ts=True); b.field("x", True); b.end_row()
>>> rows = b.build()
>>> rows.ts.tolist(), rows.fields["x"].tolist(), rows.tags["site"].tolist(), rows.extra["ts_source"].tolist()
([1.0, 3.0], [1.0, 1.0], ['a', None], [None, 'arrival'])
>>> rows.arrival.tolist()
[100.0, 103.0]
>>> len(b.build())                                     # build() empties the builder
0
"""

from __future__ import annotations

import numpy as np

from pipeline.batch import Batch

_NAN = float("nan")


class RowBuilder:
    """Append-only column lists; see the module docstring."""

    def __init__(self) -> None:
        self.arrival = _NAN               # arrival time of the message being decoded (NaN: unknown)
        self._clear()

    def _clear(self) -> None:
        self._chunks: list[Batch] = []     # whole messages added as columns (see add)
        self._chunk_rows = 0
        self._clear_segment()

    def _clear_segment(self) -> None:
        self.n = 0                        # completed rows
        self._ts: list[float] = []
        self._fields: dict[str, list] = {}
        self._tags: dict[str, list] = {}
        self._field_order: list[str] = []
        self._tag_order: list[str] = []
        self._frames: list | None = None
        self._arrival: list[int] = []     # rows whose ts is the arrival time
        self._arrived: list[float] = []   # per row, the arrival time of its message
        self._nf = 0                      # values set in the current row
        self._nt = 0

    # -- writing ---------------------------------------------------------------------------------
    def begin_row(self, ts: float, tags: dict[str, str], arrival_ts: bool = False) -> None:
        self._ts.append(ts)
        self._arrived.append(self.arrival)
        if arrival_ts:
            self._arrival.append(self.n)
        self._nf = self._nt = 0
        for k, v in tags.items():
            self.tag(k, v)

    def field(self, name: str, value) -> None:
        col = self._fields.get(name)
        if col is None:
            col = self._fields[name] = [_NAN] * self.n
            self._field_order.append(name)
        elif len(col) > self.n:          # set twice in this row (a flattened name met again): the later one wins
            col[-1] = value
            return
        col.append(value)
        self._nf += 1

    def tag(self, name: str, value: str) -> None:
        col = self._tags.get(name)
        if col is None:
            col = self._tags[name] = [None] * self.n
            self._tag_order.append(name)
        if len(col) > self.n:            # set twice in this row (topic and payload): the later one wins
            col[-1] = value
            return
        col.append(value)
        self._nt += 1

    def frame(self, array: np.ndarray) -> None:
        if self._frames is None:
            self._frames = [None] * self.n
        self._frames.append(array)

    def end_row(self) -> None:
        n = self.n = self.n + 1
        if self._nf != len(self._fields):
            for col in self._fields.values():
                if len(col) < n:
                    col.append(_NAN)
        if self._nt != len(self._tags):
            for col in self._tags.values():
                if len(col) < n:
                    col.append(None)
        if self._frames is not None and len(self._frames) < n:
            self._frames.append(None)

    def add(self, rows: Batch) -> None:
        """Append readings that are already columns (a codec's vectorised path). Must be a message's last step."""
        if self.n:
            self._chunk_rows += self.n
            self._chunks.append(self._build_segment())
        if rows.arrival is None:
            rows = rows.with_arrival(np.full(len(rows), self.arrival))
        self._chunks.append(rows)
        self._chunk_rows += len(rows)

    # -- transactions ----------------------------------------------------------------------------
    def mark(self) -> tuple[int, int, int, bool]:
        return self.n, len(self._field_order), len(self._tag_order), self._frames is None

    def rollback(self, mark: tuple[int, int, int, bool]) -> None:
        n, nf, nt, no_frames = mark
        for name in self._field_order[nf:]:
            del self._fields[name]
        for name in self._tag_order[nt:]:
            del self._tags[name]
        del self._field_order[nf:], self._tag_order[nt:]
        for col in (*self._fields.values(), *self._tags.values()):
            del col[n:]
        del self._ts[n:], self._arrived[n:]
        while self._arrival and self._arrival[-1] >= n:
            self._arrival.pop()
        self._frames = None if no_frames else (self._frames[:n] if self._frames is not None else None)
        self.n = n

    def __len__(self) -> int:
        return self._chunk_rows + self.n

    # -- output ----------------------------------------------------------------------------------
    def build(self) -> Batch:
        """Numpy columns of everything appended so far; empties the builder."""
        chunks = self._chunks
        if self.n or not chunks:
            chunks.append(self._build_segment())
        rows = Batch.concat(chunks)
        self._clear()
        return rows

    def _build_segment(self) -> Batch:
        n = self.n
        fields = {}
        for k, col in self._fields.items():
            a = np.array(col)
            fields[k] = a if a.dtype == np.bool_ else a.astype(np.float64, copy=False)
        tags = {}
        for k, col in self._tags.items():
            a = np.empty(n, dtype=object)
            a[:] = col
            tags[k] = a
        frames = None
        if self._frames is not None:
            frames = np.empty(n, dtype=object)
            for i, f in enumerate(self._frames):
                frames[i] = f
        extra = {}
        if self._arrival:
            src = np.full(n, None, dtype=object)
            src[self._arrival] = "arrival"
            extra["ts_source"] = src
        rows = Batch(np.array(self._ts, dtype=np.float64), tags, fields, frames, extra,
                     np.array(self._arrived, dtype=np.float64))
        self._clear_segment()
        return rows
