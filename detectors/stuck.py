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

Only a run longer than the longest the key has ended alerts (``srmax``; a run teaches it at most
``2 srmax + 2``, and a run that went below ``ODD`` (1e-3) in the channel's tail only ``srmax + 1`` and
one continuation to ``q``, so a sensor that keeps freezing is still flagged, a few readings later each
time, up to about eight): a quantised reading that holds its value for ten readings at each peak of a
cycle, and for one or two on its flanks, fits no single geometric run length, and without this rule
alerted at every peak (14 times per 10,000 readings on a noise-free sine rounded to integers).

Bounded influence: a run teaches ``q`` at most ``CLIP * (q1 / (1 - q1) + 1)`` continuations (CLIP times
the run that the key's repeat rate makes likely; capping by ``q`` itself let ``q`` feed on each episode,
and a float sensor that froze for 40 readings every 2,000 was deaf to it from the fourth time on); its
repeats still count in ``q1`` (a constant series with rare blips must learn that it repeats).  A run
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
ODD = 1e-3  # a run whose tail probability fell below this teaches q one continuation and srmax one reading
Q1_MAX = 0.05  # the channel watches a field only while fewer than this share of its readings repeat
RUN_DECAY = 0.95  # of the continuation and stop counts, per ended run
FIELDS = ("srun", "srep", "srows", "scont", "sstop", "sq1", "sq", "sstart", "srmax")  # per field; srun an int


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
    alive &= r > st["srmax"]  # only a run longer than the longest the key has ended (as learned) alerts
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
        q1l = q1[li]
        cap = CLIP * (q1l / (1 - q1l) + 1)  # the most one run teaches q: from q1, which runs do not grow much
        e, n = eq[li], srun[li]
        st["srows"][li] = st["srows"][li] * row_decay + 1
        st["srep"][li] = st["srep"][li] * row_decay + e
        done = ~e & (n > 0)  # a run ended at this row
        if done.any():
            cont, stops, rmax = st["scont"][li], st["sstop"][li], st["srmax"][li]
            odd = (n > rmax) & (q1l * q[li] ** np.maximum(n - 1, 0) < ODD)  # the run was in the channel's tail
            c = np.where(odd, np.minimum(n - 1, 1), np.minimum(n - 1, cap))
            st["scont"][li] = np.where(done, RUN_DECAY * cont + c, cont)
            st["sstop"][li] = np.where(done, RUN_DECAY * stops + 1, stops)
            grown = np.maximum(rmax, np.minimum(n, np.where(odd, rmax + 1, 2 * rmax + 2)))
            st["srmax"][li] = np.where(done, grown, rmax)
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
