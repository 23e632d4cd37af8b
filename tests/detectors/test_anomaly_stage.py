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
        "sad": {"grace_period": 30}, "gaussian": {"grace_period": 50}, "pad": {"grace_period": 50},
        "residual": {"calibration_samples": 64}}


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
    if stage is None:  # these tests exercise the stage around a detector: `mad` unless they name one
        stage, dead = build_stage(Anomaly, {"fields": ["t", "p"], "detector": "mad", **options}, clock=clock or FakeClock(0))
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
    {"detector": "residual", "params": FAST["residual"], "season": "1m", "adapt": "20s", "bad_values": "impute_last",
     "clear_after": 3},
])
def test_restart_mid_stream_gives_identical_output(options):
    recs = readings(500, spike_at=range(300, 320))
    recs[410]["fields"]["t"] = float("nan")
    whole, _ = run(options, recs, batch_size=500)
    first, stage = run(options, recs[:613], batch_size=29)
    state = roundtrip(stage.snapshot())
    fresh, _ = build_stage(Anomaly, {"fields": ["t", "p"], "detector": "mad", **options}, clock=FakeClock(0))
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
    stage, dead = build_stage(Anomaly, {"fields": ["t", "p"], "detector": "mad", "params": FAST["mad"]},
                              item_id="pump_anomaly")
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
    stage, _ = build_stage(Anomaly, {"fields": ["t", "p"], "detector": "mad", "params": FAST["mad"], "idle_spill": "10m"},
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
    restarted, _ = build_stage(Anomaly, {"fields": ["t", "p"], "detector": "mad", "params": FAST["mad"],
                                         "idle_spill": "10m"},
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
        build_stage(Anomaly, {"fields": ["t"], "detector": "mad", "params": {"windw": 5}})


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


def test_residual_options_in_a_pipeline_file_and_their_errors():
    spec = parse_pipeline("""
pipeline: calibrated
sources:
  - {id: readings, type: replay, path: none.csv}
stages:
  - id: detect
    type: anomaly
    inputs: [readings]
    fields: [t, p]
    alert_rate: 1e-3
    season: 1m
    adapt: 30
sinks:
  - {id: out, type: stdout, inputs: [detect]}
""")
    recs = readings(1200, spike_at=(1000,))
    out = [r for r in Pipeline(spec).run_records(recs, batch_size=50)["out"] if "event" not in r]
    flagged = {(r["tags"]["device"], r["ts"]) for r in out if r["fields"]["is_anomaly"]}
    assert {("a", 2000.0), ("b", 2000.0)} <= flagged  # each device's own spike, at 1 - 1e-3
    assert len(flagged) <= 2 + 2 * 1200 * 3e-3  # and about the alert rate of normal readings besides
    with pytest.raises(Exception, match="season apply to detector 'residual' only"):
        build_stage(Anomaly, {"fields": ["t"], "detector": "mad", "season": "1d"})
    with pytest.raises(Exception, match="not both"):
        build_stage(Anomaly, {"fields": ["t"], "threshold": 0.9, "alert_rate": 1e-3})


def test_default_threshold_follows_the_detector():
    assert build_stage(Anomaly, {"fields": ["t"]})[0].threshold == 1 - 1e-4
    assert build_stage(Anomaly, {"fields": ["t"], "alert_rate": 1e-3})[0].threshold == 1 - 1e-3
    assert build_stage(Anomaly, {"fields": ["t"], "detector": "mad"})[0].threshold == 0.8


def test_a_micro_batch_of_bad_readings_only_is_one_dead_letter_each_and_no_error():
    """Before, the bank's imputation indexed an empty batch: an IndexError, the reading dead-lettered a second time
    with a traceback reason, and with `on_error: stop` one NaN reading stopped the pipeline (found in review)."""
    from pipeline import load_pipeline
    p = load_pipeline("""
pipeline: p
sources: [{id: r, type: replay, path: /dev/null, tags: [device]}]
stages: [{id: detect, type: anomaly, inputs: [r], fields: [t], on_error: stop}]
sinks: [{id: out, type: stdout, inputs: [detect]}]
runtime: {dead_letter: null}
""")
    p.run_records([{"ts": 1.0 + i, "tags": {"device": "p1"}, "fields": {"t": 20.0}} for i in range(3)])
    p.run_records([{"ts": 10.0, "tags": {"device": "p1"}, "fields": {"t": float("nan")}},
                   {"ts": 10.0, "tags": {"device": "p2"}, "fields": {}}])
    assert len(p.dead_letters.records) == 2
    assert not any("IndexError" in d["reason"] for d in p.dead_letters.records)


IMPUTE_RNG = np.random.default_rng(3)
IMPUTE_RECS = [{"ts": float(i), "tags": {"device": "p1"}, "fields": {"a": float(20 + IMPUTE_RNG.normal()),
                                                                    "b": float(5 + IMPUTE_RNG.normal())}}
               for i in range(300)]
IMPUTE_RECS += [{"ts": 300.0, "tags": {"device": "p1"}, "fields": {"a": 40.0}},       # b missing
                {"ts": 301.0, "tags": {"device": "p1"}, "fields": {"b": 5.0}}]        # a missing: imputed 40


@pytest.mark.parametrize("detector,params", [("residual", {"calibration_samples": 64, "min_samples": 16}),
                                             ("mad", {"window": 64, "min_samples": 16})])
@pytest.mark.parametrize("cuts", [[301], [300], [150, 301], [1, 2, 300, 301]])
def test_impute_last_fills_alike_for_any_batching_and_across_a_restart(detector, params, cuts):
    """A good cell of a partly bad reading is the field's last value for the next batch too, and for a restart;
    before, it was within a batch only (residual: the episode went on or ended by how the stream was cut)."""
    opts = {"fields": ["a", "b"], "detector": detector, "params": params, "bad_values": "impute_last"}

    def run(cuts, restart: bool):
        st, _ = build_stage(Anomaly, opts)
        out, prev = [], 0
        for c in [*cuts, len(IMPUTE_RECS)]:
            out += st.process(Batch.from_records(IMPUTE_RECS[prev:c])).to_records()
            prev = c
            if restart:                                  # checkpoint and restore at every cut
                again, _ = build_stage(Anomaly, opts)
                again.restore_entries(st.snapshot_changes().entries)
                st = again
        return [(r["ts"], r.get("event"), r["fields"].get("anomaly_score"), r["fields"].get("is_anomaly"))
                for r in out]
    whole = run([], False)
    assert run(cuts, False) == whole and run(cuts, True) == whole
