"""The outbox checks itself: at open (damaged, truncated or foreign file) and against the pipeline's checkpoint
(a lost or damaged write-ahead log), and says what may be lost and what to run.

Storage errors are sorted here too: a full disk, an I/O error or a lock is *transient* (retry with backoff);
a damaged or foreign file is not (stop with a message naming the file, the sink, and the way forward).

>>> is_transient(sqlite3.OperationalError("database or disk is full")), is_transient(sqlite3.DatabaseError("file is not a database"))
(True, False)
"""
from __future__ import annotations

import errno
import logging
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("connectors.influx.outbox")
_HEADER = b"SQLite format 3\x00"
_TRANSIENT_CODES = {5, 6, 10, 13, 14, 15}     # BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL
_TRANSIENT_ERRNO = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EAGAIN, errno.EBUSY}


class OutboxDamaged(RuntimeError):
    """The outbox file cannot be trusted; the message says which file, which sink, what may be lost, what to run."""


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, (sqlite3.Error, OSError))


def is_transient(exc: BaseException) -> bool:
    """Disk full, I/O error, database locked: worth retrying. Damaged or foreign files are not."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None:
            return (code & 0xFF) in _TRANSIENT_CODES
        return isinstance(exc, sqlite3.OperationalError)
    if isinstance(exc, OSError):
        return exc.errno in _TRANSIENT_ERRNO
    return False


def _who(name: str | None) -> str:
    return f" of sink {name!r}" if name else ""


def ways_forward(path: Path) -> str:
    return (f"To copy every point that can still be read into a fresh outbox (the old file is kept as "
            f"{path.name}.damaged-<time>): `edgesieve outbox recover {path}`. To start with an empty outbox and keep "
            f"the old file aside: `edgesieve outbox set-aside {path}`.")


def damaged(path: Path, name: str | None, what: str) -> OutboxDamaged:
    return OutboxDamaged(f"outbox {path}{_who(name)} is damaged ({what}): the points pending in it, not yet delivered, "
                         f"cannot be sent as they are. {ways_forward(path)}")


def open_checked(path: Path, name: str | None, schema: str, sync: str) -> sqlite3.Connection:
    """Open (or create) the outbox database, refusing a damaged, truncated or foreign file with a clear message."""
    if path.exists() and path.stat().st_size:
        with open(path, "rb") as fh:
            if fh.read(16) != _HEADER:
                raise OutboxDamaged(f"outbox {path}{_who(name)} is not an SQLite database (a foreign or overwritten "
                                    f"file); nothing in it can be sent. {ways_forward(path)}")
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={sync}")
        # a short write-ahead log (checkpointed at 1 MB, truncated back to it): on a small or full disk the log
        # must not be what holds the space
        db.execute("PRAGMA wal_autocheckpoint=256")
        db.execute("PRAGMA journal_size_limit=1048576")
        result = [r[0] for r in db.execute("PRAGMA quick_check(5)")]
        if result != ["ok"]:
            raise damaged(path, name, "; ".join(result))
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables - {"sqlite_sequence"} and not {"pending", "counters"} <= tables:
            raise OutboxDamaged(f"outbox {path}{_who(name)} is an SQLite file of something else (tables: "
                                f"{', '.join(sorted(tables))}), not an edgesieve outbox; give the sink its own "
                                f"`outbox:` file, or {ways_forward(path)[3:]}")
        db.executescript(schema)
    except sqlite3.DatabaseError as e:
        db.close()
        if is_transient(e):
            raise
        raise damaged(path, name, str(e)) from None
    except BaseException:
        db.close()
        raise
    return db


def verify_against_checkpoint(path: Path, name: str | None, counters: dict, pending: int, recorded: dict) -> None:
    """The checkpoint recorded the outbox's generation; an outbox behind it lost commits (its WAL, or an old copy)."""
    gen = recorded.get("outbox_generation")
    if not isinstance(gen, int) or counters.get("generation", 0) >= gen:
        return
    aside = sorted(path.parent.glob(path.name + ".damaged-*[0-9]"))
    if counters.get("generation", 0) == 0 and aside:      # `edgesieve outbox set-aside / recover` chose a fresh start
        log.warning("outbox %s%s starts afresh (%d points); the previous file is kept as %s", path, _who(name),
                    pending, aside[-1])
        return
    missing = max(int(recorded.get("outbox_put", 0)) - counters.get("put", 0), 0)
    raise OutboxDamaged(
        f"outbox {path}{_who(name)} is behind the pipeline's checkpoint (outbox generation {counters.get('generation', 0)}, "
        f"checkpoint recorded {gen}): its write-ahead log {path.name}-wal was lost or damaged, or the file was replaced "
        f"by an older copy. Lost: the points stored since the outbox's last durable state - at least {missing} that the "
        f"checkpoint counts as stored, of {recorded.get('outbox_pending', '?')} pending at the checkpoint, and whatever "
        f"came after it; the {pending} points the file still holds are intact (some may have been delivered already: "
        f"sending them again overwrites the same points). To go on with what the file holds: "
        f"`edgesieve outbox accept {path} --generation {gen}`. To start with an empty outbox and keep the old file "
        f"aside: `edgesieve outbox set-aside {path}`.")


def set_aside(path: Path) -> Path:
    """Rename the outbox and its -wal/-shm to ``<file>.damaged-<time>``; returns the new name of the main file."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(path) + suffix)
        if p.exists():
            p.rename(str(target) + suffix)
    return target


def readable_points(path: Path) -> tuple[list[tuple], int]:
    """Every pending point that can still be read from a (damaged) outbox, and how many rows could not be."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.execute("PRAGMA writable_schema=ON")      # read a truncated file up to where it ends (read-only connection)
    out, bad, hi = [], 0, 0
    for query in ("SELECT seq FROM sqlite_sequence WHERE name = 'pending'", "SELECT max(id) FROM pending"):
        try:
            hi = max(hi, (db.execute(query).fetchone() or [0])[0] or 0)
        except sqlite3.DatabaseError:
            pass
    for lo in range(0, hi, 100):
        try:
            out += db.execute("SELECT measurement, tags, ts, fields, res FROM pending WHERE id > ? AND id <= ? "
                              "ORDER BY id", (lo, lo + 100)).fetchall()
        except sqlite3.DatabaseError:
            bad += 1
    db.close()
    return out, bad
