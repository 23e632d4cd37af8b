"""The stuck channel of `residual`: a reading repeated for longer than the key's own repeats make likely.

Per field, a *repeat* is a learned reading exactly equal to the one before, and a *run* of r repeats is
r + 1 equal readings in a row.  The key learns two chances: ``q1``, that a reading repeats the one before
(decayed counts of repeats over rows, half-life `half_life` rows), and ``q``, that a run goes on one more
row (decayed counts of continuations and of ended runs, with two pseudo-counts at ``q1``, so a key that
never ended a run has ``q = q1``).  The tail probability of the current run of r repeats is
``q1 * q ** (r - 1)``: a noisy float sensor almost never repeats (q1 near 0: two or three repeats
alert).  The channel watches only fields where fewer than `Q1_MAX` (5%) of the readings repeat: on a
quantised reading, a counter, a bursty or a constant series runs of repeats are normal and come in
lengths no geometric model follows (on SKAB's quantised pressure a run model alerted every few hundred
readings), so there it stays silent.  It counts in the detector's Bonferroni factor only on rows where
a watched field repeats: elsewhere it cannot alert.

Bounded influence: a run teaches ``q`` at most ``CLIP * (q / (1 - q) + 1)`` continuations (CLIP times
the run the key expects), so one stuck episode does not teach the key that stuck is normal (its repeats
still count in ``q1``: a constant series with rare blips must learn that it repeats).  A run
that lasted `adapt` (rows or seconds, as the level's) is a regime: it no longer alerts.  A row that is
not learned is the anomaly stage's `impute_last` (the key's last good value): the channel does not judge it.  ``q1`` and ``q``
are frozen for a segment, like the scale.

`step` handles one row of each of k keys, so the per-key detector (k = 1, row by row) and the cross-key
engine (one row of every key per pass) compute the same floats.
"""
from __future__ import annotations

import numpy as np

__all__ = ["FIELDS", "fresh", "step", "quiet", "freeze"]

CLIP = 4.0
Q1_MAX = 0.05  # the channel watches a field only while fewer than this share of its readings repeat
RUN_DECAY = 0.95  # of the continuation and stop counts, per ended run
FIELDS = ("srun", "srep", "srows", "scont", "sstop", "sq1", "sq", "sstart")  # per field; srun is an int


def fresh(shape) -> dict:
    """The channel's state for arrays of `shape` (k, d) or (d,): nothing learned (q1 = q = 1/2)."""
    st = {k: np.zeros(shape) for k in FIELDS}
    st["srun"] = np.zeros(shape, dtype=np.int64)
    st["sq1"] = np.full(shape, 0.5)
    st["sq"] = np.full(shape, 0.5)
    return st


def step(x, last, st, ts, learn, adapt_rows, adapt_s, row_decay):
    """One row of each of k keys: readings `x` (k, d) after the keys' last learned readings `last`; `st`
    maps FIELDS to (k, d) arrays, updated in place where `learn` (k,).  Returns the row's tail probability
    (k,): the smallest over the watched fields times their number (Bonferroni), and whether a watched
    field repeats at this row (k,): only then can the channel alert, so only then does it count in the
    detector's Bonferroni factor."""
    eq = x == last
    srun, q1, q = st["srun"], st["sq1"], st["sq"]
    r = np.where(eq, srun + 1, 0)
    start = np.where(eq & (srun > 0), st["sstart"], ts[:, None])  # event time of the run's first repeat
    alive = (r >= 1) & learn[:, None]  # a row not learned is imputed (the last good value): not a repeat
    if adapt_rows:
        alive &= r < adapt_rows
    elif adapt_s:
        alive &= ts[:, None] - start < adapt_s
    on = q1 < Q1_MAX
    pf = np.where(alive & on, q1 * q ** np.maximum(r - 1, 0), 1.0)
    n_on = on.sum(axis=1)
    p = np.minimum(1.0, np.maximum(n_on, 1) * pf.min(axis=1))
    if learn.any():
        li = np.flatnonzero(learn)
        cap = CLIP * (q[li] / (1 - q[li]) + 1)  # the most one run teaches
        e, n = eq[li], srun[li]
        st["srows"][li] = st["srows"][li] * row_decay + 1
        st["srep"][li] = st["srep"][li] * row_decay + e
        done = ~e & (n > 0)  # a run ended at this row
        if done.any():
            cont, stops = st["scont"][li], st["sstop"][li]
            st["scont"][li] = np.where(done, RUN_DECAY * cont + np.minimum(n - 1, cap), cont)
            st["sstop"][li] = np.where(done, RUN_DECAY * stops + 1, stops)
        st["srun"][li] = r[li]
        st["sstart"][li] = start[li]
    return p, (on & alive).any(axis=1)


def quiet(st, n: int, row_decay: float, t_last: float) -> None:
    """What `step` does to one key's state (arrays (d,)) over n learned rows in a row where no field repeats
    and no run is open: only the row counts decay and grow.  Python floats, the same IEEE operations in the
    same order as `step`'s numpy ones (a repeat adds 0.0, which changes nothing), so the floats are equal."""
    rows, reps = st["srows"].tolist(), st["srep"].tolist()
    for _ in range(n):
        rows = [r * row_decay + 1.0 for r in rows]
        reps = [r * row_decay for r in reps]
    st["srows"][:], st["srep"][:] = rows, reps
    st["sstart"][:] = t_last  # each row is a run's would-be start


def freeze(st) -> tuple[np.ndarray, np.ndarray]:
    """(q1, q) for the next segment, from the counts."""
    q1 = (st["srep"] + 1.0) / (st["srows"] + 2.0)
    q = (st["scont"] + 2.0 * q1) / (st["scont"] + st["sstop"] + 2.0)
    return q1, q
