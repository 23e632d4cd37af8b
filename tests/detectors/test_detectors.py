"""Every detector behind the Detector protocol: [0, 1] scores, warm-up, split and restart invariance."""
import numpy as np
import pytest

from detectors.base import DETECTORS, Detector, make_detector

SMALL = {  # parameters that keep the test quick
    "hst": dict(n_trees=5, height=5, window_size=64, seed=1),
    "river_hst": dict(n_trees=5, height=5, window_size=64, seed=1),
    "mad": dict(window=64, refresh=8, min_samples=32),
    "loda": dict(n_random_cuts=10, grace_period=50),
    "one_class_svm": dict(grace_period=50),
    "sad": dict(grace_period=30),
    "gaussian": dict(grace_period=50),
    "pad": dict(grace_period=50),
    "residual": dict(calibration_samples=64),
}


def _stream(n=700, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal([20.0, 1.0, 300.0], [0.5, 0.05, 5.0], size=(n, 3))
    X[600:610] = [35.0, 2.0, 400.0]  # a burst of anomalies late in the stream
    return X


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_scores_in_unit_interval_and_anomaly_ranks_high(name):
    det = make_detector(name, ["t", "p", "f"], SMALL[name])
    assert isinstance(det, Detector)
    X = _stream()
    s, warm = det.score_learn_many(X)
    assert s.shape == warm.shape == (len(X),)
    assert ((0 <= s) & (s <= 1)).all()
    assert warm[0] and not warm[550]
    assert (s[warm] == 0).all()
    assert s[600] > np.quantile(s[300:600], 0.9)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_batch_split_and_restart_give_identical_scores(name):
    X = _stream(500)
    whole, wwarm = make_detector(name, ["t", "p", "f"], SMALL[name]).score_learn_many(X, protect=0.6)
    a = make_detector(name, ["t", "p", "f"], SMALL[name])
    parts = [a.score_learn_many(X[i:j], protect=0.6)[0] for i, j in [(0, 1), (1, 2), (2, 7), (7, 140), (140, 141), (141, 260)]]
    b = make_detector(name, ["t", "p", "f"], SMALL[name])
    b.restore(a.snapshot())  # restart mid-stream
    parts.append(b.score_learn_many(X[260:], protect=0.6)[0])
    assert np.array_equal(np.concatenate(parts), whole)


def test_protect_keeps_a_stuck_anomaly_visible():
    X = np.concatenate([_stream(500)[:500], np.tile([[35.0, 2.0, 400.0]], (300, 1))])
    taught = make_detector("mad", ["t", "p", "f"], SMALL["mad"]).score_learn_many(X)[0]
    protected = make_detector("mad", ["t", "p", "f"], SMALL["mad"]).score_learn_many(X, protect=0.5)[0]
    assert taught[-1] < 0.5 < protected[-1]


def test_unknown_detector_lists_choices():
    with pytest.raises(ValueError, match="choose one of"):
        make_detector("nope", ["x"])


def test_mad_smoothing_is_a_trailing_moving_average():
    import pandas as pd
    from detectors.native import MADDetector

    X = np.random.default_rng(3).normal(size=(50, 2))
    det = MADDetector(["a", "b"], smooth=4)
    got = np.vstack([det._smoothed(X[i:j]) for i, j in [(0, 1), (1, 3), (3, 50)]])
    expected = pd.DataFrame(X).rolling(4, min_periods=1).mean().to_numpy()
    assert np.allclose(got, expected, rtol=0, atol=1e-12)
