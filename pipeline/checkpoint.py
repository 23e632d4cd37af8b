"""Checkpoints: an SQLite state store written incrementally, one transaction per checkpoint.

The store (the file ``runtime.checkpoint.path``) holds one row per (item, key): an item is a stage or a sink
(``stage:<id>``, ``sink:<id>``), a key is what the item keeps state for (a device, say), or ``""`` for an item
that saves its whole state as one entry. A checkpoint writes only the rows that changed since the previous one
(`pipeline.stage.StateChanges`), the deletions, and the source positions, in one transaction: it is all or
nothing, also when the process is killed during it (SQLite, WAL journal, ``synchronous=FULL``).

Every value is a framed `pipeline.statefiles` blob (magic, version, CRC-32; never a pickle). A file that is not
such a store, a store of a newer format, or a damaged row is refused with a `StateFileError` that names the file
and says how to start fresh. The file and its ``-wal``/``-shm`` companions are 0600, in a folder created 0700.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "state.db")
>>> store = CheckpointStore(path)
>>> store.save({"readings": (0, 120, 0)}, {"stage:w": StateChanges({("pump",): [1, 2]})}).rows
1
>>> store.close(); saved = CheckpointStore(path).load()
>>> saved.sources, saved.items
({'readings': (0, 120, 0)}, {'stage:w': {('pump',): [1, 2]}})
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .stage import StateChanges
from .statecodec import StateFileError
from .statefiles import move_aside_hint, pack, private_file, unpack

FORMAT = 2  # 1 was a pickle file, which is no longer read
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS entries (item TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
                                    PRIMARY KEY (item, key)) WITHOUT ROWID;
"""


@dataclass
class SavedState:
    """What a checkpoint restores: source positions and, per item, its entries ``{key: state}``."""

    sources: dict[str, Any]
    items: dict[str, dict[Any, Any]]
    written_at: float = 0.0


@dataclass
class SaveStats:
    rows: int = 0             # rows written (inserted or replaced)
    deleted: int = 0          # rows deleted
    bytes: int = 0            # bytes of values written
    seconds: float = 0.0
    items: dict[str, int] = field(default_factory=dict)  # rows written per item


class CheckpointStore:
    """The state store at ``path`` (created on the first `save`; `load` of a missing file is None)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._known_items: set[str] | None = None  # items with rows in the store, until the first save prunes

    # ------------------------------------------------------------------ refusals
    def refusal(self, problem: str) -> StateFileError:
        """The error for a checkpoint that cannot be used: names the file and how to start fresh."""
        return self._refuse(problem.removesuffix("; it was not read.").removesuffix(" it was not read."))

    def _hint(self) -> str:
        return (f"{move_aside_hint(str(self.path), f'{self.path}-wal', f'{self.path}-shm')}"
                " (the -wal and -shm files may be absent)")

    def _refuse(self, problem: str) -> StateFileError:
        return StateFileError(f"checkpoint {self.path}: {problem}; it was not read. {self._hint()}")

    def _check_file(self) -> None:
        with open(self.path, "rb") as fh:
            head = fh.read(16)
        if head and head != _SQLITE_MAGIC:
            kind = ", a Python pickle (the format of older edgesieve versions, never read: it could run code)" \
                if head[:1] == b"\x80" else ""
            raise self._refuse(f"not an edgesieve state store (it starts with {head!r}{kind})")

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            private_file(self.path)  # 0600 before SQLite opens it: its -wal and -shm files get the same mode
            self._check_file()
            try:
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            except sqlite3.DatabaseError as exc:
                raise self._refuse(f"not a readable SQLite database ({exc})") from None
            if tables and not {"meta", "entries"} <= tables:
                raise self._refuse(f"an SQLite database of something else (tables: {', '.join(sorted(tables))})")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE name='format'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('format', ?)", (str(FORMAT),))
            elif int(row[0]) > FORMAT:
                raise self._refuse(f"written by a newer edgesieve (store format {int(row[0])}, this one reads "
                                   f"{FORMAT}); upgrade edgesieve, or start fresh")
            self._db = db
        return self._db

    # ------------------------------------------------------------------ read
    def load(self) -> SavedState | None:
        """The last checkpoint, or None when there is none yet (no file, or no checkpoint committed in it)."""
        companions = [p for p in (Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()]
        if not self.path.exists():
            if companions:  # SQLite would replay a stale WAL into a new database
                raise StateFileError(
                    f"checkpoint {self.path} is missing but {' and '.join(map(str, companions))} of an earlier one "
                    f"remain; edgesieve will not start on half a checkpoint. To start fresh, move them aside too "
                    f"(mkdir -p refused && mv {' '.join(map(str, companions))} refused/)")
            return None
        db = self._connect()
        try:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise self._refuse("corrupt (SQLite quick_check failed)")
            meta = dict(db.execute("SELECT name, value FROM meta"))
            rows = db.execute("SELECT item, key, value FROM entries").fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._refuse(f"corrupt ({exc})") from None
        if "sources" not in meta:
            return None  # created, but killed before the first checkpoint committed
        where = f"checkpoint {self.path}"
        items: dict[str, dict[Any, Any]] = {}
        for item, key, value in rows:
            k = unpack(key, f"{where} ({item}: key)", hint=self._hint())
            items.setdefault(item, {})[k] = unpack(value, f"{where} ({item}, key {k!r})", hint=self._hint())
        self._known_items = set(items)
        return SavedState(unpack(meta["sources"], f"{where} (source positions)", hint=self._hint()), items,
                          float(unpack(meta["written_at"], f"{where} (written_at)", hint=self._hint())))

    # ------------------------------------------------------------------ write
    def save(self, sources: Mapping[str, Any], changes: Mapping[str, StateChanges]) -> SaveStats:
        """Write one checkpoint: ``sources`` positions and each item's changes, atomically."""
        started = time.perf_counter()
        db = self._connect()
        stats = SaveStats()
        db.execute("BEGIN IMMEDIATE")
        try:
            if self._known_items is None:
                self._known_items = {r[0] for r in db.execute("SELECT DISTINCT item FROM entries")}
            for gone in self._known_items - set(changes):  # items no longer in the pipeline
                stats.deleted += db.execute("DELETE FROM entries WHERE item=?", (gone,)).rowcount
            self._known_items = set(changes)
            for item, ch in changes.items():
                if ch.complete:
                    stats.deleted += db.execute("DELETE FROM entries WHERE item=?", (item,)).rowcount
                else:
                    for k in ch.deleted:
                        stats.deleted += db.execute("DELETE FROM entries WHERE item=? AND key=?",
                                                    (item, _key(k))).rowcount
                rows = [(item, _key(k), pack(v)) for k, v in ch.entries.items() if v is not None]
                db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)", rows)
                stats.rows += len(rows)
                stats.items[item] = len(rows)
                stats.bytes += sum(len(r[2]) for r in rows)
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [("sources", pack(dict(sources))), ("written_at", pack(time.time()))])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        stats.seconds = time.perf_counter() - started
        return stats

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def _key(k: Any) -> bytes:
    """The stored form of a key: its framed encoding (deterministic, so the same key is always the same row)."""
    return pack(k)


__all__ = ["CheckpointStore", "SavedState", "SaveStats", "FORMAT"]
