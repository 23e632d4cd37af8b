"""The window stage's checkpoint entries: what changed since the last checkpoint, not every buffered reading.

An open window holds its readings until it closes (percentiles need them), so a long window on many devices
buffers a lot: an hour of 1,000 devices at 1 Hz is 3.6 million rows. Rewriting them all at every checkpoint
(as a single whole-state entry does) costs the whole buffer each time; here a checkpoint writes

* ``("rows", start, gen, block)``: the rows buffered since the previous checkpoint (generation ``gen``), one entry
  per window start and block of ``KEY_BLOCK`` key ids. Entries are written once and then only touched again
  when some of their rows leave (their window closed for some keys): the entry is rewritten with the rows left,
  or deleted when none are;
* ``("keys", block)``: the key tuples of ids ``block * KEY_BLOCK ...``, written when the block gets a new key;
* ``("meta",)``: the event clocks, the arrival counter and the generation, every time (one value per key).

So a checkpoint costs the readings that arrived since the previous one, plus the windows that closed. A save
that failed is retried whole by the next one (``state_saved`` is what marks entries durable). A checkpoint in
the older whole-state form (one entry) restores, and the next save then replaces it by these entries.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..stage import StateChanges

KEY_BLOCK = 256
META = ("meta",)
FORMAT = 3


def _groups(rows: dict[str, np.ndarray], idx: np.ndarray) -> list[tuple[tuple, np.ndarray]]:
    """The rows ``idx`` grouped by (start, gen, key block): [((start, gen, block), row indices)]."""
    if not len(idx):
        return []
    start, gen, block = rows["start"][idx], rows["gen"][idx], rows["key"][idx] // KEY_BLOCK
    order = np.lexsort((block, gen, start))
    s, g, b = start[order], gen[order], block[order]
    head = np.ones(len(order), dtype=bool)
    head[1:] = (s[1:] != s[:-1]) | (g[1:] != g[:-1]) | (b[1:] != b[:-1])
    bounds = np.append(np.flatnonzero(head), len(order))
    return [((float(s[a]), int(g[a]), int(b[a])), idx[order[a:z]]) for a, z in zip(bounds[:-1], bounds[1:])]


class RowEntries:
    """Which checkpoint entries the buffered rows of one window stage need written or deleted (module docstring)."""

    def __init__(self) -> None:
        self.gen = 0               # generation of rows buffered from now on
        self.durable_below = 0     # rows of generations below this are in a saved checkpoint
        self.saved_keys = 0        # key ids below this are in a saved checkpoint
        self.touched: set[tuple] = set()    # saved (start, gen, block) groups that lost rows since
        self.complete_next = False          # the next save replaces every entry (after a whole-state restore)
        self._taken: tuple[int, int, frozenset] | None = None

    def removed(self, out: dict[str, np.ndarray]) -> None:
        """Rows that left the buffer (their windows closed): their saved entries must be rewritten or deleted."""
        saved = out["gen"] < self.durable_below
        if saved.any():
            self.touched.update(g for g, _ in _groups(out, np.flatnonzero(saved)))

    def changes(self, rows: dict[str, np.ndarray] | None, key_values: list[tuple], meta: dict) -> StateChanges:
        entries: dict[Any, Any] = {}
        present: set[tuple] = set()
        if rows is not None:
            fresh = rows["gen"] >= self.durable_below
            idx = np.arange(len(fresh)) if self.touched else np.flatnonzero(fresh)
            for group, members in _groups(rows, idx):
                present.add(group)
                if group[1] >= self.durable_below or group in self.touched:
                    entries[("rows", *group)] = {k: v[members] for k, v in rows.items() if k not in ("clock", "gen")}
        deleted = [("rows", *g) for g in self.touched - present]
        n = len(key_values)
        for block in range(self.saved_keys // KEY_BLOCK, -(-n // KEY_BLOCK)):
            entries[("keys", block)] = [list(k) for k in key_values[block * KEY_BLOCK:(block + 1) * KEY_BLOCK]]
        entries[META] = {**meta, "format": FORMAT, "next_gen": self.gen + 1, "nkeys": n}
        self._taken = (self.gen + 1, n, frozenset(self.touched))
        self.gen += 1
        return StateChanges(entries, deleted, complete=self.complete_next)

    def saved(self) -> None:
        if self._taken is not None:
            self.durable_below, self.saved_keys, touched = self._taken
            self.touched -= touched
            self.complete_next = False
            self._taken = None

    def restored_whole(self) -> None:
        """State came from one whole snapshot: every row and key is unsaved, and the next save replaces all entries."""
        self.gen, self.durable_below, self.saved_keys = 0, 0, 0
        self.touched, self.complete_next, self._taken = set(), True, None

    def restored(self, entries: dict[Any, Any], where: str) -> tuple[list[tuple], dict, dict[str, np.ndarray] | None]:
        """(key tuples, meta, buffered rows with their generation) from saved entries; they are all durable."""
        meta = entries[META]
        blocks = sorted(k[1] for k in entries if isinstance(k, tuple) and k[:1] == ("keys",))
        keys = [tuple(k) for b in blocks for k in entries[("keys", b)]]
        if len(keys) != meta["nkeys"] or blocks != list(range(len(blocks))):
            raise ValueError(f"{where}: checkpoint holds {len(keys)} of {meta['nkeys']} keys (blocks {blocks}); "
                             "the checkpoint is damaged")
        parts = []
        for k, cols in entries.items():
            if isinstance(k, tuple) and k[:1] == ("rows",):
                part = {c: np.asarray(v) for c, v in cols.items()}
                part["gen"] = np.full(len(part["start"]), k[2], dtype=np.int64)
                parts.append(part)
        rows = None
        if parts:
            rows = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
            order = np.argsort(rows["seq"], kind="stable")       # arrival order, as buffered
            rows = {c: v[order] for c, v in rows.items()}
        self.gen = self.durable_below = int(meta["next_gen"])
        self.saved_keys = len(keys)
        self.touched, self.complete_next, self._taken = set(), False, None
        return keys, meta, rows
