"""The durable store-and-forward outbox shared by the cloud sinks (influxdb, mqtt uplink, ...).

Every point is committed to an SQLite database in WAL mode before anything is sent; a ``Sender``
(``connectors/influx/sender.py``) drains it oldest first and deletes a point only after the server
accepted it. A point is ``(measurement, tags, ts_ns, fields)``; ``(measurement, tags, ts_ns)`` is
its identity: putting it again while it is pending merges the fields (as InfluxDB does on the server).

**fsync policy** (``fsync=``): ``"full"`` (default) fsyncs the WAL on every commit, so an acknowledged
``put`` survives kill -9 *and* power loss; ``"normal"`` survives kill -9 (the OS has the data) but
may lose the last commits on power loss, at a fraction of the cost on slow flash; ``"off"`` leaves
flushing to the OS. One commit per ``put`` call (one per batch the sink receives).

**Disk bound** (``max_bytes``): the stored size of pending points (their encoded measurement, tags
and fields plus 48 bytes a row; the SQLite file with its index and pages is ~2x that, see
``stats()["file_bytes"]``). When it is exceeded, the oldest half of the finest pending points is
merged into ``coarsen_steps_s`` windows (10 s → 60 s → 600 s by default, exactly: see ``coarsen.py``),
repeatedly; only when everything pending is at the coarsest step are the oldest points dropped.
Points the sender has in flight are never touched. Everything is counted in ``stats()``.

One process per outbox file (an flock on ``<file>.lock``, released by the OS even after kill -9).

**No point twice**: delivered points are remembered in a ``sent`` table (since the checkpoint before the last
one, at most ``sent_log`` rows); putting a point identical to a delivered one (a restarted pipeline replaying
from its checkpoint), or to one still pending, is a no-op, counted as ``duplicates``. A point that changed is queued and sent again,
and the server overwrites it (same measurement, tags and timestamp).

>>> import tempfile, os
>>> ob = Outbox(os.path.join(tempfile.mkdtemp(), "o.db"))
>>> ob.put([("win", {"dev": "a"}, 10_000_000_000, {"t_mean": 1.5})])
1
>>> rows = ob.claim(10); [(r.measurement, r.tags, r.ts, r.fields) for r in rows]
[('win', {'dev': 'a'}, 10000000000, {'t_mean': 1.5})]
>>> ob.ack(rows); ob.stats()["pending"], ob.stats()["sent"]
(0, 1)
>>> ob.close()
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager

import numpy as np
import logging
import math
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from connectors.influx.diskbound import ROW_OVERHEAD, DiskBound, _dumps, _size
from connectors.influx.integrity import open_checked, verify_against_checkpoint
from pipeline.statefiles import private_file

log = logging.getLogger(__name__)
_SYNC = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}
DELIVERED_COARSE = 100_000   # delivered coarse points remembered (a late point for one of them is merged into it)
_COUNTERS = ("put", "sent", "coarsened_in", "coarsened_out", "dropped", "dead_lettered", "requeued",
             "duplicates", "generation")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
  id INTEGER PRIMARY KEY AUTOINCREMENT, measurement TEXT NOT NULL, tags TEXT NOT NULL, ts INTEGER NOT NULL,
  fields TEXT NOT NULL, res REAL NOT NULL DEFAULT 0, approx INTEGER NOT NULL DEFAULT 0,
  rev INTEGER NOT NULL DEFAULT 0, UNIQUE (measurement, tags, ts));
CREATE TABLE IF NOT EXISTS dead (
  id INTEGER PRIMARY KEY AUTOINCREMENT, measurement TEXT, tags TEXT, ts INTEGER, fields TEXT, res REAL,
  approx INTEGER, status INTEGER, reason TEXT, at REAL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sent (
  measurement TEXT NOT NULL, tags TEXT NOT NULL, ts INTEGER NOT NULL, fp TEXT NOT NULL, gen INTEGER NOT NULL,
  UNIQUE (measurement, tags, ts));
CREATE TABLE IF NOT EXISTS merged (
  measurement TEXT NOT NULL, tags TEXT NOT NULL, ts INTEGER NOT NULL, fp TEXT NOT NULL, gen INTEGER NOT NULL,
  UNIQUE (measurement, tags, ts));
CREATE TABLE IF NOT EXISTS delivered (
  measurement TEXT NOT NULL, tags TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (measurement, tags));
CREATE TABLE IF NOT EXISTS delivered_coarse (
  measurement TEXT NOT NULL, tags TEXT NOT NULL, ts INTEGER NOT NULL, res REAL NOT NULL, fields TEXT NOT NULL,
  approx INTEGER NOT NULL, PRIMARY KEY (measurement, tags, ts));
"""
_ON_CONFLICT = ("ON CONFLICT (measurement, tags, ts) DO UPDATE SET fields = json_patch(pending.fields, excluded.fields), "
                "rev = pending.rev + 1 WHERE json_patch(pending.fields, excluded.fields) != pending.fields")
_UPSERT = "INSERT INTO pending (measurement, tags, ts, fields, res, approx) VALUES (?, ?, ?, ?, ?, ?) " + _ON_CONFLICT
# a point identical to one already delivered (a restarted pipeline replaying from its checkpoint) is not queued again
_UPSERT_UNSENT = ("INSERT INTO pending (measurement, tags, ts, fields, res, approx) SELECT ?1, ?2, ?3, ?4, ?5, ?6 "
                  "WHERE NOT EXISTS (SELECT 1 FROM sent WHERE measurement = ?1 AND tags = ?2 AND ts = ?3 AND fp = ?7) "
                  "AND NOT EXISTS (SELECT 1 FROM merged WHERE measurement = ?1 AND tags = ?2 AND ts = ?3 AND fp = ?7) "
                  + _ON_CONFLICT)


@dataclass
class Row:
    id: int
    measurement: str
    tags: dict
    ts: int            # nanoseconds since the epoch (the window start)
    fields: dict
    res: float         # window width in seconds, 0 = as produced (not coarsened)
    approx: bool       # some field was merged approximately
    rev: int
    tags_json: str = ""
    fields_json: str = ""


_FIELDS = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode   # field order as produced (stable)


class _TagCache(dict):
    """Canonical JSON of tag sets; a pipeline has few distinct ones, so each is encoded once."""

    def __call__(self, tags: dict) -> str:
        key = tuple(tags.items())
        out = self.get(key)
        if out is None:
            if len(self) > 100_000:
                self.clear()
            out = self[key] = _dumps(tags)
        return out


class Outbox(DiskBound):
    """A durable FIFO of points in one SQLite file; thread-safe (one connection behind a lock)."""

    def __init__(self, path: str | Path, *, max_bytes: int | None = None, fsync: str = "full",
                 coarsen_steps_s: tuple[float, ...] = (60.0, 600.0), ddof: int = 0, mark_coarsened: bool = True,
                 sent_log: int = 200_000, name: str | None = None):
        if fsync not in _SYNC:
            raise ValueError(f"outbox {path}: fsync must be one of {sorted(_SYNC)}, got {fsync!r}")
        self.path = private_file(path)  # 0600 before SQLite opens it (its -wal/-shm follow), folder 0700 if created
        self.name = name            # the sink's id, for messages
        self._lockfile = _exclusive(self.path)
        self.max_bytes, self.steps, self.ddof = max_bytes, tuple(sorted(coarsen_steps_s)), ddof
        self.mark_coarsened, self.sent_log = mark_coarsened, sent_log
        self._lock = threading.RLock()
        try:
            self._db = open_checked(self.path, name, _SCHEMA, _SYNC[fsync])
        except BaseException:
            self._lockfile.close()
            raise
        self._tags = _TagCache()
        self._claimed_max = 0          # rows with id <= this are in flight: coarsening leaves them alone
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self.counters.update(dict(self._db.execute("SELECT name, value FROM counters")))
        self._pending = self._db.execute("SELECT count(*) FROM pending").fetchone()[0]
        self._bytes = self._stored_bytes()
        self._coarse_res = self._db.execute("SELECT coalesce(max(res), 0) FROM pending").fetchone()[0]
        self._delivered_coarse = self._db.execute("SELECT count(*) FROM delivered_coarse").fetchone()[0] > 0
        self.changed = threading.Condition(self._lock)   # notified on put (the sender waits on it)

    # --- writing ------------------------------------------------------------------------------
    def put(self, points, res: float = 0.0) -> int:
        """Commit ``[(measurement, tags: dict, ts_ns: int, fields: dict)]`` durably; returns points stored.

        NaN fields are absent values and are left out; a point with no field left is skipped.
        """
        rows = []
        for measurement, tags, ts, fields in points:
            fields = {k: (bool(v) if isinstance(v, (bool, np.bool_)) else float(v)) for k, v in fields.items()
                      if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if fields:
                fj = _FIELDS(fields)
                rows.append((measurement, self._tags(tags), int(ts), fj, float(res), 0, fj))
        if not rows:
            return 0
        with self._lock:
            with self._tx():
                last = self._db.execute("SELECT coalesce(max(id), 0) FROM pending").fetchone()[0]
                n_in = len(rows)
                absorbed = self._into_coarse(rows, float(res)) if self._coarse_res > float(res) else 0
                if absorbed:
                    rows = [r for r in rows if r is not None]
                if self._delivered_coarse:   # a late point for a window the server holds as one coarse point
                    rows, late = self._into_delivered_coarse(rows, float(res))
                    absorbed += late
                changes = self._db.total_changes
                self._db.executemany(_UPSERT_UNSENT, rows)
                skipped = len(rows) - (self._db.total_changes - changes)
                self._bump("duplicates", skipped)
                self._bump("put", n_in)
                self._pending += self._db.execute("SELECT count(*) FROM pending WHERE id > ?", (last,)).fetchone()[0]
                if skipped or absorbed:   # rarely (a restart, late points): recount rather than guess
                    self._bytes = self._stored_bytes()
                else:
                    self._bytes += sum(_size(r[0], r[1], r[3]) for r in rows)
            if self.max_bytes is not None and self._bytes > self.max_bytes:
                try:
                    self._make_room()
                except sqlite3.Error as e:   # the points are committed; making room waits for the next put
                    log.warning("outbox %s: could not make room (%s); pending points stay as they are for now",
                                self.path, e)
            self.changed.notify_all()
        return n_in

    # --- draining (the sender) ------------------------------------------------------------------
    def claim(self, limit: int) -> list[Row]:
        """The oldest ``limit`` pending points, marked in flight (until ``ack``/``release``/``dead_letter``)."""
        with self._lock:
            cur = self._db.execute("SELECT id, measurement, tags, ts, fields, res, approx, rev FROM pending "
                                   "ORDER BY id LIMIT ?", (limit,))
            rows = [Row(i, m, json.loads(t), ts, json.loads(f), res, bool(a), rev, t, f)
                    for i, m, t, ts, f, res, a, rev in cur]
            self._claimed_max = rows[-1].id if rows else 0
            return rows

    def release(self) -> None:
        with self._lock:
            self._claimed_max = 0

    def ack(self, rows: list[Row]) -> None:
        """The server accepted ``rows``: delete them (a point re-put meanwhile stays, with its new fields)."""
        with self._lock:
            with self._tx():
                self._pending -= self._delete(rows)
                if self.sent_log:
                    gen = self.counters["generation"]
                    self._db.executemany("INSERT OR REPLACE INTO sent (measurement, tags, ts, fp, gen) VALUES (?, ?, ?, ?, ?)",
                                         [(r.measurement, r.tags_json, r.ts, r.fields_json, gen) for r in rows])
                    self._db.execute("DELETE FROM sent WHERE rowid <= (SELECT max(rowid) FROM sent) - ?", (self.sent_log,))
                coarse = [(r.measurement, r.tags_json, r.ts, r.res, r.fields_json, int(r.approx)) for r in rows if r.res > 0]
                if coarse:   # kept (the newest DELIVERED_COARSE) so that a late point is merged in, never sent over it
                    self._db.executemany("INSERT OR REPLACE INTO delivered_coarse VALUES (?, ?, ?, ?, ?, ?)", coarse)
                    self._db.execute("DELETE FROM delivered_coarse WHERE rowid <= (SELECT max(rowid) FROM "
                                     "delivered_coarse) - ?", (DELIVERED_COARSE,))
                    self._delivered_coarse = True
                frontier: dict[tuple, int] = {}
                for r in rows:
                    key = (r.measurement, r.tags_json)
                    frontier[key] = max(frontier.get(key, r.ts), r.ts)
                self._db.executemany("INSERT INTO delivered VALUES (?, ?, ?) ON CONFLICT (measurement, tags) "
                                     "DO UPDATE SET ts = max(ts, excluded.ts)", [(*k, ts) for k, ts in frontier.items()])
                self._bump("sent", len(rows))
            self._claimed_max = 0

    def checkpoint(self) -> int:
        """The pipeline checkpoints: forget delivered points older than the previous checkpoint.

        Points delivered since then are remembered (``sent_log`` at most), so the replay after a crash does not
        send them twice. Returns the new generation (what a sink's ``snapshot()`` records).
        """
        with self._lock:
            with self._tx():
                self._bump("generation", 1)
                gen = self.counters["generation"]
                for table in ("sent", "merged"):
                    self._db.execute(f"DELETE FROM {table} WHERE gen < ?", (gen - 1,))
                    self._db.execute(f"DELETE FROM {table} WHERE rowid <= (SELECT max(rowid) FROM {table}) - ?",
                                     (self.sent_log,))
            return gen

    def dead_letter(self, rows: list[Row], status: int | None, reason: str) -> None:
        """Move ``rows`` to the ``dead`` table with the server's status and message."""
        with self._lock:
            with self._tx():
                now = time.time()
                self._db.executemany(
                    "INSERT INTO dead (measurement, tags, ts, fields, res, approx, status, reason, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r.measurement, r.tags_json, r.ts, r.fields_json, r.res, int(r.approx), status, reason, now)
                     for r in rows])
                self._pending -= self._delete(rows)
                self._bump("dead_lettered", len(rows))
            self._claimed_max = 0

    def requeue_dead(self) -> int:
        """Move every dead-lettered point back to pending (after fixing the token, bucket, ...)."""
        with self._lock:
            with self._tx():
                rows = self._db.execute("SELECT measurement, tags, ts, fields, res, approx FROM dead ORDER BY id").fetchall()
                self._db.executemany(_UPSERT, rows)
                self._db.execute("DELETE FROM dead")
                self._bump("requeued", len(rows))
            self._pending = self._db.execute("SELECT count(*) FROM pending").fetchone()[0]
            self._bytes += sum(_size(r[0], r[1], r[3]) for r in rows)
            self.changed.notify_all()
            return len(rows)

    def dead_rows(self) -> list[tuple]:
        with self._lock:
            return self._db.execute("SELECT measurement, tags, ts, fields, status, reason FROM dead ORDER BY id").fetchall()

    # --- bookkeeping ----------------------------------------------------------------------------
    @contextmanager
    def _tx(self):
        """One write transaction; on any error (disk full, I/O, locked) it is rolled back and the in-memory
        counters, pending count and sizes are as before, so the caller may simply try again later."""
        saved = dict(self.counters), self._pending, self._bytes, self._coarse_res
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            self.counters.clear()
            self.counters.update(saved[0])
            self._pending, self._bytes, self._coarse_res = saved[1:]
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if getattr(sys.exc_info()[1], "sqlite_errorcode", 0) & 0xFF == 13:   # SQLITE_FULL
                self._shrink_wal()
            raise

    def _shrink_wal(self) -> None:
        """On a full disk the write-ahead log itself may hold the space (it grows to ~4 MB between checkpoints):
        move its pages into the database and truncate it, so that the retry has room. Best effort."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass

    def _delete(self, rows: list[Row]) -> int:
        before = self._db.total_changes
        self._db.executemany("DELETE FROM pending WHERE id = ? AND rev = ?", [(r.id, r.rev) for r in rows])
        removed = self._db.total_changes - before
        self._bytes -= sum(_size(r.measurement, r.tags_json, r.fields_json) for r in rows)
        if self._pending - removed <= 0:
            self._bytes, self._coarse_res = 0, 0.0
        return removed

    def _bump(self, name: str, n: int) -> None:
        self.counters[name] += n
        self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, self.counters[name]))

    def _stored_bytes(self) -> int:
        return self._db.execute("SELECT coalesce(sum(length(measurement) + length(tags) + length(fields) + ?), 0) "
                                "FROM pending", (ROW_OVERHEAD,)).fetchone()[0]

    def pending(self) -> int:
        return self._pending

    def stats(self) -> dict:
        """Counters (persisted across restarts) and the current pending count and sizes."""
        with self._lock:
            oldest = self._db.execute("SELECT min(ts) FROM pending").fetchone()[0]
            files = [self.path, Path(str(self.path) + "-wal")]
            return {**self.counters, "pending": self._pending, "pending_bytes": self._bytes,
                    "dead": self._db.execute("SELECT count(*) FROM dead").fetchone()[0],
                    "oldest_pending_ts": None if oldest is None else oldest / 1e9,
                    "file_bytes": sum(p.stat().st_size for p in files if p.exists())}

    def verify(self, recorded: dict) -> None:
        """Raise :class:`OutboxDamaged` when this file is behind what the pipeline's checkpoint recorded of it."""
        with self._lock:
            verify_against_checkpoint(self.path, self.name, self.counters, self._pending, recorded)

    def snapshot(self) -> dict:
        """What a checkpoint records of this outbox (plain numbers): checked by ``verify`` on the next start."""
        with self._lock:
            return {"outbox_generation": self.counters["generation"], "outbox_put": self.counters["put"],
                    "outbox_sent": self.counters["sent"], "outbox_pending": self._pending}

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lockfile.close()


def _exclusive(path: Path):
    """One process per outbox: two senders draining the same file would send every point twice.

    An flock on ``<outbox>.lock``; the OS releases it when the process dies, even by kill -9.
    """
    fh = open(private_file(str(path) + ".lock"), "a+")  # 0600, like the outbox
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise RuntimeError(f"outbox {path} is in use by {holder}: give each sink its own `outbox:` file "
                           "(or stop the other pipeline)") from None
    fh.truncate(0)
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    return fh
