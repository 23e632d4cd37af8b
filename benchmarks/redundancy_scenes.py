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
