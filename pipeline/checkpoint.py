"""Atomic checkpoints: write to a temporary file, fsync it, rename it over the old one, fsync the folder.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "cp.pickle")
>>> write_checkpoint(path, {"stages": {"w": [1, 2]}}); read_checkpoint(path)["stages"]
{'w': [1, 2]}
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

FORMAT = 1


def write_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    payload = {"format": FORMAT, "written_at": time.time(), **state}
    with open(tmp, "wb") as fh:
        pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The saved state, or None when there is no checkpoint yet."""
    path = Path(path)
    if not path.exists():
        return None
    with open(path, "rb") as fh:
        state = pickle.load(fh)
    if state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} has format {state.get('format')}, this edgesieve reads {FORMAT}; move it away to start fresh")
    return state
