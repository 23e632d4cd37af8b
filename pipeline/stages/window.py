"""The ``window`` stage: event-time tumbling and hopping windows keyed by tags, aggregated per micro-batch.

Output records have ``ts`` = window start, the key tags, ``count`` (records in the window) and
``{field}_{aggregate}`` fields. The watermark is the largest event time seen minus ``allowed_lateness``,
advanced record by record, so the output does not depend on how records were batched. A window closes when
the watermark passes its end; a record whose window already closed is ``late`` (counted, optionally dead-lettered).
Standard deviation is the population one (ddof=0); percentiles interpolate linearly like ``numpy.percentile``.

>>> from pipeline.testing import run_stage
>>> out = run_stage(Window, {"size": "10s", "key": ["device"], "aggregates": {"t": ["mean", "max"]}}, [
...     {"ts": 0.0, "tags": {"device": "a"}, "fields": {"t": 1.0}},
...     {"ts": 5.0, "tags": {"device": "a"}, "fields": {"t": 3.0}},
...     {"ts": 12.0, "tags": {"device": "a"}, "fields": {"t": 7.0}}])
>>> [(r["ts"], r["fields"]) for r in out]
[(0.0, {'count': 2, 't_mean': 2.0, 't_max': 3.0}), (10.0, {'count': 1, 't_mean': 7.0, 't_max': 7.0})]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from ..batch import Batch
from ..config import Duration, StageConfig
from ..keys import key_codes
from ..numeric import split_numeric
from ..stage import Context, Stage
from .window_aggregate import AGGREGATES, aggregate_groups

Aggregate = Literal["count", "sum", "mean", "min", "max", "stddev", "first", "last", "p50", "p95", "p99"]


class WindowConfig(StageConfig):
    type: Literal["window"]
    size: Duration = Field(gt=0, description="Window length, e.g. `10s`, `1m`.")
    hop: Duration | None = Field(None, gt=0, description="Hop for hopping windows (a window starts every `hop`); none = tumbling.")
    key: list[str] = Field(default_factory=list, description="Tags that key the windows, e.g. `[site, device]`.")
    aggregates: dict[str, list[Aggregate]] = Field(
        min_length=1, description="Per field, the aggregates to compute: " + ", ".join(AGGREGATES) + "."
    )
    allowed_lateness: Duration = Field(0.0, description="How far behind the newest event time a record may arrive and still count.")
    late: Literal["drop", "dead_letter"] = Field("drop", description="What happens to late records (always counted as `late`).")
    idle_close: Duration | None = Field(
        None, description="Close open windows after this much wall-clock time without records (default: size + allowed_lateness).",
    )

    @model_validator(mode="after")
    def _hop_within_size(self):
        if self.hop is not None and self.hop > self.size:
            raise ValueError(f"hop ({self.hop}s) must not be longer than size ({self.size}s): records would fall between windows")
        return self


class Window(Stage):
    """Event-time tumbling/hopping windows with vectorised aggregation (see module docstring)."""

    Config = WindowConfig
    EXAMPLE = {"size": "10s", "key": ["device"], "aggregates": {"temperature": ["mean", "max"], "pressure": ["p95"]}}

    def __init__(self, config: WindowConfig, ctx: Context):
        super().__init__(config, ctx)
        self.size = config.size
        self.hop = config.hop or config.size
        self.fields = list(config.aggregates)
        self._keys: dict[tuple, int] = {}
        self._key_values: list[tuple] = []
        self._pending: list[dict[str, np.ndarray]] = []
        self._min_end = np.inf
        self._max_ts = -np.inf
        self._seq = 0
        self._closed_wm = -np.inf  # watermark floor set by idle closes: those windows must not reopen
        self._last_arrival = ctx.clock()

    # ------------------------------------------------------------------ ingest
    def _key_ids(self, batch: Batch) -> np.ndarray:
        """Per row, a stable id of its key for the life of the stage (kept in the checkpoint)."""
        codes, keys = key_codes(batch, self.config.key)
        table = np.empty(len(keys), dtype=np.int64)
        for j, key in enumerate(keys):
            gid = self._keys.get(key)
            if gid is None:
                gid = self._keys[key] = len(self._key_values)
                self._key_values.append(key)
            table[j] = gid
        return table[codes]

    def process(self, batch: Batch) -> Batch:
        events = batch.extra.get("event")
        if events is not None:  # event records (anomaly_end, drift) are not readings: never aggregated
            is_event = np.fromiter((e is not None for e in events), dtype=bool, count=len(events))
            if is_event.any():
                self.ctx.count("events_skipped", int(is_event.sum()))
                batch = batch.take(~is_event)
        good, bad, reasons = split_numeric(batch, self.fields, f"stage {self.ctx.item_id!r}")
        self.ctx.dead_letter(bad, reasons)
        n = len(good)
        if n == 0:
            return self._close(self._watermark())
        self._last_arrival = self.ctx.clock()
        ts = good.ts
        key_ids = self._key_ids(good)
        seq = np.arange(self._seq, self._seq + n, dtype=np.int64)
        self._seq += n
        running_max = np.maximum.accumulate(np.concatenate(([self._max_ts], ts)))
        watermark_before = np.maximum(running_max[:-1] - self.config.allowed_lateness, self._closed_wm)
        self._max_ts = float(running_max[-1])
        values = {f: good.fields[f] if f in good.fields else np.full(n, np.nan) for f in self.fields}

        first_start = np.floor(ts / self.hop) * self.hop
        copies = int(np.ceil(self.size / self.hop))
        rows, starts = [], []
        for j in range(copies):
            start = first_start - j * self.hop
            inside = start + self.size > ts
            rows.append(np.flatnonzero(inside))
            starts.append(start[inside])
        row = np.concatenate(rows) if copies > 1 else rows[0]
        start = np.concatenate(starts) if copies > 1 else starts[0]
        late = start + self.size <= watermark_before[row]
        if late.any():
            late_rows = np.unique(row[late])
            on_time_rows = np.unique(row[~late])
            fully_late = np.setdiff1d(late_rows, on_time_rows)
            self.ctx.count("late", len(late_rows))
            if self.config.late == "dead_letter" and len(fully_late):
                self.ctx.dead_letter(good.take(fully_late), [
                    f"stage {self.ctx.item_id!r}: record at ts={good.ts[i]} arrived after its window closed "
                    f"(allowed_lateness {self.config.allowed_lateness}s)" for i in fully_late])
            row, start = row[~late], start[~late]
        if len(row):
            chunk = {"key": key_ids[row], "start": start, "ts": ts[row], "seq": seq[row]}
            for f, v in values.items():
                chunk["v:" + f] = v[row]
            self._pending.append(chunk)
            self._min_end = min(self._min_end, float(start.min()) + self.size)
        return self._close(self._watermark())

    def _watermark(self) -> float:
        return max(self._max_ts - self.config.allowed_lateness, self._closed_wm)

    # ------------------------------------------------------------------ emit
    def _close(self, watermark: float) -> Batch:
        if not self._pending or self._min_end > watermark:
            return Batch.empty()
        pending = {k: np.concatenate([c[k] for c in self._pending]) for k in self._pending[0]}
        closing = pending["start"] + self.size <= watermark
        rest = {k: v[~closing] for k, v in pending.items()}
        self._pending = [rest] if len(rest["start"]) else []
        self._min_end = float(rest["start"].min()) + self.size if self._pending else np.inf
        return self._emit({k: v[closing] for k, v in pending.items()})

    def _emit(self, rows: dict[str, np.ndarray]) -> Batch:
        if not len(rows["start"]):
            return Batch.empty()
        order = np.lexsort((rows["seq"], rows["ts"], rows["key"], rows["start"]))
        key, start = rows["key"][order], rows["start"][order]
        boundary = np.ones(len(order), dtype=bool)
        boundary[1:] = (key[1:] != key[:-1]) | (start[1:] != start[:-1])
        group = np.cumsum(boundary) - 1
        heads = np.flatnonzero(boundary)
        ngroups = len(heads)
        out_fields: dict[str, np.ndarray] = {"count": np.diff(np.append(heads, len(order)))}
        for f, aggs in self.config.aggregates.items():
            out_fields.update(aggregate_groups(f, rows["v:" + f][order], group, ngroups, aggs))
        tags = {}
        key_heads = key[heads]
        for j, name in enumerate(self.config.key):
            col = np.empty(ngroups, dtype=object)
            col[:] = [self._key_values[k][j] for k in key_heads]
            tags[name] = col
        return Batch(ts=start[heads].astype(np.float64), tags=tags, fields=out_fields)

    def tick(self, now: float) -> Batch | None:
        idle = self.config.idle_close if self.config.idle_close is not None else self.size + self.config.allowed_lateness
        quiet = self.ctx.clock() - self._last_arrival
        if self._pending and quiet >= idle:
            self._closed_wm = max(self._closed_wm, self._max_ts + quiet - self.config.allowed_lateness)
            return self._close(self._closed_wm)
        return None

    def flush(self) -> Batch | None:
        return self._close(np.inf)

    # ------------------------------------------------------------------ state
    def gauges(self) -> dict[str, float]:
        pending = self._pending
        if not pending:
            return {"open_windows": 0, "keys": len(self._key_values)}
        key = np.concatenate([c["key"] for c in pending])
        start = np.concatenate([c["start"] for c in pending])
        return {"open_windows": len(set(zip(key.tolist(), start.tolist()))), "keys": len(self._key_values)}

    def snapshot(self):
        pending = {k: np.concatenate([c[k] for c in self._pending]) for k in self._pending[0]} if self._pending else None
        return {"keys": list(self._key_values), "pending": pending, "max_ts": self._max_ts, "seq": self._seq,
                "closed_wm": self._closed_wm}

    def restore(self, state) -> None:
        self._key_values = [tuple(k) for k in state["keys"]]
        self._keys = {k: i for i, k in enumerate(self._key_values)}
        self._pending = [state["pending"]] if state["pending"] is not None else []
        self._min_end = float(state["pending"]["start"].min()) + self.size if self._pending else np.inf
        self._max_ts = state["max_ts"]
        self._seq = state["seq"]
        self._closed_wm = state.get("closed_wm", -np.inf)
