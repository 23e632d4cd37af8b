"""The open windows of the window stage: the readings that belong to them, and turning closed ones into records.

Each buffered row is one reading in one window: its key id, clock id, window start, event time, arrival
sequence number and the field values. Rows are kept as chunks of numpy columns and concatenated when
something closes. ``min_end[clock]`` (the earliest end of a clock's open windows) lets the stage skip that
work when nothing can close.
"""

from __future__ import annotations

import numpy as np

from ..batch import Batch
from .window_aggregate import aggregate_groups


class OpenWindows:
    def __init__(self, size: float, aggregates: dict[str, list[str]], key_names: list[str]):
        self.size, self.aggregates, self.key_names = size, aggregates, key_names
        self._chunks: list[dict[str, np.ndarray]] = []
        self.rows = 0
        self.min_end = np.empty(0)     # per clock; inf = no open window
        self.on_remove = None          # called with the rows that closed (the checkpoint entries follow them)

    def ensure(self, nclocks: int) -> None:
        if len(self.min_end) < nclocks:
            self.min_end = np.concatenate((self.min_end, np.full(max(nclocks, 2 * len(self.min_end)) - len(self.min_end), np.inf)))

    def add(self, chunk: dict[str, np.ndarray]) -> None:
        if len(chunk["start"]):
            self._chunks.append(chunk)
            self.rows += len(chunk["start"])
            np.minimum.at(self.min_end, chunk["clock"], chunk["start"] + self.size)

    def all(self) -> dict[str, np.ndarray] | None:
        if not self._chunks:
            return None
        if len(self._chunks) > 1:
            self._chunks = [{k: np.concatenate([c[k] for c in self._chunks]) for k in self._chunks[0]}]
        return self._chunks[0]

    def take(self, closing: np.ndarray) -> dict[str, np.ndarray]:
        """Remove the rows of ``all()`` where ``closing`` is true and return them."""
        rows = self.all()
        out = {k: v[closing] for k, v in rows.items()}
        rest = {k: v[~closing] for k, v in rows.items()}
        self._chunks = [rest] if len(rest["start"]) else []
        self.rows = len(rest["start"])
        self.min_end[:] = np.inf
        if self.rows:
            np.minimum.at(self.min_end, rest["clock"], rest["start"] + self.size)
        if self.on_remove is not None and len(out["start"]):
            self.on_remove(out)
        return out

    def windows(self) -> dict[str, np.ndarray]:
        """One entry per open window: its key, clock and start."""
        rows = self.all()
        if rows is None:
            return {"key": np.empty(0, np.int64), "clock": np.empty(0, np.int64), "start": np.empty(0)}
        order = np.lexsort((rows["start"], rows["key"]))
        k, s = rows["key"][order], rows["start"][order]
        head = np.ones(len(k), dtype=bool)
        head[1:] = (k[1:] != k[:-1]) | (s[1:] != s[:-1])
        return {"key": k[head], "clock": rows["clock"][order][head], "start": s[head]}

    def emit(self, rows: dict[str, np.ndarray], rank: np.ndarray, key_values: list[tuple]) -> Batch:
        """Aggregate the windows in ``rows``; output ordered by ``rank`` (when each closed), then start and key."""
        if not len(rows["start"]):
            return Batch.empty()
        order = np.lexsort((rows["seq"], rows["ts"], rows["key"], rows["start"], rank))
        key, start = rows["key"][order], rows["start"][order]
        boundary = np.ones(len(order), dtype=bool)
        boundary[1:] = (key[1:] != key[:-1]) | (start[1:] != start[:-1])
        group = np.cumsum(boundary) - 1
        heads = np.flatnonzero(boundary)
        ngroups = len(heads)
        out_fields: dict[str, np.ndarray] = {"count": np.diff(np.append(heads, len(order)))}
        for f, aggs in self.aggregates.items():
            out_fields.update(aggregate_groups(f, rows["v:" + f][order], group, ngroups, aggs))
        tags = {}
        key_heads = key[heads].tolist()
        for j, name in enumerate(self.key_names):
            col = np.empty(ngroups, dtype=object)
            col[:] = [key_values[k][j] for k in key_heads]
            tags[name] = col
        return Batch(ts=start[heads].astype(np.float64), tags=tags, fields=out_fields)

    def snapshot(self) -> dict[str, np.ndarray] | None:
        rows = self.all()
        return None if rows is None else {k: v.copy() for k, v in rows.items()}

    def restore(self, rows: dict[str, np.ndarray] | None, nclocks: int) -> None:
        self._chunks, self.rows = [], 0
        self.min_end = np.empty(0)
        self.ensure(nclocks)
        if rows is not None:
            self.add({k: np.asarray(v) for k, v in rows.items()})
