"""The one retry backoff: exponential with jitter, never shorter than a server's ``Retry-After``.

Used by the runtime (a sink that cannot take a batch) and by the outbox sender (a cloud that cannot be reached,
a disk that is full).

>>> b = Backoff(initial_s=1, max_s=8, jitter=0.0)
>>> [b.next() for _ in range(5)], b.next(retry_after=30)
([1.0, 2.0, 4.0, 8.0, 8.0], 30.0)
"""
from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with jitter: ``initial * 2**attempt`` capped at ``max_s``, shortened by up to ``jitter``."""

    def __init__(self, initial_s: float = 0.5, max_s: float = 30.0, jitter: float = 0.5,
                 max_retry_after_s: float = 600.0, seed: int | None = None):
        self.initial, self.max, self.jitter, self.max_retry_after = initial_s, max_s, jitter, max_retry_after_s
        self.attempt = 0
        self._rng = random.Random(seed)

    def next(self, retry_after: float | None = None) -> float:
        delay = min(self.max, self.initial * 2.0 ** min(self.attempt, 60))
        delay *= 1.0 - self.jitter * self._rng.random()
        self.attempt += 1
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return float(delay)

    def reset(self) -> None:
        self.attempt = 0
