"""The anomaly stage: per-key models, thresholds, debounce, drift, bad values, restart and spill."""

import numpy as np
import pytest

from detectors.anomaly import Anomaly
from detectors.base import DETECTORS
from pipeline.batch import Batch
from pipeline.loader import parse_pipeline
from pipeline.runtime import Pipeline
from pipeline.statefiles import roundtrip
from pipeline.testing import FakeClock, build_stage

FAST = {"mad": {"window": 64, "refresh": 8, "min_samples": 32, "smooth": 1},
        "hst": {"n_trees": 5, "height": 5, "window_size": 64},
        "river_hst": {"n_trees": 5, "height": 5, "window_size": 64},
        "loda": {"n_random_cuts": 10, "grace_period": 50}, "one_class_svm": {"grace_period": 50},
        "sad": {"grace_period": 30}, "gaussian": {"grace_period": 50}, "pad": {"grace_period": 50}}


def readings(n=400, devices=("a", "b"), seed=0, spike_at=(300,)):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        for d_i, d in enumerate(devices):
            t = 20.0 + 10 * d_i + rng.normal(0, 0.3)  # devices live at different levels
            p = 1.0 + rng.normal(0, 0.02)
            if i in spike_at:
                t += 15
            out.append({"ts": 1000.0 + i, "tags": {"device": d}, "fields": {"t": t, "p": p}})
    return out


def run(options, records, batch_size=37, stage=None, clock=None):
    if stage is None:
        stage, dead = build_stage(Anomaly, {"fields": ["t", "p"], **options}, clock=clock or FakeClock(0))
    out = [stage.process(Batch.from_records(records[i:i + batch_size])) for i in range(0, len(records), batch_size)]
    return Batch.concat(out).to_records(), stage


def test_per_key_models_flag_each_devices_own_spike():
    out, stage = run({"params": FAST["mad"]}, readings())
    assert len(stage.models) == 2
    flagged = [(r["tags"]["device"], r["ts"]) for r in out if r["fields"]["is_anomaly"] and "event" not in r]
    assert flagged == [("a", 1300.0), ("b", 1300.0)]
    assert all(0 <= r["fields"]["anomaly_score"] <= 1 for r in out if "event" not in r)
    assert not any(r["fields"]["is_anomaly"] for r in out if r["fields"]["warming_up"])


@pytest.mark.parametrize("options", [
    {"params": FAST["mad"], "adaptive": 0.99, "threshold": 0.6, "alert_after": 2, "clear_after": 3},
    {"detector": "hst", "params": FAST["hst"], "drift": "page_hinkley", "relearn_on_drift": True},
    {"params": FAST["mad"], "bad_values": "impute_last"},
])
def test_restart_mid_stream_gives_identical_output(options):
    recs = readings(500, spike_at=range(300, 320))
    recs[410]["fields"]["t"] = float("nan")
    whole, _ = run(options, recs, batch_size=500)
    first, stage = run(options, recs[:613], batch_size=29)
    state = roundtrip(stage.snapshot())
    fresh, _ = build_stage(Anomaly, {"fields": ["t", "p"], **options}, clock=FakeClock(0))
    fresh.restore(state)
    rest, _ = run(options, recs[613:], batch_size=71, stage=fresh)
    assert first + rest == whole


def test_debounce_raises_one_alert_with_a_count_for_a_stuck_anomaly():
    recs = readings(400, devices=("a",), spike_at=range(300, 350))
    out, _ = run({"params": FAST["mad"], "clear_after": 5}, recs)
    alerts = [r for r in out if r["fields"].get("anomaly_alert")]
    ends = [r for r in out if r.get("event") == "anomaly_end"]
    assert len(alerts) == 1 and alerts[0]["ts"] == 1300.0
    assert len(ends) == 1 and ends[0]["fields"]["anomaly_count"] == 50.0
    assert ends[0]["tags"] == {"device": "a"} and ends[0]["fields"]["duration_s"] == 54.0


def test_drift_events_name_the_field():
    recs = readings(600, devices=("a",), spike_at=())
    for r in recs[300:]:
        r["fields"]["p"] += 0.5  # a level shift
    out, _ = run({"params": FAST["mad"], "drift": "adwin"}, recs)
    drifts = [r for r in out if r.get("event") == "drift"]
    assert drifts and drifts[0]["drift_field"] == "p" and drifts[0]["ts"] >= 1300.0


def bad_records():
    recs = readings(200, devices=("a",), spike_at=())
    recs[150]["fields"]["t"] = float("nan")
    recs[151]["fields"]["t"] = float("inf")
    recs[152]["fields"]["t"] = "hot"
    del recs[153]["fields"]["p"]
    return recs


def test_bad_values_dead_letter_names_stage_and_field():
    stage, dead = build_stage(Anomaly, {"fields": ["t", "p"], "params": FAST["mad"]}, item_id="pump_anomaly")
    out = stage.process(Batch.from_records(bad_records())).to_records()
    assert len(out) == 196
    reasons = [r for _, _, rs in dead for r in rs]
    assert reasons == ["anomaly 'pump_anomaly': field 't' is nan, not a finite number (device='a')",
                       "anomaly 'pump_anomaly': field 't' is inf, not a finite number (device='a')",
                       "anomaly 'pump_anomaly': field 't' is 'hot', not a finite number (device='a')",
                       "anomaly 'pump_anomaly': field 'p' is missing, not a finite number (device='a')"]
    assert stage.ctx.metrics.get("pump_anomaly", "bad_values") == 4


def test_bad_values_skip_passes_records_unscored_and_unlearned():
    recs = bad_records()
    out, stage = run({"params": FAST["mad"], "bad_values": "skip"}, recs)
    clean, _ = run({"params": FAST["mad"]}, [r for i, r in enumerate(recs) if i not in range(150, 154)])
    assert len(out) == 200
    assert all("anomaly_score" not in out[i]["fields"] for i in range(150, 154))
    assert [r["fields"]["anomaly_score"] for i, r in enumerate(out) if i not in range(150, 154)] == \
        [r["fields"]["anomaly_score"] for r in clean]  # never learned


def test_bad_values_impute_last_scores_with_previous_value_without_learning():
    recs = bad_records()
    out, _ = run({"params": FAST["mad"], "bad_values": "impute_last"}, recs)
    assert len(out) == 200 and all("anomaly_score" in r["fields"] for r in out)
    clean, _ = run({"params": FAST["mad"]}, [r for i, r in enumerate(recs) if i not in range(150, 154)])
    after = [r["fields"]["anomaly_score"] for r in out[154:]]
    assert after == [r["fields"]["anomaly_score"] for r in clean[150:]]  # imputed rows were not learned


def test_idle_keys_spill_to_state_dir_and_come_back(tmp_path):
    clock = FakeClock(0)
    stage, _ = build_stage(Anomaly, {"fields": ["t", "p"], "params": FAST["mad"], "idle_spill": "10m"},
                           clock=clock, state_dir=tmp_path)
    recs = readings(300)
    reference, _ = run({"params": FAST["mad"]}, recs)
    out = [stage.process(Batch.from_records(recs[:400]))]
    clock.advance(3600)
    stage.tick(clock())
    assert stage.models == {} and len(list((tmp_path / "anomaly" / "under_test").glob("*.state"))) == 2
    snap = roundtrip(stage.snapshot())
    out.append(stage.process(Batch.from_records(recs[400:])))
    assert Batch.concat(out).to_records() == reference
    assert len(stage.models) == 2 and not list((tmp_path / "anomaly" / "under_test").glob("*.state"))
    restarted, _ = build_stage(Anomaly, {"fields": ["t", "p"], "params": FAST["mad"], "idle_spill": "10m"},
                               clock=clock, state_dir=tmp_path / "other")
    restarted.restore(snap)
    assert restarted.process(Batch.from_records(recs[400:])).to_records() == reference[400:]


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_runs_in_a_pipeline_file(name):
    import json
    spec = parse_pipeline(f"""
pipeline: anomaly_{name}
sources:
  - {{id: readings, type: replay, path: none.csv}}
stages:
  - id: detect
    type: anomaly
    inputs: [readings]
    fields: [t, p]
    detector: {name}
    params: {json.dumps(FAST[name])}
sinks:
  - {{id: out, type: stdout, inputs: [detect]}}
""")
    out = [r for r in Pipeline(spec).run_records(readings(200), batch_size=50)["out"] if "event" not in r]
    assert len(out) == 400 and {"anomaly_score", "is_anomaly", "warming_up"} <= set(out[-1]["fields"])


def test_bad_params_are_a_config_error_naming_the_detector():
    with pytest.raises(Exception, match="params for detector 'mad' are invalid.*window"):
        build_stage(Anomaly, {"fields": ["t"], "params": {"windw": 5}})


def test_adaptive_threshold_follows_each_keys_own_score_level():
    from detectors.keystate import AdaptiveThreshold

    rng = np.random.default_rng(1)
    quiet, noisy = AdaptiveThreshold(0.3, 0.99), AdaptiveThreshold(0.3, 0.99)
    warm = np.zeros(2000, dtype=bool)
    quiet.flags(rng.uniform(0.0, 0.2, 2000), warm)
    noisy.flags(rng.uniform(0.0, 0.7, 2000), warm)
    assert quiet.current == 0.3  # never below the floor
    assert 0.6 < noisy.current < 0.7  # about the 99th percentile of that key's normal scores
    assert noisy.flags(np.array([0.65, 0.9]), np.zeros(2, bool)).tolist() == [False, True]
