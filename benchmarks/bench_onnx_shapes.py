"""onnxruntime's memory pattern (``enable_mem_pattern``) and batch sizes that vary from call to call, as the onnx
stage sees them behind frame_diff: the camera model in two sessions that differ only in that option, in the same
run, interleaved round by round (this machine is shared: compare the columns, not the µs).

    python benchmarks/bench_onnx_shapes.py [--rounds 8]

Per round and session: a steady batch of 1 (64 calls), a steady batch of 16 (16 calls), and "a burst after single
frames": 30 calls at batch 1, then one call at batch 15 (the burst a scene change puts in one micro-batch), timed
alone. Median µs per frame over the rounds; the burst also in the first two rounds (the first calls of each
session at that size: with the pattern on, onnxruntime plans memory per input shape), and those as ratios to
the steady batch 16. Then, in fresh sessions (memory pattern off, as the onnx stage opens them), the same burst
after 30 single frames with and without one call at batch 16 right after loading (the onnx stage's warm-up at load,
``warm_up``): without it the burst is the first call that needs the larger buffers.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CAMERA = ROOT / "examples" / "models" / "camera_counter.onnx"


def session(mem_pattern: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.enable_mem_pattern = mem_pattern
    return ort.InferenceSession(str(CAMERA), opts, providers=["CPUExecutionProvider"])


def per_frame(run, x, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        run(x)
    return (time.perf_counter() - start) / (calls * len(x)) * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8, help="at least 3")
    args = ap.parse_args(argv)
    args.rounds = max(3, args.rounds)
    rng = np.random.default_rng(0)
    sessions = {"memory pattern on (onnxruntime's default)": session(True), "off (the onnx stage)": session(False)}
    name = next(iter(sessions.values())).get_inputs()[0].name
    x = {n: rng.random((n, 1, 96, 128), dtype=np.float32) for n in (1, 15, 16)}
    got = {label: {"batch 1": [], "batch 16": [], "burst of 15 after 30 x 1": []} for label in sessions}
    for s in sessions.values():
        s.run(None, {name: x[16]})                               # the first call of each session, untimed
    for _ in range(args.rounds):
        for label, s in sessions.items():
            def run(v, s=s):
                s.run(None, {name: v})
            got[label]["batch 1"].append(per_frame(run, x[1], 64))
            got[label]["batch 16"].append(per_frame(run, x[16], 16))
            for _ in range(30):
                run(x[1])
            got[label]["burst of 15 after 30 x 1"].append(per_frame(run, x[15], 1))
    steady16 = float(np.median(got["off (the onnx stage)"]["batch 16"]))
    fresh = {False: [], True: []}
    for _ in range(args.rounds):
        for warm in (False, True):
            s = session(False)
            if warm:
                s.run(None, {name: np.zeros((16, 1, 96, 128), np.float32)})
            for _ in range(30):
                s.run(None, {name: x[1]})
            fresh[warm].append(per_frame(lambda v, s=s: s.run(None, {name: v}), x[15], 1))
    print("| session | batch 1 µs/frame | batch 16 µs/frame | burst of 15 after 30 x 1: 1st, 2nd round "
          "| later rounds (median) | 1st, 2nd / batch 16 |")
    print("|---|---|---|---|---|---|")
    for label, cols in got.items():
        med = {k: float(np.median(v)) for k, v in cols.items()}
        burst = cols["burst of 15 after 30 x 1"]
        print(f"| {label} | {med['batch 1']:.0f} | {med['batch 16']:.0f} | {burst[0]:.0f}, {burst[1]:.0f} "
              f"| {np.median(burst[2:]):.0f} | {burst[0] / med['batch 16']:.2f}x, {burst[1] / med['batch 16']:.2f}x |")
    print()
    print("| fresh session (memory pattern off) | burst of 15 after 30 x 1, µs/frame (median) | / steady batch 16 |")
    print("|---|---|---|")
    for warm, label in ((False, "no warm-up"), (True, "one call at batch 16 after loading")):
        med = float(np.median(fresh[warm]))
        print(f"| {label} | {med:.0f} | {med / steady16:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
