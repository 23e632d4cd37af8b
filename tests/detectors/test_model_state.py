"""Detector state is data: every detector and drift detector restores to identical behaviour, and the anomaly
stage checkpoints only the keys that changed."""

import numpy as np
import pytest
from river import drift

from detectors.anomaly import Anomaly
from detectors.base import DETECTORS, make_detector
from detectors.state import dump_model, load_model
from pipeline.batch import Batch
from pipeline.statecodec import StateFileError
from pipeline.statefiles import roundtrip
from pipeline.testing import FakeClock, build_stage
from tests.pipeline.test_state import _planted_object

SMALL = {"hst": {"n_trees": 5, "height": 5, "window_size": 40}, "river_hst": {"n_trees": 3, "height": 4, "window_size": 40},
         "loda": {"n_random_cuts": 20, "grace_period": 30}, "one_class_svm": {"grace_period": 30},
         "mad": {"window": 64, "refresh": 8, "min_samples": 16}, "sad": {}, "gaussian": {"grace_period": 30},
         "pad": {"grace_period": 30}}


def _stream(n, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal([20.0, 1.0], [0.5, 0.05], size=(n, 2))
    X[n // 2:n // 2 + 5] += [8.0, 0.5]
    return X


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_restored_from_its_data_scores_identically(name):
    X = _stream(300)
    det = make_detector(name, ["t", "p"], SMALL.get(name, {}))
    det.score_learn_many(X[:170])
    blob = dump_model(det)
    assert not blob.startswith(b"\x80")  # not a pickle
    twin = load_model(blob, "model")
    assert type(twin) is type(det)
    a, wa = det.score_learn_many(X[170:])
    b, wb = twin.score_learn_many(X[170:])
    assert np.array_equal(a, b) and np.array_equal(wa, wb)


@pytest.mark.parametrize("make", [drift.ADWIN, drift.PageHinkley])
def test_drift_detectors_restored_from_their_data_detect_identically(make):
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 1, 600), rng.normal(4, 1, 600)]).tolist()
    det = make()
    for v in values[:500]:
        det.update(v)
    twin = load_model(dump_model(det), "drift")
    seen = []
    for v in values[500:]:
        det.update(v)
        twin.update(v)
        seen.append((det.drift_detected, twin.drift_detected))
    assert all(a == b for a, b in seen) and any(a for a, _ in seen)


def test_a_model_naming_a_river_class_off_the_allow_list_is_refused():
    with pytest.raises(StateFileError, match="river.anomaly.lof:LocalOutlierFactor is not allowed in state"):
        load_model(_planted_object("river.anomaly.lof:LocalOutlierFactor"), "spill/k.state")


def _readings(devices, t0=1000.0):
    return Batch.from_records([{"ts": t0 + i, "tags": {"device": d}, "fields": {"t": 20.0 + i % 5, "p": 1.0}}
                               for i, d in enumerate(devices)])


def test_the_anomaly_stage_checkpoints_only_the_keys_that_saw_readings(tmp_path):
    clock = FakeClock(0)
    stage, _ = build_stage(Anomaly, {"fields": ["t", "p"], "params": SMALL["mad"], "idle_spill": "1h"},
                           clock=clock, state_dir=tmp_path)
    stage.process(_readings([f"d{i}" for i in range(1000)]))
    first = stage.snapshot_changes()
    assert len(first.entries) == 1000 and not first.complete
    stage.state_saved()
    stage.process(_readings(["d1", "d2", "d3"]))
    assert set(stage.snapshot_changes().entries) == {("d1",), ("d2",), ("d3",)}
    # that checkpoint failed to save (no state_saved): the next one carries its keys too
    clock.advance(7200)
    stage.process(_readings(["d4"]))
    stage.tick(clock())  # d1..d3 are idle and spilled; d4 is not
    changes = stage.snapshot_changes()
    assert set(changes.entries) == {("d1",), ("d2",), ("d3",), ("d4",)}
    assert [changes.entries[(d,)]["spilled"] for d in ("d1", "d4")] == [True, False]
    stage.state_saved()
    assert stage.snapshot_changes().entries == {}


def test_an_anomaly_stage_restored_from_incremental_entries_continues_identically(tmp_path):
    devices = [f"d{i % 40}" for i in range(4000)]
    rng = np.random.default_rng(5)
    recs = [{"ts": 1000.0 + i, "tags": {"device": d}, "fields": {"t": float(rng.normal(20, 1)), "p": 1.0}}
            for i, d in enumerate(devices)]
    recs[3500]["fields"]["t"] = 90.0
    config = {"fields": ["t", "p"], "params": SMALL["mad"]}
    whole, _ = build_stage(Anomaly, config, clock=FakeClock(0), state_dir=tmp_path / "a")
    expected = whole.process(Batch.from_records(recs)).to_records()
    stage, _ = build_stage(Anomaly, config, clock=FakeClock(0), state_dir=tmp_path / "b")
    saved: dict = {}
    out = []
    for a in range(0, 3000, 250):  # checkpoint after every micro-batch, keeping only what changed
        out += stage.process(Batch.from_records(recs[a:a + 250])).to_records()
        saved.update({k: roundtrip(v) for k, v in stage.snapshot_changes().entries.items()})
        stage.state_saved()
    restarted, _ = build_stage(Anomaly, config, clock=FakeClock(0), state_dir=tmp_path / "c")
    restarted.restore_entries(saved)
    out += restarted.process(Batch.from_records(recs[3000:])).to_records()
    assert out == expected and any(r["fields"]["is_anomaly"] for r in out[3000:])
