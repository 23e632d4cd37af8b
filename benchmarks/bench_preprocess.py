"""The onnx stage's frame preprocessing (gray + true area resize to the model input), per frame size, against the
running-sum integrals it used before for every non-integer factor (still its path to large inputs), in the same run.

    python benchmarks/bench_preprocess.py [--video ../shared/data/video/vtest.avi] [--repeats 5]
    python benchmarks/bench_preprocess.py --input 640x640 --color rgb     # a detection model's input: running sums

Frames: the first 16 of the video, cropped or resized (OpenCV) to each size; random frames without a video. Each
size is timed as `frames_to_tensor` of 16 frames to the model input (default 128x96 gray, the example camera
model's), fastest of `--repeats`; both must agree within 2e-4 of 255.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.inference import preprocess  # noqa: E402

SIZES = [(231, 308), (480, 640), (480, 854), (576, 768), (720, 1280), (1080, 1920)]   # (h, w); 576x768: 6x, integer


def previous_tensor(frames, height: int, width: int, color: str) -> np.ndarray:
    """The previous path: resize every channel (integer factors: block sums), then the color, then / 255 (NCHW)."""
    out = []
    for f in frames:                                   # frames this large were converted one at a time
        st = f[None]
        h, w = st.shape[1:3]
        if h % height == 0 and w % width == 0:
            small = preprocess.resize_stack(st, height, width, "area")
        else:
            small = preprocess._integral_area_resize(st, height, width)   # what every factor took before
        out.append(np.moveaxis(preprocess.to_color(small, color, "bgr")[0], 2, 0) / np.float32(255))
    return np.stack(out)


def frames_for(size, video: Path | None, rng) -> list[np.ndarray]:
    h, w = size
    if video is not None and video.exists():
        import cv2
        cap = cv2.VideoCapture(str(video))
        src = [cap.read()[1] for _ in range(16)]
        if h <= src[0].shape[0] and w <= src[0].shape[1]:
            return [np.ascontiguousarray(f[:h, :w]) for f in src]
        return [cv2.resize(f, (w, h)) for f in src]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(16)]


def fastest(fn, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "vtest.avi")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--input", default="96x128", help="the model input, HxW (default: the camera model's 96x128)")
    ap.add_argument("--color", default="gray", choices=["gray", "rgb", "bgr"])
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    height, width = (int(v) for v in a.input.lower().split("x"))
    kw = dict(height=height, width=width, color=a.color, order="bgr", resize="area", scale=1 / 255, mean=None,
              std=None, layout="NCHW", dtype=np.float32)
    print("| frame (w x h) | factor | before µs/frame | now µs/frame | speed-up | max difference (0..255) |")
    print("|---|---|---|---|---|---|")
    for size in SIZES:
        frames = frames_for(size, a.video, rng)
        now = preprocess.frames_to_tensor(frames, **kw)
        before = previous_tensor(frames, height, width, a.color)
        diff = float(np.abs(now - before).max()) * 255
        assert diff < 2e-4, f"{size}: the two disagree by {diff}"
        t_before = fastest(lambda: previous_tensor(frames, height, width, a.color), a.repeats)
        t_now = fastest(lambda: preprocess.frames_to_tensor(frames, **kw), a.repeats)
        factor = f"{size[0] / height:g} x {size[1] / width:g}"
        print(f"| {size[1]} x {size[0]} | {factor} | {1e6 * t_before / 16:,.0f} | {1e6 * t_now / 16:,.0f} | "
              f"{t_before / t_now:.1f}x | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
