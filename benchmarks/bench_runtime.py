"""Runtime benchmark: replay -> filter -> 10 s tumbling window (6 aggregates x 3 fields) -> file sink,
against a hand-written pandas/numpy script computing the same aggregates from the same file, in the same run.

    python benchmarks/bench_runtime.py [--readings 1000000] [--devices 1000] [--repeat 3]

Each side runs in a fresh child process (timed from after its imports); the best of --repeat runs is reported,
with peak RSS, and the aggregates of both are compared value by value.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"
FIELDS = ("temperature", "pressure", "vibration")
AGGS = ("mean", "min", "max", "stddev", "p95", "last")

PIPELINE = """\
pipeline: bench
sources:
  - {{id: readings, type: replay, path: {csv}, tags: [site, device], chunk_size: 50000}}
stages:
  - {{id: valid, type: filter, inputs: [readings], where: "temperature > 0"}}
  - id: per_device
    type: window
    inputs: [valid]
    size: 10s
    key: [site, device]
    aggregates: {{temperature: {aggs}, pressure: {aggs}, vibration: {aggs}}}
sinks:
  - {{id: out, type: file, inputs: [per_device], path: {out}, truncate: true}}
runtime:
  batching: {{max_records: 50000}}
  dead_letter: null
"""

RUN_PIPELINE = """
import json, resource, sys, time
from pipeline import load_pipeline
p = load_pipeline(sys.argv[1])
t0 = time.perf_counter()
summary = p.run()
seconds = time.perf_counter() - t0
assert summary.error is None, summary.error
print(json.dumps({"seconds": seconds, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""

RUN_BASELINE = textwrap.dedent("""
import json, resource, sys, time
import numpy as np, pandas as pd
csv, out = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
df = pd.read_csv(csv, dtype={"site": str, "device": str})
df = df[df["temperature"] > 0]
df["window"] = np.floor(df["ts"] / 10.0) * 10.0
df = df.sort_values(["window", "site", "device", "ts"], kind="stable")
g = df.groupby(["window", "site", "device"], sort=False)
parts = [g.size().rename("count")]
for f in ("temperature", "pressure", "vibration"):
    col = g[f]
    parts += [col.mean().rename(f + "_mean"), col.min().rename(f + "_min"), col.max().rename(f + "_max"),
              col.std(ddof=0).rename(f + "_stddev"), col.quantile(0.95).rename(f + "_p95"), col.last().rename(f + "_last")]
res = pd.concat(parts, axis=1).reset_index()
res.to_json(out, orient="records", lines=True, double_precision=15)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
""")


def make_readings(path: Path, readings: int, devices: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    per = readings // devices
    ts = 1_767_225_600 + np.repeat(np.arange(per), devices) + rng.uniform(0, 0.9, per * devices)
    dev = np.tile(np.arange(devices), per)
    temp = rng.normal(60, 8, per * devices)
    temp[rng.random(per * devices) < 0.02] = -1.0  # 2 % sensor faults, removed by the filter
    import pandas as pd

    pd.DataFrame({
        "ts": np.round(ts, 3), "site": "plant1", "device": np.char.add("dev", dev.astype(str)),
        "temperature": np.round(temp, 3), "pressure": np.round(rng.normal(2, 0.1, per * devices), 4),
        "vibration": np.round(np.abs(rng.normal(0.3, 0.05, per * devices)), 4),
    }).to_csv(path, index=False)


def child(code: str, *args: str) -> dict:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=WORK)
    if out.returncode:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(pipeline_out: Path, baseline_out: Path) -> tuple[int, float]:
    """Number of windows and the largest relative difference between the two outputs."""
    ours = {}
    for line in pipeline_out.read_text().splitlines():
        r = json.loads(line)
        ours[(r["ts"], r["tags"]["device"])] = r["fields"]
    worst = 0.0
    n = 0
    for line in baseline_out.read_text().splitlines():
        r = json.loads(line)
        mine = ours.pop((float(r["window"]), r["device"]))
        for key, value in r.items():
            if key in ("window", "site", "device"):
                continue
            if key == "count":
                assert mine["count"] == value
                continue
            worst = max(worst, abs(mine[key] - value) / max(abs(value), 1e-12))
        n += 1
    assert not ours, f"{len(ours)} windows only in the pipeline's output"
    return n, worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--readings", type=int, default=1_000_000)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    csv = WORK / f"readings_{args.readings}_{args.devices}.csv"
    if not csv.exists():
        make_readings(csv, args.readings, args.devices)
    pipe_file = WORK / "bench_runtime.yaml"
    pipe_file.write_text(PIPELINE.format(csv=csv, out=WORK / "pipeline_out.ndjson", aggs=json.dumps(list(AGGS))))
    best = {"pipeline": None, "baseline": None}
    for _ in range(args.repeat):
        for name, run in (("baseline", lambda: child(RUN_BASELINE, str(csv), str(WORK / "baseline_out.ndjson"))),
                          ("pipeline", lambda: child(RUN_PIPELINE, str(pipe_file)))):
            r = run()
            if best[name] is None or r["seconds"] < best[name]["seconds"]:
                best[name] = r
    windows, worst = compare(WORK / "pipeline_out.ndjson", WORK / "baseline_out.ndjson")
    n = args.readings
    p, b = best["pipeline"], best["baseline"]
    print(f"readings: {n:,} from {args.devices:,} devices; windows out: {windows:,}; best of {args.repeat}")
    print("| run | seconds | readings/s | peak RSS |")
    print("|---|---|---|---|")
    print(f"| edgesieve pipeline | {p['seconds']:.2f} | {n / p['seconds']:,.0f} | {p['maxrss_kb'] / 1024:,.0f} MiB |")
    print(f"| hand-written pandas | {b['seconds']:.2f} | {n / b['seconds']:,.0f} | {b['maxrss_kb'] / 1024:,.0f} MiB |")
    print(f"pipeline speed / hand-written speed: {b['seconds'] / p['seconds']:.2f}")
    print(f"aggregates: {windows:,} windows, counts identical, largest relative difference {worst:.1e}")


if __name__ == "__main__":
    main()
