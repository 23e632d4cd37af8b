"""Polling until a condition holds, for tests that watch threads, servers or files."""

from __future__ import annotations

import time
from typing import Callable


def wait_for(cond: Callable[[], object], timeout: float = 10.0, poll: float = 0.01) -> bool:
    """True as soon as ``cond()`` is truthy, False once ``timeout`` seconds passed without it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(poll)
    return False
