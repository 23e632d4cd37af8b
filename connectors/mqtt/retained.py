"""Retained copies: what the ``mqtt`` source does with a message the broker sends because it subscribed.

A device that publishes with the retain flag has its last message on the topic kept by the broker, which sends a
copy, flagged retained, to every new subscription. The source subscribes at every start and every reconnect, so
without this each restart (and each reconnect to a broker that lost the session) counted every such device's last
reading again. A message forwarded to an existing subscription is never flagged (MQTT 3.1.1 3.3.1.3, MQTT 5
without "retain as published"), so the flag tells a copy from a live message.

``retained`` (source option):

* ``new`` (default): a copy is taken only when it is not the last message the source took on its topic, i.e. when
  it was published while the source had no session to queue it (a broker that lost the session, a first start).
  The last payload per topic is kept in memory and, with checkpoints on, in ``<journal>/last_payloads`` (length and
  CRC-32 per topic, with the journal position it covers; the journal records after it are read at start), so a
  restart knows it too. MQTT 5 also subscribes with retain handling 1: a broker that kept the session sends no
  copies at all.
* ``ignore``: no copy is taken (MQTT 5: retain handling 2, the broker sends none).
* ``all``: every copy is taken (each start counts the last retained reading of every topic again).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path

log = logging.getLogger("edgesieve.mqtt")
MAX_TOPICS = 100_000           # beyond this the memory is forgotten (and said so): a copy is then taken


def digest(payload: bytes) -> tuple[int, int]:
    return len(payload), zlib.crc32(payload)


class LastPayloads:
    """The last payload taken per topic (source thread only). Values are the payload itself, or its :func:`digest`
    when it came from the file."""

    def __init__(self, where: str, folder: Path | None = None, fsync: bool = True):
        self.where, self.fsync = where, fsync
        self.path = folder / "last_payloads" if folder is not None else None
        self.last: dict[str, object] = {}
        self.position = 0              # journal position the last write covers
        self._warned = False

    def is_copy(self, topic: str, payload: bytes) -> bool:
        """True when ``payload`` is the last message taken on ``topic`` (a retained copy of it)."""
        prev = self.last.get(topic)
        if prev is None:
            return False
        return prev == payload if isinstance(prev, bytes) else prev == digest(payload)

    def bound(self) -> None:
        if len(self.last) > MAX_TOPICS:
            self.last.clear()
            if not self._warned:
                self._warned = True
                log.warning("%s: more than %d topics: forgot their last payloads (a retained copy on a forgotten "
                            "topic is taken again)", self.where, MAX_TOPICS)

    # -- with the journal ---------------------------------------------------------------------------
    def load(self) -> int:
        """Read the file; the journal position it covers (0: none)."""
        if self.path is None or not self.path.exists():
            return 0
        try:
            data = json.loads(self.path.read_text())
            self.last = {t: tuple(d) for t, d in data["topics"].items()}
            self.position = int(data["position"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: %s is unreadable (%s): retained copies are compared with the journal only",
                        self.where, self.path, e)
            self.last, self.position = {}, 0
        return self.position

    def save(self, position: int) -> None:
        """Write what is known up to journal ``position`` (all of it journaled), atomically."""
        if self.path is None or position <= self.position:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        topics = {t: list(digest(p)) if isinstance(p, bytes) else list(p) for t, p in self.last.items()}
        try:
            with open(tmp, "w") as f:
                json.dump({"position": position, "topics": topics}, f, separators=(",", ":"))
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self.position = position
        except OSError as e:
            log.warning("%s: could not write %s (%s): a restart may take retained copies again",
                        self.where, self.path, e)
