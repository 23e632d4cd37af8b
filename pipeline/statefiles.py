"""State on disk: framed values (magic, version, checksum) and private files (0600) in private folders (0700).

Every value edgesieve stores (a checkpoint row, a spilled model) is `pack`-ed: the `pipeline.statecodec`
encoding behind a header of magic bytes, format version, payload length and CRC-32. `unpack` refuses a
corrupt, truncated, foreign (a pickle, say) or newer value with a `StateFileError` that names the file and says
how to start fresh; nothing in it is executed.

Permissions: folders edgesieve creates for state are 0700, state files are 0600 (also when they already
existed). A folder that already exists is left as it is, with a warning when others may write to it: whoever
can write there can replace the state (though never make edgesieve run code).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()) / "state"
>>> write_private(d / "m.state", pack({"n": 1}))
>>> unpack((d / "m.state").read_bytes(), str(d / "m.state")), oct(d.stat().st_mode & 0o777), oct((d / "m.state").stat().st_mode & 0o777)
({'n': 1}, '0o700', '0o600')
>>> unpack(b"\\x80\\x04\\x95 a pickle", "cp.db")
Traceback (most recent call last):
...
pipeline.statecodec.StateFileError: cp.db: not edgesieve state (it starts with b'\\x80\\x04\\x95 a pickle', a Python pickle); it was not read. To start fresh, move it aside (mv cp.db cp.db.refused)
"""
from __future__ import annotations

import logging
import os
import stat
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

from .statecodec import PLAIN, StateFileError, StateTypes, dumps, loads

log = logging.getLogger("edgesieve")

MAGIC = b"ESSTATE\x00"
VERSION = 1
_HEADER = struct.Struct(">8sHQI")  # magic, format version, payload length, CRC-32 of the payload
_warned: set[str] = set()


def seal(payload: bytes) -> bytes:
    """Frame ``payload``: magic, format version, length and CRC-32, then the payload."""
    return _HEADER.pack(MAGIC, VERSION, len(payload), zlib.crc32(payload)) + payload


def move_aside_hint(where: str, *extra: str) -> str:
    """The sentence every refusal ends with: how to start fresh without losing the refused file."""
    files = " ".join([where, *extra])
    return f"To start fresh, move it aside (mkdir -p refused && mv {files} refused/)" if extra else \
        f"To start fresh, move it aside (mv {where} {where}.refused)"


def unseal(blob: bytes, where: str) -> bytes:
    """The payload of a sealed ``blob``; StateFileError naming ``where`` when it is not intact edgesieve state."""
    blob = bytes(blob)
    hint = move_aside_hint(where)
    if len(blob) < _HEADER.size or not blob.startswith(MAGIC):
        if blob and MAGIC.startswith(blob[:len(MAGIC)]):
            problem = f"truncated ({len(blob)} bytes, shorter than its header)"
        else:
            problem = f"not edgesieve state (it starts with {blob[:16]!r}{_guess(blob)})"
        raise StateFileError(f"{where}: {problem}; it was not read. {hint}")
    _, version, length, crc = _HEADER.unpack_from(blob)
    payload = blob[_HEADER.size:]
    if version > VERSION:
        raise StateFileError(f"{where}: written by a newer edgesieve (state format {version}, this one reads "
                             f"{VERSION}: upgrade edgesieve to use it); it was not read. {hint}")
    if len(payload) != length:
        raise StateFileError(f"{where}: truncated ({len(payload)} of {length} bytes); it was not read. {hint}")
    if zlib.crc32(payload) != crc:
        raise StateFileError(f"{where}: corrupt (checksum mismatch); it was not read. {hint}")
    return payload


def _guess(blob: bytes) -> str:
    if blob[:1] == b"\x80" or blob[:1] in (b"(", b"c") and blob.rstrip()[-1:] == b".":
        return ", a Python pickle"
    if blob.startswith(b"SQLite format 3"):
        return ", an SQLite database"
    return ""


def pack(obj: Any, types_: StateTypes = PLAIN) -> bytes:
    """An encoded, framed state value (see `pipeline.statecodec` for what may be in ``obj``)."""
    return seal(dumps(obj, types_))


def unpack(blob: bytes, where: str, types_: StateTypes = PLAIN, hint: str | None = None) -> Any:
    """Decode a value made by `pack`; StateFileError naming ``where`` when it is damaged, foreign or not allowed.

    The message ends with ``hint`` (default: how to move the file ``where`` aside)."""
    hint = move_aside_hint(where) if hint is None else hint
    payload = _unseal_with(blob, where, hint)
    try:
        return loads(payload, types_)
    except StateFileError as exc:
        raise StateFileError(f"{where}: {exc}; it was not read. {hint}".rstrip()) from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, ImportError, RecursionError,
            msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise StateFileError(f"{where}: undecodable ({type(exc).__name__}: {exc}); it was not read. "
                             f"{hint}".rstrip()) from None


def _unseal_with(blob: bytes, where: str, hint: str) -> bytes:
    try:
        return unseal(blob, where)
    except StateFileError as exc:  # the caller's advice instead of the default one
        raise StateFileError(f"{str(exc).split('; it was not read.')[0]}; it was not read. {hint}".rstrip()) from None


def roundtrip(obj: Any, types_: StateTypes = PLAIN) -> Any:
    """What a restore would see of ``obj`` (tests use it to prove that a snapshot can be stored)."""
    return unpack(pack(obj, types_), "roundtrip", types_)


# ---------------------------------------------------------------------------------------------- files
def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) as 0700; warn once when an existing one is writable by others."""
    path = Path(path)
    if not path.is_dir():
        old = os.umask(0o077)
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        finally:
            os.umask(old)
        return path
    mode = path.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH) and str(path) not in _warned:
        _warned.add(str(path))
        log.warning("state folder %s is writable by %s (mode %s): whoever can write there can replace edgesieve's "
                    "state; make it private with: chmod 700 %s", path, "everyone" if mode & stat.S_IWOTH else
                    "its group", oct(mode & 0o777), path)
    return path


def private_file(path: str | Path) -> Path:
    """Make sure ``path`` exists with mode 0600 (created empty if missing, tightened if wider), in a private folder."""
    path = Path(path)
    private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path


def write_private(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Atomically replace ``path`` with ``data`` (0600): temporary file, fsync, rename, fsync of the folder.

    ``durable=False`` skips the fsyncs, for files a checkpoint supersedes anyway (spilled models)."""
    path = Path(path)
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


__all__ = ["MAGIC", "VERSION", "seal", "unseal", "pack", "unpack", "roundtrip", "move_aside_hint", "private_dir",
           "private_file", "write_private", "StateFileError"]
