"""Reuse of earlier results by an expensive stage (``onnx`` or any other) behind ``frame_diff``.

``frame_diff`` marks records ``reused: True`` (skip the work) and marks audited records
``audit_by: <frame_diff id>`` (do the work and say whether the reused result would have been right).
An expensive stage wraps its work with a :class:`ReuseTracker`:

* :meth:`ReuseTracker.compute_mask` says which rows to compute (those not marked ``reused``);
* :meth:`ReuseTracker.merge` puts the computed rows back in order, fills the result fields of the
  reused rows with the key's last computed result (as of that row), scores audited rows against
  that last result and reports the score to the ``frame_diff`` stage that asked for the audit.

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

import threading
import weakref
from typing import Callable

import numpy as np

from pipeline.batch import Batch

_GUARDS: "weakref.WeakValueDictionary[tuple[str, str], object]" = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def register_guard(pipeline: str, stage_id: str, stage) -> None:
    """A ``frame_diff`` stage registers itself so that downstream audits reach it."""
    with _LOCK:
        _GUARDS[(pipeline, stage_id)] = stage


def report_audit(pipeline: str, stage_id: str, key: str, score: float) -> bool:
    """Deliver an audit score to the ``frame_diff`` stage ``stage_id`` of ``pipeline``; False if it is gone."""
    with _LOCK:
        stage = _GUARDS.get((pipeline, stage_id))
    if stage is None:
        return False
    stage.observe(key, score)
    return True


def count_agreement(a: float, b: float) -> float:
    """1 - |a - b| / max(|a|, |b|) on rounded counts; 1 when both are 0.

    >>> count_agreement(4.2, 5.4), count_agreement(0.1, 0.2)
    (0.8, 1.0)
    """
    a, b = round(float(a)), round(float(b))
    m = max(abs(a), abs(b))
    return 1.0 if m == 0 else 1.0 - abs(a - b) / m


def exact_agreement(a, b) -> float:
    return float(np.array_equal(np.asarray(a), np.asarray(b)))


def key_column(batch: Batch, key: list[str]) -> np.ndarray:
    """One string key per row from the ``key`` tags (missing tags read as empty)."""
    n = len(batch)
    if not key:
        return np.full(n, "", dtype=object)
    cols = [batch.tags.get(k, np.full(n, None, dtype=object)) for k in key]
    if len(cols) == 1:
        return np.array(["" if v is None else v for v in cols[0]], dtype=object)
    return np.array(["|".join("" if v is None else v for v in vals) for vals in zip(*cols)], dtype=object)


class ReuseTracker:
    """Last computed result per key, for rows marked ``reused`` (see module docstring)."""

    def __init__(self, key: list[str], result_fields: list[str] | None = None, pipeline: str = "pipeline",
                 agreement: Callable[[float, float], float] | None = None, agreement_field: str | None = None):
        self.key = list(key)
        self.result_fields = result_fields
        self.pipeline = pipeline
        self.agreement = agreement or exact_agreement
        self.agreement_field = agreement_field      # the field audits compare (default: the first result field)
        self.last: dict[str, dict[str, float]] = {}

    @staticmethod
    def compute_mask(batch: Batch) -> np.ndarray:
        reused = batch.extra.get("reused")
        if reused is None:
            return np.ones(len(batch), bool)
        return ~np.array([v is True or v == 1 for v in reused], dtype=bool)

    def merge(self, batch: Batch, mask: np.ndarray, computed: Batch) -> Batch:
        """``computed`` = the rows of ``batch[mask]`` with result fields added (same order, no rows dropped)."""
        n = len(batch)
        if mask.all():
            out = computed
        else:
            fields = self.result_fields or [f for f in computed.fields if f not in batch.fields]
            cols = {}
            for f in fields:
                col = np.full(n, np.nan)
                src = computed.fields.get(f)
                if src is not None:
                    col[mask] = src
                cols[f] = col
            out = batch.with_fields(**cols)
        fields = self.result_fields or [f for f in out.fields if f not in batch.fields]
        keys = key_column(batch, self.key)
        audit = batch.extra.get("audit_by")
        cols = {f: out.fields[f].astype(np.float64, copy=True) for f in fields if f in out.fields}
        afield = self.agreement_field or (fields[0] if fields else None)
        for i in range(n):        # rows of one key depend on each other in order; results are few columns
            k = keys[i]
            if mask[i]:
                if audit is not None and audit[i] is not None and afield in cols and k in self.last:
                    score = self.agreement(self.last[k].get(afield, np.nan), cols[afield][i])
                    report_audit(self.pipeline, audit[i], k, score)
                self.last[k] = {f: float(c[i]) for f, c in cols.items()}
            else:
                prev = self.last.get(k)
                for f, c in cols.items():
                    c[i] = np.nan if prev is None else prev.get(f, np.nan)
        return out.with_fields(**cols) if cols else out

    def snapshot(self) -> dict:
        return {k: dict(v) for k, v in self.last.items()}

    def restore(self, state: dict | None) -> None:
        self.last = {k: dict(v) for k, v in (state or {}).items()}
