"""Scenes and metrics for ``bench_redundancy.py``: real video, a held-out view, and an edited clip made honestly.

* ``vtest``: ``vtest.avi`` as a camera delivers it (768x576 BGR, 10 fps, a busy square);
* ``right view``: a 308x231 window of the right 40% of the same video (the part the example camera
  model was not trained on), as a second fixed camera would see it;
* ``edited``: five 160-frame stretches cut from the video: a held still frame with sensor noise
  (quiet), normal motion, a held frame under a lighting change (gain 1 -> 0.6 -> 1), normal motion
  with camera shake (up to 3 px per frame), and a held frame with noise again.

Metrics on the model's per-frame count, compared with the model run on every frame: ``lenient`` =
``1 - |a - b| / max(a, b)`` on rounded counts (1 when both are 0), ``strict`` = rounded counts equal.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

RIGHT = (slice(345, 576), slice(460, 768))
FPS = 10.0


def decode(path: Path, limit: int | None = None) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while limit is None or len(frames) < limit:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    if not frames:
        raise SystemExit(f"could not decode any frame from {path}")
    return np.stack(frames)


def edited(video: np.ndarray, seed: int = 0, part: int = 160) -> np.ndarray:
    """The edited clip (see module docstring); seeded sensor noise, shake and lighting."""
    rng = np.random.default_rng(seed)
    n = len(video)
    start = [0, n // 5, 2 * n // 5, 3 * n // 5, 4 * n // 5]
    out = np.empty((5 * part,) + video.shape[1:], np.uint8)

    def noisy(frame, gain=1.0):
        f = frame.astype(np.float32) * gain + rng.normal(0, 2.5, frame.shape).astype(np.float32)
        return np.clip(f, 0, 255).astype(np.uint8)

    for k in range(part):
        out[k] = noisy(video[start[0]])                                          # quiet
        out[part + k] = video[min(start[1] + k, n - 1)]                           # normal
        gain = 1.0 - 0.4 * min(k, part - k) / (part / 2)                          # lighting 1 -> 0.6 -> 1
        out[2 * part + k] = noisy(video[start[2]], gain)
        dy, dx = rng.integers(-3, 4, 2)                                           # camera shake
        out[3 * part + k] = np.roll(video[min(start[3] + k, n - 1)], (int(dy), int(dx)), axis=(0, 1))
        out[4 * part + k] = noisy(video[start[4]])                                # quiet again
    return out


def walkers(video: np.ndarray, seed: int, n: int = 400) -> np.ndarray:
    """A synthetic fixed camera (gray, 288x384) no rule was developed on: person sprites cut by the camera model's
    training teacher from the right part of the video (the sprites the model was not trained on) walk slowly
    across a generated background (0.2-1.5 px per frame, pausing now and then), with sensor noise."""
    import cv2

    models = str(Path(__file__).resolve().parents[1] / "examples" / "models")
    if models not in sys.path:
        sys.path.insert(0, models)
    from camera_scenes import Scenes, teacher, textures

    rng = np.random.default_rng(seed)
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in video[::2]])
    blobs, masks, tight, bg = teacher(gray)
    sprites = Scenes(gray, blobs, masks, tight, bg, int(gray.shape[2] * 0.6), rng).sprites["held"]
    back = textures(rng, 1, "tiles" if seed % 2 else "clutter")[0].astype(np.float32)
    people = []
    for _ in range(int(rng.integers(2, 6))):
        patch, alpha = sprites[int(rng.integers(len(sprites)))]
        h = int(rng.uniform(50, 110))
        w = max(2, int(round(patch.shape[1] * h / patch.shape[0])))
        p = cv2.resize(patch.astype(np.float32), (w, h)) * rng.uniform(0.8, 1.2)
        a = cv2.resize(alpha.astype(np.float32), (w, h))
        speed = rng.uniform(0.2, 1.5) * rng.choice([-1, 1])
        x0 = rng.uniform(-w, 384) if rng.random() < 0.5 else (-w if speed > 0 else 384.0)
        people.append({"p": p, "a": a, "y": int(rng.integers(0, 288 - h)), "x": x0, "v": speed,
                       "start": int(rng.integers(0, n // 2)), "pause": 0})
    out = np.empty((n, 288, 384), np.uint8)
    for t in range(n):
        canvas = back.copy()
        for q in people:
            if t < q["start"]:
                continue
            if q["pause"] > 0:
                q["pause"] -= 1
            else:
                q["x"] += q["v"]
                if rng.random() < 0.01:
                    q["pause"] = int(rng.integers(10, 60))
            h, w = q["a"].shape
            x = int(round(q["x"]))
            lo, hi = max(0, x), min(384, x + w)
            if hi <= lo:
                continue
            region = canvas[q["y"]:q["y"] + h, lo:hi]
            a, p = q["a"][:, lo - x:hi - x], q["p"][:, lo - x:hi - x]
            region[:] = region * (1 - a) + p * a
        out[t] = np.clip(canvas + rng.normal(0, 2.5, canvas.shape), 0, 255).astype(np.uint8)
    return out


def scenes(video: np.ndarray):
    """(name, frames) one at a time (each is up to 1 GB of BGR frames)."""
    yield "vtest", video
    yield "right view", np.ascontiguousarray(video[:, RIGHT[0], RIGHT[1]])
    yield "edited", edited(video)


def lenient(used: np.ndarray, ref: np.ndarray) -> float:
    a, b = np.round(used), np.round(ref)
    m = np.maximum(np.abs(a), np.abs(b))
    return float(np.where(m == 0, 1.0, 1.0 - np.abs(a - b) / np.maximum(m, 1)).mean())


def strict(used: np.ndarray, ref: np.ndarray) -> float:
    return float((np.round(used) == np.round(ref)).mean())


METRICS = {"lenient": lenient, "strict": strict}


def every_nth(ref: np.ndarray, skip: float, phases: int = 8) -> dict:
    """Both metrics of 'process every N-th frame, reuse in between' at skip rate ``skip`` (fractional N,
    averaged over ``phases`` phases)."""
    n = len(ref)
    got = {m: [] for m in METRICS}
    for ph in np.arange(phases) / phases:
        k = np.floor(np.arange(n) * (1 - skip) + ph)
        proc = np.r_[True, np.diff(k) > 0]
        idx = np.maximum.accumulate(np.where(proc, np.arange(n), 0))
        for m, fn in METRICS.items():
            got[m].append(fn(ref[idx], ref))
    return {m: float(np.mean(v)) for m, v in got.items()}
