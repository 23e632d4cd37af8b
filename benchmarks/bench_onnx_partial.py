"""The onnx stage's time for a micro-batch of 16 frames of which k are computed and the rest reused (marked by
frame_diff), the camera model, for k = 16, 8, 4, 2, 1, 0: is there a fixed cost per call that a partly reused batch
pays in full?

    python benchmarks/bench_onnx_partial.py [--size 576x768] [--batches 40]

Random BGR frames of the given size (h x w), one key, 40 batches per k after one untimed batch.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import load_pipeline  # noqa: E402
from pipeline.batch import Batch  # noqa: E402

CAMERA = ROOT / "examples" / "models" / "camera_counter.onnx"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="576x768", help="frame size, HxW (576x768: vtest; 231x308: the right view)")
    ap.add_argument("--batches", type=int, default=40)
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.lower().split("x"))
    spec = json.dumps({"pipeline": "partial", "sources": [{"id": "cams", "type": "replay", "path": "x.csv"}],
                       "stages": [{"id": "count", "type": "onnx", "inputs": ["cams"], "model": str(CAMERA),
                                   "feeds": {"frame": {"source": "frame"}},
                                   "outputs": {"count": {"decode": "regression", "field": "people"},
                                               "occupancy": {"decode": "raw"}},
                                   "reuse": {"agreement": "count", "confidence": "rounding"}}],
                       "sinks": [{"id": "out", "type": "stdout", "inputs": ["count"]}]}) + "\n"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(64)]
    stage = load_pipeline(spec).graph.stages["count"]

    def batch(k: int, offset: int) -> Batch:
        b = Batch.from_records([{"ts": float(i), "tags": {"device": "cam"}, "frame": frames[(offset + i) % 64]}
                                for i in range(16)])
        reused = np.array([i >= k for i in range(16)], dtype=object)
        why = np.array(["changed" if i < k else "reuse" for i in range(16)], dtype=object)
        return Batch(b.ts, b.tags, b.fields, b.frames, {**b.extra, "reused": reused, "reuse_reason": why,
                                                        "diff_by": np.array(["diff"] * 16, dtype=object)}, b.arrival)

    print(f"| computed of 16 ({w}x{h} frames) | µs per batch | µs per computed frame |")
    print("|---|---|---|")
    for k in (16, 8, 4, 2, 1, 0):
        batches = [batch(k, j) for j in range(a.batches)]
        stage.process(batches[0])
        t0 = time.perf_counter()
        for b in batches:
            stage.process(b)
        per = (time.perf_counter() - t0) / len(batches)
        print(f"| {k} | {1e6 * per:,.0f} | {1e6 * per / k:,.0f} |" if k else f"| 0 | {1e6 * per:,.0f} | - |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
