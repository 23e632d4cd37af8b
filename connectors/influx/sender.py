"""The sender thread that drains an ``Outbox`` through a ``Transport`` (influxdb, mqtt uplink, ...).

- in order, in batches of ``batch_size``, as soon as a batch is full or the oldest point waited ``flush_interval_s``;
- transient failures (connection refused, timeout, 5xx, 429) retry the same batch with exponential backoff and
  jitter, never shorter than the server's ``Retry-After``;
- a permanent failure (400, 401/403, 404, ...) moves the batch to the outbox's dead-letter table with the
  server's message, logs it loudly and keeps the error in ``sender.error`` for the sink to raise; for errors
  that every later batch would hit too (auth, missing bucket) the sender *halts*: the rest stays pending
  until the configuration is fixed and the pipeline restarted;
- 413 (payload too large) halves the batch size and retries before dead-lettering a single point.

>>> b = Backoff(initial_s=1, max_s=8, jitter=0.0)
>>> [b.next() for _ in range(5)], b.next(retry_after=30)
([1.0, 2.0, 4.0, 8.0, 8.0], 30.0)
"""
from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from typing import Protocol

from connectors.influx.outbox import Outbox, Row

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


class Backoff:
    """Exponential backoff with jitter: ``initial * 2**attempt`` capped at ``max_s``, shortened by up to ``jitter``."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, jitter: float = 0.5,
                 max_retry_after_s: float = 600.0, seed: int | None = None):
        self.initial, self.max, self.jitter, self.max_retry_after = initial_s, max_s, jitter, max_retry_after_s
        self.attempt = 0
        self._rng = random.Random(seed)

    def next(self, retry_after: float | None = None) -> float:
        delay = min(self.max, self.initial * 2 ** self.attempt)
        delay *= 1.0 - self.jitter * self._rng.random()
        self.attempt += 1
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return float(delay)

    def reset(self) -> None:
        self.attempt = 0


class Sender:
    """Drains ``outbox`` through ``transport`` on a daemon thread named ``outbox-<name>``."""

    def __init__(self, outbox: Outbox, transport: Transport, *, name: str, batch_size: int = 5000,
                 flush_interval_s: float = 1.0, backoff: Backoff | None = None, on_sent=None):
        self.outbox, self.transport, self.name = outbox, transport, name
        self.batch_size, self.flush_interval = batch_size, flush_interval_s
        self.backoff = backoff or Backoff()
        self.on_sent = on_sent          # callback(points, payload_bytes), e.g. bandwidth accounting
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
            with self.outbox.changed:
                if not self._ready():
                    self.outbox.changed.wait(self.flush_interval / 4)
                    continue
            if self.halted:
                self._stop.wait(0.2)
                continue
            rows = self.outbox.claim(self.batch_size)
            if not rows:
                continue
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
            self.outbox.dead_letter(rows, e.status, str(e))
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
            self.outbox.ack(rows)
            self.bytes_sent += nbytes
            if not self.connected:
                log.warning("sink %r: cloud reachable again after %d retries", self.name, self.backoff.attempt)
            self.connected = True
            self.backoff.reset()
            if self.on_sent:
                self.on_sent(len(rows), nbytes)
