"""A test source: deterministic readings for a few devices, emitted in small batches at a steady pace.

Its position is the number of readings emitted, so a pipeline restored from a checkpoint resumes exactly there
(the kill -9 test registers it as type ``paced`` in the child process only).

>>> r = readings(devices=2, seconds=1, hz=2, t0=100)
>>> r["ts"].tolist(), r["device"].tolist()
([100.0, 100.0, 100.5, 100.5], ['d0', 'd1', 'd0', 'd1'])
"""
from __future__ import annotations

import threading
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.batch import Batch
from pipeline.config import SourceConfig
from pipeline.stage import Source


def readings(devices: int, seconds: int, hz: int, t0: float, seed: int = 5) -> dict[str, np.ndarray]:
    n = seconds * hz
    ts = np.repeat(t0 + np.arange(n) / hz, devices)
    dev = np.tile(np.array([f"d{d}" for d in range(devices)], dtype=object), n)
    t = np.round(np.random.default_rng(seed).normal(20, 2, n * devices), 3)
    return {"ts": ts, "device": dev, "t": t}


class PacedConfig(SourceConfig):
    type: Literal["paced"]
    devices: int = Field(2, description="Devices.")
    seconds: int = Field(300, description="Event-time length of the data.")
    hz: int = Field(10, description="Readings per second per device.")
    t0: float = Field(description="Event time of the first reading.")
    batch: int = Field(100, description="Readings per emitted batch.")
    pause: float = Field(0.01, description="Wall-clock seconds between batches.")


class PacedSource(Source):
    Config = PacedConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.start = 0

    def restore(self, position) -> None:
        self.start = int(position or 0)

    def run(self, emit, stop: threading.Event) -> None:
        c = self.config
        r = readings(c.devices, c.seconds, c.hz, c.t0)
        n = len(r["ts"])
        for i in range(self.start, n, c.batch):
            j = min(i + c.batch, n)
            emit(Batch(ts=r["ts"][i:j], tags={"device": r["device"][i:j]}, fields={"t": r["t"][i:j]}), position=j)
            if stop.wait(c.pause):
                return
