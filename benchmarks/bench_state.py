"""Checkpoint cost of the `anomaly` stage with many device models: what changed vs everything, in one run.

    python benchmarks/bench_state.py [--keys 5000] [--detector mad] [--repeat 5]

One `anomaly` stage learns `--keys` devices (one model each). Then, per round, a micro-batch reaches
1% of the devices (or all of them) and one checkpoint is written to the SQLite state store, as the runtime
writes it (`snapshot_changes`, one transaction, `synchronous=FULL`). Reported per case: the median time of
snapshot + save, the bytes of values written, and the bytes written to files (`wchar` of
/proc/self/io: database pages, WAL frames).

The baseline, measured in the same run, is what checkpoints cost before (and what any whole-state format
costs): every model encoded and the whole file rewritten atomically (temporary file, fsync, rename).
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

from detectors.anomaly import Anomaly  # noqa: E402
from pipeline.batch import Batch  # noqa: E402
from pipeline.checkpoint import CheckpointStore  # noqa: E402
from pipeline.statefiles import pack, write_private  # noqa: E402
from pipeline.testing import FakeClock, build_stage  # noqa: E402

FIELDS = ["temperature", "pressure", "vibration"]


def readings(devices: list[str], rng: np.random.Generator, t0: float) -> Batch:
    n = len(devices)
    return Batch(ts=t0 + np.arange(n, dtype=np.float64) * 1e-3,
                 tags={"device": np.array(devices, dtype=object)},
                 fields={f: rng.normal(20.0, 1.0, n) for f in FIELDS})


def written() -> int:
    """Bytes this process has handed to write()/pwrite() so far (Linux /proc/self/io `wchar`)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--detector", default="mad")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    devices = [f"dev{i:05d}" for i in range(args.keys)]
    folder = Path(tempfile.mkdtemp(prefix="bench_state_"))
    stage, _ = build_stage(Anomaly, {"fields": FIELDS, "detector": args.detector}, clock=FakeClock(0),
                           state_dir=folder)
    t = 0.0
    for _ in range(80):  # every model past its warm-up
        stage.process(readings(devices, rng, t))
        t += 10
    store = CheckpointStore(folder / "state.db")
    store.save({"readings": 0}, {"stage:detect": stage.snapshot_changes()})  # the first checkpoint: every key
    stage.state_saved()

    def incremental(share: float) -> tuple[float, int, int]:
        nonlocal t
        touched = [devices[i] for i in rng.choice(len(devices), max(1, int(len(devices) * share)), replace=False)]
        stage.process(readings(sorted(touched), rng, t))
        t += 10
        before = written()
        started = time.perf_counter()
        stats = store.save({"readings": int(t)}, {"stage:detect": stage.snapshot_changes()})
        stage.state_saved()
        return time.perf_counter() - started, stats.bytes, written() - before

    def whole_file() -> tuple[float, int, int]:
        nonlocal t
        stage.process(readings(devices[:max(1, len(devices) // 100)], rng, t))
        t += 10
        before = written()
        started = time.perf_counter()
        blob = pack({"sources": {"readings": int(t)}, "stages": {"detect": stage.snapshot()}})
        write_private(folder / "whole.state", blob)
        return time.perf_counter() - started, len(blob), written() - before

    cases = {"whole state rewritten (baseline), 1% changed": whole_file,
             "incremental store, 1% of keys changed": lambda: incremental(0.01),
             "incremental store, all keys changed": lambda: incremental(1.0)}
    results = {name: [] for name in cases}
    for _ in range(args.repeat):  # interleaved, so that machine noise hits every case alike
        for name, fn in cases.items():
            results[name].append(fn())
    base = statistics.median(r[0] for r in results["whole state rewritten (baseline), 1% changed"])
    print(f"{args.keys} keys, detector {args.detector}, median of {args.repeat} checkpoints each\n")
    print("| case | time per checkpoint | vs baseline | value bytes | bytes written to files |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        secs = statistics.median(r[0] for r in rows)
        print(f"| {name} | {secs * 1e3:.1f} ms | {secs / base:.3f} | {statistics.median(r[1] for r in rows):,.0f} | "
              f"{statistics.median(r[2] for r in rows):,.0f} |")
    store.close()


if __name__ == "__main__":
    main()
