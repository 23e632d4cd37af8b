"""pipeline.keys: the fast factorize gives exactly what pandas' use_na_sentinel=False gives."""

import random

import numpy as np
import pandas as pd

from pipeline.batch import Batch
from pipeline.keys import _factorize, key_codes


def _column(rng):
    n = rng.randint(0, 12)
    if rng.random() < 0.2:
        return np.array([np.nan if rng.random() < 0.3 else rng.choice([1.0, 2.0]) for _ in range(n)])
    pool = rng.choice([["a", "b", "c", None, float("nan")], ["a", "b"], [None], [1.5, "x", None], [1, 2, None]])
    col = np.empty(n, dtype=object)
    col[:] = [rng.choice(pool) for _ in range(n)]
    return col


def test_factorize_equals_pandas_without_na_sentinel():
    rng = random.Random(7)
    for _ in range(2000):
        col = _column(rng)
        codes, uniques = pd.factorize(col, use_na_sentinel=False)
        got_codes, got_uniques = _factorize(col)
        assert got_codes.tolist() == codes.tolist(), col
        assert got_uniques.dtype == uniques.dtype
        assert [None if pd.isna(u) else u for u in got_uniques] == [None if pd.isna(u) else u for u in uniques], col


def test_key_codes_with_absent_tags():
    b = Batch(np.arange(6.0), tags={"site": np.array(["a", "a", None, "b", None, "a"], dtype=object),
                                     "dev": np.array(["x", None, "y", "x", None, None], dtype=object)})
    codes, keys = key_codes(b, ["site", "dev"])
    assert codes.tolist() == [0, 1, 2, 3, 4, 1]
    assert keys == [("a", "x"), ("a", None), (None, "y"), ("b", "x"), (None, None)]
    codes, keys = key_codes(b, ["dev"])
    assert codes.tolist() == [0, 1, 2, 0, 1, 1] and keys == [("x",), (None,), ("y",)]


def test_factorize_of_key_objects_is_the_same_for_small_and_large_inputs():
    from pipeline.keys import factorize
    rng = random.Random(3)
    pool = ["a", ("b", 1), ("b", 2), None, float("nan"), 7]
    for _ in range(300):
        values = [rng.choice(pool) for _ in range(rng.randint(1, 60))]   # below and above the small-input path
        arr = np.empty(len(values), dtype=object)
        arr[:] = [None] * len(values)
        for i, v in enumerate(values):
            arr[i] = v
        codes, uniques = factorize(values)
        want_codes, want_uniques = pd.factorize(arr, use_na_sentinel=False)
        assert codes.tolist() == want_codes.tolist(), values
        assert [None if u is None or u != u else u for u in uniques] == \
               [None if u is None or u != u else u for u in want_uniques], values
