"""Native Half-Space Trees give river's scores, to the bit, across window boundaries."""

import numpy as np
import pytest
from river import anomaly

from detectors import HalfSpaceTrees
from pipeline.statefiles import roundtrip


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
    state = roundtrip(first.snapshot())  # what a checkpoint stores and gives back
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


@pytest.mark.parametrize("height", [1, 2, 5])
def test_small_and_uneven_batches_equal_river(height):
    """Batches of 1 to 100 rows, inside windows, ending on and crossing boundaries, all heights of
    the walk (the root level is decided apart from the others)."""
    params = dict(n_trees=7, height=height, window_size=40, seed=13)
    names = ["x", "y"]
    X = _data(1200, 2, seed=height)
    X[::97, 1] = np.nan  # NaN goes right at every split, as in river
    expected = _river_scores(X, names, **params)
    ours, got, pos = HalfSpaceTrees(**params), [], 0
    for size in np.resize([1, 10, 3, 100, 7, 19, 40, 2, 80], 200):
        got.append(ours.score_learn_many(X[pos:pos + size], features=names))
        pos += size
        if pos >= len(X):
            break
    assert np.array_equal(np.concatenate(got)[:len(X)], expected)


def test_column_order_may_change_between_calls():
    params = dict(n_trees=5, height=4, window_size=30, seed=2)
    names = ["a", "b", "c"]
    X = _data(300, 3, seed=4)
    expected = _river_scores(X, names, **params)
    ours, got = HalfSpaceTrees(**params), []
    for i, order in zip(range(0, 300, 25), [[0, 1, 2], [2, 0, 1], [1, 2, 0], [0, 1, 2]] * 3):
        got.append(ours.score_learn_many(X[i:i + 25][:, order], features=[names[j] for j in order]))
    assert np.array_equal(np.concatenate(got), expected)
    with pytest.raises(ValueError, match="2 feature names for 3 columns"):
        ours.score_learn_many(X[:2], features=["a", "b"])


def test_snapshot_keeps_river_shaped_arrays():
    """Snapshots hold the trees as (trees, internal nodes) and river's per-node reference masses,
    whatever the in-memory layout, and restore from that."""
    params = dict(n_trees=3, height=4, window_size=20, seed=8)
    hst = HalfSpaceTrees(**params)
    hst.learn_many(_data(50, 2, seed=1))
    feat, thr, l_leaf, r_mass = hst.snapshot()["arrays"]
    assert feat.shape == thr.shape == (3, 15) and l_leaf.shape == (3, 16) and r_mass.shape == (3, 31)
    assert (r_mass[:, 0] == 20).all()  # the root saw the whole last window
    assert np.array_equal(r_mass[:, :15], r_mass[:, 1:31:2] + r_mass[:, 2:31:2])
