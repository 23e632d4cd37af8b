"""Reuse of earlier results by an expensive stage (``onnx`` or any other) behind ``frame_diff``.

``frame_diff`` marks records ``reused: True`` (skip the work), ``reuse_reason: audit`` (do the work and
say whether the reused result would have been right) and ``diff_by: <frame_diff id>`` (whom to tell).
An expensive stage wraps its work with a :class:`ReuseTracker`:

* :meth:`ReuseTracker.compute_mask` says which rows to compute (those not marked ``reused``);
* :meth:`ReuseTracker.merge` puts the computed rows back in order, fills the result fields of the
  reused rows with the key's last computed result (as of that row), scores audited rows against
  that last result and reports the score (and, if asked, each result's confidence) to that ``frame_diff``.

>>> import numpy as np
>>> from pipeline.batch import Batch
>>> t = ReuseTracker(key=["device"], result_fields=["count"])
>>> b = Batch.from_records([{"ts": i, "tags": {"device": "cam"}, "reused": i in (1, 2)} for i in range(4)])
>>> m = t.compute_mask(b)
>>> m.tolist()
[True, False, False, True]
>>> computed = b.take(m).with_fields(count=np.array([3.0, 5.0]))
>>> [r["fields"]["count"] for r in t.merge(b, m, computed).to_records()]
[3.0, 3.0, 3.0, 5.0]
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from pipeline.batch import Batch
from pipeline.keys import key_codes
from pipeline.stage import Peers


def report(peers: Peers, stage_id: str, what: str, key: str, value: float) -> bool:
    """Deliver an audit score (``what="observe"``) or a result's confidence (``"observe_confidence"``) to the
    ``frame_diff`` stage ``stage_id`` among ``peers`` (the graph's stages); False if it is not there."""
    stage = peers.get(stage_id)
    if stage is None or not hasattr(stage, what):
        return False
    getattr(stage, what)(key, value)
    return True


def count_agreement(a: float, b: float) -> float:
    """1 - |a - b| / max(|a|, |b|) on rounded counts; 1 when both are 0.

    >>> count_agreement(4.2, 5.4), count_agreement(0.1, 0.2)
    (0.8, 1.0)
    """
    a, b = round(float(a)), round(float(b))
    m = max(abs(a), abs(b))
    return 1.0 if m == 0 else 1.0 - abs(a - b) / m


def rounded_agreement(a: float, b: float) -> float:
    """1 when the rounded counts are equal, else 0 (the strict metric: a count that is off by one is wrong).

    >>> rounded_agreement(4.2, 3.9), rounded_agreement(4.2, 5.4)
    (1.0, 0.0)
    """
    return float(round(float(a)) == round(float(b)))


def exact_agreement(a, b) -> float:
    return float(np.array_equal(np.asarray(a), np.asarray(b)))


_NOTHING = {"fields": {}, "tags": {}, "extra": {}}


def _fill(column: np.ndarray, rows: np.ndarray, value) -> None:
    """``column[rows] = value``, with an array value kept as one object per row (not broadcast)."""
    if isinstance(value, np.ndarray) and column.dtype == object:
        one = np.empty(1, dtype=object)
        one[0] = value
        value = np.broadcast_to(one, (len(rows),))
    column[rows] = value


def _last_computed(codes: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the last computed row (``mask``) of the same key at or before it (``src``) and strictly
    before it (``prev``); -1 where there is none in the batch.

    >>> src, prev = _last_computed(np.array([0, 1, 0, 0, 1]), np.array([True, False, False, True, True]))
    >>> src.tolist(), prev.tolist()
    ([0, -1, 0, 3, 4], [-1, -1, 0, 0, -1])
    """
    n = len(codes)
    j = np.arange(n)
    if n == 0 or codes.max() == 0:                       # one key (the usual micro-batch): no sorting
        last = np.maximum.accumulate(np.where(mask, j, -1)) if n else j
        return last, np.concatenate(([-1], last[:-1])) if n else j
    order = np.argsort(codes, kind="stable")             # rows grouped by key, batch order within a key
    cs = codes[order]
    start = np.maximum.accumulate(np.where(np.concatenate(([True], cs[1:] != cs[:-1])), j, 0))
    last = np.maximum.accumulate(np.where(mask[order], j, -1))
    last = np.where(last >= start, last, -1)
    before = np.concatenate(([-1], last[:-1]))
    before = np.where(before >= start, before, -1)
    src, prev = np.empty(n, np.int64), np.empty(n, np.int64)
    src[order] = np.where(last >= 0, order[last], -1)
    prev[order] = np.where(before >= 0, order[before], -1)
    return src, prev


def key_column(batch: Batch, key: list[str]) -> np.ndarray:
    """One key per row, as an object array: the tag value for one key tag, the tuple of values for several."""
    if len(key) == 1:                           # one key tag of plain strings (the usual case): the column itself
        col = batch.tags.get(key[0])
        if col is not None and col.dtype == object and all(type(v) is str for v in col.tolist()):
            return col
    codes, keys = key_codes(batch, key)
    table = np.empty(len(keys), dtype=object)
    for i, k in enumerate(keys):
        table[i] = k[0] if len(k) == 1 else k
    return table[codes]


class ReuseTracker:
    """Last computed result per key, for rows marked ``reused`` (see module docstring)."""

    def __init__(self, key: list[str], result_fields: list[str] | None = None, peers: Peers | None = None,
                 agreement: Callable[[float, float], float] | None = None, agreement_field: str | None = None,
                 confidence: str = "none"):
        """``peers``: the graph's stages (``ctx.peers``), where the ``frame_diff`` named by ``diff_by`` is."""
        self.key = list(key)
        self.result_fields = result_fields
        self.peers = peers if peers is not None else Peers()
        self.agreement = agreement or exact_agreement
        self.agreement_field = agreement_field      # the field audits compare (default: the first result field)
        self.confidence = confidence
        self.last: dict[str, dict] = {}             # key -> {"fields": {..}, "tags": {..}, "extra": {..}}
        self.names: tuple[list, list, list] = ([], [], [])   # result fields, tags, annotations seen so far

    @staticmethod
    def compute_mask(batch: Batch) -> np.ndarray:
        reused = batch.extra.get("reused")
        if reused is None:
            return np.ones(len(batch), bool)
        if len(reused) == 1 and reused[0] is True:     # frame_diff's one record, reused (its Python bool)
            return np.zeros(1, bool)
        return ~np.asarray(reused == True, dtype=bool)    # noqa: E712 (elementwise on an object column)

    def merge(self, batch: Batch, mask: np.ndarray, computed: Batch) -> Batch:
        """``computed`` = the rows of ``batch[mask]`` with result fields/tags added (same order, none dropped).

        Vectorised: each reused row takes the values of the last computed row of its key at or before it
        (one running maximum over the rows sorted by key), or the key's result from an earlier batch;
        Python runs per key and per computed row that reports back, never per reused row."""
        if "reused" not in batch.extra and "diff_by" not in batch.extra:
            return computed                      # no frame_diff upstream: nothing to reuse or report
        n = len(batch)
        if n == 1 and mask[0]:                   # a camera's batch of one, computed: scalars
            out = self._merge_one(batch, computed)
            if out is not None:
                return out
        col = key_column(batch, self.key) if len(self.key) == 1 else None
        if col is not None and (n == 1 or bool((col == col[0]).all())):
            return self._merge_one_key(batch, mask, computed, col[0])
        fields, tags, extra = self._result_names(batch, computed)
        every = bool(mask.all())                 # nothing reused (a processed frame alone, say): computed columns as they are
        fcols, tcols, ecols = {}, {}, {}
        for cols, names, part, kind in ((fcols, fields, computed.fields, "f"), (tcols, tags, computed.tags, "o"),
                                        (ecols, extra, computed.extra, "o")):
            for name in names:
                got = part.get(name)
                if every and got is not None:
                    cols[name] = np.asarray(got, np.float64) if kind == "f" else np.asarray(got, object)
                    continue
                c = cols[name] = np.full(n, np.nan) if kind == "f" else np.full(n, None, dtype=object)
                if got is not None:
                    c[mask] = got
        codes, keys = key_codes(batch, self.key)          # several keys (one key: _merge_one_key)
        keys = [k[0] if len(k) == 1 else k for k in keys]
        if every:                                # every row computed: only each row's previous computed row
            src, prev = None, _last_computed(codes, mask)[1]
        else:
            src, prev = _last_computed(codes, mask)
        take = stale = np.zeros(0, bool)
        if not every:
            take = ~mask & (src >= 0)            # reused rows after a computed row of their key in this batch
            stale = ~mask & (src < 0)            # reused rows that need the key's result from before
        if take.any():
            rows, got = np.flatnonzero(take), src[take]
            for cols in (fcols, tcols, ecols):
                for c in cols.values():
                    c[rows] = c[got]
        if stale.any():
            for code in (range(len(keys)) if len(keys) > 1 else (0,)):
                rows = np.flatnonzero(stale & (codes == code)) if len(keys) > 1 else np.flatnonzero(stale)
                if not len(rows):
                    continue
                last = self.last.get(keys[code], _NOTHING)
                for part, cols, absent in (("fields", fcols, np.nan), ("tags", tcols, None), ("extra", ecols, None)):
                    for name, c in cols.items():
                        _fill(c, rows, last[part].get(name, absent))
        self._report(batch, mask, codes, keys, prev, fcols, fields)
        lasts = {int(codes[i]): int(i) for i in np.flatnonzero(mask).tolist()}
        for code, i in lasts.items():                      # the key's last computed row is its result from now on
            self.last[keys[code]] = {"fields": {f: float(c[i]) for f, c in fcols.items()},
                                     "tags": {t: c[i] for t, c in tcols.items()},
                                     "extra": {e: c[i] for e, c in ecols.items()}}
        base = batch if not mask.all() else computed
        return base.with_fields(**fcols).with_tags(**tcols).with_extra(**ecols)

    def _merge_one_key(self, batch: Batch, mask: np.ndarray, computed: Batch, k) -> Batch:
        """:meth:`merge` for a batch of one key (a camera's micro-batch): row i takes computed row ``pos[i] - 1``
        (``pos`` = computed rows up to and including i), or the key's earlier result where ``pos[i]`` is 0, by one
        gather per result column from [earlier result, computed values]; audits and confidences per computed row
        (a few per batch) in Python."""
        fields, tags, extra = self._result_names(batch, computed)
        pos = np.cumsum(mask)
        last = self.last.get(k, _NOTHING)
        m = len(computed)
        cols: dict[str, dict[str, np.ndarray]] = {}
        latest: dict[str, dict] = {}             # the key's result from now on: its last computed row's
        for part, names, got, absent in (("fields", fields, computed.fields, np.nan), ("tags", tags, computed.tags, None),
                                         ("extra", extra, computed.extra, None)):
            out, now = cols[part], latest[part] = {}, {}
            for name in names:
                ext = np.empty(m + 1, np.float64 if part == "fields" else object)
                ext[0] = last[part].get(name, absent)        # an array value stays one object
                c = got.get(name)
                ext[1:] = absent if c is None else c
                out[name] = ext[pos]
                now[name] = float(ext[m]) if part == "fields" else ext[m]
        afield = self.agreement_field or (fields[0] if fields else None)
        by = batch.extra.get("diff_by")
        if m and by is not None and afield in cols["fields"]:
            rows = np.flatnonzero(mask).tolist()
            values = cols["fields"][afield][rows].tolist()
            bys = by[rows].tolist()
            reason = batch.extra.get("reuse_reason")
            why = reason[rows].tolist() if reason is not None else [None] * m
            before = last["fields"].get(afield, np.nan) if k in self.last else None
            for v, b, r in zip(values, bys, why):
                if b is not None and r == "audit" and before is not None:
                    report(self.peers, b, "observe", k, self.agreement(before, v))
                before = v
            if self.confidence == "rounding":    # the key's confidence is its latest result's, per frame_diff stage
                newest = {b: v for v, b in zip(values, bys) if b is not None and math.isfinite(v)}
                for b, v in newest.items():
                    report(self.peers, b, "observe_confidence", k, 1.0 - 2.0 * abs(v - round(v)))
        if m:
            self.last[k] = latest
        base = batch if not mask.all() else computed
        return base.with_fields(**cols["fields"]).with_tags(**cols["tags"]).with_extra(**cols["extra"])

    def merge_reused(self, batch: Batch) -> Batch:
        """:meth:`merge` for a batch in which every row is marked ``reused`` (nothing computed, nothing to
        report): each row gets its key's last result, one fill per result column (and key)."""
        col = key_column(batch, self.key) if len(self.key) == 1 else None
        if col is not None and (len(batch) == 1 or bool((col == col[0]).all())):
            return self._reused_one_key(batch, col[0])     # one key (the usual micro-batch, a camera frame by frame)
        fields, tags, extra = self.result_fields or self.names[0], self.names[1], self.names[2]
        codes, keys = key_codes(batch, self.key)
        lasts = [self.last.get(k[0] if len(k) == 1 else k, _NOTHING) for k in keys]
        cols: dict[str, dict[str, np.ndarray]] = {}
        for part, names, absent in (("fields", fields, np.nan), ("tags", tags, None), ("extra", extra, None)):
            out = cols[part] = {}
            for name in names:
                values = [last[part].get(name, absent) for last in lasts]
                if part == "fields":
                    out[name] = np.asarray(values, dtype=np.float64)[codes]
                    continue
                table = np.empty(len(keys), dtype=object)
                for i, v in enumerate(values):      # per key, never per row
                    table[i] = v
                out[name] = table[codes]
        return Batch(batch.ts, {**batch.tags, **cols["tags"]}, {**batch.fields, **cols["fields"]}, batch.frames,
                     {**batch.extra, **cols["extra"]}, batch.arrival)

    def _reused_one_key(self, batch: Batch, k) -> Batch:
        """:meth:`merge_reused` for rows of one key: the key's last result as columns, one fill each."""
        n = len(batch)
        last = self.last.get(k, _NOTHING)
        fields = dict(batch.fields)
        got = last["fields"]
        for name in self.result_fields or self.names[0]:
            fields[name] = np.full(n, got.get(name, np.nan), np.float64)
        tags, extra = dict(batch.tags), dict(batch.extra)
        for out, names, got in ((tags, self.names[1], last["tags"]), (extra, self.names[2], last["extra"])):
            for name in names:
                c = out[name] = np.empty(n, object)
                c.fill(got.get(name))                # an array value stays one object per row
        return Batch(batch.ts, tags, fields, batch.frames, extra, batch.arrival)

    def _report(self, batch, mask, codes, keys, prev, fcols, fields) -> None:
        """Audit scores and result confidences back to the frame_diff stage that marked the rows (a batch of
        several keys; one key: :meth:`_merge_one_key`, one record: :meth:`_report_one`)."""
        by = batch.extra.get("diff_by")
        afield = self.agreement_field or (fields[0] if fields else None)
        if by is None or afield not in fcols or not mask.any():
            return
        values = fcols[afield]
        reason = batch.extra.get("reuse_reason")
        if reason is not None:
            for i in np.flatnonzero(mask & (reason == "audit")).tolist():
                k = keys[codes[i]]
                if by[i] is None:
                    continue
                if prev[i] >= 0:
                    before = values[prev[i]]
                elif k in self.last:
                    before = self.last[k]["fields"].get(afield, np.nan)
                else:
                    continue
                report(self.peers, by[i], "observe", k, self.agreement(before, values[i]))
        if self.confidence == "rounding":          # a key's confidence is its latest result's: report that one per key
            rows = np.flatnonzero(mask & np.isfinite(values) & (by != None))   # noqa: E711 (elementwise)
            if not len(rows):
                return
            last = {}                               # (key, frame_diff stage) -> its last computed row
            for i, c, b in zip(rows.tolist(), codes[rows].tolist(), by[rows].tolist()):
                last[c, b] = i
            for i in last.values():
                v = float(values[i])
                report(self.peers, by[i], "observe_confidence", keys[codes[i]], 1.0 - 2.0 * abs(v - round(v)))

    def _report_one(self, k, by, reason, afield, value) -> None:
        """:meth:`_report` for one computed record of key ``k`` (marked by frame_diff ``by``, with ``reason``)."""
        if by is None:
            return
        if reason == "audit" and k in self.last:
            report(self.peers, by, "observe", k, self.agreement(self.last[k]["fields"].get(afield, np.nan), value))
        v = float(value)
        if self.confidence == "rounding" and math.isfinite(v):
            report(self.peers, by, "observe_confidence", k, 1.0 - 2.0 * abs(v - round(v)))

    def _result_names(self, batch: Batch, computed: Batch) -> tuple[list, list, list]:
        """The result fields, tags and annotations: those ``computed`` added to ``batch``, joined to the ones seen
        before (``self.names``; a reused row gets each of them, NaN/None where its key has none yet)."""
        new = (self.result_fields or [f for f in computed.fields if f not in batch.fields],
               [t for t in computed.tags if t not in batch.tags], [e for e in computed.extra if e not in batch.extra])
        for have, names in zip(self.names, new):
            have.extend(x for x in names if x not in have)
        return self.result_fields or self.names[0], self.names[1], self.names[2]

    def _merge_one(self, batch: Batch, computed: Batch) -> Batch | None:
        """:meth:`merge` for a batch of one record that was computed, keyed by one tag of plain strings (a camera
        delivering frame by frame): the same record, last result and reports, from scalars (each numpy call costs
        microseconds, and the general path makes dozens). None: take the general path."""
        col = batch.tags.get(self.key[0]) if len(self.key) == 1 else None
        if col is None or col.dtype != object or type(col[0]) is not str:
            return None
        k = col[0]
        fields, tags, extra = self._result_names(batch, computed)
        fcols = {}
        for name in fields:
            got = computed.fields.get(name)
            fcols[name] = np.full(1, np.nan) if got is None else np.asarray(got, np.float64)
        ocols = ({}, {})
        for cols, names, part in zip(ocols, (tags, extra), (computed.tags, computed.extra)):
            for name in names:
                got = part.get(name)
                cols[name] = np.full(1, None, dtype=object) if got is None else np.asarray(got, object)
        tcols, ecols = ocols
        by = batch.extra.get("diff_by")
        afield = self.agreement_field or (fields[0] if fields else None)
        if by is not None and afield in fcols:
            reason = batch.extra.get("reuse_reason")
            self._report_one(k, by[0], None if reason is None else reason[0], afield, fcols[afield][0])
        self.last[k] = {"fields": {f: float(c[0]) for f, c in fcols.items()}, "tags": {t: c[0] for t, c in tcols.items()},
                        "extra": {e: c[0] for e, c in ecols.items()}}
        return Batch(computed.ts, {**computed.tags, **tcols}, {**computed.fields, **fcols}, computed.frames,
                     {**computed.extra, **ecols}, computed.arrival)

    def snapshot(self) -> dict:
        return {"last": {k: {p: dict(d) for p, d in v.items()} for k, v in self.last.items()},
                "names": tuple(list(x) for x in self.names)}

    def restore(self, state: dict | None) -> None:
        state = state or {"last": {}, "names": ([], [], [])}
        self.last = {k: {p: dict(d) for p, d in v.items()} for k, v in state["last"].items()}
        self.names = tuple(list(x) for x in state["names"])
