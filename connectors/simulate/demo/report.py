"""The demo's PNG report (matplotlib): readings with anomalies marked, aggregates over time, skip and cache
rates, and bytes in vs bytes out."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np


def _aggregates(db: Path) -> dict[str, list[tuple[float, dict]]]:
    out: dict[str, list[tuple[float, dict]]] = {}
    if not db.exists():
        return out
    with sqlite3.connect(db) as con:
        for tags, ts, fields in con.execute("SELECT tags, ts, fields FROM points ORDER BY ts"):
            out.setdefault(json.loads(tags).get("device", "?"), []).append((ts, json.loads(fields)))
    return out


def _telling_field(rows: list[tuple[float, dict]], ts: np.ndarray, true_ts: np.ndarray) -> tuple[str, np.ndarray]:
    """The field whose anomalous readings stand out most from the normal ones (robust z of their mean)."""
    names = list(rows[0][1])
    bad = np.isin(np.round(ts, 3), np.round(true_ts, 3)) if len(true_ts) else np.zeros(len(ts), bool)
    best, best_z = names[0], -1.0
    for name in names:
        v = np.array([f.get(name, np.nan) for _, f in rows], dtype=float)
        if bad.any() and (~bad).sum() > 10:
            normal = v[~bad]
            scale = np.nanmedian(np.abs(normal - np.nanmedian(normal))) or np.nanstd(normal) or 1.0
            z = abs(np.nanmean(v[bad]) - np.nanmedian(normal)) / scale
            if z > best_z:
                best, best_z = name, z
    return best, np.array([f.get(best, np.nan) for _, f in rows], dtype=float)


def write_report(stats, path: Path, title: str, bytes_out: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 8.5), constrained_layout=True)
    fig.suptitle(title, fontsize=13)

    # 1. readings of the pump with the most anomalies, true anomalies shaded, detected ones marked
    ax = axes[0, 0]
    with stats.lock:
        readings = {d: list(v) for d, v in stats.readings.items()}
        truth = {d: list(v) for d, v in stats.truth_ts.items()}
        flagged = {d: [t for t in v if t is not None] for d, v in stats.flagged_ts.items()}
    if readings:
        dev = max(readings, key=lambda d: (len(truth.get(d, [])) + len(flagged.get(d, [])), d))
        ts = np.array([t for t, _ in readings[dev]])
        t0 = ts[0]
        field, vals = _telling_field(readings[dev], ts, np.array(truth.get(dev, [])))
        ax.plot(ts - t0, vals, lw=0.8, color="tab:blue", label=field)
        tt = np.sort(np.array(truth.get(dev, [])))
        if len(tt):
            step = float(np.median(np.diff(ts))) if len(ts) > 1 else 1.0
            breaks = np.flatnonzero(np.diff(tt) > 1.5 * step)
            for i, (a, b) in enumerate(zip(np.r_[tt[0], tt[breaks + 1]], np.r_[tt[breaks], tt[-1]])):
                ax.axvspan(a - t0 - step / 2, b - t0 + step / 2, color="orange", alpha=0.25,
                           label="truly anomalous" if i == 0 else None)
        ft = np.array(flagged.get(dev, []))
        if len(ft):
            ax.scatter(ft - t0, np.interp(ft, ts, vals), s=18, marker="x", color="red", label="flagged by edgesieve")
        ax.set_title(f"{dev}: readings and anomalies")
        ax.set_xlabel("event time (s)")
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no pump readings", ha="center", transform=ax.transAxes)

    # 2. aggregates over time (10 s windows from the local store)
    ax = axes[0, 1]
    aggs = _aggregates(stats.out_dir / "aggregates.db")
    pumps = {d: rows for d, rows in aggs.items() if any("Current_mean" in f for _, f in rows)}
    if pumps:
        t0 = min(rows[0][0] for rows in pumps.values())
        for d, rows in sorted(pumps.items()):
            pts = [(t - t0, f["Current_mean"]) for t, f in rows if "Current_mean" in f]
            ax.plot(*zip(*pts), marker=".", lw=1, label=d)
            bad = [(t - t0, f["Current_mean"]) for t, f in rows if f.get("is_anomaly_sum", 0) > 0]
            if bad:
                ax.scatter(*zip(*bad), s=40, facecolors="none", edgecolors="red")
        ax.set_title("aggregates: Current, mean per 10 s window (red: windows with anomalies)", fontsize=10)
        ax.set_xlabel("event time (s)")
        ax.legend(fontsize=8, ncol=2)
    else:
        ax.text(0.5, 0.5, "no aggregates yet", ha="center", transform=ax.transAxes)

    # 3. skip and cache rates over the run
    ax = axes[1, 0]
    s = stats.samples
    if s:
        t = [x["t"] for x in s]
        ax.plot(t, [100 * x["skip_rate"] for x in s], label="frames skipped by frame_diff (%)")
        ax.plot(t, [100 * x["cache_hit_rate"] for x in s], label="cache hit rate (%)")
        ax.set_ylim(0, 100)
        ax.set_xlabel("wall time (s)")
        ax.set_title("work avoided on camera frames (cumulative)")
        ax.legend(fontsize=8)

    # 4. bytes in vs out
    ax = axes[1, 1]
    readings = s[-1]["reading_bytes"] if s else 0
    frames = s[-1]["frame_bytes"] if s else 0
    values = [readings, bytes_out, frames]
    bars = ax.bar(["pump readings in", "aggregates + alerts out", "camera frames\n(never uploaded)"],
                  [max(v, 1) for v in values], color=["tab:gray", "tab:green", "tab:olive"])
    ax.set_yscale("log")
    ax.set_ylabel("bytes (log scale)")
    for b, v in zip(bars, values):
        ax.annotate(f"{v:,}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=9)
    ratio = f": {readings / bytes_out:,.0f}x less than the readings" if bytes_out and readings else ""
    ax.set_title(f"bandwidth{ratio}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
