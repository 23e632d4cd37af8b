"""A sink on its own thread, fed through a bounded queue: a batch the sink cannot take is held, never dropped.

When ``sink.write`` raises (a full disk, a locked or broken file, a bug), the worker keeps the batch and acts on the
sink's ``on_error``:

- ``retry`` (default): write the same batch again with backoff (``retry_initial`` doubling up to ``retry_max``),
  as long as it takes. The queue fills, the pipeline thread waits on it, the sources wait on the pipeline
  (back-pressure: MQTT acks and checkpoints stop advancing past the held data). ``edgesieve_sink_blocked{sink}``
  is 1 meanwhile; one warning when the episode starts and one when it ends. It resumes by itself.
- ``dead_letter``: append the batch's records, with the error, to ``dead_letter_path`` (NDJSON, fsynced; put it on
  another disk) and go on; if that file cannot be written either, hold and retry as ``retry``.
- ``stop``: stop the pipeline with the error; nothing is checkpointed past the batch.

A worker that is aborted while it holds data (the pipeline was interrupted while the sink was blocked) counts the
records it never wrote as ``undelivered``; the runtime then writes no checkpoint past them (see ``clean``).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from .backoff import Backoff
from .batch import Batch
from .deadletters import LineFile
from .redact import redact
from .metrics import Metrics
from .sinks.encode import _dumps
from .stage import Sink

log = logging.getLogger("edgesieve")
_DONE = object()


class SinkWorker:
    def __init__(self, sink: Sink, metrics: Metrics, interrupted: threading.Event,
                 stop_pipeline: Callable[[str], None], maxsize: int = 256):
        cfg = sink.config
        self.sink, self.metrics, self.id = sink, metrics, cfg.id
        self.on_error = getattr(cfg, "on_error", "retry")
        self.dead_letter_path = getattr(cfg, "dead_letter_path", None)
        # its length is checkpointed (``sink_dead:<id>``) and cut back on restart: exactly once, like the output
        self.dead_file = (LineFile(self.dead_letter_path, fsync_each=True)
                          if self.on_error == "dead_letter" and self.dead_letter_path else None)
        self.backoff = Backoff(getattr(cfg, "retry_initial", 0.5), getattr(cfg, "retry_max", 30.0))
        self.interrupted, self.stop_pipeline = interrupted, stop_pipeline
        self.queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.blocked_since: float | None = None
        self.undelivered = 0          # records given to this worker that it will never write (aborted)
        self._abort = threading.Event()
        self._abort_reason = ""
        self._lock = threading.Lock()
        metrics.set_gauge(self.id, "sink_blocked", 0)
        self.thread = threading.Thread(target=self._loop, name=f"sink:{self.id}", daemon=True)
        self.thread.start()

    @property
    def clean(self) -> bool:
        """Everything this worker was given is written (or, with ``dead_letter``, in its dead-letter file)."""
        return self.undelivered == 0 and not self._abort.is_set()

    # --- the pipeline thread's side ------------------------------------------------------------------
    def put(self, batch: Batch) -> None:
        """Queue ``batch``; waits while the queue is full (back-pressure) unless the pipeline is interrupted."""
        while not self._abort.is_set():
            try:
                self.queue.put(batch, timeout=0.1)
                return
            except queue.Full:
                if self.interrupted.is_set() and self.blocked_since is not None:
                    self.abort("the pipeline was stopped while the sink could not take data")
        self._lost(len(batch))

    def drain(self) -> None:
        """Wait until everything queued is written; gives up (aborting) only when interrupted while blocked."""
        while self.queue.unfinished_tasks:
            if self.interrupted.is_set() and self.blocked_since is not None:
                self.abort("the pipeline was stopped while the sink could not take data")
            time.sleep(0.01)

    def abort(self, reason: str) -> None:
        if not self._abort.is_set():
            self._abort_reason = reason
            self._abort.set()

    def stop(self) -> None:
        if self.blocked_since is not None:
            self.abort("the pipeline stopped while the sink could not take data")
        while True:
            try:
                self.queue.put(_DONE, timeout=0.1)
                break
            except queue.Full:
                if self.blocked_since is not None:
                    self.abort("the pipeline stopped while the sink could not take data")
        self.thread.join(timeout=30)
        if self.undelivered:
            log.error("sink %r: %d record(s) were not written (%s); no checkpoint covers them, so a restart "
                      "produces them again from the last checkpoint (without checkpoints they are lost)",
                      self.id, self.undelivered, self._abort_reason)

    # --- the sink's thread -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            batch = self.queue.get()
            try:
                if batch is _DONE:
                    return
                if self._abort.is_set():
                    self._lost(len(batch))
                else:
                    self._deliver(batch)
            finally:
                self.queue.task_done()

    def _deliver(self, batch: Batch) -> None:
        while True:
            started = time.perf_counter()
            try:
                self.sink.write(batch)
            except Exception as exc:
                try:
                    if self._failed(batch, exc):
                        return
                except Exception:    # this thread must not die holding data: say so, wait, and try again
                    log.exception("sink %r: unexpected error while handling a failed write", self.id)
                    if self._abort.wait(1.0):
                        self._lost(len(batch))
                        return
                continue
            self.metrics.observe_latency(self.id, time.perf_counter() - started)
            self.metrics.count(self.id, "out", len(batch))
            if self.blocked_since is not None:
                log.warning("sink %r takes data again after %.1fs and %d retries; the pipeline goes on",
                            self.id, time.monotonic() - self.blocked_since, self.backoff.attempt)
                self.blocked_since = None
                self.backoff.reset()
                self.metrics.set_gauge(self.id, "sink_blocked", 0)
            return

    def _failed(self, batch: Batch, exc: Exception) -> bool:
        """Act on ``on_error``; True when the batch is dealt with, False to write it again."""
        what = redact(f"{type(exc).__name__}: {exc}")
        self.metrics.count(self.id, "errors", 1)
        if self.on_error == "dead_letter" and self._dead_letter(batch, what):
            return True
        if self.on_error == "stop":
            message = f"sink {self.id!r} failed to write {len(batch)} record(s): {what} (on_error: stop)"
            log.error("%s; stopping the pipeline without a checkpoint past them", message)
            self.abort(message)
            self._lost(len(batch))
            self.stop_pipeline(message)
            return True
        if self.blocked_since is None:
            self.blocked_since = time.monotonic()
            self.metrics.set_gauge(self.id, "sink_blocked", 1)
            self.metrics.count(self.id, "blocked_episodes", 1)
            log.warning("sink %r cannot take %d record(s): %s; holding them and retrying with backoff (up to %gs): "
                        "the pipeline waits and no checkpoint moves past them until the sink takes them",
                        self.id, len(batch), what, self.backoff.max)
        self.metrics.count(self.id, "retries", 1)
        if self._abort.wait(self.backoff.next()):
            self._lost(len(batch))
            return True
        return False

    def _dead_letter(self, batch: Batch, what: str) -> bool:
        if self.dead_file is None:
            return False
        path = self.dead_file.path
        reason = f"sink {self.id!r} could not write it: {what}"
        try:
            lines = []
            for rec in batch.to_records():
                rec.pop("frame", None)
                lines.append(_dumps({"item": self.id, "reason": reason, "record": rec}))
            self.dead_file.append(lines)
        except OSError as e:
            self.dead_file.close()   # reopened (and appended to) at the next try
            log.error("sink %r: cannot dead-letter %d record(s) to %s either (%s); holding them",
                      self.id, len(batch), path, e)
            return False
        self.metrics.count(self.id, "dead_lettered", len(batch))
        log.error("sink %r failed to write %d record(s) (%s); they are in %s", self.id, len(batch), what, path)
        return True

    def _lost(self, n: int) -> None:
        with self._lock:
            self.undelivered += n
        self.metrics.count(self.id, "undelivered", n)
