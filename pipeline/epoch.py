"""The one rule for numeric timestamps whose unit is not given: read the unit from the magnitude.

Up to 1e11 it is seconds (until the year 5138), up to 1e14 milliseconds, up to 1e17 microseconds, else nanoseconds.
The value is divided (not multiplied by a reciprocal), so ``1700000000123`` ms is exactly ``1700000000.123`` s.

>>> import numpy as np
>>> epoch_seconds(np.array([1700000000, 1700000000123, 1700000000123456, 1700000000123456789])).tolist()
[1700000000.0, 1700000000.123, 1700000000.123456, 1700000000.1234567]
>>> epoch_second(1700000000123)
1700000000.123
"""

from __future__ import annotations

import numpy as np

UNIT_DIVISORS = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}


def epoch_divisor(values: np.ndarray) -> np.ndarray:
    mag = np.abs(values)
    return np.where(mag > 1e17, 1e9, np.where(mag > 1e14, 1e6, np.where(mag > 1e11, 1e3, 1.0)))


def epoch_seconds(values: np.ndarray) -> np.ndarray:
    """Seconds since the epoch from numbers in s, ms, us or ns (detected per value)."""
    values = np.asarray(values, dtype=np.float64)
    return values / epoch_divisor(values)


def epoch_second(value: float) -> float:
    """:func:`epoch_seconds` for one number."""
    a = abs(value)
    return value / (1e9 if a > 1e17 else 1e6 if a > 1e14 else 1e3 if a > 1e11 else 1.0)
