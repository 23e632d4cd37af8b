"""A pipeline with the anomaly stage, killed mid-stream and restarted from its checkpoint, writes exactly
the records (scores, flags, events) of an uninterrupted run."""

import json
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import load_pipeline
from tests.support.cli import edgesieve, start_edgesieve

PIPELINE = """\
pipeline: anomaly_restart
sources:
  - {{id: readings, type: replay, path: {csv}, tags: [device], speed: {speed}, chunk_size: 250}}
stages:
  - id: detect
    type: anomaly
    inputs: [readings]
    fields: [t, p]
    detector: {detector}
    params: {params}
    clear_after: 3
    drift: {drift}
    bad_values: impute_last
sinks:
  - {{id: out, type: file, inputs: [detect], path: {out}}}
runtime:
  checkpoint: {{path: {checkpoint}, interval: 0.2s}}
  dead_letter: {dead}
  state_dir: {state}
"""


@pytest.fixture
def readings(tmp_path: Path) -> Path:
    rng = np.random.default_rng(11)
    n = 6000
    path = tmp_path / "readings.csv"
    with path.open("w") as fh:
        fh.write("ts,device,t,p\n")
        for i in range(n):
            d = rng.integers(4)
            t = rng.normal(20 + 5 * d, 0.5) + (12 if 3000 <= i < 3060 else 0)  # a stuck fault mid-stream
            fh.write(f"{1_700_000_000 + i * 0.1:.3f},d{d},{t:.4f},{rng.normal(1, .05):.4f}\n")
    return path


def write_pipeline(tmp_path: Path, name: str, csv: Path, speed, detector: str, params: str,
                   drift: str = "page_hinkley") -> Path:
    out = tmp_path / name
    out.mkdir()
    path = out / "pipeline.yaml"
    path.write_text(PIPELINE.format(csv=csv, speed=speed, out=out / "scored.ndjson", checkpoint=out / "state.db",
                                    dead=out / "dead.ndjson", state=out / "state", detector=detector, params=params,
                                    drift=drift))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("detector,params,drift", [
    ("residual", "{calibration_samples: 64}", "page_hinkley"),  # key by key (drift)
    ("residual", "{calibration_samples: 64}", "none"),  # all keys at once (the bank)
    ("mad", "{}", "page_hinkley"), ("hst", "{n_trees: 5, height: 6, window_size: 100}", "page_hinkley")])
def test_anomaly_stage_restart_gives_exactly_the_uninterrupted_output(tmp_path, readings, detector, params, drift):
    ref = write_pipeline(tmp_path, "reference", readings, "max", detector, params, drift)
    assert load_pipeline(ref).run().error is None
    expected = (ref.parent / "scored.ndjson").read_bytes()
    records = [json.loads(line) for line in expected.splitlines()]
    assert sum(bool(r["fields"].get("is_anomaly")) for r in records) >= 10  # the stuck fault is flagged
    assert any(r.get("event") == "anomaly_end" for r in records)

    path = write_pipeline(tmp_path, "interrupted", readings, 60, detector, params, drift)  # 600 s of events at 60x: 10 s
    proc = start_edgesieve("run", str(path), cwd=path.parent)
    out = path.parent / "scored.ndjson"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:  # wait for real progress and a checkpoint
        if out.exists() and out.read_bytes().count(b"\n") >= 1500 and (path.parent / "state.db").exists():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    partial = out.read_bytes()
    assert 0 < partial.count(b"\n") < expected.count(b"\n"), "the run was not stopped mid-stream"
    rerun = edgesieve("run", str(path), cwd=path.parent)
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes() == expected


MANY_KEYS = """\
pipeline: anomaly_many_keys
sources:
  - {{id: readings, type: replay, path: {csv}, tags: [device], speed: {speed}, chunk_size: 400}}
stages:
  - {{id: detect, type: anomaly, inputs: [readings], fields: [t], detector: {detector}, params: {params},
     idle_spill: 1s}}
sinks:
  - {{id: out, type: file, inputs: [detect], path: {out}}}
runtime:
  checkpoint: {{path: {checkpoint}, interval: 0.3s}}
  state_dir: {state}
"""


@pytest.mark.slow
@pytest.mark.parametrize("detector,params", [("mad", "{window: 64, refresh: 8, min_samples: 16}"),
                                             ("residual", "{calibration_samples: 64, min_samples: 16}")])
def test_many_keys_killed_mid_stream_and_restarted_give_the_uninterrupted_output(tmp_path, detector, params):
    """500 devices, models spilled when idle, checkpoints that write only the devices that changed: a kill -9
    mid-stream and a restart give byte for byte the output of an uninterrupted run."""
    rng = np.random.default_rng(21)
    csv = tmp_path / "many.csv"
    n = 20_000
    device = np.where(np.arange(n) < n // 2, rng.integers(0, 500, n), rng.integers(0, 60, n))  # later: a few keys
    t = rng.normal(20, 1, n) + np.where(rng.random(n) < 0.002, 40, 0)
    csv.write_text("ts,device,t\n" + "".join(f"{1_700_000_000 + i * 0.03:.3f},d{d},{v:.4f}\n"
                                            for i, (d, v) in enumerate(zip(device, t))))

    def pipeline(name, speed):
        out = tmp_path / name
        out.mkdir()
        path = out / "pipeline.yaml"
        path.write_text(MANY_KEYS.format(csv=csv, speed=speed, out=out / "scored.ndjson", checkpoint=out / "state.db",
                                         state=out / "state", detector=detector, params=params))
        return path

    ref = pipeline("reference", "max")
    assert load_pipeline(ref).run().error is None
    expected = (ref.parent / "scored.ndjson").read_bytes()
    path = pipeline("interrupted", 60)  # 600 s of events at 60x: about 10 s
    proc = start_edgesieve("run", str(path), cwd=path.parent)
    out = path.parent / "scored.ndjson"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 12_000:  # past the many-key half, into the few-key one
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert 0 < out.read_bytes().count(b"\n") < expected.count(b"\n"), "the run was not stopped mid-stream"
    rows = sqlite3.connect(path.parent / "state.db").execute(
        "SELECT count(*) FROM entries WHERE item='stage:detect'").fetchone()[0]
    assert rows == 500  # one row per device model
    rerun = edgesieve("run", str(path), cwd=path.parent)
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_bytes() == expected
