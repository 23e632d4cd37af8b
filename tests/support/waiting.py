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


def wait_until(cond: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    """Like :func:`wait_for`, but a timeout fails the test, naming ``what`` it waited for."""
    if not wait_for(cond, timeout, poll=0.02):
        raise AssertionError(f"timed out waiting for {what or cond}")


def settle(counter: Callable[[], int], quiet: float = 0.5, timeout: float = 10.0) -> None:
    """Wait until ``counter()`` stops changing (redeliveries are counted too)."""
    last, deadline = -1, time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = counter()
        if now == last:
            return
        last = now
        time.sleep(quiet)
