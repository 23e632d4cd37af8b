"""A slot of `ResidualBank` as `ResidualDetector.state()` data and back: checkpoints and spill files stay
those of a per-key detector.  The running sums the bank keeps (of the level's and the baseline's prefix
sums) are not in that state; `load_slot` recomputes them from the segment's clipped readings, in the
order `ResidualDetector._segment` sums them."""
from __future__ import annotations

import numpy as np

from .calibrate import plain
from . import residual_forms as forms

__all__ = ["export_slot", "load_slot"]

SAME = ("level", "anchor", "scale", "floor", "steps", "last", "recent", "base", "tscale",
        "run", "run_sign", "run_start", "run_sum", "smooth2", "smooth2_anchor", "lin_scale",
        "srun", "srep", "srows", "scont", "sstop", "sq1", "sq", "sstart", "srmax")  # arrays stored as they are in `ResidualDetector`


def export_slot(bank, slot: int) -> dict:
    """Slot `slot` of bank `bank` as `ResidualDetector.state()` data."""
    a = bank.a
    st = plain(bank.template)
    k, n = int(a.seg_len[slot]), int(a.n[slot])
    st.update(n=n, since=int(a.since[slot]), t0=float(a.t0[slot]), held=a.held[slot, :a.held_len[slot]].copy(),
              warm_waited=int(a.warm_waited[slot]))
    for name in SAME:
        st[name] = getattr(a, name)[slot].copy()
    st["seg_y"], st["seg_r"] = a.seg_y[slot, :k].copy(), a.seg_r[slot, :k].copy()
    st["seg_lin"] = a.seg_lin[slot, :k].copy()
    st["warm_rows"] = a.warm[slot, :n].tolist() if n < bank.M else []
    if bank.trend_rate is not None:
        st["base_anchor"], st["seg_t"] = a.base_anchor[slot].copy(), a.seg_t[slot, :k].copy()
    else:  # the baseline never moves: its anchor is where the warm-up put it
        st["base_anchor"] = a.base[slot].copy()
    if bank.season is not None:
        st["profile"], st["visits"] = a.profile[slot].copy(), a.visits[slot].copy()
        st["pending_bins"], st["pending_res"] = a.pbins[slot, :k].tolist(), a.pres[slot, :k].tolist()
    bank.cal.export(slot, st["cal"])
    bank.tcal.export(slot, st["tcal"])
    return st

def load_slot(bank, slot: int, st: dict) -> None:
    """Put `ResidualDetector.state()` data (bank `bank`'s parameters) into slot `slot`."""
    a = bank.a
    a.reset(np.array([slot]))
    st = forms.upgrade_state(st)
    for name in SAME:
        getattr(a, name)[slot] = st[name]
    a.n[slot], a.since[slot], a.t0[slot] = st["n"], st["since"], st["t0"]
    a.warm_waited[slot] = st.get("warm_waited", 0)  # state from before the warm-up waited for a change
    held = np.asarray(st["held"], dtype=np.float64).reshape(-1, 2)
    a.held[slot, :len(held)], a.held_len[slot] = held, len(held)
    seg_y = np.asarray(st["seg_y"], dtype=np.float64).reshape(-1, bank.c)
    k = len(seg_y)
    a.seg_y[slot, :k], a.seg_r[slot, :k], a.seg_len[slot] = seg_y, st["seg_r"], k
    levels = forms.levels(seg_y, a.anchor[slot], bank.alpha)
    if k:  # the running sums, as `_learn_level`, `_linear` and `_trend` left them
        a.seg_sum[slot] = np.cumsum(seg_y * bank.C[:k], axis=0)[-1]
        a.seg_lin[slot, :k] = st["seg_lin"]
        a.s2_sum[slot] = np.cumsum(levels[:, :bank.d] * bank.C[:k, :bank.d], axis=0)[-1]
    if bank.trend_rate is not None:
        a.base_anchor[slot] = st["base_anchor"]
        if k:
            a.seg_t[slot, :k] = st["seg_t"]
            a.base_sum[slot] = np.cumsum(levels[:, :bank.d] * bank.gC[:k], axis=0)[-1]
    warm = np.asarray(st["warm_rows"], dtype=np.float64).reshape(-1, bank.d)
    a.warm[slot, :len(warm)] = warm
    if bank.season is not None:
        a.profile[slot], a.visits[slot] = st["profile"], st["visits"]
        if k:
            a.pbins[slot, :k], a.pres[slot, :k] = st["pending_bins"], st["pending_res"]
    bank.cal.load(slot, st["cal"])
    bank.tcal.load(slot, st["tcal"])
