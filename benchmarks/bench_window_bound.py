"""Cost of the `window` stage's `max_open_windows` bound: reached, and over it, against a bound never reached.

    nice python benchmarks/bench_window_bound.py [--devices 2000] [--seconds 90] [--batch 1000] [--repeat 3]
                                                 [--against /path/to/another/checkout]

`--devices` devices send one reading a second for `--seconds` seconds (3% of them up to 3 s late in arrival);
they reach one `window` stage (30 s windows every 10 s, `allowed_lateness` 2 s, mean/max/p95) in micro-batches
of `--batch` readings. Buffered: ~150,000 rows; open: up to ~8,000 windows. Three cases, each a fresh stage over
the whole stream, timed on `process` only:

* never reached: the default `max_open_windows` (100,000);
* reached, nothing forced: the limit is the most windows open after any single reading (computed here), so the
  count reaches it and never goes over;
* over the bound: 80% of that: thousands of windows are forced out early.

Reported: the median total time of each case and its ratio to "never reached" of the same code. `--against`
loads the `pipeline` package of another checkout (e.g. `git worktree add /tmp/main main`) as a second package
and times it in the same run, rounds interleaved, so both codes' ratios see the same machine.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.keys import RunningMax  # noqa: E402

T0 = 1_767_225_600.0
SIZE, HOP, LATENESS = 30.0, 10.0, 2.0
OPTIONS = {"size": "30s", "hop": "10s", "key": ["device"], "allowed_lateness": "2s",
           "aggregates": {"t": ["mean", "max", "p95"]}}


def load(tree: Path | None, alias: str):
    """(Window, Batch, build_stage, FakeClock) of this checkout, or of ``tree`` loaded as package ``alias``."""
    name = "pipeline"
    if tree is not None:
        spec = importlib.util.spec_from_file_location(alias, tree / "pipeline" / "__init__.py",
                                                      submodule_search_locations=[str(tree / "pipeline")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        spec.loader.exec_module(module)
        name = alias
    window = importlib.import_module(f"{name}.stages.window")
    testing = importlib.import_module(f"{name}.testing")
    return window.Window, importlib.import_module(f"{name}.batch").Batch, testing.build_stage, testing.FakeClock


def stream(devices: int, seconds: int, seed: int = 0):
    """(ts, device index) in arrival order."""
    rng = np.random.default_rng(seed)
    dev = np.tile(np.arange(devices), seconds)
    ts = T0 + np.repeat(np.arange(seconds, dtype=float), devices) + rng.uniform(0, 1, len(dev))
    delay = np.where(rng.random(len(dev)) < 0.03, rng.uniform(0, 3, len(dev)), 0.05)
    order = np.argsort(ts + delay, kind="stable")
    return ts[order], dev[order]


def peak_open(ts: np.ndarray, dev: np.ndarray) -> int:
    """The most windows open after any single reading, with no bound (a window opens at its first on-time reading
    and closes at the first reading of its device whose event time minus the lateness reaches its end)."""
    run = RunningMax(ts - LATENESS, dev, np.full(dev.max() + 1, -np.inf))
    copies = int(np.ceil(SIZE / HOP))
    first = np.floor(ts / HOP) * HOP
    rows = np.concatenate([np.flatnonzero(first - j * HOP + SIZE > ts) for j in range(copies)])
    start = np.concatenate([(first - j * HOP)[first - j * HOP + SIZE > ts] for j in range(copies)])
    on_time = start + SIZE > run.before[rows]
    rows, start = rows[on_time], start[on_time]
    order = np.lexsort((rows, start, dev[rows]))
    d, s, r = dev[rows][order], start[order], rows[order]
    head = np.ones(len(d), dtype=bool)
    head[1:] = (d[1:] != d[:-1]) | (s[1:] != s[:-1])
    opened, d, s = r[head], d[head], s[head]
    pos = run.first_reaching(d, s + SIZE)
    closed = run.order[pos[pos >= 0]]
    n = len(ts)
    count = np.cumsum(np.bincount(opened, minlength=n) - np.bincount(closed, minlength=n))
    return int(count.max())


def run_case(impl, batches, limit: int) -> tuple[float, int, int]:
    Window, _, build_stage, FakeClock = impl
    stage, _ = build_stage(Window, {**OPTIONS, "max_open_windows": limit}, clock=FakeClock(T0 + 3600))
    started = time.perf_counter()
    for b in batches:
        stage.process(b)
    took = time.perf_counter() - started
    metrics = stage.ctx.metrics
    return took, metrics.get("under_test", "windows_forced"), metrics.get("under_test", "late")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=90)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", type=Path, help="another checkout whose window stage is timed in the same run")
    args = ap.parse_args()
    import logging
    logging.getLogger("edgesieve").setLevel(logging.ERROR)     # the forced-close warnings are not the benchmark
    ts, dev = stream(args.devices, args.seconds)
    peak = peak_open(ts, dev)
    cases = {"never reached (default 100,000)": 100_000, f"reached, nothing forced ({peak:,})": peak,
             f"over the bound ({int(peak * 0.8):,})": int(peak * 0.8)}
    impls = {"this checkout": load(None, "pipeline")}
    if args.against is not None:
        impls[f"--against {args.against}"] = load(args.against.resolve(), "pipeline_against")
    names = np.array([f"dev{i:05d}" for i in range(args.devices)], dtype=object)
    values = np.random.default_rng(1).normal(20.0, 3.0, len(ts))
    batches = {label: [impl[1](ts=ts[i:i + args.batch], tags={"device": names[dev[i:i + args.batch]]},
                               fields={"t": values[i:i + args.batch]}) for i in range(0, len(ts), args.batch)]
               for label, impl in impls.items()}
    results = {(label, case): [] for label in impls for case in cases}
    for label, impl in impls.items():             # warm-up (first calls into numpy and pandas), not timed
        run_case(impl, batches[label][:20], 100_000)
    for _ in range(args.repeat):                  # interleaved: machine noise hits every case alike
        for label, impl in impls.items():
            for case, limit in cases.items():
                results[(label, case)].append(run_case(impl, batches[label], limit))
    print(f"window 30 s every 10 s, {args.devices:,} devices at 1 Hz for {args.seconds} s ({len(ts):,} readings), "
          f"micro-batches of {args.batch:,}; most windows open after one reading: {peak:,}; median of {args.repeat}\n")
    print("| code | case | total process time | vs never reached | windows forced | late |")
    print("|---|---|---|---|---|---|")
    for label in impls:
        base = statistics.median(r[0] for r in results[(label, next(iter(cases)))])
        for case in cases:
            rows = results[(label, case)]
            secs = statistics.median(r[0] for r in rows)
            print(f"| {label} | {case} | {secs * 1e3:.0f} ms | {secs / base:.2f} | {rows[0][1]:,} | {rows[0][2]:,} |")


if __name__ == "__main__":
    main()
