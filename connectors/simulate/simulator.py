"""Simulated devices publishing over MQTT (paho-mqtt 2): groups of devices, each a data stream, a codec and a rate.

Message ``k`` of a device is due at ``start + k / rate`` on the wall clock (devices of a group are spread evenly
over one period); its readings carry event times ``ts0 + i / (rate * batch_size)``, where ``ts0`` is ``--start``
or the wall clock at start. With a fixed seed and ``--start`` every payload is identical from run to run.

>>> g = DeviceGroup(profile="env", devices=2, codec="json", rate=1.0, source="generator", site="hq")
>>> sim = Simulator([g], seed=3, start_ts=1767225600.0)
>>> [(topic, list(json.loads(payload))) for topic, payload, _ in sim.messages(g, sim.devices(g)[1], 1)]
[('sensors/hq/room02/env', ['ts', 'temperature', 'humidity', 'co2'])]
>>> json.loads(sim.messages(g, sim.devices(g)[1], 1)[0][1])["ts"]   # the second device is half a period later
1767225601.5
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .data import GeneratedReadings, ShapeFrames, SkabReadings, VideoFrames, skab_files
from .encode import encode_frame, encode_readings

log = logging.getLogger("edgesieve.simulate")
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SKAB = ROOT.parent / "shared" / "data" / "skab"
DEFAULT_VIDEO = ROOT.parent / "shared" / "data" / "video" / "vtest.avi"
PREFIX = {"pump": "pump", "env": "room", "camera": "cam"}


@dataclass
class DeviceGroup:
    """Devices that share a profile (pump, env or camera), a data source, a codec and a rate."""

    profile: str = "pump"
    devices: int = 3
    rate: float = 1.0                       # messages per second per device; 0 = as fast as possible
    codec: str | None = None                # default: json for readings, frame for cameras
    batch_size: int = 1                     # readings per message (json-batch, senml)
    source: str = "auto"                    # auto | skab | generator | video | shapes
    topic: str = "sensors/{site}/{device}/{kind}"
    site: str = "plant1"
    prefix: str | None = None               # device names: prefix + 2-digit number
    kind: str | None = None                 # the {kind} topic level; default: the profile
    inject: float = 0.002                   # chance an injected anomaly episode starts at a reading
    inject_after: int = 0                   # no injected episode before this many readings per device
    frame_size: tuple[int, int] = (192, 144)
    gray: bool = True
    skab_dir: Path | None = None
    video: Path | None = None
    interval: float | None = None           # event-time seconds between readings; default 1 / (rate * batch_size)

    def __post_init__(self):
        if self.profile not in ("pump", "env", "camera"):
            raise ValueError(f"profile {self.profile!r}: use pump, env or camera")
        camera = self.profile == "camera"
        self.codec = self.codec or ("frame" if camera else "json")
        if camera != (self.codec == "frame"):
            raise ValueError(f"codec {self.codec!r} does not fit profile {self.profile!r}: cameras send frame, "
                             "readings use json, json-batch or senml")
        if self.codec == "json":
            self.batch_size = 1
        self.prefix = self.prefix or PREFIX[self.profile]
        self.kind = self.kind or self.profile
        self.skab_dir = Path(self.skab_dir) if self.skab_dir else DEFAULT_SKAB
        self.video = Path(self.video) if self.video else DEFAULT_VIDEO
        if self.source == "auto":
            if camera:
                self.source = "video" if self.video.is_file() and _has_cv2() else "shapes"
            else:
                self.source = "skab" if self.profile == "pump" and skab_files(self.skab_dir) else "generator"
        allowed = ("video", "shapes") if camera else (("skab", "generator") if self.profile == "pump" else ("generator",))
        if self.source not in allowed:
            raise ValueError(f"source {self.source!r} does not fit profile {self.profile!r}: use {' or '.join(allowed)}")
        for level in ("{device}",):
            if level not in self.topic:
                raise ValueError(f"topic layout {self.topic!r} needs a {level} level")


def _has_cv2() -> bool:
    try:
        import cv2  # noqa: F401
        return True
    except ImportError:
        return False


@dataclass
class Device:
    name: str
    index: int
    topic: str
    stream: object
    sent: int = 0          # messages
    readings: int = 0
    phase: float = 0.0     # seconds after the group's start of its first message


@dataclass
class Stats:
    messages: int = 0
    readings: int = 0
    frames: int = 0
    bytes: int = 0
    anomalies: int = 0
    dropped: int = 0
    per_device: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("messages", "readings", "frames", "bytes", "anomalies", "dropped")}


class Simulator:
    """Builds devices and their payloads; :meth:`run` publishes them through a :class:`Publisher`."""

    def __init__(self, groups: list[DeviceGroup], seed: int = 0, start_ts: float | None = None,
                 truth: Callable[[dict], None] | None = None):
        self.groups, self.seed = groups, seed
        self.start_ts = start_ts
        self.truth = truth
        self.stats = Stats()
        self._devices: dict[int, list[Device]] = {}
        self._offset = 0

    def devices(self, group: DeviceGroup) -> list[Device]:
        key = id(group)
        if key not in self._devices:
            devs = []
            for i in range(group.devices):
                index = self._offset + i
                name = f"{group.prefix}{i + 1:02d}"
                topic = group.topic.format(site=group.site, device=name, kind=group.kind)
                devs.append(Device(name, index, topic, self._stream(group, index),
                                   phase=(i / group.devices / group.rate) if group.rate > 0 else 0.0))
            self._offset += group.devices
            self._devices[key] = devs
        return self._devices[key]

    def _stream(self, g: DeviceGroup, index: int):
        if g.source == "skab":
            return SkabReadings(g.skab_dir, self.seed, index, g.inject, g.inject_after)
        if g.source == "generator":
            return GeneratedReadings(g.profile, self.seed, index, g.inject, g.inject_after)
        if g.source == "video":
            return VideoFrames(g.video, index, g.frame_size, g.gray)
        return ShapeFrames(self.seed, index, g.frame_size, g.gray)

    def _ts0(self) -> float:
        if self.start_ts is None:
            self.start_ts = time.time()
        return self.start_ts

    def messages(self, g: DeviceGroup, dev: Device, n: int) -> list[tuple[str, bytes, dict | None]]:
        """The next ``n`` messages of ``dev``: (topic, payload, MQTT 5 user properties or None)."""
        step = g.interval if g.interval else (1.0 / (g.rate * g.batch_size) if g.rate > 0 else 0.001)
        ts0 = self._ts0() + dev.phase
        if g.codec == "frame":
            out = []
            for _ in range(n):
                frame, count = dev.stream.next_frame()
                ts = round(ts0 + dev.readings * step, 3)
                dev.readings += 1
                out.append((dev.topic, encode_frame(frame), {"ts": repr(ts)}))
                if self.truth is not None and count >= 0:
                    self.truth({"device": dev.name, "ts": ts, "count": count})
            self.stats.frames += n
            return out
        k = n * g.batch_size
        fields, labels = dev.stream.next_block(k)
        ts = ts0 + (dev.readings + np.arange(k)) * step
        dev.readings += k
        self.stats.readings += k
        bad = np.flatnonzero(labels)
        self.stats.anomalies += len(bad)
        if self.truth is not None:
            for i in bad:
                self.truth({"device": dev.name, "ts": round(float(ts[i]), 3), "anomaly": 1})
        return [(dev.topic, p, None) for p in encode_readings(g.codec, dev.name, ts, fields, g.batch_size)]

    def run(self, publish: Callable[[str, bytes, dict | None], bool], duration: float | None = None,
            count: int | None = None, stop: threading.Event | None = None, clock=time.monotonic) -> Stats:
        """Publish until ``duration`` seconds passed, every device sent ``count`` messages, or ``stop`` is set."""
        stop = stop or threading.Event()
        started = clock()
        self._ts0()
        all_devs = [(g, d) for g in self.groups for d in self.devices(g)]
        while not stop.is_set():
            now = clock() - started
            if duration is not None and now >= duration:
                break
            busy = False
            next_due = float("inf")
            for g, d in all_devs:
                if count is not None and d.sent >= count:
                    continue
                if g.rate > 0:
                    due = int((now - d.phase) * g.rate) + 1 if now >= d.phase else 0
                    n = max(0, due - d.sent)
                    n = min(n, 1000) if count is None else min(n, count - d.sent, 1000)
                    next_due = min(next_due, d.phase + (d.sent + n) / g.rate)
                else:
                    n = 100 if count is None else min(100, count - d.sent)
                if not n:
                    continue
                busy = True
                for topic, payload, props in self.messages(g, d, n):
                    if publish(topic, payload, props):
                        self.stats.messages += 1
                        self.stats.bytes += len(payload)
                    else:
                        self.stats.dropped += 1
                d.sent += n
                self.stats.per_device[d.name] = d.sent
            if count is not None and all(d.sent >= count for _, d in all_devs):
                break
            if not busy:
                wait = next_due - (clock() - started)
                if duration is not None:
                    wait = min(wait, duration - (clock() - started))
                stop.wait(min(max(wait, 0.0), 0.05))
        return self.stats


def print_publisher(out) -> Callable[[str, bytes, dict | None], bool]:
    """A publish function that prints ``topic payload`` lines (frames as their size) instead of publishing."""
    def publish(topic: str, payload: bytes, props: dict | None) -> bool:
        text = payload.decode() if not payload.startswith(b"\x93NUMPY") else f"<frame .npy {len(payload)} bytes>"
        out.write(f"{topic} {text}\n")
        return True
    return publish


def iter_truth(path: Path) -> Iterator[dict]:
    with open(path) as f:
        for line in f:
            yield json.loads(line)
