"""Count people in ../shared/data/video/vtest.avi with the camera example pipeline.

    python examples/camera_people/count_people.py [--video PATH] [--frames N]

Decoding the video needs opencv-python-headless (a development dependency); the pipeline itself
needs only onnxruntime + numpy. Prints the count per second of video and the stage's throughput.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pipeline import load_pipeline  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=ROOT.parent / "shared" / "data" / "video" / "vtest.avi")
    ap.add_argument("--frames", type=int, default=795)
    args = ap.parse_args(argv)
    import cv2

    cap = cv2.VideoCapture(str(args.video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    frames = []
    while len(frames) < args.frames:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    if not frames:
        print(f"no frames decoded from {args.video}", file=sys.stderr)
        return 1
    pipe = load_pipeline(Path(__file__).with_name("pipeline.yaml"))
    records = [{"ts": i / fps, "tags": {"camera": "vtest"}, "frame": f} for i, f in enumerate(frames)]
    start = time.perf_counter()
    out = pipe.run_records(records, batch_size=16)["counts"]
    took = time.perf_counter() - start
    per_second: dict[int, list[float]] = {}
    for r in out:
        per_second.setdefault(int(r["ts"]), []).append(r["fields"]["people"])
    for sec, counts in sorted(per_second.items()):
        print(f"t={sec:3d}s  people ~ {sum(counts) / len(counts):4.1f}")
    print(f"{len(out)} frames in {took:.2f}s ({len(out) / took:.0f} frames/s incl. 768x576 -> 128x96 preprocessing), "
          f"model {out[0]['tags']['model_version']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
