"""Native Half-Space Trees give river's scores, to the bit, across window boundaries."""
import pickle

import numpy as np
import pytest
from river import anomaly

from detectors import HalfSpaceTrees


def _river_scores(X, names, **params):
    model = anomaly.HalfSpaceTrees(**params)
    out = []
    for row in X:
        x = dict(zip(names, row.tolist()))
        out.append(model.score_one(x))
        model.learn_one(x)
    return np.array(out, dtype=float)


def _data(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.random((n, d))
    X[rng.random(n) < 0.02] += 0.8  # a few outliers, some outside the limits
    return X


@pytest.mark.parametrize(
    "params",
    [
        dict(n_trees=10, height=8, window_size=250, seed=42),
        dict(n_trees=5, height=3, window_size=37, seed=7),
        dict(n_trees=3, height=0, window_size=10, seed=1),
        dict(n_trees=4, height=6, window_size=100, seed=3,
             limits={"a": (-1.0, 2.0), "c": (0.0, 5.0)}),
    ],
)
def test_score_learn_many_equals_river(params):
    names = ["b", "a", "c"]
    X = _data(2000, 3, seed=params["seed"])
    expected = _river_scores(X, names, **params)
    ours = HalfSpaceTrees(**params)
    got = np.concatenate([ours.score_learn_many(X[i:i + 173], features=names)
                          for i in range(0, len(X), 173)])  # chunks that straddle boundaries
    assert np.abs(got - expected).max() <= 1e-9
    assert np.array_equal(got, expected)  # integer masses: in fact bit-identical
    if params["height"]:  # a single leaf always holds the whole window: score 0
        assert (got[params["window_size"]:] > 0).any()


def test_dict_api_equals_river_with_missing_features():
    params = dict(n_trees=6, height=5, window_size=50, seed=11)
    rng = np.random.default_rng(0)
    river_model, ours = anomaly.HalfSpaceTrees(**params), HalfSpaceTrees(**params)
    for i in range(600):
        x = {"u": float(rng.random()), "v": float(rng.random())}
        if i > 5 and i % 7 == 0:
            del x["v"]  # sparse rows take river's "most visited child" route
        assert ours.score_one(x) == pytest.approx(river_model.score_one(x), abs=1e-12)
        river_model.learn_one(x)
        ours.learn_one(x)


def test_snapshot_restore_mid_window_continues_identically():
    params = dict(n_trees=5, height=4, window_size=64, seed=5)
    X = _data(1000, 2, seed=9)
    whole = HalfSpaceTrees(**params).score_learn_many(X)
    first = HalfSpaceTrees(**params)
    a = first.score_learn_many(X[:333])
    state = pickle.loads(pickle.dumps(first.snapshot()))
    b = HalfSpaceTrees.from_snapshot(state).score_learn_many(X[333:])
    assert np.array_equal(np.concatenate([a, b]), whole)


def test_memory_is_small_arrays():
    hst = HalfSpaceTrees(n_trees=10, height=8, window_size=250, seed=1)
    hst.learn_many(np.random.default_rng(0).random((10, 4)))
    assert hst.nbytes < 50_000


def test_bad_shape_is_explained():
    hst = HalfSpaceTrees(seed=1)
    hst.learn_many(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="3 columns"):
        hst.score_learn_many(np.zeros((2, 3)))


def test_bulk_random_draws_match_python_random():
    import random

    from detectors.hst_build import _randoms

    a, b = random.Random(123), random.Random(123)
    assert _randoms(a, 1000).tolist() == [b.random() for _ in range(1000)]
    assert a.random() == b.random()  # the generator is left in the same state
