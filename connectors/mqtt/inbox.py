"""What the ``mqtt`` source received and not yet handed on: redelivery filter, input journal, acknowledgements.

The network thread only appends each message (plain values) under a lock. The source thread ``take()``s them:

1. **Redeliveries are dropped.** With a persistent session the broker sends again every QoS>=1 message whose
   acknowledgement it did not get (after a reconnect, a broker restart, an edgesieve restart), with the packet id
   it had. A message whose identity (topic, payload, packet id) is among the last ``horizon`` QoS>=1 messages
   taken is counted as ``duplicates``, acknowledged, and dropped. A connect that finds no session on the broker
   empties the horizon: nothing can be redelivered then, and the new session's packet ids start again at 1.
2. **Durable mode** (checkpoints on): the kept QoS>=1 messages are appended to the input journal
   (``pipeline/journal.py``) and acknowledged right away; positions are journal record numbers. At start the
   records after the checkpoint's position are handed on again first (``replay``), and the identities of the
   newest ``horizon`` records fill the filter, so a redelivery of a message journaled before a crash is known.
3. **Without checkpoints** nothing is written: a QoS>=1 message is acknowledged once the pipeline has processed
   the batch holding it (``committed``), within ``runtime.batching.max_wait``; positions count messages.

QoS 0 messages are neither journaled nor filtered (the broker never sends them twice).

4. **Retained copies** (flagged retained: sent because the source subscribed, at any QoS) are dropped, counted as
   ``retained_copies``, when they are the last message taken on their topic (``retained: dedupe``, see
   ``connectors/mqtt/retained.py``); ``retained: ignore`` drops them all (``retained_ignored``).
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections import deque
from pathlib import Path

from connectors.mqtt.retained import LastPayloads
from pipeline.journal import Journal

log = logging.getLogger("edgesieve.mqtt")
_REC = struct.Struct("<dHBHI")          # arrival, packet id, qos, topic length, user-properties length
_REPLAY_CHUNK = 5_000


class Chunk:
    """Messages handed on together: parallel lists, and the position after the last one."""

    __slots__ = ("arrivals", "topics", "payloads", "user", "position")

    def __init__(self, arrivals, topics, payloads, user, position):
        self.arrivals, self.topics, self.payloads, self.user, self.position = arrivals, topics, payloads, user, position


class Horizon:
    """The identities of the last ``size`` messages kept: a set plus the order to forget them in."""

    def __init__(self, size: int):
        self.size = size
        self._order: deque[int] = deque()
        self._seen: set[int] = set()

    def clear(self) -> None:
        self._order.clear()
        self._seen.clear()

    def seen(self, ident: int) -> bool:
        """True for an identity within the horizon; otherwise remember it and return False."""
        seen = self._seen
        if ident in seen:
            return True
        seen.add(ident)
        self._order.append(ident)
        if len(self._order) > self.size:
            seen.discard(self._order.popleft())
        return False


def identity(topic: str, payload: bytes, mid: int) -> int:
    return hash((topic, payload, mid))


class Inbox:
    """See the module docstring. ``conn`` is the source's ``Connection`` (its client and generation)."""

    def __init__(self, conn, *, where: str, count, journal_dir: Path | None, fsync: str, horizon: int | None,
                 keep_props: bool, segment_bytes: int = 64 << 20, retained: str = "dedupe"):
        self.conn, self.where = conn, where
        self._lock = threading.Lock()
        self._net: list[list] = [[], [], [], [], [], []]    # arrival, topic, payload, ack id, properties, retained
        self._keep_props = keep_props
        self._horizon = Horizon(horizon) if horizon else None
        self._journal_dir, self._fsync, self._segment_bytes = journal_dir, fsync, segment_bytes
        self.journal: Journal | None = None
        self._replay = None                                   # iterator over journal records to hand on again
        self._ready: list[list] = [[], [], [], [], []]        # arrival, topic, payload, user props, position after
        self._cursor = 0
        self._position = 0            # journal head (durable) or messages taken (otherwise)
        self._checkpointed = 0
        self._acks: deque[tuple[int, int]] = deque()          # without journal: (position, ack id) awaiting committed
        self._count = count                                   # ctx.count of the source
        self._topic_bytes: dict[str, bytes] = {}
        self._fresh_gen = self._cleared_gen = 0       # connection generation that started a new session
        self._retained = retained
        self._last = LastPayloads(where, journal_dir, fsync=fsync == "full")
        self._commits = self._saved_commits = 0       # checkpoints committed; the last one last_payloads was saved at

    # -- network thread ---------------------------------------------------------------------------
    def put(self, arrival: float, topic: str, payload: bytes, mid: int, qos: int, properties,
            retain: bool = False) -> None:
        with self._lock:
            net = self._net
            net[0].append(arrival)
            net[1].append(topic)
            net[2].append(payload)
            net[3].append(self.conn.generation << 18 | mid << 2 | qos if qos else 0)
            if self._keep_props:
                net[4].append(properties)
            if retain:
                net[5].append(len(net[0]) - 1)

    def connected(self, generation: int, session_present: bool) -> None:
        """A new connection: without a session on the broker nothing can be redelivered, so the horizon starts
        afresh (a new session numbers its packets from 1 again; an old identity must not match a new message)."""
        if not session_present:
            self._fresh_gen = generation

    def pending(self) -> int:
        """Messages received and not yet handed on."""
        return len(self._net[0]) + len(self._ready[0]) - self._cursor

    # -- source thread ----------------------------------------------------------------------------
    def open(self, position: int) -> None:
        """Open the journal (durable mode), fill the redelivery filter, and queue the records after ``position``."""
        if self._journal_dir is None:
            return
        j = self.journal = Journal(self._journal_dir, fsync=self._fsync, segment_bytes=self._segment_bytes,
                                   start_after=position)
        if self._horizon is not None:
            for _, body in j.read(after=max(0, j.head - self._horizon.size)):
                arrival, mid, qos, topic, payload, _ = _decode_record(body)
                self._horizon.seen(identity(topic, payload, mid))
        covered = self._last.load()        # the last payload per topic: the file, then the journal after it
        tail = {}
        for _, body in j.read(after=covered if covered <= j.head else 0):
            topic, payload = _decode_record(body)[3:5]
            tail.pop(topic, None)
            tail[topic] = payload
        if tail:
            self._last.took(tail)
        position = j.resume_from(position, self.where)
        self._checkpointed = position
        if j.head > position:
            log.info("%s: replaying %d journaled message(s) after position %d from %s",
                     self.where, j.head - position, position, self._journal_dir)
            self._replay = _bounded(j.read(after=position), j.head)
        self._position = j.head

    def take(self) -> None:
        """Move what the network thread queued into the ready list: drop redeliveries, journal, acknowledge."""
        with self._lock:
            if not self._net[0]:
                return
            arrivals, topics, payloads, acks, props, retained = net = self._net
            self._net = [[], [], [], [], [], []]
        del net
        copies = set(retained) if retained else ()
        policy, seen = self._retained, {}
        horizon, gen, client = self._horizon, self.conn.generation, self.conn.client
        ready = self._ready
        r_arr, r_top, r_pay, r_user, r_pos = ready
        journal = self.journal
        records: list[bytes] = []
        to_ack: list[int] = []
        pos, duplicates, dropped = self._position, 0, 0
        tb = self._topic_bytes
        for i, ack in enumerate(acks):
            if copies and i in copies and policy != "all" and (
                    policy == "ignore" or self._last.is_copy(topics[i], payloads[i])
                    or seen.get(topics[i]) == payloads[i]):
                dropped += 1           # a retained copy of what was taken already (or not wanted): acknowledged
                if ack:
                    if journal is not None:
                        to_ack.append(ack)
                    elif ack >> 18 == gen:
                        client.ack(ack >> 2 & 0xFFFF, ack & 3)
                continue
            if ack:
                if ack >> 18 >= self._fresh_gen > self._cleared_gen and horizon is not None:
                    horizon.clear()
                    self._cleared_gen = self._fresh_gen
                topic, payload = topics[i], payloads[i]
                mid = ack >> 2 & 0xFFFF
                if horizon is not None and horizon.seen(identity(topic, payload, mid)):
                    duplicates += 1
                    if journal is not None:
                        to_ack.append(ack)         # after this take's journal append (the original may be in it)
                    elif ack >> 18 == gen:
                        client.ack(mid, ack & 3)
                    continue
                user = _user_props(props[i]) if props else None
                pos += 1
                if journal is not None:
                    t = tb.get(topic)
                    if t is None:
                        t = tb[topic] = topic.encode()
                        if len(tb) > 10_000:
                            tb.clear()
                    u = json.dumps(user).encode() if user else b""
                    records.append(_REC.pack(arrivals[i], mid, ack & 3, len(t), len(u)) + t + u + payload)
                    to_ack.append(ack)
                else:
                    self._acks.append((pos, ack))
            else:
                user = _user_props(props[i]) if props else None
                if journal is None:
                    pos += 1
            r_arr.append(arrivals[i])
            r_top.append(topics[i])
            r_pay.append(payloads[i])
            r_user.append(user)
            r_pos.append(pos)
            seen[topics[i]] = payloads[i]
        if journal is not None and to_ack:
            journal.append(records)        # durable (per the fsync policy) before any acknowledgement
            for ack in to_ack:
                if ack >> 18 == gen:       # an older connection's message is redelivered, then acknowledged
                    client.ack(ack >> 2 & 0xFFFF, ack & 3)
        if seen:
            self._last.took(seen)          # after the journal append: the file never covers what it lacks
        self._position = pos
        if duplicates:
            self._count("duplicates", duplicates)
        if dropped:
            self._count("retained_copies" if policy == "dedupe" else "retained_ignored", dropped)

    def next_chunk(self, n: int) -> Chunk | None:
        """Up to ``n`` messages to hand on (journal replay first), or None when there are none."""
        if self._replay is not None:
            chunk = self._next_replayed(min(n, _REPLAY_CHUNK))
            if chunk is not None:
                return chunk
            self._replay = None
        ready, a = self._ready, self._cursor
        if a >= len(ready[0]):
            return None
        z = min(len(ready[0]), a + n)
        chunk = Chunk(ready[0][a:z], ready[1][a:z], ready[2][a:z], ready[3][a:z] if self._keep_props else None,
                      ready[4][z - 1])
        if z == len(ready[0]):
            self._ready, self._cursor = [[], [], [], [], []], 0
        else:
            self._cursor = z
        return chunk

    def _next_replayed(self, n: int) -> Chunk | None:
        arrivals, topics, payloads, user, last = [], [], [], [], None
        for seq, body in self._replay:
            arrival, mid, qos, topic, payload, u = _decode_record(body)
            arrivals.append(arrival)
            topics.append(topic)
            payloads.append(payload)
            user.append(u)
            last = seq
            if len(arrivals) >= n:
                break
        if last is None:
            return None
        return Chunk(arrivals, topics, payloads, user if self._keep_props else None, last)

    def has_ready(self) -> bool:
        return self._replay is not None or self._cursor < len(self._ready[0])

    def prune(self) -> None:
        """Delete journal segments the last checkpoint covers (keeping the newest ``horizon`` records)."""
        if self.journal is None:
            return
        self._save_last()
        # never past what last_payloads covers: the start reads the journal after it
        self.journal.prune(min(self._checkpointed, self._last.position),
                           keep_last=self._horizon.size if self._horizon else 0)

    def _save_last(self) -> None:
        """After a checkpoint, the last payloads per topic (all journaled up to the head)."""
        commits = self._commits
        if commits != self._saved_commits and self._last.dirty and self._last.save(self._position):
            self._saved_commits = commits

    # -- pipeline thread --------------------------------------------------------------------------
    def committed(self, position: int) -> None:
        """Durable: the checkpoint covers ``position`` (segments may go). Otherwise: acknowledge up to it."""
        if self.journal is not None or self._journal_dir is not None:
            self._commits += 1
            if self.journal is not None and position > self._checkpointed:
                self.journal.mark_committed(position)
            self._checkpointed = max(self._checkpointed, position)
            return
        gen, client, acks = self.conn.generation, self.conn.client, self._acks
        while acks and acks[0][0] <= position:
            ack = acks.popleft()[1]
            if ack >> 18 == gen:
                client.ack(ack >> 2 & 0xFFFF, ack & 3)

    def close(self) -> None:
        if self.journal is not None:
            if self._last.dirty:
                self._last.save(self._position)
            self.journal.close()


def _user_props(p) -> dict | None:
    return dict(p.UserProperty) if p is not None and hasattr(p, "UserProperty") else None


def _decode_record(body: memoryview) -> tuple:
    arrival, mid, qos, tlen, ulen = _REC.unpack_from(body)
    a = _REC.size
    topic = bytes(body[a:a + tlen]).decode()
    user = json.loads(bytes(body[a + tlen:a + tlen + ulen])) if ulen else None
    return arrival, mid, qos, topic, bytes(body[a + tlen + ulen:]), user


def _bounded(records, last: int):
    for seq, body in records:
        if seq > last:
            return
        yield seq, body
