"""The cross-key engine of `residual` (`ResidualBank`, `KeyBank`) against the per-key reference
(`ResidualDetector` fed key by key, and the stage's per-key path): the same floats for any batching."""
import numpy as np
import pytest

from detectors.anomaly import Anomaly
from detectors.residual import ResidualDetector
from detectors.residual_bank import ResidualBank
from pipeline.batch import Batch
from pipeline.statefiles import roundtrip
from pipeline.testing import FakeClock, build_stage

OPTIONS = [
    {},
    {"adapt": 10},
    {"adapt": 20.0},
    {"adapt": None},
    {"season": 100.0, "season_bins": 10},
    {"season": 100.0, "season_bins": 10, "adapt": 15.0, "alpha": 0.2, "refresh": 16},
    {"trend_rate": None},
    {"trend_rate": None, "adapt": 20.0, "season": 100.0, "season_bins": 10},
    {"trend_rate": 0.1, "adapt": None},
]


def stream(n_keys, n_rows, seed):
    """Interleaved readings of `n_keys` keys at their own levels and noise, quantised, with a level shift
    (the run adapts) and a short fault on every key, and about 5% rows not learned.  Every third key starts
    with a run of one value (the warm-up waits for a change), key 0 with one longer than that wait; every
    fourth key gets stuck for 25 readings."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(n_keys, size=n_keys * n_rows)
    X = 20 + rng.normal(0, 1, size=(len(keys), 2)) * rng.uniform(0.1, 3, size=(n_keys, 1))[keys]
    X = np.round(X, 2)
    ts = np.cumsum(rng.exponential(1.0, size=len(keys)))
    for k in range(n_keys):
        idx = np.flatnonzero(keys == k)
        X[idx[len(idx) // 2:], 0] += 8
        X[idx[len(idx) // 3: len(idx) // 3 + 5], 1] += 30
        if k % 3 == 0:
            X[idx[:(300 if k == 0 else 40 + 10 * k)]] = 20.0
        if k % 4 == 1:  # stuck at its last reading for a while (the stuck channel alerts, then adapts)
            X[idx[2 * len(idx) // 3: 2 * len(idx) // 3 + 25]] = X[idx[2 * len(idx) // 3 - 1]]
    learn = rng.random(len(keys)) > 0.05
    cuts = np.sort(rng.choice(np.arange(1, len(keys)), size=len(keys) // 37, replace=False))
    return keys, X, ts, learn, list(zip(np.r_[0, cuts], np.r_[cuts, len(keys)]))


def same_state(got: dict, want: dict) -> bool:
    for name, v in want.items():
        g = got[name]
        if isinstance(v, dict) or isinstance(g, dict):
            if (v is None) != (g is None) or (v is not None and not same_state(g, v)):
                return False
        elif name != "fields" and not np.array_equal(np.asarray(g), np.asarray(v)):
            return False
    return True


@pytest.mark.parametrize("options", OPTIONS)
def test_bank_gives_the_scores_and_state_of_residual_fed_key_by_key(options):
    params = {"calibration_samples": 64, **options}
    n_keys = 12
    keys, X, ts, learn, batches = stream(n_keys, 500, seed=len(str(options)))
    refs = [ResidualDetector(["a", "b"], **params) for _ in range(n_keys)]
    bank = ResidualBank(ResidualDetector(["a", "b"], **params), capacity=4)
    bank.grow(n_keys)
    got = np.zeros(len(keys)), np.zeros(len(keys), dtype=bool)
    want = np.zeros(len(keys)), np.zeros(len(keys), dtype=bool)
    for a, b in batches:
        got[0][a:b], got[1][a:b] = bank.score_learn(keys[a:b], X[a:b], ts[a:b], learn[a:b])
        for k in np.unique(keys[a:b]).tolist():
            rows = a + np.flatnonzero(keys[a:b] == k)
            want[0][rows], want[1][rows] = refs[k].score_learn_many(X[rows], None, learn[rows], ts=ts[rows])
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])  # bit-equal
    assert 0.3 < (~want[1]).mean() < 0.95  # past the warm-up for most rows: the calibrated scores are compared
    assert all(same_state(bank.export(k), refs[k].state()) for k in range(n_keys))
    twin = ResidualBank(ResidualDetector(["a", "b"], **params))  # export/load: a key's state moves intact
    twin.grow(1)
    twin.load(0, bank.export(3))
    assert same_state(twin.export(0), refs[3].state())


def readings(n, devices, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        for j, d in enumerate(devices):
            t = 20 + 3 * j + rng.normal(0, 0.3) + (6 if 300 <= i < 330 and j % 2 else 0) + (4 if i >= 450 else 0)
            out.append({"ts": 1000.0 + i + 0.01 * j, "tags": {"device": d}, "fields": {"t": t, "p": rng.normal(1, .02)}})
    for i in rng.choice(len(out), size=len(out) // 50, replace=False).tolist():
        out[i]["fields"]["t"] = float("nan") if i % 2 else "broken"
    return out


def run(stage, records, sizes):
    out, i, k = [], 0, 0
    while i < len(records):
        out.append(stage.process(Batch.from_records(records[i:i + sizes[k % len(sizes)]])))
        i += sizes[k % len(sizes)]
        k += 1
    return Batch.concat(out).to_records()


STAGE_OPTIONS = [
    {"bad_values": "impute_last", "alert_after": 2, "clear_after": 3, "alert_rate": 1e-2},
    {"bad_values": "skip", "season": "1m", "adapt": "20s", "alert_rate": 1e-2},
    {"bad_values": "dead_letter", "clear_after": 2, "threshold": 0.95, "adapt": 25},
    {"bad_values": "skip", "adapt": 25, "alert_rate": 1e-2, "params": {"calibration_samples": 64, "trend_rate": None}},
]


def per_key_stage(config):
    stage, _ = build_stage(Anomaly, config, clock=FakeClock(0))
    stage.bank, stage.models = None, {}  # the per-key path (what the other detectors use)
    return stage


@pytest.mark.parametrize("options", STAGE_OPTIONS)
@pytest.mark.parametrize("sizes", [[61], [1, 7, 300, 2], [4200]])
def test_stage_gives_the_records_of_its_per_key_path_for_any_batching(options, sizes):
    config = {"fields": ["t", "p"], "params": {"calibration_samples": 64}, **options}
    recs = readings(600, [f"d{i}" for i in range(7)], seed=len(options))
    want = run(per_key_stage(config), recs, sizes)
    assert sum(r["fields"]["is_anomaly"] for r in want if "event" not in r) > 10
    assert any(r.get("event") == "anomaly_end" for r in want)
    stage, _ = build_stage(Anomaly, config, clock=FakeClock(0))
    assert stage.bank is not None
    assert run(stage, recs, sizes) == want


def test_residual_scores_do_not_depend_on_the_batching_when_a_run_adapts():
    config = {"fields": ["t", "p"], "params": {"calibration_samples": 64}, "adapt": 25, "alert_rate": 1e-2}
    recs = readings(600, [f"d{i}" for i in range(7)], seed=3)
    assert run(per_key_stage(config), recs, [61]) == run(per_key_stage(config), recs, [4200])


def test_a_checkpoint_of_the_per_key_path_restores_into_the_bank():
    config = {"fields": ["t", "p"], "params": {"calibration_samples": 64}, "bad_values": "impute_last",
              "clear_after": 2, "alert_rate": 1e-2}
    recs = readings(500, ["a", "b", "c"], seed=3)
    whole = per_key_stage(config)  # the same batches, no restart
    want = run(whole, recs[:907], [50]) + run(whole, recs[907:], [33])
    old = per_key_stage(config)  # writes KeyState entries holding a ResidualDetector, as before the bank
    first = run(old, recs[:907], [50])
    state = roundtrip(old.snapshot())
    fresh, _ = build_stage(Anomaly, config, clock=FakeClock(0))
    fresh.restore(state)
    assert fresh.bank is not None and len(fresh.models) == 3
    assert first + run(fresh, recs[907:], [33]) == want


def test_bank_state_per_key_is_small():
    stage, _ = build_stage(Anomaly, {"fields": ["temperature", "pressure", "vibration"]}, clock=FakeClock(0))
    assert stage.bank.bytes_per_key <= 20_000


def test_idle_keys_spill_from_the_bank_come_back_and_checkpoints_write_only_changed_keys(tmp_path):
    config = {"fields": ["t", "p"], "params": {"calibration_samples": 64}, "clear_after": 2, "alert_rate": 1e-2,
              "bad_values": "impute_last", "idle_spill": "10m"}
    recs = readings(400, ["a", "b", "c"], seed=5)
    want = run(per_key_stage({**config, "idle_spill": None}), recs, [40])
    clock = FakeClock(0)
    stage, _ = build_stage(Anomaly, config, clock=clock, state_dir=tmp_path)
    out = run(stage, recs[:600], [40])
    clock.advance(3600)
    stage.tick(clock())
    assert stage.models == {} and len(list((tmp_path / "anomaly" / "under_test").glob("*.state"))) == 3
    snap = roundtrip(stage.snapshot())
    rest = run(stage, recs[600:], [40])
    assert out + rest == want and len(stage.models) == 3
    stage.snapshot_changes()
    stage.state_saved()
    stage.process(Batch.from_records([dict(recs[-3], ts=recs[-1]["ts"] + 1)]))  # one reading of one key
    assert list(stage.snapshot_changes().entries) == [(recs[-3]["tags"]["device"],)]
    restarted, _ = build_stage(Anomaly, config, clock=clock, state_dir=tmp_path / "other")
    restarted.restore(snap)
    assert run(restarted, recs[600:], [40]) == want[len(out):]


@pytest.mark.parametrize("options", OPTIONS[:3] + OPTIONS[5:])
def test_residual_detector_gives_the_same_scores_and_state_for_any_batching(options):
    params = {"calibration_samples": 64, **options}
    keys, X, ts, learn, batches = stream(1, 3000, seed=7)
    whole = ResidualDetector(["a", "b"], **params)
    want = whole.score_learn_many(X, None, learn, ts=ts)
    for sizes in ([1], [3, 40, 7], [29]):
        det, got, pos, k = ResidualDetector(["a", "b"], **params), ([], []), 0, 0
        while pos < len(X):
            b = min(len(X), pos + sizes[k % len(sizes)])
            s, w = det.score_learn_many(X[pos:b], None, learn[pos:b], ts=ts[pos:b])
            got[0].append(s), got[1].append(w)
            pos, k = b, k + 1
        assert np.array_equal(np.concatenate(got[0]), want[0]) and np.array_equal(np.concatenate(got[1]), want[1])
        assert same_state(det.state(), whole.state())
