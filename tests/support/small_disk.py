"""A real filesystem that fills up: a small tmpfs mounted for the test (root with CAP_SYS_ADMIN), filled with a
ballast file until the kernel answers ENOSPC and freed by deleting it.

Where mounting is not allowed, ``SmallDisk.mounted`` is False and ``fill(outbox)`` falls back to SQLite's own
limit, ``PRAGMA max_page_count`` at the outbox's current size: SQLite itself then answers SQLITE_FULL
("database or disk is full") to any write that needs a new page, exactly as on a full disk.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


class SmallDisk:
    def __init__(self, size_bytes: int = 4 * 2**20):
        self.dir = Path(tempfile.mkdtemp(prefix="edgesieve-disk-"))
        self.size = size_bytes
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(self.dir)],
                           capture_output=True) if shutil.which("mount") else None
        self.mounted = r is not None and r.returncode == 0
        self._ballast = self.dir / ".ballast"
        self._limited = []

    def fill(self, outbox=None) -> None:
        """Take every free byte (tmpfs) or freeze the outbox at its current size (fallback)."""
        if self.mounted:
            fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                for size in (1 << 20, 65536, 4096, 512, 1):      # until not even a byte fits
                    try:
                        while True:
                            os.write(fd, b"\0" * size)
                    except OSError as e:
                        assert e.errno == errno.ENOSPC, e
            finally:
                os.close(fd)
        elif outbox is not None:
            db = outbox._db
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={pages}")
            self._limited.append(db)

    def free(self) -> None:
        if self.mounted:
            self._ballast.unlink(missing_ok=True)
        for db in self._limited:
            db.execute("PRAGMA max_page_count=1073741823")
        self._limited.clear()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SmallDisk":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def truncate_wal(path: Path) -> None:
    """Checkpoint and truncate an outbox's WAL from a second connection, so its next write needs new disk blocks."""
    import sqlite3

    db = sqlite3.connect(str(path))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    assert os.path.getsize(str(path) + "-wal") == 0
