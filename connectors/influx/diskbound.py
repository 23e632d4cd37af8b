"""The outbox's disk bound: merge the oldest pending points into coarser windows, drop only as a last resort.

A mixin of :class:`connectors.influx.outbox.Outbox` (it uses the outbox's connection, lock and counters); the
merge rules themselves are in ``coarsen.py``. Called with the outbox's lock held, after a ``put``.
"""
from __future__ import annotations

import json
import logging

from connectors.influx.coarsen import merge_fields

log = logging.getLogger("connectors.influx.outbox")


ROW_OVERHEAD = 48   # bytes counted per stored point on top of its encoded measurement, tags and fields


def _dumps(obj) -> str:
    """Canonical JSON (sorted keys, no spaces, no NaN)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _size(measurement: str, tags: str, fields: str) -> int:
    return len(measurement) + len(tags) + len(fields) + ROW_OVERHEAD


class DiskBound:
    """``_make_room()``: coarsen (``steps``), then drop the oldest, until ``_bytes <= max_bytes``."""

    def _make_room(self) -> None:
        while self._bytes > self.max_bytes:
            for step in self.steps:
                n = self._db.execute("SELECT count(*) FROM pending WHERE res < ? AND id > ?",
                                     (step, self._claimed_max)).fetchone()[0]
                if n >= 2:
                    self._coarsen(step, max(n // 2, 2))
                    break
            else:
                if not self._drop_oldest(max(self._pending // 10, 1)):
                    return   # all that is left is in flight

    def _coarsen(self, step: float, limit: int) -> None:
        rows = self._db.execute("SELECT id, measurement, tags, ts, fields, res, approx FROM pending "
                                "WHERE res < ? AND id > ? ORDER BY id LIMIT ?", (step, self._claimed_max, limit)).fetchall()
        step_ns = int(step * 1e9)
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault((r[1], r[2], r[3] // step_ns), []).append(r)
        new_rows, old_bytes = [], sum(_size(r[1], r[2], r[4]) for r in rows)
        for (measurement, tags, _), members in groups.items():
            members.sort(key=lambda r: r[3])
            if len(members) == 1:
                (i, m, t, ts, f, _res, a), = members
                new_rows.append((i, m, t, ts, f, step, a))
                continue
            fields, approx = merge_fields([json.loads(r[4]) for r in members], self.ddof)
            approx = approx or any(r[6] for r in members)
            if self.mark_coarsened:
                fields["window_s"] = float(step)
                if approx:
                    fields["approximate"] = True
            new_rows.append((min(r[0] for r in members), measurement, tags, members[0][3], _dumps(fields), step, int(approx)))
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("DELETE FROM pending WHERE id = ?", [(r[0],) for r in rows])
        self._db.executemany("INSERT INTO pending (id, measurement, tags, ts, fields, res, approx) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             new_rows)
        merged = len(rows) - len(new_rows)
        if merged:
            self._bump("coarsened_in", len(rows) - sum(1 for g in groups.values() if len(g) == 1))
            self._bump("coarsened_out", sum(1 for g in groups.values() if len(g) > 1))
        self._db.execute("COMMIT")
        self._pending -= merged
        self._bytes += sum(_size(r[1], r[2], r[4]) for r in new_rows) - old_bytes
        log.info("outbox %s over %d bytes: merged %d pending points into %d windows of %gs",
                 self.path, self.max_bytes, len(rows), len(new_rows), step)

    def _drop_oldest(self, limit: int) -> int:
        rows = self._db.execute("SELECT id, measurement, tags, fields FROM pending WHERE id > ? ORDER BY id LIMIT ?",
                                (self._claimed_max, limit)).fetchall()
        if not rows:   # everything pending is in flight: nothing we may drop
            return 0
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("DELETE FROM pending WHERE id = ?", [(r[0],) for r in rows])
        self._bump("dropped", len(rows))
        self._db.execute("COMMIT")
        self._pending -= len(rows)
        self._bytes -= sum(_size(r[1], r[2], r[3]) for r in rows)
        log.warning("outbox %s full (max_outbox_bytes=%d) with everything at the coarsest step (%gs): "
                    "dropped the %d oldest points; raise max_outbox_bytes or add a coarser step",
                    self.path, self.max_bytes, self.steps[-1] if self.steps else 0, len(rows))
        return len(rows)

