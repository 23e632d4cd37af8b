"""A generated, labelled corpus of univariate sensor series for evaluating streaming anomaly detectors.

Every series is built from a fixed seed; `corpus()` returns the series of the even seeds (the
tuning half) or of the odd seeds (the held-out half).  Readings are every `DT` seconds (5 min, so a
day is 288 readings).  Anomalous families carry labelled events (start, end) in rows; anomaly-free
series of each normal type measure the false-alert rate.

Families: daily cycle + noise (spikes and a flattened cycle), level shift (persisting), quantised
integer counter (a burst), constant with rare spikes, random walk (spikes), heavy-tailed noise
(large spikes), bursty with zeros (an oversized burst), variance change, slow ramp to failure,
stuck-at value, dropouts (readings fall to 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DT = 300.0  # seconds between readings
DAY = 86_400.0
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC
N_ANOMALOUS, N_FREE = 2016, 4032  # 7 and 14 days
SEEDS_PER_FAMILY, SEEDS_FREE = 6, 4


@dataclass
class Series:
    family: str
    seed: int
    ts: np.ndarray
    x: np.ndarray  # (rows,) readings
    events: list[tuple[int, int]] = field(default_factory=list)  # labelled anomalies [start, end) in rows


def _t(n):
    return T0 + DT * np.arange(n)


def _cycle(n, rng, amp):
    phase = rng.uniform(0, 2 * np.pi)
    return amp * np.sin(2 * np.pi * _t(n) / DAY + phase)


def _place(rng, n, k, length, lo=0.3):
    """k event starts spread over [lo * n, 0.95 * n - length), at least n/(2k) rows apart."""
    starts = []
    span = (int(lo * n), int(0.95 * n) - length)
    for i in range(k):
        a = span[0] + (span[1] - span[0]) * i // k
        b = span[0] + (span[1] - span[0]) * (i + 1) // k - length
        starts.append(int(rng.integers(a, max(a + 1, b))))
    return starts


def _noise_family(name, n, rng):
    """(readings, events) for the anomalous family `name`."""
    base = 20.0 + rng.uniform(-10, 10)
    sigma = rng.uniform(0.2, 2.0)
    ev = []
    if name == "daily_cycle":
        x = base + _cycle(n, rng, rng.uniform(4, 10) * sigma) + rng.normal(0, sigma, n)
        s1, s2 = _place(rng, n, 2, 24)
        x[s1] += rng.choice([-1, 1]) * 7 * sigma
        ev.append((s1, s1 + 1))
        x[s2:s2 + 24] = x[s2 - 1] + rng.normal(0, sigma, 24)  # the cycle stops for two hours
        x[s2:s2 + 24] += 5 * sigma * np.sign(rng.normal())
        ev.append((s2, s2 + 24))
    elif name == "level_shift":
        x = base + rng.normal(0, sigma, n)
        (s,) = _place(rng, n, 1, 1, lo=0.35)
        x[s:] += rng.choice([-1, 1]) * rng.uniform(5, 10) * sigma
        ev.append((s, s + 1))
    elif name == "counter":
        lam = rng.uniform(2, 8)
        x = rng.poisson(lam, n).astype(float)
        (s,) = _place(rng, n, 1, 6)
        x[s:s + 6] = rng.poisson(lam * 5 + 10, 6)
        ev.append((s, s + 6))
    elif name == "constant_spikes":
        x = np.full(n, round(base, 1))
        for s in _place(rng, n, 2, 1):
            x[s] += rng.choice([-1, 1]) * rng.uniform(1, 5)
            ev.append((s, s + 1))
    elif name == "random_walk":
        x = base + np.cumsum(rng.normal(0, sigma, n))
        for s in _place(rng, n, 2, 1):
            x[s] += rng.choice([-1, 1]) * 10 * sigma
            ev.append((s, s + 1))
    elif name == "heavy_tailed":
        x = base + sigma * rng.standard_t(3, n)
        for s in _place(rng, n, 2, 1):
            x[s] += rng.choice([-1, 1]) * 40 * sigma
            ev.append((s, s + 1))
    elif name == "bursty_zeros":
        x = _bursty(n, rng)
        (s,) = _place(rng, n, 1, 12)
        x[s:s + 12] = rng.exponential(1, 12) * 60 + 80
        ev.append((s, s + 12))
    elif name == "variance_change":
        x = base + rng.normal(0, sigma, n)
        (s,) = _place(rng, n, 1, 144)
        x[s:s + 144] = base + rng.normal(0, 5 * sigma, 144)
        ev.append((s, s + 144))
    elif name == "ramp_to_failure":
        x = base + rng.normal(0, sigma, n)
        (s,) = _place(rng, n, 1, 200, lo=0.5)
        x[s:s + 200] += np.linspace(0, 12 * sigma, 200)
        x[s + 200:] += 12 * sigma  # failed high and stays there
        ev.append((s, s + 200))
    elif name == "stuck_at":
        x = base + _cycle(n, rng, rng.uniform(3, 6) * sigma) + rng.normal(0, sigma, n)
        x = np.round(x, 2)
        (s,) = _place(rng, n, 1, 72)
        x[s:s + 72] = x[s - 1]
        ev.append((s, s + 72))
    elif name == "dropouts":
        x = 50 + rng.uniform(-20, 20) + rng.normal(0, sigma, n)
        for s in _place(rng, n, 2, 3):
            x[s:s + 3] = 0.0
            ev.append((s, s + 3))
    else:
        raise ValueError(name)
    return x, ev


def _bursty(n, rng):
    """Mostly zero, with bursts (traffic or flow): on/off with exponential durations and values."""
    x = np.zeros(n)
    i = 0
    while i < n:
        i += int(rng.exponential(20)) + 1
        length = int(rng.exponential(4)) + 1
        x[i:i + length] = rng.exponential(1, len(x[i:i + length])) * 5
        i += length
    return x


def _free(name, n, rng):
    base = 20.0 + rng.uniform(-10, 10)
    sigma = rng.uniform(0.2, 2.0)
    if name == "free_daily_cycle":
        return base + _cycle(n, rng, rng.uniform(4, 10) * sigma) + rng.normal(0, sigma, n)
    if name == "free_weekly_daily":
        week = 3 * sigma * np.where(((_t(n) // DAY) % 7) >= 5, -1.0, 0.0)  # weekends lower
        return base + _cycle(n, rng, 5 * sigma) + week + rng.normal(0, sigma, n)
    if name == "free_counter":
        return rng.poisson(rng.uniform(0.5, 8), n).astype(float)
    if name == "free_constant":  # a quantised reading that rarely leaves its value by one step
        return np.round(base, 1) + 0.1 * (rng.random(n) < 0.02)
    if name == "free_random_walk":
        return base + np.cumsum(rng.normal(0, sigma, n))
    if name == "free_heavy_tailed":
        return base + sigma * rng.standard_t(3, n)
    if name == "free_bursty_zeros":
        return _bursty(n, rng)
    if name == "free_noise":
        return base + rng.normal(0, sigma, n)
    raise ValueError(name)


FAMILIES = ["daily_cycle", "level_shift", "counter", "constant_spikes", "random_walk", "heavy_tailed",
            "bursty_zeros", "variance_change", "ramp_to_failure", "stuck_at", "dropouts"]
FREE = ["free_daily_cycle", "free_weekly_daily", "free_counter", "free_constant", "free_random_walk",
        "free_heavy_tailed", "free_bursty_zeros", "free_noise"]


def corpus(half: str) -> list[Series]:
    """The `tune` (even seeds) or `report` (odd seeds) half of the corpus, or `dev`: as many series again
    from seeds that are in neither half (for development diagnostics; never reported, never tunes a threshold)."""
    if half == "dev":
        fam_seeds, free_seeds = range(SEEDS_PER_FAMILY, 2 * SEEDS_PER_FAMILY), range(SEEDS_FREE, 2 * SEEDS_FREE)
    else:
        parity = {"tune": 0, "report": 1}[half]
        fam_seeds, free_seeds = range(parity, SEEDS_PER_FAMILY, 2), range(parity, SEEDS_FREE, 2)
    out = []
    for fi, fam in enumerate(FAMILIES):
        for seed in fam_seeds:
            rng = np.random.default_rng([fi, seed])
            x, ev = _noise_family(fam, N_ANOMALOUS, rng)
            out.append(Series(fam, seed, _t(N_ANOMALOUS), x, ev))
    for fi, fam in enumerate(FREE):
        for seed in free_seeds:
            rng = np.random.default_rng([100 + fi, seed])
            out.append(Series(fam, seed, _t(N_FREE), _free(fam, N_FREE, rng)))
    return out
