"""Retained copies: what the ``mqtt`` source does with a message the broker sends because it subscribed.

A device that publishes with the retain flag has its last message on the topic kept by the broker, which sends a
copy, flagged retained, to every new subscription. The source subscribes at every start and every reconnect, so
without this each restart (and each reconnect to a broker that lost the session, or over MQTT 3.1.1) counted every
such device's last reading again. A message forwarded to an existing subscription is never flagged (MQTT 3.1.1
3.3.1.3, MQTT 5 without "retain as published"), so the flag tells a copy from a live message.

``retained`` (source option):

* ``dedupe`` (default): a copy is taken only when it is not the last message the source took on its topic, i.e.
  when it was published while the source had no session to queue it (a first start, a broker that lost the
  session, ``persistent: false``). MQTT 5 also subscribes with retain handling 1: a broker that kept the session
  sends no copies at all.
* ``ignore``: no copy is taken (MQTT 5: retain handling 2, the broker sends none).
* ``all``: every copy is taken (each start counts the last retained reading of every topic again).

The last message per topic is kept as a digest (length and CRC-32; of the first and last 32 KiB for a payload over
64 KiB, such as a camera frame) whatever the option, so switching to ``dedupe`` later knows it. With checkpoints on
it is written to ``<journal>/last_payloads`` (with the journal position it covers) after each checkpoint, before
the journal is pruned, and never pruned past: at start the journal records after that position are read on top
of it, so a restart knows every topic's last message.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

from pipeline.statefiles import write_private

log = logging.getLogger("edgesieve.mqtt")
MAX_TOPICS = 100_000           # the topics heard from longest ago are forgotten beyond this (a copy is then taken)
_WHOLE, _PART = 64 << 10, 32 << 10


def digest(payload: bytes) -> tuple[int, int]:
    """(length, CRC-32): of the whole payload up to 64 KiB, else of its first and last 32 KiB (a frame costs 30 µs,
    not 0.5 ms per MiB)."""
    n = len(payload)
    if n <= _WHOLE:
        return n, zlib.crc32(payload)
    view = memoryview(payload)
    return n, zlib.crc32(view[n - _PART:], zlib.crc32(view[:_PART]))


class LastPayloads:
    """The digest of the last message taken per topic, oldest first (source thread only)."""

    def __init__(self, where: str, folder: Path | None = None, fsync: bool = True):
        self.where, self.fsync = where, fsync
        self.path = folder / "last_payloads" if folder is not None else None
        self.last: dict[str, tuple[int, int]] = {}
        self.position = 0              # journal position the file covers
        self.dirty = False
        self._warned = False

    def is_copy(self, topic: str, payload: bytes) -> bool:
        """True when ``payload`` is the last message taken on ``topic`` (a retained copy of it)."""
        prev = self.last.get(topic)
        return prev is not None and prev == digest(payload)

    def took(self, payloads: dict[str, bytes]) -> None:
        """The last message of each topic in one take; a topic heard from moves to the newest end."""
        last = self.last
        for topic, payload in payloads.items():
            last.pop(topic, None)
            last[topic] = digest(payload)
        self.dirty = True
        if len(last) > MAX_TOPICS:
            for topic in list(last)[:len(last) - MAX_TOPICS]:
                del last[topic]
            if not self._warned:
                self._warned = True
                log.warning("%s: more than %d topics: the last payloads of those heard from longest ago are "
                            "forgotten (a retained copy on a forgotten topic is taken again)", self.where, MAX_TOPICS)

    # -- with the journal ---------------------------------------------------------------------------
    def load(self) -> int:
        """Read the file; the journal position it covers (0: none)."""
        if self.path is None or not self.path.exists():
            return 0
        try:
            data = json.loads(self.path.read_text())
            self.last = {str(t): (int(d[0]), int(d[1])) for t, d in data["topics"]}
            self.position = int(data["position"])
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            log.warning("%s: %s is unreadable (%s): retained copies are compared with the journal only",
                        self.where, self.path, e)
            self.last, self.position = {}, 0
        return self.position

    def save(self, position: int) -> bool:
        """Write what is known, all of it journaled up to ``position``; False when the write failed (the journal
        must then not be pruned past the file's older position)."""
        if self.path is None:
            return True
        data = json.dumps({"position": position, "topics": [[t, list(d)] for t, d in self.last.items()]},
                          separators=(",", ":")).encode()
        try:
            write_private(self.path, data, durable=self.fsync)
        except OSError as e:
            log.warning("%s: could not write %s (%s): the journal is kept from position %d until it can",
                        self.where, self.path, e, self.position)
            return False
        self.position, self.dirty = position, False
        return True
