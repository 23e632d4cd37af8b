"""What every cloud sink shares: batch → points, the durable outbox, the sender thread, errors and accounting.

A subclass (``influxdb``, an ``mqtt`` uplink, ...) has a config extending :class:`OutboxSinkConfig` and
implements ``make_transport()``; everything else (durability, order, backoff, dead letters, the disk bound,
no point twice, ``bytes_out``) is here.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from pipeline.batch import Batch
from pipeline.config import OUTPUT, Duration, FsyncPolicy, SinkConfig, parse_duration
from pipeline.stage import Context, Sink

from connectors.influx.integrity import is_storage_error, is_transient, ways_forward
from connectors.influx.outbox import Outbox
from connectors.influx.sender import Backoff, CloudRejected, Sender, Transport

log = logging.getLogger(__name__)


class OutboxSinkConfig(SinkConfig):
    measurement: str = Field("edgesieve", min_length=1, description="Measurement (InfluxDB) / topic part every point is written under.")
    tags: list[str] | None = Field(None, description="Tags to send; default: all tags of the record.")
    fields: list[str] | None = Field(None, description="Fields to send; default: every numeric or boolean field (the aggregates).")
    batch_size: int = Field(5000, ge=1, le=100_000, description="Most points per request to the server.")
    flush_interval: Duration = Field(1.0, gt=0, le=3600, description="Longest a point waits in the outbox for its batch to fill.")
    outbox: str | None = Field(None, json_schema_extra=OUTPUT, description="Outbox database file; default: `<runtime.state_dir>/outbox-<sink id>.db`.")
    max_outbox_bytes: int | None = Field(
        256 * 2**20, ge=4096,
        description="Bound on pending points (their stored size); beyond it older points are merged into coarser windows, "
                    "then the oldest dropped (counted). null = unbounded.")
    coarsen_steps: list[float] = Field(
        default_factory=lambda: [60.0, 600.0], max_length=8,
        description="Window widths (seconds or durations like `1m`) that pending points are merged into, finest first, "
                    "when the outbox is full.")
    stddev_ddof: Literal[0, 1] = Field(0, description="Delta degrees of freedom of incoming `*_stddev` fields (the window stage uses 0).")
    window: Duration | None = Field(None, gt=0, description="Width of the incoming windows (only to tell coarsened points apart).")
    fsync: FsyncPolicy = Field(
        "full", description="`full`: a committed point survives power loss; `normal`: survives a crash, not power loss; `off`: OS decides.")
    drain_timeout: Duration = Field(5.0, ge=0, le=600, description="At shutdown, how long to keep sending before leaving the rest in the outbox.")

    @field_validator("coarsen_steps", mode="before")
    @classmethod
    def _durations(cls, v):
        return [parse_duration(x) for x in v] if isinstance(v, list) else v

    @field_validator("coarsen_steps")
    @classmethod
    def _increasing(cls, v):
        if sorted(v) != v or len(set(v)) != len(v):
            raise ValueError(f"coarsen_steps must increase strictly, got {v}")
        return v


class OutboxSink(Sink):
    """Base class of the cloud sinks (see module docstring)."""

    Config: ClassVar[type[OutboxSinkConfig]]

    def __init__(self, config: OutboxSinkConfig, ctx: Context):
        super().__init__(config, ctx)
        self.transport: Transport = self.make_transport()      # first: a config error leaves nothing open
        path = Path(config.outbox) if config.outbox else ctx.state_dir / f"outbox-{config.id}.db"
        self.outbox = Outbox(path, max_bytes=config.max_outbox_bytes, fsync=config.fsync,
                             coarsen_steps_s=tuple(config.coarsen_steps), ddof=config.stddev_ddof, name=config.id)
        self._counted = dict(self.outbox.counters)
        self.sender = Sender(self.outbox, self.transport, name=config.id, batch_size=config.batch_size,
                             flush_interval_s=config.flush_interval,
                             backoff=Backoff(config.retry_initial, config.retry_max),
                             on_sent=lambda n, nbytes: self.ctx.count("bytes_out", nbytes),
                             on_fatal=ctx.stop_pipeline).start()
        self._raised: object = None
        if self.outbox.pending():
            log.info("sink %r: resuming with %d points left in the outbox %s", config.id, self.outbox.pending(), path)

    def make_transport(self) -> Transport:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- batch -> points ---------------------------------------------------------------------------
    def points(self, batch: Batch) -> list[tuple]:
        """``(measurement, tags, ts_ns, fields)`` per record; absent values (None tags, NaN fields) left out."""
        cfg, n = self.config, len(batch)
        tag_cols = [(k, v) for k, v in batch.tags.items() if cfg.tags is None or k in cfg.tags]
        field_cols = []
        for k, v in batch.fields.items():
            if cfg.fields is not None and k not in cfg.fields:
                continue
            if v.dtype == bool or np.issubdtype(v.dtype, np.number):
                field_cols.append((k, v.tolist()))
            elif cfg.fields is not None:
                self.ctx.count("not_numeric", n)
        # microseconds are exact in float64 for epoch times; ns would not be (1.7e18 > 2**53)
        ts = (np.round(np.asarray(batch.ts, dtype=np.float64) * 1e6).astype(np.int64) * 1000).tolist()
        tag_lists = [(k, v.tolist()) for k, v in tag_cols]
        m = cfg.measurement
        out, empty, dropped = [], [], 0
        for i in range(n):
            fields = {}
            for k, v in field_cols:
                x = v[i]
                if x is None or (isinstance(x, float) and not math.isfinite(x)):
                    dropped += x is not None and not math.isnan(x)  # ±inf cannot be stored: counted, left out
                    continue
                fields[k] = x
            if fields:
                out.append((m, {k: str(v[i]) for k, v in tag_lists if v[i] is not None}, ts[i], fields))
            else:
                empty.append(i)
        if dropped:
            self.ctx.count("not_finite", dropped)
        if empty:
            self.ctx.dead_letter(batch.take(np.array(empty)), f"sink {cfg.id!r}: record has no finite numeric field to send")
        return out

    # --- the Sink contract -------------------------------------------------------------------------
    def write(self, batch: Batch) -> None:
        """Durable in the outbox before it returns; a storage error is raised (the runtime holds the batch and
        retries), and a damaged outbox also stops the pipeline with a message saying what to run."""
        pts = self.points(batch)
        if pts:
            try:
                self.outbox.put(pts, res=self.config.window or 0.0)
            except Exception as e:
                if is_storage_error(e) and not is_transient(e):
                    self.ctx.stop_pipeline(f"sink {self.config.id!r}: outbox {self.outbox.path} cannot store points: "
                                           f"{type(e).__name__}: {e}. {ways_forward(self.outbox.path)}")
                raise
        self._account()
        message = self._new_error()
        if message:  # the batch itself is safely in the outbox: say it loudly, but do not fail the write
            log.error("%s", message)
            self.ctx.count("cloud_rejected", 1)

    def flush(self) -> None:
        """Points are durable as soon as ``write`` returns; flushing asks the sender not to wait for a full batch.

        Raises :class:`CloudRejected` once per permanent failure not yet reported by ``write``.
        """
        self.sender.nudge()
        self._account()
        message = self._new_error()
        if message:
            raise CloudRejected(message)

    def snapshot(self):
        """Plain numbers: the outbox generation (and counters) the next start checks the outbox against."""
        self.outbox.checkpoint()
        return self.outbox.snapshot()

    def restore(self, state) -> None:
        """Nothing to rewind (the outbox remembers what it delivered); but an outbox behind the checkpoint lost
        commits (a lost or damaged WAL, an old copy): refuse to start, saying what may be lost and what to run."""
        if isinstance(state, dict):
            self.outbox.verify(state)

    def gauges(self) -> dict[str, float]:
        """Backlog for /metrics: points and bytes waiting, and the event-time age of the oldest one."""
        s = self.outbox.stats()
        oldest = s["oldest_pending_ts"]
        return {"outbox_backlog_points": s["pending"], "outbox_backlog_bytes": s["pending_bytes"],
                "outbox_oldest_age_seconds": max(0.0, time.time() - oldest) if oldest is not None else 0.0}

    def close(self) -> None:
        if self.config.drain_timeout and not self.sender.drain(self.config.drain_timeout):
            log.warning("sink %r: %d points not yet delivered stay in the outbox %s and are sent on the next start",
                        self.config.id, self.outbox.pending(), self.outbox.path)
        self.sender.stop()
        self._account()
        self.transport.close()
        self.outbox.close()

    # --- accounting --------------------------------------------------------------------------------
    def _account(self) -> None:
        """Mirror the outbox counters into the pipeline's metrics (as increments since the last call)."""
        now = self.outbox.counters
        for name in ("coarsened_in", "coarsened_out", "dropped", "dead_lettered", "duplicates", "sent"):
            delta = now[name] - self._counted.get(name, 0)
            if delta:
                self.ctx.count(f"outbox_{name}", delta)
                self._counted[name] = now[name]

    def _new_error(self) -> str | None:
        """The sender's permanent failure as a message, once (None when there is nothing new)."""
        err = self.sender.error
        if err is None or err is self._raised:
            return None
        self._raised = err
        return (f"{err} [{self.outbox.stats()['dead']} points in the dead-letter table of "
                f"{self.outbox.path}; after fixing the cause they can be re-queued]")

    def stats(self) -> dict:
        return {**self.outbox.stats(), "retries": self.sender.retries, "bytes_sent": self.sender.bytes_sent,
                "halted": self.sender.halted, "storage_retries": self.sender.storage_retries,
                "unrecorded": self.sender.unrecorded}
