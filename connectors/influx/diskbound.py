"""The outbox's disk bound: merge the oldest pending points into coarser windows, drop only as a last resort.

A mixin of :class:`connectors.influx.outbox.Outbox` (it uses the outbox's connection, lock and counters); the
merge rules themselves are in ``coarsen.py``. Called with the outbox's lock held, after a ``put``.

**Windows stay true.** Coarsening to a step of ``S`` seconds merges *whole aligned windows*: every pending point of
one series whose timestamp lies in ``[k*S, (k+1)*S)`` (epoch-aligned) becomes one point with timestamp ``k*S`` and
``window_s = S``. A window is left as it is when any of its points is in flight, when a point in it is itself wider
than the window, or when the series was already delivered from the window's start on (the server holds part of it:
a coarse point there would claim readings it does not hold). A point that arrives later for a window that is
pending as a coarse point is merged into it; one identical to a point already merged (a replay after a restart)
is a duplicate and skipped.
"""
from __future__ import annotations

import json
import logging

from connectors.influx.coarsen import merge_fields, split_field

log = logging.getLogger("connectors.influx.outbox")


ROW_OVERHEAD = 48   # bytes counted per stored point on top of its encoded measurement, tags and fields
META_FIELDS = ("window_s", "approximate")   # what coarsening adds: not data, never merged


def _dumps(obj) -> str:
    """Canonical JSON (sorted keys, no spaces, no NaN)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _size(measurement: str, tags: str, fields: str) -> int:
    return len(measurement) + len(tags) + len(fields) + ROW_OVERHEAD


def _data(fields_json: str) -> dict:
    f = json.loads(fields_json)
    for k in META_FIELDS:
        f.pop(k, None)
    return f


class DiskBound:
    """``_make_room()``: coarsen (``steps``), then drop the oldest, until ``_bytes <= max_bytes``."""

    def _make_room(self) -> None:
        while self._bytes > self.max_bytes:
            if any(self._coarsen(step) for step in self.steps):
                continue
            if not self._drop_oldest(max(self._pending // 10, 1)):
                return   # all that is left is in flight

    def _mark(self, fields: dict, step: float, approx: bool) -> dict:
        if self.mark_coarsened:
            fields["window_s"] = float(step)
            if approx:
                fields["approximate"] = True
        return fields

    def _coarsen(self, step: float) -> bool:
        """Merge the oldest whole ``step`` windows; False when nothing could be merged."""
        step_ns = int(round(step * 1e9))
        n = self._db.execute("SELECT count(*) FROM pending WHERE res < ? AND id > ?", (step, self._claimed_max)).fetchone()[0]
        if not n:
            return False
        cands = self._db.execute("SELECT measurement, tags, ts FROM pending WHERE res < ? AND id > ? ORDER BY id LIMIT ?",
                                 (step, self._claimed_max, max(n // 2, 1))).fetchall()
        windows = dict.fromkeys((m, t, ts - ts % step_ns) for m, t, ts in cands)
        gen, new_rows, gone, logged, n_in, n_out, old_bytes = self.counters["generation"], [], [], [], 0, 0, 0
        for m, t, w in windows:
            members = self._db.execute("SELECT id, ts, fields, res, approx FROM pending WHERE measurement = ? AND tags = ? "
                                       "AND ts >= ? AND ts < ? ORDER BY ts", (m, t, w, w + step_ns)).fetchall()
            if not self._mergeable(m, t, w, step_ns, members):
                continue
            fields, approx = merge_fields([_data(f) for _, _, f, _, _ in members], self.ddof)
            approx = approx or any(a for *_, a in members)
            new_rows.append((min(r[0] for r in members), m, t, w, _dumps(self._mark(fields, step, approx)), step, int(approx)))
            gone += members
            old_bytes += sum(_size(m, t, f) for _, _, f, _, _ in members)
            logged += [(m, t, ts, f, gen) for _, ts, f, res, _ in members if res < self.steps[0]]
            if len(members) > 1:
                n_in, n_out = n_in + len(members), n_out + 1
        if not new_rows:
            return False
        with self._tx():
            self._db.executemany("DELETE FROM pending WHERE id = ?", [(r[0],) for r in gone])
            self._db.executemany("INSERT INTO pending (id, measurement, tags, ts, fields, res, approx) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?)", new_rows)
            self._db.executemany("INSERT OR REPLACE INTO merged (measurement, tags, ts, fp, gen) VALUES (?, ?, ?, ?, ?)",
                                 logged)
            self._bump("coarsened_in", n_in)
            self._bump("coarsened_out", n_out)
            self._pending -= len(gone) - len(new_rows)
            self._bytes += sum(_size(r[1], r[2], r[4]) for r in new_rows) - old_bytes
            self._coarse_res = max(self._coarse_res, float(step))
        if n_out:
            log.info("outbox %s over %d bytes: merged %d pending points into %d windows of %gs",
                     self.path, self.max_bytes, n_in, n_out, step)
        return True

    def _mergeable(self, m: str, t: str, w: int, step_ns: int, members: list) -> bool:
        if any(i <= self._claimed_max for i, *_ in members):
            return False                                   # part of the window is on the wire
        if any(ts + int(round(res * 1e9)) > w + step_ns for _, ts, _, res, _ in members):
            return False                                   # a member is wider than the window
        row = self._db.execute("SELECT ts FROM delivered WHERE measurement = ? AND tags = ?", (m, t)).fetchone()
        return row is None or row[0] < w                   # else the server already holds part of the window

    def _into_coarse(self, rows: list, res: float) -> int:
        """Points of ``rows`` inside a pending coarse point of their series are merged into it (``rows[i] = None``)."""
        done, gen = 0, self.counters["generation"]
        for i, (m, t, ts, fj, *_rest) in enumerate(rows):
            cur = self._db.execute("SELECT id, ts, res, fields, approx FROM pending WHERE measurement = ? AND tags = ? "
                                   "AND ts <= ? ORDER BY ts DESC LIMIT 1", (m, t, ts)).fetchone()
            if cur is None or cur[2] <= res or cur[1] + int(round(cur[2] * 1e9)) <= ts:
                continue
            before = self._db.execute("SELECT fp FROM merged WHERE measurement = ? AND tags = ? AND ts = ?",
                                      (m, t, ts)).fetchone()
            rows[i], done = None, done + 1
            if before is not None and before[0] == fj:      # already in the coarse point: a replay
                self._bump("duplicates", 1)
                continue
            new = json.loads(fj)
            fields, approx = merge_fields([_data(cur[3]), new], self.ddof)
            # a changed version of a merged point cannot be taken out again; first/last depend on the members' order
            approx = approx or bool(cur[4]) or before is not None or any(
                split_field(k)[1] in ("first", "last") for k in new)
            self._db.execute("UPDATE pending SET fields = ?, approx = ?, rev = rev + 1 WHERE id = ?",
                             (_dumps(self._mark(fields, cur[2], approx)), int(approx), cur[0]))
            self._db.execute("INSERT OR REPLACE INTO merged (measurement, tags, ts, fp, gen) VALUES (?, ?, ?, ?, ?)",
                             (m, t, ts, fj, gen))
            self._bump("coarsened_in", 1)
        return done

    def _into_delivered_coarse(self, rows: list, res: float) -> tuple[list, int]:
        """Points inside a coarse point the server already holds: sent again as that window, merged.

        The server keeps one point per (series, timestamp): a fine point sent on its own inside a delivered coarse
        window would be counted twice by a sum over time, or replace the coarse point when it has the window's
        timestamp. So it is merged into the delivered point's fields and the window is re-sent as one coarse point
        (the server overwrites the old one). A point already merged before (a replay) is a duplicate."""
        out, made, done, gen = [], {}, 0, self.counters["generation"]
        for row in rows:
            m, t, ts, fj = row[:4]
            cur = self._db.execute("SELECT ts, res, fields, approx FROM delivered_coarse WHERE measurement = ? AND "
                                   "tags = ? AND ts <= ? ORDER BY ts DESC LIMIT 1", (m, t, ts)).fetchone()
            if cur is None or cur[1] <= res or cur[0] + int(round(cur[1] * 1e9)) <= ts:
                out.append(row)
                continue
            done += 1
            before = self._db.execute("SELECT fp FROM merged WHERE measurement = ? AND tags = ? AND ts = ?",
                                      (m, t, ts)).fetchone()
            if before is not None and before[0] == fj:      # already in the delivered point: a replay
                self._bump("duplicates", 1)
                continue
            key = (m, t, cur[0], cur[1])
            base = made[key] if key in made else (_data(cur[2]), bool(cur[3]))
            new = json.loads(fj)
            fields, approx = merge_fields([base[0], new], self.ddof)
            approx = approx or base[1] or before is not None or any(split_field(k)[1] in ("first", "last") for k in new)
            made[key] = (fields, approx)
            self._db.execute("INSERT OR REPLACE INTO merged (measurement, tags, ts, fp, gen) VALUES (?, ?, ?, ?, ?)",
                             (m, t, ts, fj, gen))
            self._bump("coarsened_in", 1)
        for (m, t, w, res_w), (fields, approx) in made.items():
            fj = _dumps(self._mark(dict(fields), res_w, approx))
            out.append((m, t, w, fj, float(res_w), int(approx), fj))
            self._coarse_res = max(self._coarse_res, float(res_w))   # later points join it while it is pending
        return out, done

    def _drop_oldest(self, limit: int) -> int:
        rows = self._db.execute("SELECT id, measurement, tags, fields FROM pending WHERE id > ? ORDER BY id LIMIT ?",
                                (self._claimed_max, limit)).fetchall()
        if not rows:   # everything pending is in flight: nothing we may drop
            return 0
        with self._tx():
            self._db.executemany("DELETE FROM pending WHERE id = ?", [(r[0],) for r in rows])
            self._bump("dropped", len(rows))
            self._pending -= len(rows)
            self._bytes -= sum(_size(r[1], r[2], r[3]) for r in rows)
        log.warning("outbox %s full (max_outbox_bytes=%d) with everything at the coarsest step (%gs): "
                    "dropped the %d oldest points; raise max_outbox_bytes or add a coarser step",
                    self.path, self.max_bytes, self.steps[-1] if self.steps else 0, len(rows))
        return len(rows)
