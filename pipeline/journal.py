"""A durable, append-only input journal: numbered records in segment files, each framed with a CRC (no pickle).

A source that must not lose or repeat input appends what it received, acknowledges it upstream at once, and
hands the pipeline positions (record numbers). A checkpoint stores the position it covers; a restart replays
the records after it. Segments wholly covered by the checkpoint (and older than what the caller keeps for
itself, ``keep_last``) are deleted.

A checkpoint that covers a position also says so in the journal's folder (``mark_committed``: ``<folder>/committed``,
the position as text). A restart that finds no position of its own (its checkpoint was deleted, moved, or is
another pipeline's) reads it back (``resume_from``): the records up to it were counted by an earlier checkpoint,
and replaying them would count them twice.

Layout: ``<folder>/<first seq, 20 digits>.journal``. A record is ``u32 length | u32 crc32 | u64 seq | body``
(little endian; the CRC covers seq and body). Files are 0600 in a 0700 folder.

``fsync``: ``full`` fsyncs after every append (an acknowledged record survives power loss); ``normal`` hands each
append to the OS before returning (it survives a crash or ``kill -9`` of the process, not a power loss) and fsyncs
at segment switches; ``off`` never fsyncs.

A record cut short at the end of the newest segment (a crash during the write; it was never acknowledged) is
truncated with a warning. A record that fails its CRC anywhere else is refused with the file and byte offset.

>>> import tempfile
>>> j = Journal(tempfile.mkdtemp())
>>> j.append([b"a", b"b", b"c"])
3
>>> [(s, bytes(b)) for s, b in j.read(after=1)]
[(2, b'b'), (3, b'c')]
>>> j.close()
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

log = logging.getLogger("edgesieve.journal")
_HEAD = struct.Struct("<IIQ")         # body length, crc32(seq + body), seq
_SEQ = struct.Struct("<Q")
_SUFFIX = ".journal"
_COMMITTED = "committed"
FSYNC_POLICIES = ("full", "normal", "off")


class JournalError(RuntimeError):
    """The journal cannot be used as it is (a damaged record, a file that is not a journal segment)."""


class Journal:
    """Append-only numbered records in segment files; see the module docstring."""

    def __init__(self, folder: str | Path, *, fsync: str = "full", segment_bytes: int = 64 << 20, start_after: int = 0):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"journal {folder}: fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")
        self.folder = Path(folder)
        self.fsync, self.segment_bytes = fsync, segment_bytes
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.folder, 0o700)
        self._segments: list[tuple[int, Path]] = []          # (first seq, path), oldest first
        self.head = start_after                               # seq of the newest record
        self._scan()
        self.head = max(self.head, start_after)
        self._fh = None
        self._size = 0

    # -- opening -----------------------------------------------------------------------------------
    def _scan(self) -> None:
        for path in sorted(self.folder.iterdir()):
            if path.suffix != _SUFFIX:
                continue
            try:
                first = int(path.stem)
            except ValueError:
                raise JournalError(f"input journal {self.folder}: {path.name} is not a journal segment; "
                                   "move it out of the folder") from None
            self._segments.append((first, path))
        for i, (_, path) in enumerate(self._segments):
            last = self._check(path, newest=i == len(self._segments) - 1)
            if last is not None:
                self.head = max(self.head, last)

    def _check(self, path: Path, newest: bool) -> int | None:
        """Validate every record of a segment; return its last seq. A torn tail of the newest segment is cut off."""
        last, good = None, 0
        for seq, _, end in _records(path, self.folder, tolerate_tail=newest):
            last, good = seq, end
        size = path.stat().st_size
        if good < size:                       # only reached for the newest segment (else _records raised)
            log.warning("input journal %s: the last record of %s is incomplete or damaged (a crash during a write; "
                        "it was never acknowledged, the broker delivers it again): truncated %d byte(s) at offset %d",
                        self.folder, path.name, size - good, good)
            with open(path, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        return last

    # -- writing -----------------------------------------------------------------------------------
    def append(self, bodies: list[bytes]) -> int:
        """Append records (numbered head+1, head+2, ...), made durable per the fsync policy; return the new head."""
        if not bodies:
            return self.head
        if self._fh is None or self._size >= self.segment_bytes:
            self._roll()
        parts, seq = [], self.head
        pack, crc32, seq_pack = _HEAD.pack, zlib.crc32, _SEQ.pack
        for body in bodies:
            seq += 1
            parts.append(pack(len(body), crc32(body, crc32(seq_pack(seq))), seq))
            parts.append(body)
        data = b"".join(parts)
        self._fh.write(data)
        self._fh.flush()
        if self.fsync == "full":
            os.fsync(self._fh.fileno())
        self._size += len(data)
        self.head = seq
        return seq

    def _roll(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            if self.fsync != "off":
                os.fsync(self._fh.fileno())
            self._fh.close()
        path = self.folder / f"{self.head + 1:020d}{_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._fh = os.fdopen(fd, "ab", buffering=0)
        self._size = path.stat().st_size
        if not self._segments or self._segments[-1][1] != path:
            self._segments.append((self.head + 1, path))
        if self.fsync != "off":
            _fsync_dir(self.folder)

    # -- reading -----------------------------------------------------------------------------------
    def read(self, after: int = 0) -> Iterator[tuple[int, memoryview]]:
        """(seq, body) of every record with seq > ``after``, oldest first."""
        if self._fh is not None:
            self._fh.flush()
        segs = self._segments
        for i, (first, path) in enumerate(segs):
            if i + 1 < len(segs) and segs[i + 1][0] <= after + 1:
                continue                      # wholly at or before `after`
            for seq, body, _ in _records(path, self.folder, tolerate_tail=False):
                if seq > after:
                    yield seq, body

    # -- what a checkpoint covered -------------------------------------------------------------------
    def mark_committed(self, position: int) -> None:
        """Record that a checkpoint covers the records up to ``position`` (atomic; fsynced unless ``fsync: off``).
        A failed write is logged, not raised: the checkpoint itself is saved, and the mark only matters after it is
        gone (a stale mark errs towards replaying, never towards skipping)."""
        from .statefiles import write_private

        try:
            write_private(self.folder / _COMMITTED, b"%d\n" % int(position), durable=self.fsync != "off")
        except OSError as e:
            log.warning("input journal %s: could not record checkpointed position %d: %s", self.folder, position, e)

    @property
    def committed(self) -> int:
        """The last position ``mark_committed`` recorded (0 when none, or when the file cannot be read)."""
        try:
            return max(0, int((self.folder / _COMMITTED).read_text().strip() or 0))
        except (OSError, ValueError):
            return 0

    def resume_from(self, restored: int, where: str = "") -> int:
        """The position to replay after, for a start that restored ``restored`` (0: none of its own).

        * A mark beyond the journal's end (segments removed by hand, or lost with ``fsync: normal``) is removed,
          durably, before anything is numbered again: a later start must not skip new records on its word.
        * A restored position above the mark raises it (a mark written before the checkpoint, or none yet).
        * No position of its own (a fresh start, or the first checkpoint, written before anything was read) but a
          mark: the records up to it were counted by an earlier checkpoint and are not replayed."""
        covered = self.committed
        if covered > self.head:
            log.warning("%s: %s says position %d was checkpointed, but the journal ends at %d: the mark is removed",
                        where or "input journal", self.folder / _COMMITTED, covered, self.head)
            (self.folder / _COMMITTED).unlink(missing_ok=True)
            _fsync_dir(self.folder)
        elif restored > covered:
            self.mark_committed(restored)
        elif restored == 0 and covered > 0:
            log.warning("%s: %d journaled message(s) in %s were counted by an earlier checkpoint that is not the one "
                        "restored now (deleted, moved, or another checkpoint path): not replayed, to count nothing "
                        "twice; the %d after them are replayed", where or "input journal", covered, self.folder,
                        self.head - covered)
            return covered
        return restored

    # -- trimming ----------------------------------------------------------------------------------
    def prune(self, position: int, keep_last: int = 0) -> int:
        """Delete segments whose records are all <= ``position`` and older than the newest ``keep_last``; return how many."""
        limit = min(position, self.head - keep_last)
        gone = 0
        while len(self._segments) > 1 and self._segments[1][0] - 1 <= limit:
            _, path = self._segments.pop(0)
            path.unlink(missing_ok=True)
            gone += 1
        return gone

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            if self.fsync != "off":
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def _records(path: Path, folder: Path, tolerate_tail: bool) -> Iterator[tuple[int, memoryview, int]]:
    """(seq, body, end offset) of each record in one segment file."""
    data = memoryview(path.read_bytes())
    pos, n, size = 0, len(data), _HEAD.size
    while pos < n:
        if pos + size > n:
            break
        length, crc, seq = _HEAD.unpack_from(data, pos)
        end = pos + size + length
        if end > n:
            break
        body = data[pos + size:end]
        if zlib.crc32(body, zlib.crc32(_SEQ.pack(seq))) != crc:
            if tolerate_tail and _nothing_valid_after(data, end):
                break
            raise JournalError(f"input journal {folder}: record {seq} at byte {pos} of {path.name} fails its CRC "
                               "check (the file is damaged); the input after it cannot be replayed. Move the folder "
                               "away to start without the journal (input not yet checkpointed is then lost)")
        yield seq, body, end
        pos = end
    if pos < n and not tolerate_tail:
        raise JournalError(f"input journal {folder}: {path.name} ends with an incomplete record at byte {pos}; "
                           "move the folder away to start without the journal")


def _nothing_valid_after(data: memoryview, pos: int) -> bool:
    """True when no complete, valid record starts at ``pos`` (a damaged last record, not a damaged middle)."""
    if pos + _HEAD.size > len(data):
        return True
    length, crc, seq = _HEAD.unpack_from(data, pos)
    end = pos + _HEAD.size + length
    return end > len(data) or zlib.crc32(data[pos + _HEAD.size:end], zlib.crc32(_SEQ.pack(seq))) != crc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
