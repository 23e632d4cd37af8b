"""The closed forms `ResidualDetector` and its cross-key engine share, and the upgrade of saved states.

`levels` and `smooth` are the prefix-exact EWMAs of a segment (a cumsum, so any split of the segment gives
the same floats); `pick_raw` chooses each field's forecast; `upgrade_state` fills in what later versions
added to a `ResidualDetector.state()` saved by an earlier one (both paths load through it).
"""
from __future__ import annotations

import numpy as np

from .stuck import fresh as stuck_fresh

__all__ = ["levels", "smooth", "pick_raw", "upgrade_state"]


def upgrade_state(state: dict) -> dict:
    """`state` with what later versions added, for a state saved by an earlier one: the warm-up's wait
    (none), the stuck channel (on, fresh), and the linear forecast (its second smoothing starts at the slow level's segment start and
    follows the segment's learned rows, with the fast forecast's scale)."""
    state = dict(state)
    state.setdefault("warm_waited", 0)
    state.setdefault("stuck", True)  # from before the stuck channel (or a part of it): on, the missing parts fresh
    for k, v in stuck_fresh(len(state["fields"])).items():
        state.setdefault(k, v)
    if "smooth2" not in state:
        d = len(state["fields"])
        anchor, scale = (np.asarray(state[k], dtype=np.float64) for k in ("anchor", "scale"))
        seg_y = np.asarray(state["seg_y"], dtype=np.float64).reshape(-1, 2 * d)
        g = np.asarray(state["alpha"], dtype=np.float64)[:d]
        s2 = anchor[:d].copy()
        if len(seg_y):
            s2 = smooth(levels(seg_y, anchor, np.asarray(state["alpha"]))[:, :d], 0, None, None, True, len(seg_y),
                        g, anchor[:d], anchor[:d])[-1]
        state.update(smooth2=s2, smooth2_anchor=anchor[:d].copy(), lin_scale=scale[d:].copy(),
                     seg_lin=np.abs(np.asarray(state["seg_r"], dtype=np.float64).reshape(-1, 2 * d)[:, d:]))
    return state


def levels(seg_y, anchor, alpha) -> np.ndarray:
    """The level after each of a segment's learned rows: L_j = r^(j+1) anchor + alpha r^j sum_k r^-k y_k."""
    j = np.arange(len(seg_y))[:, None]
    r = 1 - alpha
    return r ** (j + 1) * anchor + alpha * r ** j * np.cumsum(seg_y * r ** -j, axis=0)


def pick_raw(z_slow, z_fast, z_lin, s_slow, s_fast, s_lin) -> np.ndarray:
    """Per field, the residual of the forecast whose scale is smallest (ties: slow, then fast); the largest field."""
    slow = (s_slow <= s_fast) & (s_slow <= s_lin)
    fast = ~slow & (s_fast <= s_lin)
    return np.where(slow, z_slow, np.where(fast, z_fast, z_lin)).max(axis=1)


def smooth(slow_levels, k0, learn, idx, every, m, g, anchor, now) -> np.ndarray:
    """An EWMA (rate g) of the slow level after each row of the call, from `anchor` at the segment start
    (`now`: its value before the call), the same prefix-exact cumsum as the level's."""
    j = np.arange(len(slow_levels))[:, None]
    r = 1 - g
    out = r ** (j + 1) * anchor + g * r ** j * np.cumsum(slow_levels * r ** -j, axis=0)
    if every:
        return out[k0:]
    if not len(idx):
        return np.repeat(now[None, :], m, axis=0)
    filled = np.zeros((m, out.shape[1]))
    filled[idx] = out[k0:]
    k = np.maximum.accumulate(np.where(learn, np.arange(m), -1))
    return np.where((k >= 0)[:, None], filled[np.maximum(k, 0)], now)
