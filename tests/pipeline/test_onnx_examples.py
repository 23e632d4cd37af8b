"""The example pipelines that use the example models, run for real from the command line."""

import json

import pytest

from tests.support.cli import ROOT, cli_env, edgesieve
from tests.support.onnx_models import SHARED

PUMP_PIPELINE = ROOT / "examples" / "pump_state" / "pipeline.yaml"


@pytest.mark.slow
def test_pump_state_example_pipeline_runs_on_skab(tmp_path):
    if not (SHARED / "skab" / "valve1").is_dir():
        pytest.skip(f"{SHARED / 'skab' / 'valve1'} is missing (shared data set)")
    run = edgesieve("run", str(PUMP_PIPELINE), cwd=ROOT, env=cli_env(OUT_DIR=str(tmp_path)))
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in (tmp_path / "pump_state.ndjson").read_text().splitlines()]
    assert len(rows) == 18_160 - 16 * 59                         # every reading once its 60 s window is full
    states = {r["tags"]["state"] for r in rows}
    assert states <= {"normal", "inlet_valve_closed", "outlet_valve_closed", "other_fault"} and "normal" in states
    assert {r["tags"]["model_version"] for r in rows} == {"pump_state@9ae6ea96eecd"}
    anomalous = [r for r in rows if r["fields"]["anomaly"] == 1]
    hit = sum(r["tags"]["state"] != "normal" for r in anomalous) / len(anomalous)
    assert hit > 0.5                                             # the valve experiments are mostly seen in training


def test_a_tampered_pin_stops_the_run_with_exit_1(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(PUMP_PIPELINE.read_text().replace("sha256: 9ae6", "sha256: 0ae6").replace(
        "../shared/data/skab/valve1", str(tmp_path)))
    run = edgesieve("run", str(bad), cwd=ROOT, env=cli_env(OUT_DIR=str(tmp_path)))
    assert run.returncode == 1
    assert "stage 'state' (onnx): model examples/models/pump_state.onnx has sha256 9ae6" in run.stderr


def test_camera_example_pipeline_counts_people_on_frames(monkeypatch):
    import numpy as np

    from pipeline import load_pipeline

    monkeypatch.chdir(ROOT)
    pipe = load_pipeline(ROOT / "examples" / "camera_people" / "pipeline.yaml")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (576, 768, 3), dtype=np.uint8) for _ in range(3)]
    out = pipe.run_records([{"ts": i / 10, "frame": f} for i, f in enumerate(frames)])["counts"]
    assert len(out) == 3 and all(r["fields"]["people"] >= 0 for r in out)
    assert out[0]["occupancy"].shape == (6, 8) and out[0]["tags"]["model_version"].startswith("camera_counter@")
