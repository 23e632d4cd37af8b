"""Coarsening by time, checked window by window against the raw readings: each coarse point holds exactly the
readings of the aligned window its timestamp and ``window_s`` state, and ``approximate`` only where it is."""
from __future__ import annotations

import numpy as np
import pytest

from connectors.influx.outbox import Outbox

S = 1_000_000_000
T0 = 1_794_999_600 * S      # divisible by 600 s


def windows(devices, n_windows, percentile=False, seed=7):
    """Raw readings per (device, 10 s window start) and the points a window stage emits for them (ddof 0)."""
    rng = np.random.default_rng(seed)
    raw, pts = {}, []
    for w in range(n_windows):
        for d in devices:
            x = rng.normal(20, 3, size=int(rng.integers(1, 30)))
            ts = T0 + w * 10 * S
            raw[(d, ts)] = x
            f = {"count": float(x.size), "t_sum": float(x.sum()), "t_min": float(x.min()), "t_max": float(x.max()),
                 "t_mean": float(x.mean()), "t_stddev": float(x.std())}
            if percentile:
                f["t_p95"] = float(np.quantile(x, 0.95))
            pts.append(("win", {"dev": d}, ts, f))
    return raw, pts


def fill(ob, pts, batch=50):
    for i in range(0, len(pts), batch):
        ob.put(pts[i:i + batch], res=10)


def test_every_coarse_point_holds_exactly_the_readings_of_the_window_it_claims(tmp_path):
    devices = [f"d{i}" for i in range(4)]
    raw, pts = windows(devices, 360)                          # an hour of 10 s windows per device
    ob = Outbox(tmp_path / "o.db", max_bytes=30_000, coarsen_steps_s=(60, 600), ddof=0)
    fill(ob, pts)
    rows = ob.claim(10**6)
    assert ob.counters["dropped"] == 0 and {r.res for r in rows} >= {10.0, 60.0, 600.0}
    for d in devices:
        mine = sorted((r for r in rows if r.tags["dev"] == d), key=lambda r: r.ts)
        end = None
        for r in mine:
            width = int(r.res * S)
            assert end is None or r.ts >= end, "coarse points overlap"
            end = r.ts + width
            if r.res > 10:
                assert r.ts % width == 0 and r.fields["window_s"] == r.res     # aligned, and says its width
            x = np.concatenate([v for (dd, ts), v in raw.items() if dd == d and r.ts <= ts < r.ts + width])
            f = r.fields
            assert f["count"] == x.size, (r.ts, r.res)
            assert f["t_sum"] == pytest.approx(x.sum(), rel=1e-12)
            assert (f["t_min"], f["t_max"]) == (x.min(), x.max())
            assert f["t_mean"] == pytest.approx(x.mean(), rel=1e-12)
            assert f["t_stddev"] == pytest.approx(x.std(), rel=1e-9, abs=1e-12)
            assert "approximate" not in f and not r.approx                    # every merge here is exact
        assert sum(r.fields["count"] for r in mine) == sum(v.size for (dd, _), v in raw.items() if dd == d)


def test_approximate_marks_exactly_the_points_whose_percentiles_were_merged(tmp_path):
    raw, pts = windows(["a", "b"], 360, percentile=True)
    ob = Outbox(tmp_path / "o.db", max_bytes=20_000, coarsen_steps_s=(60, 600), ddof=0)
    fill(ob, pts)
    rows = ob.claim(10**6)
    merged = [r for r in rows if r.res > 10 and sum(1 for (d, ts) in raw if d == r.tags["dev"]
                                                   and r.ts <= ts < r.ts + int(r.res * S)) > 1]
    assert merged and all(r.fields["approximate"] is True for r in merged)
    assert all("approximate" not in r.fields for r in rows if r not in merged)


def test_a_window_partly_delivered_is_not_coarsened(tmp_path):
    ob = Outbox(tmp_path / "o.db", coarsen_steps_s=(60,))
    _, pts = windows(["a"], 12)                               # two 1-min windows
    ob.put(pts, res=10)
    ob.ack(ob.claim(2))                                       # the server holds 00 and 10 s of the first minute
    ob.max_bytes = ob.stats()["pending_bytes"] - 50            # one more point, and the bound is hit
    ob.put(windows(["a"], 13)[1][12:], res=10)
    rows = sorted(ob.claim(10**6), key=lambda r: r.ts)
    assert [(r.ts - T0) // S for r in rows if r.res == 10][:4] == [20, 30, 40, 50]   # first minute left as it is
    assert any(r.res == 60 and r.ts == T0 + 60 * S for r in rows)                   # second minute merged


def test_a_replayed_point_already_merged_is_a_duplicate_and_a_late_one_merges_exactly(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=400, coarsen_steps_s=(60,), ddof=0)
    raw, pts = windows(["a"], 6)                              # one 1-min window, merged as soon as it is put
    ob.put(pts[:5], res=10)
    (coarse,) = ob.claim(10)
    ob.release()
    assert coarse.res == 60 and coarse.fields["count"] == sum(raw[("a", p[2])].size for p in pts[:5])
    ob.put(pts[:5], res=10)                                   # the replay after a restart
    assert ob.counters["duplicates"] >= 5
    ob.put(pts[5:], res=10)                                   # the window's last 10 s, arriving later
    (row,) = ob.claim(10)
    x = np.concatenate(list(raw.values()))
    assert row.ts == T0 and row.fields["count"] == x.size and row.fields["t_mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert row.fields["t_stddev"] == pytest.approx(x.std(), rel=1e-9) and not row.approx


def test_a_late_point_for_a_delivered_coarse_window_is_merged_into_it_never_sent_over_it(tmp_path):
    raw, pts = windows(["d0", "d1"], 120)                    # 20 min of 10 s windows
    late = {(d, ts) for d, ts in raw if ts in (T0 + 120 * S, T0 + 130 * S)}   # two windows of one 60 s window come late
    ob = Outbox(tmp_path / "o.db", max_bytes=8_000, coarsen_steps_s=(60, 600), ddof=0)
    fill(ob, [p for p in pts if (p[1]["dev"], p[2]) not in late])
    server = {}                                              # what InfluxDB holds: one point per (series, ts)
    while True:
        rows = ob.claim(1000)
        if not rows:
            break
        for r in rows:
            server[(r.tags["dev"], r.ts)] = r
        ob.ack(rows)
    coarse = [r for r in server.values() if r.res >= 60 and r.ts <= T0 + 120 * S < r.ts + r.res * S]
    assert coarse, "the setting must coarsen the window the late points belong to"
    late_pts = [p for p in pts if (p[1]["dev"], p[2]) in late]
    ob.put(late_pts, res=10)
    ob.put(late_pts, res=10)                                 # and once more: a replay, a duplicate
    while rows := ob.claim(1000):
        for r in rows:
            server[(r.tags["dev"], r.ts)] = r
        ob.ack(rows)
    for d in ("d0", "d1"):                                   # each reading exactly once on the server
        mine = sorted((r for (dd, _), r in server.items() if dd == d), key=lambda r: r.ts)
        for a, b in zip(mine, mine[1:]):
            assert a.ts + max(a.res, 10) * S <= b.ts, "points overlap on the server"
        assert sum(r.fields["count"] for r in mine) == sum(v.size for (dd, _), v in raw.items() if dd == d)
        for r in mine:
            x = np.concatenate([v for (dd, ts), v in raw.items() if dd == d and r.ts <= ts < r.ts + max(r.res, 10) * S])
            assert r.fields["count"] == x.size and r.fields["t_sum"] == pytest.approx(x.sum(), rel=1e-12)
            assert (r.fields["t_min"], r.fields["t_max"]) == (x.min(), x.max())
    assert ob.counters["duplicates"] >= len(late_pts)
