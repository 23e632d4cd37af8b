"""The durable outbox on its own: order, restart, merge on re-put, dead letters, and exact coarsening."""
from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from connectors.influx.coarsen import merge_fields
from connectors.influx.outbox import Outbox

S = 1_000_000_000
T0 = 1_795_000_000 * S      # a minute boundary (divisible by 600 s)


def pts(n, dev="a", start=T0, step=10 * S, meas="win"):
    return [(meas, {"dev": dev}, start + i * step, {"t_mean": float(i)}) for i in range(n)]


def test_fifo_order_and_survives_reopen(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    ob.put(pts(5, "a"))
    ob.put(pts(3, "b"))
    rows = ob.claim(4)
    assert [(r.tags["dev"], r.fields["t_mean"]) for r in rows] == [("a", 0.0), ("a", 1.0), ("a", 2.0), ("a", 3.0)]
    ob.ack(rows)
    ob.close()                                  # restart: what was pending is still there, in order
    ob = Outbox(tmp_path / "o.db")
    assert ob.pending() == 4 and ob.stats()["sent"] == 4 and ob.stats()["put"] == 8
    assert [(r.tags["dev"], r.fields["t_mean"]) for r in ob.claim(10)] == [("a", 4.0), ("b", 0.0), ("b", 1.0), ("b", 2.0)]
    ob.close()


def test_wal_mode_and_fsync_policy(tmp_path):
    Outbox(tmp_path / "o.db", fsync="normal").close()
    assert sqlite3.connect(tmp_path / "o.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError, match="fsync must be one of"):
        Outbox(tmp_path / "x.db", fsync="sometimes")


def test_reput_of_a_pending_point_merges_fields_and_nan_is_absent(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    ob.put([("win", {"dev": "a"}, T0, {"t_mean": 1.0, "t_max": float("nan")})])
    ob.put([("win", {"dev": "a"}, T0, {"t_max": 2.0})])
    (row,) = ob.claim(10)
    assert row.fields == {"t_mean": 1.0, "t_max": 2.0} and ob.pending() == 1


def test_reput_while_in_flight_is_sent_again(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    ob.put(pts(2))
    rows = ob.claim(10)
    ob.put([("win", {"dev": "a"}, T0, {"t_mean": 9.0})])   # changed while the batch was on the wire
    ob.ack(rows)
    assert [(r.ts, r.fields) for r in ob.claim(10)] == [(T0, {"t_mean": 9.0})]


def test_dead_letter_keeps_server_message_and_requeue(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    ob.put(pts(3))
    ob.dead_letter(ob.claim(2), 400, "partial write: field type conflict")
    assert ob.pending() == 1 and ob.stats()["dead"] == 2
    assert ob.dead_rows()[0][4:] == (400, "partial write: field type conflict")
    assert ob.requeue_dead() == 2 and ob.pending() == 3 and ob.stats()["dead"] == 0


# --- the disk bound --------------------------------------------------------------------------------
def _fine_windows(rng, devices, n_windows):
    """Raw samples per (device, 10 s window) and the window aggregates a window stage would emit."""
    raw, points = {}, []
    for d in devices:
        for w in range(n_windows):
            x = rng.normal(20, 3, size=int(rng.integers(1, 40)))
            ts = T0 + w * 10 * S
            raw[(d, ts)] = x
            points.append(("win", {"dev": d}, ts, {
                "t_count": float(x.size), "t_sum": float(x.sum()), "t_min": float(x.min()), "t_max": float(x.max()),
                "t_mean": float(x.mean()), "t_stddev": float(x.std(ddof=1)) if x.size > 1 else float("nan"),
                "t_p95": float(np.quantile(x, 0.95)), "alarm": bool(x.max() > 29)}))
    return raw, points


def test_coarsening_is_exact(tmp_path):
    rng = np.random.default_rng(7)
    devices = [f"d{i}" for i in range(5)]
    raw, points = _fine_windows(rng, devices, 360)          # one hour of 10 s windows per device
    ob = Outbox(tmp_path / "o.db", max_bytes=200_000, coarsen_steps_s=(60, 600), ddof=1)
    for i in range(0, len(points), 100):                    # arrive batch by batch, in time order
        ob.put(sorted(points, key=lambda p: p[2])[i:i + 100], res=10)
    st = ob.stats()
    assert st["pending_bytes"] <= 200_000 and st["dropped"] == 0
    assert st["coarsened_in"] > 0 and st["coarsened_out"] > 0
    rows = ob.claim(10**6)
    assert {r.res for r in rows} >= {60.0}
    checked = 0
    for d in devices:
        mine = sorted((r for r in rows if r.tags["dev"] == d), key=lambda r: r.ts)
        bounds = [r.ts for r in mine] + [math.inf]
        for r, end in zip(mine, bounds[1:]):
            x = np.concatenate([v for (dd, ts), v in raw.items() if dd == d and r.ts <= ts < end])
            f = r.fields
            assert f["t_count"] == x.size
            assert f["t_sum"] == pytest.approx(x.sum(), rel=1e-12)
            assert (f["t_min"], f["t_max"]) == (x.min(), x.max())
            assert f["t_mean"] == pytest.approx(x.mean(), rel=1e-12)
            if x.size > 1:
                assert f["t_stddev"] == pytest.approx(x.std(ddof=1), rel=1e-9)
            assert f["alarm"] == bool(x.max() > 29)
            if r.res > 10 and f.get("window_s"):
                assert f["window_s"] == r.res and f["approximate"] is True    # because of t_p95
                checked += 1
    assert checked > 0


def test_coarsening_leaves_in_flight_points_alone_then_drops_oldest(tmp_path):
    ob = Outbox(tmp_path / "o.db", max_bytes=6_000, coarsen_steps_s=(60,))
    ob.put(pts(20, step=10 * S), res=10)
    in_flight = ob.claim(3)
    ob.put(pts(400, dev="b", start=T0 + 10**6 * S, step=60 * S), res=10)    # already one per minute: cannot merge
    st = ob.stats()
    assert st["dropped"] > 0 and st["pending_bytes"] <= 6_000
    remaining = {(r.tags["dev"], r.ts) for r in ob.claim(10**6)}
    assert {("a", r.ts) for r in in_flight} <= remaining


def test_merge_fields_without_count_is_approximate():
    merged, approx = merge_fields([{"t_mean": 1.0}, {"t_mean": 3.0}])
    assert merged == {"t_mean": 2.0} and approx
    merged, approx = merge_fields([{"t_count": 1.0, "t_mean": 1.0}, {"t_count": 3.0, "t_mean": 3.0}])
    assert merged["t_mean"] == 2.5 and not approx


def test_stored_fields_are_plain_json(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    ob.put([("win", {"dev": "a"}, T0, {"n": np.float64(2.5), "ok": np.bool_(True)})])
    ob.close()
    (fields,) = sqlite3.connect(tmp_path / "o.db").execute("SELECT fields FROM pending").fetchone()
    assert json.loads(fields) == {"n": 2.5, "ok": True}


def test_replayed_points_already_delivered_are_not_queued_again(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    ob.put(pts(4))
    ob.ack(ob.claim(3))
    ob.close()
    ob = Outbox(tmp_path / "o.db")                 # a restarted pipeline replays all four
    replay = pts(4)
    replay[1] = ("win", {"dev": "a"}, replay[1][2], {"t_mean": 42.0})      # ... and one of them changed meanwhile
    ob.put(replay)
    assert [(r.ts - T0) // (10 * S) for r in ob.claim(10)] == [3, 1]
    assert ob.stats()["duplicates"] == 3          # 0 and 2 were delivered, 3 is pending unchanged
    g = ob.checkpoint(); ob.checkpoint()           # two checkpoints later the old deliveries are forgotten
    assert g + 1 == ob.stats()["generation"]
    ob.put(pts(1))
    assert ob.pending() == 3


def test_one_process_per_outbox(tmp_path):
    ob = Outbox(tmp_path / "o.db")
    with pytest.raises(RuntimeError, match=r"o.db is in use by pid \d+: give each sink its own `outbox:` file"):
        Outbox(tmp_path / "o.db")
    ob.close()
    Outbox(tmp_path / "o.db").close()              # free again once closed
