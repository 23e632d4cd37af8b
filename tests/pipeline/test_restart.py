"""A pipeline stopped mid-stream (gracefully or with SIGKILL) and restarted writes exactly what an uninterrupted run writes."""

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import load_pipeline
from tests.support.cli import edgesieve, start_edgesieve

PIPELINE = """\
pipeline: restart
sources:
  - {{id: readings, type: replay, path: {csv}, tags: [device], speed: {speed}, chunk_size: 500}}
stages:
  - {{id: warm, type: filter, inputs: [readings], where: "t > 15"}}
  - id: per_device
    type: window
    inputs: [warm]
    size: 10s
    key: [device]
    aggregates: {{t: [count, mean, p95, last], p: [min, max, stddev]}}
    allowed_lateness: 3s
sinks:
  - {{id: out, type: file, inputs: [per_device], path: {out}}}
runtime:
  checkpoint: {{path: {checkpoint}, interval: 0.2s}}
  dead_letter: {dead}
"""


@pytest.fixture
def readings(tmp_path: Path) -> Path:
    rng = np.random.default_rng(7)
    n = 4000
    ts = 1_700_000_000 + np.sort(rng.uniform(0, 400, n)) + rng.uniform(-2.5, 0, n)
    path = tmp_path / "readings.csv"
    with path.open("w") as fh:
        fh.write("ts,device,t,p\n")
        for i in range(n):
            fh.write(f"{ts[i]:.3f},d{rng.integers(6)},{rng.normal(20, 3):.4f},{rng.normal(1, .1):.4f}\n")
    return path


def write_pipeline(tmp_path: Path, name: str, csv: Path, speed) -> Path:
    out = tmp_path / name
    out.mkdir()
    path = out / "pipeline.yaml"
    path.write_text(PIPELINE.format(csv=csv, speed=speed, out=out / "agg.ndjson", checkpoint=out / "state.db",
                                    dead=out / "dead.ndjson"))
    return path


def uninterrupted(tmp_path: Path, csv: Path) -> bytes:
    path = write_pipeline(tmp_path, "reference", csv, "max")
    summary = load_pipeline(path).run()
    assert summary.error is None
    return (path.parent / "agg.ndjson").read_bytes()




@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_restart_gives_exactly_the_uninterrupted_output(tmp_path, readings, how):
    expected = uninterrupted(tmp_path, readings)
    assert expected.count(b"\n") > 200
    path = write_pipeline(tmp_path, "interrupted", readings, 50)  # 400 s of events at 50x: about 8 s
    proc = start_edgesieve("run", str(path), cwd=path.parent)
    out = path.parent / "agg.ndjson"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # wait for real progress and a checkpoint
        if out.exists() and out.read_bytes().count(b"\n") >= 30 and (path.parent / "state.db").exists():
            break
        time.sleep(0.05)
    proc.send_signal(how)
    proc.wait(timeout=30)
    if how == signal.SIGTERM:
        assert proc.returncode == 0, proc.stderr.read().decode()
    partial = (path.parent / "agg.ndjson").read_bytes()
    assert 0 < partial.count(b"\n") < expected.count(b"\n"), "the run was not stopped mid-stream"
    assert (path.parent / "state.db").exists()
    rerun = edgesieve("run", str(path), cwd=path.parent)
    assert rerun.returncode == 0, rerun.stderr
    assert (path.parent / "agg.ndjson").read_bytes() == expected
