"""One owner per state folder: an exclusive ``flock`` on ``<state_dir>/edgesieve.lock`` held while a pipeline runs.

The lock file records who holds it (pid, host, pipeline, start time) for the message a second pipeline gets.
The kernel releases a ``flock`` when its process ends, however it ends (``kill -9`` included), so a lock file
left by a dead process never blocks: only a live holder does.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with StateLock(d, "plant1"):
...     try:
...         StateLock(d, "other").acquire()
...     except StateLocked as e:
...         "in use by pipeline 'plant1'" in str(e)
True
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .statefiles import private_file

LOCK_NAME = "edgesieve.lock"


class StateLocked(RuntimeError):
    """Another running pipeline holds the state folder."""


class StateLock:
    """Exclusive, non-blocking lock of a state folder (see the module docstring)."""

    def __init__(self, state_dir: str | Path, pipeline: str):
        self.path = Path(state_dir) / LOCK_NAME
        self.pipeline = pipeline
        self._fd: int | None = None

    def acquire(self) -> "StateLock":
        fd = os.open(private_file(self.path), os.O_RDWR)  # 0600 in a folder created 0700 (pipeline.statefiles)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise StateLocked(
                f"state folder {self.path.parent.resolve()} is in use by {holder}: two pipelines on one state folder "
                "would share checkpoints, journals and outboxes. Stop the other one, or give this pipeline its own "
                "runtime.state_dir (and checkpoint.path)") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "pipeline": self.pipeline,
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}).encode() + b"\n")
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        who = json.loads(raw.decode())
        return (f"pipeline {who.get('pipeline')!r} (pid {who.get('pid')} on host {who.get('host')}, "
                f"running since {who.get('since')})")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return "another edgesieve process"
