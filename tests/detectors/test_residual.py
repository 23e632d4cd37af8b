"""The `residual` detector: calibrated scores, adaptation after a level shift, seasons, plain-data state."""
import copy

import numpy as np
import pytest

from detectors.calibrate import TailCalibrator
from detectors.residual import ResidualDetector
from detectors.residual_bank import ResidualBank
from detectors.stuck import FIELDS as STUCK_FIELDS

DAY = 86_400.0


def run(det, X, ts, batch=97):
    X = np.asarray(X, dtype=float).reshape(len(X), -1)
    out = [det.score_learn_many(X[i:i + batch], ts=ts[i:i + batch]) for i in range(0, len(X), batch)]
    return np.concatenate([s for s, _ in out]), np.concatenate([w for _, w in out])


def normal_series(kind, n, rng):
    t = np.arange(n) * 300.0
    if kind == "noise":
        return 20 + rng.normal(0, 0.7, n)
    if kind == "daily_cycle":
        return 20 + 5 * np.sin(2 * np.pi * t / DAY) + rng.normal(0, 0.5, n)
    if kind == "counter":
        return rng.poisson(4, n).astype(float)
    if kind == "random_walk":
        return 50 + np.cumsum(rng.normal(0, 0.3, n))
    if kind == "quantised":
        return np.round(20 + rng.normal(0, 0.04, n), 1)  # mostly one value, a step of 0.1 now and then
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["noise", "daily_cycle", "counter", "random_walk", "quantised"])
def test_one_threshold_gives_about_the_same_alert_rate_on_every_normal_series(kind):
    rng = np.random.default_rng(["noise", "daily_cycle", "counter", "random_walk", "quantised"].index(kind))
    n = 40_000
    s, warm = run(ResidualDetector(["v"]), normal_series(kind, n, rng), np.arange(n) * 300.0)
    s = s[~warm]
    assert len(s) > 39_000
    rate = lambda thr: float((s >= thr).mean())  # noqa: E731
    assert rate(1 - 1e-4) <= 3e-4, f"{kind}: {rate(1 - 1e-4):.1e} of normal readings flagged at 1 - 1e-4"
    assert 2e-3 <= rate(1 - 1e-2) <= 3e-2, f"{kind}: {rate(1 - 1e-2):.1e} flagged at 1 - 1e-2 (not calibrated)"


def test_a_level_shift_stops_alerting_after_adapt_rows():
    rng = np.random.default_rng(7)
    n = 3000
    x = 20 + rng.normal(0, 0.5, n)
    x[2000:] += 10  # a lasting change of 20 sigma
    x[2600] += 4  # then a spike of 8 sigma on the new level
    ts = np.arange(n) * 60.0
    slow = dict(alpha=0.01, alpha_fast=0.01)  # a slow forecast that would take long to follow alone
    adapted, _ = run(ResidualDetector(["v"], adapt=50, **slow), x, ts)
    locked, _ = run(ResidualDetector(["v"], adapt=None, **slow), x, ts)
    thr = 1 - 1e-4
    assert adapted[2000] >= thr and locked[2000] >= thr  # the change itself is flagged
    flagged = np.flatnonzero(adapted[2000:] >= thr) + 2000
    assert flagged.max() < 2000 + 50 + 5 or flagged.tolist()[-1:] == [2600]  # normal after `adapt` readings...
    assert set(flagged[flagged >= 2055].tolist()) == {2600}  # ...and the next spike still stands out
    assert locked[2600] < thr  # without adapt, the forecast errors of the shift have blunted the detector


def test_adapt_as_a_duration_uses_event_time():
    rng = np.random.default_rng(8)
    x = 20 + rng.normal(0, 0.5, 2000)
    x[1500:] += 10
    ts = np.arange(2000) * 10.0
    s, _ = run(ResidualDetector(["v"], adapt=300.0, alpha=0.01, alpha_fast=0.01), x, ts)  # 300 s = 30 readings
    assert np.flatnonzero(s[1500:] >= 1 - 1e-4).max() < 30 + 5


def test_a_daily_cycle_does_not_alarm_with_a_season():
    rng = np.random.default_rng(3)
    n = 24 * 60  # hourly readings, 60 days: the cycle moves 2.6 sigma per reading
    ts = np.arange(n) * 3600.0
    x = 20 + 10 * np.sin(2 * np.pi * ts / DAY) + rng.normal(0, 1.0, n)
    seasonal, warm = run(ResidualDetector(["v"], season=DAY, season_bins=24), x, ts)
    late = slice(24 * 10, n)  # after ten cycles
    assert (seasonal[late] >= 1 - 1e-4).sum() == 0
    x_spike = x.copy()
    x_spike[1000] += 9  # 9 sigma, but inside the daily swing of +-10
    spiked, _ = run(ResidualDetector(["v"], season=DAY, season_bins=24), x_spike, ts)
    flat_spiked, _ = run(ResidualDetector(["v"]), x_spike, ts)
    assert spiked[1000] >= 1 - 1e-3  # rarer than 1 normal reading in 1,000 of this series
    assert 1 - flat_spiked[1000] > 5 * (1 - spiked[1000])  # without the season it is lost in the swing


def test_a_spike_on_a_constant_series_is_flagged_every_time():
    x = np.full(3000, 11.7)
    spikes = {1000: 1.4, 2000: -2.7}  # the first spike's two steps are not the resolution
    for i, v in spikes.items():
        x[i] += v
    s, warm = run(ResidualDetector(["v"]), x, np.arange(3000) * 300.0)
    thr = 1 - 1e-4
    assert all(s[i] >= thr for i in spikes), [round(float(s[i]), 6) for i in spikes]
    assert not (s[1100:1990] >= thr).any() and not (s[2100:] >= thr).any()


def test_a_spike_on_a_random_walk_is_flagged():
    rng = np.random.default_rng(11)
    x = 50 + np.cumsum(rng.normal(0, 1.0, 3000))
    x[[1500, 2500]] += [10.0, -10.0]  # 10 steps' worth
    s, _ = run(ResidualDetector(["v"]), x, np.arange(3000) * 300.0)
    assert s[1500] >= 1 - 1e-4 and s[2500] >= 1 - 1e-3  # the first one is in the calibration of the second


def test_a_slow_ramp_is_flagged_before_it_ends_by_the_trend_channel():
    rng = np.random.default_rng(12)
    n = 3000
    x = 20 + rng.normal(0, 1.0, n)
    x[1800:2000] += np.linspace(0, 12, 200)  # 12 sigma over 200 readings, then it stays there
    x[2000:] += 12
    ts = np.arange(n) * 300.0
    thr = 1 - 1e-4
    with_trend, _ = run(ResidualDetector(["v"]), x, ts)
    without, _ = run(ResidualDetector(["v"], trend_rate=None), x, ts)
    flagged = np.flatnonzero(with_trend >= thr)
    assert len(flagged) and 1800 <= flagged[flagged >= 1000].min() < 1950, flagged[flagged >= 1000][:5]
    assert not (with_trend[600:1800] >= thr).any()
    assert not (without[1800:2000] >= thr).any()  # an EWMA alone follows the ramp


def test_any_batching_and_a_restore_from_plain_state_give_identical_scores():
    rng = np.random.default_rng(5)
    n = 2500
    X = np.column_stack([20 + rng.normal(0, 0.5, n), np.round(rng.normal(3, 1, n))])
    X[1200:1300, 0] += 6
    ts = np.arange(n) * 30.0 + rng.uniform(0, 1, n)
    learn = rng.random(n) > 0.03
    params = dict(season=3600.0, season_bins=12, adapt=900.0)
    whole, _ = ResidualDetector(["a", "b"], **params).score_learn_many(X, learn=learn, ts=ts)
    det = ResidualDetector(["a", "b"], **params)
    parts, pos = [], 0
    for cut in [1, 5, 33, 64, 700, 1201, 1250, 1299, 2400]:
        parts.append(det.score_learn_many(X[pos:cut], learn=learn[pos:cut], ts=ts[pos:cut])[0])
        pos = cut
        if cut in (700, 1250):
            state = det.state()
            assert_plain(state)
            det = ResidualDetector.from_state(copy.deepcopy(state))
    parts.append(det.score_learn_many(X[pos:], learn=learn[pos:], ts=ts[pos:])[0])
    assert np.array_equal(np.concatenate(parts), whole)


def assert_plain(v, where="state"):
    """Only dict/list/str/int/float/bool/None and numpy arrays: what a safe codec can store."""
    if isinstance(v, dict):
        for k, item in v.items():
            assert isinstance(k, str), f"{where}: key {k!r}"
            assert_plain(item, f"{where}.{k}")
    elif isinstance(v, (list, tuple)):
        assert isinstance(v, list), f"{where} is a {type(v).__name__}"
        for i, item in enumerate(v):
            assert_plain(item, f"{where}[{i}]")
    elif isinstance(v, np.ndarray):
        assert v.dtype.kind in "biuf", f"{where}: dtype {v.dtype}"
    else:
        assert v is None or type(v) in (str, int, float, bool), f"{where}: {type(v).__name__}"


def test_bad_parameters_are_errors_that_name_them():
    with pytest.raises(ValueError, match="alpha"):
        ResidualDetector(["v"], alpha=1.5)
    with pytest.raises(ValueError, match="trend_rate"):
        ResidualDetector(["v"], trend_rate=1.5)
    with pytest.raises(ValueError, match="event times"):
        ResidualDetector(["v"], season=DAY).score_learn_many(np.zeros((3, 1)))


def test_a_warm_up_of_one_value_waits_for_a_change_so_the_first_bursts_do_not_look_endless():
    """A bursty series that starts between bursts (all zeros): without the wait its spread starts at nothing,
    the first bursts score billions of scales and the calibrator learns that, so a real fault later scores
    like an ordinary burst."""
    rng = np.random.default_rng(3)
    x = np.zeros(3000)
    i = 80  # the first 80 readings are zeros
    while i < len(x):
        n = int(rng.exponential(4)) + 1
        x[i:i + n] = rng.exponential(1, len(x[i:i + n])) * 5
        i += n + int(rng.exponential(20)) + 1
    x[2500:2506] = 150.0  # a burst five times larger than any before
    det = ResidualDetector(["f"])
    s, warm = det.score_learn_many(x[:, None])
    assert warm[:81].all()  # waited for the first change
    assert det.cal.table["sigma"] < 1e3 and det.cal.table["t"] < 100  # the calibrator's tail stayed sane
    assert s[2500] > 0.9999 and (s[1000:2500] > 0.9999).mean() < 0.005


def test_the_calibrator_is_not_blown_up_by_scores_learned_before_its_first_table():
    rng = np.random.default_rng(0)
    normal = np.abs(rng.normal(size=20_000))
    clean, dirty = TailCalibrator(), TailCalibrator()
    clean.learn(normal)
    dirty.learn(np.concatenate([np.full(8, 1e9), normal]))  # a key's first scores, from a scale of nothing
    p_clean, p_dirty = clean.tail_probability(np.array([4.0, 5.0])), dirty.tail_probability(np.array([4.0, 5.0]))
    # before: a tail millions of scales wide, so every score above the 98% quantile had p = 0.03 (never alerts)
    assert p_dirty[1] < 1e-3 and p_dirty[1] < 0.7 * p_dirty[0] and (p_dirty < 50 * p_clean).all()


def bursty(n, rng):
    """Mostly zero, with bursts of exponential length and size (traffic, flow): as benchmarks/corpus.py."""
    x, i = np.zeros(n), 0
    while i < n:
        i += int(rng.exponential(20)) + 1
        length = int(rng.exponential(4)) + 1
        x[i:i + length] = rng.exponential(1, len(x[i:i + length])) * 5
        i += length
    return x


def test_bursty_keys_flag_about_the_rate_asked_for_also_while_young():
    # 12 bursty keys of 4,000 readings: at 1 - 1e-4 about 4.8 normal readings may be flagged in all.  Before the
    # shape prior the young keys' method-of-moments tails were too light and 8 were (5 on one key).
    flags = []
    for seed in range(12):
        rng = np.random.default_rng([7, seed])
        x, ts = bursty(4000, rng), np.arange(4000) * 300.0
        s, _ = run(ResidualDetector(["v"]), x, ts)
        flags.append(int((s >= 1 - 1e-4).sum()))
    assert sum(flags) <= 6 and max(flags) <= 2, flags


def test_the_shape_prior_weighs_only_while_the_tail_is_short():
    rng = np.random.default_rng(3)
    normal = np.abs(rng.normal(size=60_000))  # a light (half-normal) tail: the moments fit shape 0
    young, old = TailCalibrator(), TailCalibrator()
    young.learn(normal[:512])   # about 10 tail scores: pulled most of the way towards 0.2
    old.learn(normal)           # about 600 (decayed): the fit's own shape, nearly
    assert young.table["gamma"] > 0.1
    assert old.table["gamma"] < 0.02
    # and a heavy tail keeps its own shape (the prior never makes a tail lighter)
    pareto = TailCalibrator()
    pareto.learn(rng.pareto(3.0, 60_000) + 1.0)
    assert pareto.table["gamma"] > 0.2


def test_the_linear_forecast_follows_a_slope_without_lag_so_a_spike_on_it_stands_out():
    """On a steady slope the slow level lags (by 9 slopes) and the fast one is noisy; Brown's linear forecast
    has neither, so its residuals are the noise alone and a spike on the slope scores higher than before."""
    rng = np.random.default_rng(2)
    n = 3000
    x = 10 + 0.5 * np.arange(n) + rng.normal(0, 1, n)  # noise sigma 1
    x[2000] += 6.0
    det = ResidualDetector(["f"])
    s, _ = det.score_learn_many(x[:, None])
    assert det.lin_scale[0] < 1.1 and det.scale.min() > 1.4  # slow: lag; fast: noise of its own
    assert s[2000] > 0.9997  # 0.9995 with the slow and fast forecasts only
    assert (np.delete(s[1000:], [1000, 1001]) > 0.9999).mean() == 0.0


def test_a_state_saved_before_the_warm_up_wait_the_linear_forecast_and_the_stuck_channel_restores_in_both_paths():
    rng = np.random.default_rng(5)
    x = 20 + np.round(rng.normal(0, 1, (900, 2)), 2)
    ref = ResidualDetector(["a", "b"], calibration_samples=64)
    ref.score_learn_many(x[:613])  # mid-segment
    old = ref.state()
    for k in ("warm_waited", "smooth2", "smooth2_anchor", "lin_scale", "seg_lin", "stuck", *STUCK_FIELDS):
        del old[k]
    per_key = ResidualDetector.from_state(copy.deepcopy(old))
    bank = ResidualBank(ResidualDetector(["a", "b"], calibration_samples=64))
    bank.grow(1)
    bank.load(0, copy.deepcopy(old))
    want, _ = per_key.score_learn_many(x[613:])
    got, _ = bank.score_learn(np.zeros(287, dtype=np.int64), x[613:], np.zeros(287), np.ones(287, dtype=bool))
    assert np.array_equal(got, want)
    assert np.isfinite(want).all() and (want < 0.9999).mean() > 0.99


def test_a_float_sensor_stuck_at_its_last_reading_is_flagged_within_a_few_readings():
    rng = np.random.default_rng(4)
    x = np.round(20 + rng.normal(0, 0.5, 4000), 2)
    x[3000:3100] = x[2999]  # the sensor freezes for 100 readings, then recovers
    det = ResidualDetector(["f"])  # adapt: 60 rows
    s, _ = det.score_learn_many(x[:, None])
    first = int(np.flatnonzero(s[3000:] > 0.9999)[0])
    assert first <= 3
    assert (s[3000 + 60:3100] > 0.9999).sum() == 0  # a run that lasted `adapt` rows is a regime
    assert (np.delete(s[1000:], np.arange(2000, 2101)) > 0.9999).mean() < 1e-3
    off, _ = ResidualDetector(["f"], stuck=False).score_learn_many(x[:, None])
    assert not (off[3000:3004] > 0.9999).any()  # without the channel it is not seen there


@pytest.mark.parametrize("kind", ["counter", "quantised", "bursty"])
def test_the_stuck_channel_stays_silent_where_repeats_are_normal(kind):
    """Counters, coarse quantised readings and bursty series repeat all the time, in runs no geometric model
    follows: the channel does not watch them, so the scores are those without it."""
    rng = np.random.default_rng(8)
    n = 6000
    if kind == "counter":
        x = rng.poisson(3, n).astype(float)
    elif kind == "quantised":
        x = np.round(20 + np.cumsum(rng.normal(0, 0.05, n)), 0)
    else:
        x = np.where(rng.random(n) < 0.2, rng.exponential(5, n), 0.0)
    on, _ = ResidualDetector(["f"]).score_learn_many(x[:, None])
    off, _ = ResidualDetector(["f"], stuck=False).score_learn_many(x[:, None])
    assert np.array_equal(on, off)


def test_readings_imputed_with_the_last_good_value_are_not_a_stuck_sensor():
    """`bad_values: impute_last` repeats the last good reading and does not learn it: on a float sensor
    that never repeats (q1 near its floor) a gap of imputed rows must not look like a freeze."""
    rng = np.random.default_rng(6)
    x = 20 + rng.normal(0, 1, 60_000)
    learn = np.ones(len(x), dtype=bool)
    learn[59_000:59_050] = False
    x[59_000:59_050] = x[58_999]  # what impute_last hands the detector
    s, _ = ResidualDetector(["f"]).score_learn_many(x[:, None], learn=learn)
    assert (s[59_000:59_050] < 0.999).all()  # not even at alert_rate 1e-3 (q1 alone is about 3e-5 here)


def test_a_sensor_that_keeps_freezing_is_flagged_every_time():
    """Each freeze (shorter than `adapt`) must not teach the key that freezes are normal."""
    rng = np.random.default_rng(12)
    x = 20 + rng.normal(0, 1, 20_000)
    starts = list(range(4000, 20_000, 2000))
    for a in starts:
        x[a:a + 40] = x[a - 1]
    s, _ = ResidualDetector(["f"]).score_learn_many(x[:, None])
    assert all((s[a:a + 12] > 0.9999).any() for a in starts)  # each freeze teaches one more reading


def test_a_quantised_reading_that_holds_at_the_peaks_of_a_cycle_is_not_stuck():
    """A slow cycle rounded to integers holds its value for about ten readings at each peak and trough
    and for one or two on its flanks: no single geometric run length fits, and the peaks are normal."""
    t = np.arange(40_000)
    x = np.round(2000 * np.sin(2 * np.pi * t / 1440))
    s, _ = ResidualDetector(["f"]).score_learn_many(x[:, None])
    flagged = s[10_000:] > 0.9999
    episodes = int((flagged & ~np.concatenate(([False], flagged[:-1]))).sum())
    assert episodes <= 3  # at most 1 per 10,000 readings
