"""Checkpoint cost of the `window` stage with a long window open: what arrived since vs the whole buffer.

    python benchmarks/bench_window_state.py [--devices 1000] [--minutes 20] [--repeat 5]

One `window` stage (1 h tumbling, 3 fields, mean and p95: percentiles keep every reading until the window
closes) has buffered `--minutes` of 1 Hz readings from `--devices` devices. Then, per round, one more second
of readings arrives and one checkpoint is written to the SQLite state store (`synchronous=FULL`). Reported: the
median time of snapshot + save, and the bytes of values written.

The baseline, measured in the same run against a second store, is what the stage wrote before: its whole
state as one entry, rewritten at every checkpoint (what any item without per-key changes still does).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.batch import Batch  # noqa: E402
from pipeline.checkpoint import CheckpointStore  # noqa: E402
from pipeline.stage import WHOLE, StateChanges  # noqa: E402
from pipeline.stages.window import Window  # noqa: E402
from pipeline.testing import FakeClock, build_stage  # noqa: E402

FIELDS = ["temperature", "pressure", "vibration"]
T0 = 1_767_225_600.0  # an hour boundary: the window stays open for the whole run


def second(devices: np.ndarray, rng: np.random.Generator, t: float) -> Batch:
    n = len(devices)
    return Batch(ts=t + rng.uniform(0, 1, n), tags={"device": devices},
                 fields={f: rng.normal(20.0, 1.0, n) for f in FIELDS})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--minutes", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    devices = np.array([f"dev{i:05d}" for i in range(args.devices)], dtype=object)
    options = {"size": "1h", "key": ["device"], "aggregates": {f: ["mean", "p95"] for f in FIELDS}}
    stage, _ = build_stage(Window, options, clock=FakeClock(T0 + 3600))
    t = T0
    for _ in range(args.minutes * 60):
        stage.process(second(devices, rng, t))
        t += 1
    folder = Path(tempfile.mkdtemp(prefix="bench_window_state_"))
    store, whole_store = CheckpointStore(folder / "state.db"), CheckpointStore(folder / "whole.db")
    first = store.save({"readings": 0}, {"stage:w": stage.snapshot_changes()})
    stage.state_saved()

    def incremental() -> tuple[float, int]:
        started = time.perf_counter()
        stats = store.save({"readings": int(t)}, {"stage:w": stage.snapshot_changes()})
        stage.state_saved()
        return time.perf_counter() - started, stats.bytes

    def whole() -> tuple[float, int]:
        started = time.perf_counter()
        stats = whole_store.save({"readings": int(t)}, {"stage:w": StateChanges({WHOLE: stage.snapshot()}, complete=True)})
        return time.perf_counter() - started, stats.bytes

    cases = {"whole state rewritten (baseline)": whole, "incremental entries": incremental}
    results = {name: [] for name in cases}
    for _ in range(args.repeat):  # interleaved: machine noise hits both alike; each after one more second
        stage.process(second(devices, rng, t))
        t += 1
        for name, fn in cases.items():
            results[name].append(fn())
    base = statistics.median(r[0] for r in results["whole state rewritten (baseline)"])
    print(f"window 1h, {args.devices:,} devices at 1 Hz, {stage.open.rows:,} readings buffered "
          f"(first checkpoint: {first.bytes:,} bytes), then 1 s of readings per checkpoint; "
          f"median of {args.repeat}\n")
    print("| case | time per checkpoint | vs baseline | value bytes |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        secs = statistics.median(r[0] for r in rows)
        print(f"| {name} | {secs * 1e3:.1f} ms | {secs / base:.3f} | {statistics.median(r[1] for r in rows):,.0f} |")
    store.close()
    whole_store.close()


if __name__ == "__main__":
    main()
