"""What simulated devices send: readings (SKAB files or a generator, with injected anomalies) and camera frames
(a video through OpenCV, or generated moving shapes). Every stream is deterministic for a given seed and device.

Readings come in blocks: ``next_block(n)`` returns ``(fields, labels)`` where ``fields`` maps a field name to a
float64 array of ``n`` values and ``labels`` is an int8 array (1 = anomalous, the ground truth: a SKAB label or
an injected anomaly). Frames come one at a time: ``next_frame()`` returns ``(frame, count)`` where ``count`` is
the true number of moving objects (-1 when unknown, for a real video).

>>> s = GeneratedReadings("env", seed=7, device=0)
>>> fields, labels = s.next_block(3)
>>> sorted(fields), labels.tolist()
(['co2', 'humidity', 'temperature'], [0, 0, 0])
>>> a, _ = GeneratedReadings("env", seed=7, device=0).next_block(3)
>>> all((a[k] == fields[k]).all() for k in a)
True
>>> frame, count = ShapeFrames(seed=1, device=0, size=(64, 48)).next_frame()
>>> frame.shape, frame.dtype.name
((48, 64), 'uint8')
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("edgesieve.simulate")

SKAB_FIELDS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
               "Thermocouple", "Voltage", "Volume Flow RateRMS"]

# (mean, std, unit) per field; the pump profile uses the statistics of SKAB's anomaly-free run.
PROFILES: dict[str, dict[str, tuple[float, float, str]]] = {
    "pump": {"Accelerometer1RMS": (0.2126, 0.0047, "g"), "Accelerometer2RMS": (0.2684, 0.0040, "g"),
             "Current": (2.403, 0.49, "A"), "Pressure": (0.111, 0.25, "bar"), "Temperature": (89.47, 0.67, "Cel"),
             "Thermocouple": (28.47, 0.73, "Cel"), "Voltage": (228.6, 11.0, "V"),
             "Volume Flow RateRMS": (125.2, 1.6, "l/min")},
    "env": {"temperature": (21.5, 0.6, "Cel"), "humidity": (45.0, 4.0, "%RH"), "co2": (620.0, 90.0, "ppm")},
}
NOISE = {"pump": 0.5, "env": 0.05}   # white noise, in units of the field's sd (room sensors are smooth)
UNITS = {name: unit for prof in PROFILES.values() for name, (_, _, unit) in prof.items()}


def _rng(seed: int, device: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, device, stream])


class Injector:
    """Injects anomaly episodes into blocks of readings: spikes (one reading, 15-25 sigma), level shifts
    (20-120 readings, 8-12 sigma) and drifts (60-200 readings ramping to 12 sigma). ``rate`` is the chance
    that an episode starts at a given reading; none starts before reading ``after`` (a quiet start, so that a
    detector that is warming up does not learn the first episodes as normal)."""

    KINDS = ("spike", "shift", "drift")

    def __init__(self, rate: float, stds: dict[str, float], rng: np.random.Generator, after: int = 0):
        self.rate, self.stds, self.rng, self.after = rate, stds, rng, after
        self.episode: dict | None = None
        self.injected = 0
        self.seen = 0             # readings passed through apply() so far

    def _start(self) -> dict:
        kind = self.KINDS[int(self.rng.integers(len(self.KINDS)))]
        names = list(self.stds)
        field = names[int(self.rng.integers(len(names)))]
        sign = 1.0 if self.rng.random() < 0.5 else -1.0
        sd = self.stds[field]
        if kind == "spike":
            return {"kind": kind, "field": field, "left": 1, "length": 1, "size": sign * sd * self.rng.uniform(15, 25)}
        length = int(self.rng.integers(20, 121) if kind == "shift" else self.rng.integers(60, 201))
        size = sign * sd * (self.rng.uniform(8, 12) if kind == "shift" else 12.0)
        return {"kind": kind, "field": field, "left": length, "length": length, "size": size}

    def apply(self, fields: dict[str, np.ndarray], labels: np.ndarray) -> None:
        """Modify ``fields`` and ``labels`` (this block's own arrays) in place."""
        if self.rate <= 0:
            return
        n = len(labels)
        starts = np.flatnonzero(self.rng.random(n) < self.rate)
        if self.after > self.seen:
            starts = starts[starts >= self.after - self.seen]
        self.seen += n
        pos, k = 0, 0
        while pos < n:
            if self.episode is None:
                while k < len(starts) and starts[k] < pos:
                    k += 1
                if k == len(starts):
                    return
                pos = int(starts[k])
                self.episode = self._start()
                self.injected += 1
            e = self.episode
            m = min(e["left"], n - pos)
            done = e["length"] - e["left"]
            if e["kind"] == "drift":
                offset = e["size"] * (np.arange(done + 1, done + m + 1) / e["length"])
            else:
                offset = e["size"]
            fields[e["field"]][pos:pos + m] += offset
            labels[pos:pos + m] = 1
            e["left"] -= m
            pos += m
            if e["left"] == 0:
                self.episode = None


class GeneratedReadings:
    """Smooth, noisy readings around a profile's means (sums of slow sines plus noise), with injected anomalies."""

    def __init__(self, profile: str, seed: int, device: int, inject: float = 0.0, inject_after: int = 0):
        if profile not in PROFILES:
            raise ValueError(f"unknown readings profile {profile!r}: use one of {', '.join(PROFILES)}")
        self.spec = PROFILES[profile]
        self.noise = NOISE[profile]
        rng = _rng(seed, device, 1)
        self.rng = rng
        self.level = {k: mean + sd * rng.normal(0, 0.5) for k, (mean, sd, _) in self.spec.items()}
        self.periods = {k: rng.uniform(120, 900, size=2) for k in self.spec}
        self.phases = {k: rng.uniform(0, 2 * np.pi, size=2) for k in self.spec}
        self.i = 0
        self.injector = Injector(inject, {k: sd for k, (_, sd, _) in self.spec.items()}, _rng(seed, device, 2),
                                 inject_after)

    @property
    def fields(self) -> list[str]:
        return list(self.spec)

    def next_block(self, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        t = np.arange(self.i, self.i + n, dtype=np.float64)
        self.i += n
        out = {}
        for k, (_, sd, _) in self.spec.items():
            (p1, p2), (f1, f2) = self.periods[k], self.phases[k]
            wave = 0.6 * np.sin(2 * np.pi * t / p1 + f1) + 0.3 * np.sin(2 * np.pi * t / p2 + f2)
            out[k] = self.level[k] + sd * (wave + self.noise * self.rng.standard_normal(n))
        labels = np.zeros(n, np.int8)
        self.injector.apply(out, labels)
        return {k: np.round(v, 5) for k, v in out.items()}, labels


def skab_files(data_dir: Path) -> list[Path]:
    """SKAB's CSV files in a fixed order (anomaly-free first, then valve1, valve2, other), or [] when absent."""
    data_dir = Path(data_dir)
    files = []
    for sub in ("anomaly-free", "valve1", "valve2", "other"):
        files += sorted((data_dir / sub).glob("*.csv"), key=lambda p: (len(p.stem), p.stem))
    return files


@functools.lru_cache(maxsize=64)
def _load_skab(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import pandas as pd

    df = pd.read_csv(path, sep=";")
    missing = [c for c in SKAB_FIELDS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a SKAB file, columns {missing} are missing")
    labels = df["anomaly"].fillna(0).to_numpy().astype(np.int8) if "anomaly" in df else np.zeros(len(df), np.int8)
    return {c: df[c].to_numpy(np.float64) for c in SKAB_FIELDS}, labels


class SkabReadings:
    """Replays SKAB's real pump readings: device ``d`` starts with file ``d`` of :func:`skab_files` and goes on with
    the next ones, round and round. Labels are SKAB's ``anomaly`` column, plus injected anomalies if asked."""

    def __init__(self, data_dir: Path, seed: int, device: int, inject: float = 0.0, inject_after: int = 0):
        self.files = skab_files(data_dir)
        if not self.files:
            raise FileNotFoundError(f"no SKAB CSV files under {data_dir} (expected anomaly-free/, valve1/, valve2/, other/)")
        self.file_i = device % len(self.files)
        self.row = 0
        first, _ = _load_skab(self.files[self.file_i])
        stds = {k: float(np.std(v[:400])) or 1e-3 for k, v in first.items()}
        self.injector = Injector(inject, stds, _rng(seed, device, 2), inject_after)

    @property
    def fields(self) -> list[str]:
        return list(SKAB_FIELDS)

    @property
    def current_file(self) -> Path:
        return self.files[self.file_i]

    def next_block(self, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        parts, labels, left = [], [], n
        while left:
            cols, lab = _load_skab(self.files[self.file_i])
            take = min(left, len(lab) - self.row)
            parts.append({k: v[self.row:self.row + take] for k, v in cols.items()})
            labels.append(lab[self.row:self.row + take])
            self.row += take
            left -= take
            if self.row >= len(lab):
                self.file_i, self.row = (self.file_i + 1) % len(self.files), 0
        fields = {k: np.concatenate([p[k] for p in parts]) for k in SKAB_FIELDS}
        lab = np.concatenate(labels).astype(np.int8)
        self.injector.apply(fields, lab)
        return fields, lab


def _cv2():
    try:
        import cv2
    except ImportError:
        raise RuntimeError("reading a video needs OpenCV: pip install opencv-python-headless "
                           "(or use --source shapes)") from None
    return cv2


class VideoFrames:
    """Frames of a video decoded as they are needed, resized to ``size`` (width, height) with area interpolation,
    looping at the end; camera ``d`` starts ``d * 97`` frames in so that cameras differ."""

    def __init__(self, path: Path, device: int, size: tuple[int, int] = (192, 144), gray: bool = True):
        self.cv2 = _cv2()
        self.path, self.size, self.gray = str(path), tuple(size), gray
        self.cap = self.cv2.VideoCapture(self.path)
        n = int(self.cap.get(self.cv2.CAP_PROP_FRAME_COUNT))
        if not self.cap.isOpened() or n <= 0:
            raise RuntimeError(f"{path}: OpenCV cannot read this video")
        self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, (device * 97) % n)

    def next_frame(self) -> tuple[np.ndarray, int]:
        ok, frame = self.cap.read()
        if not ok:
            self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
            if not ok:
                raise RuntimeError(f"{self.path}: OpenCV could not read a frame")
        frame = self.cv2.resize(frame, self.size, interpolation=self.cv2.INTER_AREA)
        return (self.cv2.cvtColor(frame, self.cv2.COLOR_BGR2GRAY) if self.gray else frame), -1


class ShapeFrames:
    """A static textured background with moving bright and dark blobs ("people") that walk across the scene.

    Arrivals come in busy spells (50-300 frames) and quiet ones (200-800 frames), so a frame-difference filter
    has both still scenes to skip and motion to process. The true count of blobs in view is returned with each frame."""

    def __init__(self, seed: int, device: int, size: tuple[int, int] = (192, 144), gray: bool = True):
        self.w, self.h = size
        self.gray = gray
        self.rng = _rng(seed, device, 3)
        yy, xx = np.mgrid[0:self.h, 0:self.w]
        bg = 90 + 50 * xx / self.w + 30 * yy / self.h + self.rng.normal(0, 6, size=(self.h, self.w))
        for _ in range(6):  # a few fixed objects: benches, lamp posts
            x, y = self.rng.integers(0, self.w - 12), self.rng.integers(0, self.h - 12)
            bg[y:y + self.rng.integers(4, 12), x:x + self.rng.integers(4, 12)] -= 40
        self.bg = np.clip(bg, 0, 255).astype(np.uint8)
        self.objects: list[list[float]] = []   # x, y, vx, vy, w, h, shade
        self.busy, self.spell_left = False, int(self.rng.integers(30, 200))   # a camera starts on a still scene

    def next_frame(self) -> tuple[np.ndarray, int]:
        rng = self.rng
        self.spell_left -= 1
        if self.spell_left <= 0:
            self.busy = not self.busy
            self.spell_left = int(rng.integers(50, 300) if self.busy else rng.integers(200, 800))
        if self.busy and rng.random() < 0.06 and len(self.objects) < 8:
            ow, oh = max(3, self.w // 24), max(6, self.h // 8)
            left = rng.random() < 0.5
            speed = rng.uniform(0.7, 2.5) * self.w / 192
            self.objects.append([-ow if left else self.w, rng.uniform(0, self.h - oh), speed if left else -speed,
                                 rng.uniform(-0.3, 0.3), ow, oh, float(rng.choice([30.0, 230.0]))])
        frame = self.bg.copy()
        alive = []
        for o in self.objects:
            o[0] += o[2]
            o[1] = min(max(o[1] + o[3], 0.0), self.h - o[5])
            x0, y0 = int(round(o[0])), int(round(o[1]))
            if x0 + o[4] <= 0 or x0 >= self.w:
                continue
            alive.append(o)
            frame[y0:y0 + o[5], max(x0, 0):max(x0 + o[4], 0)] = o[6]
        self.objects = alive
        noise = rng.integers(-2, 3, size=frame.shape)
        frame = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        if not self.gray:
            frame = np.repeat(frame[:, :, None], 3, axis=2)
        return frame, len(alive)
