"""RedundancyCache: exact and approximate tiers, agreement, invalidation, bounds, audits, state."""

from pipeline.statefiles import roundtrip

import numpy as np

from cache.redundancy import RedundancyCache, default_feature, shared
from cache.neighbors import NeighborIndex


def img(level, h=24, w=32, seed=None):
    a = np.full((h, w), level, np.float32)
    if seed is not None:
        a += np.random.default_rng(seed).normal(0, 1.0, (h, w))
    return np.clip(a, 0, 255).astype(np.uint8)


def model(xs):
    return [int(np.asarray(x).mean() // 50) for x in xs]     # a "classifier": brightness class


def test_exact_tier_hits_on_identical_bytes_only():
    c = RedundancyCache(model_version="v1", approximate=False)
    out, r = c.run([img(10), img(120)], model)
    assert r.kind.tolist() == ["miss", "miss"] and out.tolist() == [0, 2]
    out, r = c.run([img(120), img(121), img(10)], model)
    assert r.kind.tolist() == ["exact", "miss", "exact"] and out.tolist() == [2, 2, 0]
    assert c.stats()["exact_hits"] == 2 and c.stats()["misses"] == 3
    # same bytes, different shape or dtype: not the same input
    _, r = c.run([img(10).reshape(32, 24), img(10).astype(np.int16)], model)
    assert r.kind.tolist() == ["miss", "miss"]


def test_approximate_hits_only_when_neighbours_agree():
    c = RedundancyCache(min_neighbors=2, k=3, radius=3.0, audit_rate=0.0, adaptive=False)
    c.run([img(100, seed=1), img(100, seed=2)], lambda xs: ["A", "A"])
    _, r = c.run([img(100, seed=3)], model)
    assert r.kind.tolist() == ["approx"] and r.values[0] == "A"
    # around level 200 the two neighbours disagree: no reuse
    c.run([img(200, seed=1), img(200, seed=2)], lambda xs: ["B", "C"])
    _, r = c.run([img(200, seed=3)], lambda xs: ["B"])
    assert r.kind.tolist() == ["miss"]
    # far from everything: miss
    _, r = c.run([img(30, seed=4)], model)
    assert r.kind.tolist() == ["miss"]
    # one neighbour is not enough with min_neighbors=2
    c2 = RedundancyCache(min_neighbors=2, radius=3.0, audit_rate=0.0)
    c2.run([img(100, seed=1)], lambda xs: ["A"])
    assert c2.lookup([img(100, seed=3)]).kind.tolist() == ["miss"]


def test_model_version_change_invalidates():
    c = RedundancyCache(model_version="v1", min_neighbors=1)
    c.run([img(10), img(20)], model)
    assert c.lookup([img(10)]).kind[0] == "exact"
    assert c.set_model_version("v1") is False
    assert c.set_model_version("v2") is True
    assert len(c) == 0 and c.stats()["invalidations"] == 1
    assert c.lookup([img(10)]).kind[0] == "miss"


def test_eviction_bounds_entries_and_bytes_lru():
    c = RedundancyCache(max_entries=3, approximate=False)
    for lvl in (1, 2, 3):
        c.run([img(lvl)], model)
    c.run([img(1)], model)                       # touch 1: 2 is now least recently used
    c.run([img(4)], model)
    assert len(c) == 3 and c.stats()["evictions"] == 1
    assert c.lookup([img(2)]).kind[0] == "miss" and c.lookup([img(1)]).kind[0] == "exact"
    big = RedundancyCache(max_bytes=5000, approximate=False)
    for lvl in range(10):
        big.run([img(lvl)], lambda xs: [np.zeros(200)])   # ~1.7 kB per entry
    assert big.stats()["bytes"] <= 5000 and len(big) == 2


def test_cost_aware_eviction_keeps_expensive_results():
    c = RedundancyCache(max_entries=2, approximate=False, eviction="cost")
    c.run([img(1)], model, cost=100.0)
    c.run([img(2)], model, cost=1.0)
    c.run([img(3)], model, cost=1.0)             # evicts the cheap one, not the expensive one
    assert c.lookup([img(1)]).kind[0] == "exact" and c.lookup([img(2)]).kind[0] == "miss"


def test_ttl_expires_entries():
    c = RedundancyCache(ttl=10.0, approximate=False)
    c.run([img(1)], model, now=0.0)
    assert c.lookup([img(1)], now=5.0).kind[0] == "exact"
    assert c.lookup([img(1)], now=11.0).kind[0] == "miss" and c.stats()["expired"] == 1


def test_audits_count_false_reuses_and_tighten_the_radius():
    # a model that reacts to a 2-gray-level change, far below the cache's radius: approx reuse is wrong
    c = RedundancyCache(min_neighbors=1, radius=8.0, audit_rate=0.5, seed=3, adaptive=True)
    fine = lambda xs: [int(np.asarray(x).mean()) for x in xs]
    for i in range(60):
        c.run([img(100 + (i % 5) * 2, seed=i)], fine, now=float(i))
    st = c.stats()
    assert st["audits"] > 5 and st["false_reuses"] > 0
    assert st["radius"] < 8.0 and st["guard_tightened"] >= 1


def test_snapshot_restore_gives_identical_lookups():
    inputs = [img(l, seed=s) for l in (20, 90, 160) for s in range(4)]
    rng = np.random.default_rng(0)
    order = rng.integers(0, len(inputs), 60)
    kw = dict(min_neighbors=2, radius=3.0, audit_rate=0.2, max_entries=8)

    def go(c, lo, hi):
        return [c.run([inputs[j]], model, now=float(i))[1].kind[0] for i, j in enumerate(order[lo:hi], lo)]

    ref = RedundancyCache(**kw)
    expected = go(ref, 0, 60)
    a = RedundancyCache(**kw)
    got = go(a, 0, 25)
    b = RedundancyCache(**kw)
    b.restore(roundtrip(a.snapshot()))
    got += go(b, 25, 60)
    assert got == expected and b.stats() == ref.stats()
    assert len(a.snapshot(max_entries=3)["entries"]) == 3


def test_shared_by_name_and_default_feature_shapes():
    assert shared("t-cache-1", max_entries=10) is shared("t-cache-1")
    assert default_feature(np.zeros((576, 768, 3), np.uint8)).shape == (192,)
    assert default_feature(np.zeros((1, 3, 64, 64), np.float32)).shape == (192,)
    assert default_feature(np.arange(1000.0)).shape == (192,)
    assert default_feature(np.arange(10.0)).shape == (192,)


def test_lsh_finds_the_same_near_neighbours_as_brute_force():
    rng = np.random.default_rng(1)
    centres = rng.uniform(0, 255, (50, 64))
    pts = np.repeat(centres, 4, axis=0) + rng.normal(0, 1.0, (200, 64))
    brute = NeighborIndex(64, 256, "brute", radius=3.0)
    lsh = NeighborIndex(64, 256, "lsh", radius=3.0)
    for i, p in enumerate(pts):
        brute.add(i, p)
        lsh.add(i, p)
    q = centres + rng.normal(0, 1.0, centres.shape)
    ib, db = brute.query(q, 3)
    il, dl = lsh.query(q, 3)
    assert (ib == il).mean() > 0.95 and np.allclose(db[ib == il], dl[ib == il])
    lsh.remove(0)
    assert 0 not in lsh.query(pts[:1], 3)[0]


def test_max_age_limits_approximate_hits_to_recent_neighbours_not_exact_ones():
    c = RedundancyCache(min_neighbors=2, k=3, radius=3.0, audit_rate=0.0, adaptive=False, max_age=10.0)
    c.run([img(100, seed=1), img(100, seed=2)], lambda xs: ["A", "A"], now=0.0)
    assert c.lookup([img(100, seed=3)], now=10.0).kind.tolist() == ["approx"]
    assert c.lookup([img(100, seed=3)], now=10.5).kind.tolist() == ["miss"]     # both neighbours are older than 10 s
    assert c.lookup([img(100, seed=1)], now=99.0).kind.tolist() == ["exact"]    # the same bytes: not limited
    c.run([img(100, seed=4)], lambda xs: ["A"], now=11.0)                        # one fresh neighbour is enough
    assert c.lookup([img(100, seed=5)], now=12.0).kind.tolist() == ["approx"]


def test_max_age_bounds_how_long_a_change_the_thumbnail_hides_is_missed():
    """A small object creeps into a noisy scene: the thumbnail barely moves (within the radius), the answer changes.
    Without max_age the first answer is reused to the end; with it, a stale answer lasts at most about max_age."""
    def frame(i):
        a = img(100, h=48, w=64, seed=i).astype(np.float32)
        a[20:28, :min(64, i // 16)] += 40                   # a faint object grows one pixel every 16 frames
        return a.clip(0, 255).astype(np.uint8)

    truth = lambda xs: [int((np.asarray(x) > 120).sum() // 32) for x in xs]   # noqa: E731  size in steps of 4 columns
    frames = [frame(i) for i in range(300)]
    wrong = {}
    for age in (None, 2.0):
        c = RedundancyCache(min_neighbors=2, radius=6.0, audit_rate=0.0, adaptive=False, max_age=age)
        got = [c.run([f], truth, now=i / 10)[0][0] for i, f in enumerate(frames)]
        stale = [g != t for g, t in zip(got, truth(frames))]
        run = longest = 0
        for s in stale:
            run = run + 1 if s else 0
            longest = max(longest, run)
        wrong[age] = (sum(stale), longest)
    assert wrong[None][1] > 50                               # the cache hid a change for more than 5 s
    assert wrong[2.0][1] <= 2.0 * 10 + 1                     # at 10 frames/s: no stale run beyond 2 s
    assert wrong[2.0][0] < wrong[None][0]


def test_min_confidence_keeps_counts_near_a_rounding_boundary_out_of_the_approximate_tier():
    from cache.options import CacheOptions, cache_wrapper

    class Stage:
        model_version = "m@1"

    level = {"v": 0.0}

    def model(inputs):             # a count whose value the test sets: 2.1 (confident) or 2.45 (near the boundary)
        return {"y": np.full((len(inputs["x"]), 1), level["v"], np.float32)}

    def hits(min_confidence, value):
        level["v"] = value
        infer = cache_wrapper(CacheOptions(agree="round", min_neighbors=2, audit_rate=0, max_age=None,
                                           min_confidence=min_confidence), Stage(), name=f"t-conf-{min_confidence}-{value}")(model)
        rng = np.random.default_rng(0)
        x = np.full((6, 1, 12, 16), 0.5, np.float32) + rng.normal(0, 0.001, (6, 1, 12, 16)).astype(np.float32)
        out = [infer({"x": x[i:i + 1]})["y"][0, 0] for i in range(6)]
        assert all(o == np.float32(value) for o in out)
        infer({"x": x[:1]})                      # the same bytes again: the exact tier is not limited
        st = infer.cache.stats()
        return st["approx_hits"], st["exact_hits"]

    assert hits(0.0, 2.45) == (4, 1)             # off: the first two are computed, the other four reuse them
    assert hits(0.5, 2.45) == (0, 1)             # confidence 0.1 < 0.5: every new input is computed
    assert hits(0.5, 2.1) == (4, 1)              # confidence 0.8: reused as before
    assert hits(0.5, 2.8) == (4, 1) and hits(0.5, 2.7) == (0, 1)    # 0.6 and 0.4, above 2.5


def test_unconfident_results_stay_out_of_the_neighbour_index():
    """A count stuck near x.5 is computed on every frame: its rows are kept for the exact tier only, so they do not
    crowd confident results out of the k nearest."""
    from cache.options import CacheOptions, make_cache

    c = make_cache(CacheOptions(agree="round", min_neighbors=2, audit_rate=0, min_confidence=0.5), "t-unconfident")
    rng = np.random.default_rng(1)
    for i in range(50):
        x = (np.full((1, 12, 16), 0.5) + rng.normal(0, 0.001, (1, 12, 16))).astype(np.float32)
        c.run([x], lambda xs: [{"y": np.array([2.45 if i >= 2 else 2.0], np.float32)}], now=i / 10)
    st = c.stats()
    assert st["misses"] > 30 and len(c) == st["misses"]                        # every unconfident row is kept ...
    assert sum(1 for e in c.entries.values() if e["dim"]) == 2                 # ... but only the confident two are indexed


def test_max_age_on_a_still_camera_renews_the_neighbours_instead_of_piling_up_entries():
    """Ten minutes of a still, noisy camera at 10 frames/s: about one computation per max_age, a handful of
    entries (a new near twin per max_age would crowd the fresh ones out of the k nearest, and reuse would collapse)."""
    c = RedundancyCache(min_neighbors=2, radius=3.0, audit_rate=0.0, adaptive=False, max_age=1.0)
    const = lambda xs: ["empty"] * len(xs)      # noqa: E731
    computed = []
    for i in range(6000):
        _, r = c.run([img(100, seed=i)], const, now=i / 10)
        computed.append(bool(r.compute[0]))
    late = np.mean(computed[-600:])             # the last minute
    assert 0.08 <= late <= 0.12                 # once a second, give or take a frame
    assert len(c) <= 4
    assert c.stats()["renewed"] == sum(computed) - 2 > 500     # one per computed row after the first two


def test_max_age_finds_a_changed_answer_the_thumbnail_hides_and_does_not_renew_the_old_one():
    c = RedundancyCache(min_neighbors=2, radius=3.0, audit_rate=0.0, adaptive=False, max_age=1.0)
    answer = {"v": "A"}
    got = []
    for i in range(300):
        if i == 150:
            answer["v"] = "B"                    # the scene changed in a way the thumbnail does not show
        out, _ = c.run([img(100, seed=i)], lambda xs: [answer["v"]] * len(xs), now=i / 10)
        got.append(out[0])
    assert got[:150] == ["A"] * 150
    assert got[150:].count("A") <= 11            # about max_age (10 frames) of the old answer, then B
    assert got[-100:] == ["B"] * 100


def test_max_age_keeps_exact_hits_on_a_frozen_camera():
    c = RedundancyCache(min_neighbors=2, radius=3.0, audit_rate=0.0, adaptive=False, max_age=1.0)
    frames = [img(100, seed=1), img(100, seed=2)] + [img(100, seed=3)] * 298     # then the camera freezes
    computed = [bool(c.run([f], lambda xs: ["A"] * len(xs), now=i / 10)[1].compute[0]) for i, f in enumerate(frames)]
    assert sum(computed) <= 4 and c.stats()["exact_hits"] >= 280      # the first second: approximate hits


def test_max_age_after_a_restore_counts_from_when_the_entries_were_computed():
    kw = dict(min_neighbors=2, radius=3.0, audit_rate=0.0, adaptive=False, max_age=10.0)
    a = RedundancyCache(**kw)
    a.run([img(100, seed=1), img(100, seed=2)], lambda xs: ["A", "A"], now=100.0)
    for now, kind in ((105.0, "approx"), (111.0, "miss")):
        b = RedundancyCache(**kw)
        b.restore(roundtrip(a.snapshot()))
        assert b.lookup([img(100, seed=3)], now=now).kind.tolist() == [kind]


def test_stages_naming_one_cache_share_it_only_with_the_same_options(caplog):
    from cache.options import CacheOptions, make_cache

    a = make_cache(CacheOptions(name="t-sig-cam"), "m.onnx")
    assert make_cache(CacheOptions(name="t-sig-cam", snapshot_entries=10), "other.onnx") is a   # same options: shared
    with caplog.at_level("WARNING", logger="cache.redundancy"):
        b = make_cache(CacheOptions(name="t-sig-cam", max_age=None), "m.onnx")
    assert b is not a and b.max_age is None and a.max_age == 1.0
    assert "t-sig-cam" in caplog.text and "different options" in caplog.text


def test_a_shared_cache_lives_while_a_stage_uses_it():
    from cache.options import CacheOptions, cache_wrapper

    class Stage:
        model_version = "m@1"

    opts = CacheOptions(name="t-release")
    a = cache_wrapper(opts, Stage(), name="m.onnx")(lambda inputs: inputs)
    b = cache_wrapper(opts, Stage(), name="m.onnx")(lambda inputs: inputs)
    assert a.cache is b.cache
    a.release()
    a.release()                                   # a stage closed twice releases once
    c = cache_wrapper(opts, Stage(), name="m.onnx")(lambda inputs: inputs)
    assert c.cache is b.cache                     # b still uses it: shared
    b.release()
    c.release()
    d = cache_wrapper(opts, Stage(), name="m.onnx")(lambda inputs: inputs)
    assert d.cache is not b.cache                 # nobody used it any more: dropped, a new one
