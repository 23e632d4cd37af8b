"""The sender thread that drains an ``Outbox`` through a ``Transport`` (influxdb, mqtt uplink, ...).

- in order, in batches of ``batch_size``, as soon as a batch is full or the oldest point waited ``flush_interval_s``;
- transient failures (connection refused, timeout, 5xx, 429) retry the same batch with exponential backoff and
  jitter, never shorter than the server's ``Retry-After``;
- a permanent failure (400, 401/403, 404, ...) moves the batch to the outbox's dead-letter table with the
  server's message, logs it loudly and keeps the error in ``sender.error`` for the sink to raise; for errors
  that every later batch would hit too (auth, missing bucket) the sender *halts*: the rest stays pending
  until the configuration is fixed and the pipeline restarted;
- 413 (payload too large) halves the batch size and retries before dead-lettering a single point;
- a storage error of the outbox (disk full, I/O error, database locked) while claiming, recording a delivered batch,
  or dead-lettering is retried with backoff, one warning per episode; a delivered batch whose record failed is
  kept in memory and recorded again, never sent again. Only if the process ends before it could be recorded is
  it sent again on the next start, and that is harmless: a point is identified by measurement, tags and
  timestamp, so the server overwrites it with itself (idempotent by timestamp). A damaged outbox file stops the
  sender and, through ``on_fatal``, the pipeline, with a message saying what to run.

"""
from __future__ import annotations

import email.utils
import logging
import threading
import time
from typing import Protocol

from connectors.influx.integrity import is_storage_error, is_transient, ways_forward
from connectors.influx.outbox import Outbox, Row
from pipeline.backoff import Backoff  # noqa: F401  (re-exported: the sender's backoff is the project's one)

log = logging.getLogger(__name__)


class TransientError(Exception):
    """Try again later (``retry_after`` seconds if the server said so)."""

    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after, self.status = retry_after, status


class PermanentError(Exception):
    """The server refused the data for good; ``halt`` when every later batch would be refused too."""

    def __init__(self, message: str, status: int | None = None, halt: bool = False):
        super().__init__(message)
        self.status, self.halt = status, halt


class CloudRejected(RuntimeError):
    """Raised by a cloud sink after its server permanently refused points (they are in the dead-letter table)."""


class Transport(Protocol):
    """What a sink plugs into the sender: send one batch or raise Transient/PermanentError."""

    def send(self, rows: list[Row]) -> int:
        """Deliver ``rows`` (in order); return the payload bytes sent."""

    def close(self) -> None: ...


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date).

    >>> parse_retry_after("7"), parse_retry_after(None), parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40)
    (7.0, None, 60.0)
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(when - (time.time() if now is None else now), 0.0)


class Sender:
    """Drains ``outbox`` through ``transport`` on a daemon thread named ``outbox-<name>``."""

    def __init__(self, outbox: Outbox, transport: Transport, *, name: str, batch_size: int = 5000,
                 flush_interval_s: float = 1.0, backoff: Backoff | None = None, on_sent=None, on_fatal=None):
        self.outbox, self.transport, self.name = outbox, transport, name
        self.batch_size, self.flush_interval = batch_size, flush_interval_s
        self.backoff = backoff or Backoff()
        self.on_sent = on_sent          # callback(points, payload_bytes), e.g. bandwidth accounting
        self.on_fatal = on_fatal        # callback(message): the outbox cannot be used any more (stop the pipeline)
        self.fatal: str | None = None
        self.storage_blocked = False    # an outbox operation is failing and being retried
        self.storage_retries = 0
        self.unrecorded = 0             # points delivered whose delivery could not be recorded (sent again on restart)
        self.error: PermanentError | None = None
        self.halted = False
        self.retries = 0
        self.bytes_sent = 0
        self.connected = True
        self._stop = threading.Event()
        self._flush = threading.Event()
        self._first_wait: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"outbox-{name}", daemon=True)

    def start(self) -> "Sender":
        self._thread.start()
        return self

    def nudge(self) -> None:
        """Send what is pending now instead of waiting for a full batch."""
        self._flush.set()
        with self.outbox.changed:
            self.outbox.changed.notify_all()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the outbox to empty; True when it did."""
        deadline = time.monotonic() + timeout
        self.nudge()
        while self.outbox.pending() and not self.halted and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        return self.outbox.pending() == 0

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.nudge()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.unrecorded:
            log.warning("sink %r: %d delivered points could not be recorded as delivered (%s); they are sent again "
                        "on the next start and overwrite themselves on the server", self.name, self.unrecorded,
                        self.outbox.path)

    def _storage(self, what: str, fn):
        """Run an outbox operation, retrying storage errors with backoff; (True, result), or (False, None) when
        the sender stops first or the outbox is damaged."""
        backoff = Backoff(self.backoff.initial, self.backoff.max)
        while True:
            try:
                out = fn()
            except Exception as e:
                if not is_storage_error(e):
                    raise
                if not is_transient(e):
                    self._give_up(what, e)
                    return False, None
                if not self.storage_blocked:
                    log.warning("sink %r: outbox %s cannot %s (%s: %s); nothing is lost, retrying with backoff",
                                self.name, self.outbox.path, what, type(e).__name__, e)
                self.storage_blocked = True
                self.storage_retries += 1
                if self._stop.wait(backoff.next()):
                    return False, None
                continue
            if self.storage_blocked:
                log.warning("sink %r: outbox %s works again after %d retries", self.name, self.outbox.path, backoff.attempt)
                self.storage_blocked = False
            return True, out

    def _give_up(self, what: str, e: Exception) -> None:
        self.fatal = (f"sink {self.name!r}: outbox {self.outbox.path} cannot {what}: {type(e).__name__}: {e}; "
                      f"the sender stopped. {ways_forward(self.outbox.path)}")
        log.error("%s", self.fatal)
        self.halted = True
        self._stop.set()
        if self.on_fatal:
            self.on_fatal(self.fatal)

    # --- the thread ------------------------------------------------------------------------------
    def _ready(self) -> bool:
        n = self.outbox.pending()
        if n == 0:
            self._first_wait = None
            return False
        now = time.monotonic()
        if self._first_wait is None:
            self._first_wait = now
        return n >= self.batch_size or self._flush.is_set() or now - self._first_wait >= self.flush_interval

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as e:  # a bug or an unexpected library error: this thread must not die alone
                self.retries += 1
                log.exception("sink %r: unexpected error in the sender (%s); points stay in the outbox %s, retrying",
                              self.name, type(e).__name__, self.outbox.path)
                self.outbox.release()
                self._stop.wait(self.backoff.next())

    def _step(self) -> None:
        with self.outbox.changed:
            if not self._ready():
                self.outbox.changed.wait(self.flush_interval / 4)
                return
        if self.halted:
            self._stop.wait(0.2)
            return
        ok, rows = self._storage("read its pending points", lambda: self.outbox.claim(self.batch_size))
        if not rows:
            return
        self._send(rows)
        if not self.outbox.pending():
            self._flush.clear()

    def _send(self, rows: list[Row]) -> None:
        try:
            nbytes = self.transport.send(rows)
        except TransientError as e:
            self.outbox.release()
            delay = self.backoff.next(e.retry_after)
            self.retries += 1
            if self.connected or self.backoff.attempt in (5, 10) or self.backoff.attempt % 50 == 0:
                log.warning("sink %r: cloud not reachable (%s); %d points kept in the outbox %s, retry %d in %.1fs",
                            self.name, e, self.outbox.pending(), self.outbox.path, self.backoff.attempt, delay)
            self.connected = False
            self._stop.wait(delay)
        except PermanentError as e:
            if e.status == 413 and len(rows) > 1:
                self.outbox.release()
                self.batch_size = max(len(rows) // 2, 1)
                log.warning("sink %r: server says payload too large; batch size now %d", self.name, self.batch_size)
                return
            if not self._storage("dead-letter a refused batch", lambda: self.outbox.dead_letter(rows, e.status, str(e)))[0]:
                self.outbox.release()
                return
            self.error, self.halted = e, e.halt
            log.error("sink %r: server refused %d points for good (%s); they are in the dead-letter table of %s%s",
                      self.name, len(rows), e, self.outbox.path,
                      "; sending halted until the configuration is fixed and the pipeline restarted" if e.halt else "")
        except Exception as e:  # a bug or an unexpected library error: keep the data, retry slowly, say so
            self.outbox.release()
            self.retries += 1
            log.exception("sink %r: unexpected error while sending %d points (kept in the outbox): %s",
                          self.name, len(rows), type(e).__name__)
            self._stop.wait(self.backoff.next())
        else:
            self.bytes_sent += nbytes
            if not self._storage("record a delivered batch", lambda: self.outbox.ack(rows))[0]:
                self.unrecorded += len(rows)     # the process stops before it could record them
                self.outbox.release()
                return
            if not self.connected:
                log.warning("sink %r: cloud reachable again after %d retries", self.name, self.backoff.attempt)
            self.connected = True
            self.backoff.reset()
            if self.on_sent:
                self.on_sent(len(rows), nbytes)
