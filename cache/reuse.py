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

import threading
import weakref
from typing import Callable

import numpy as np

from pipeline.batch import Batch
from pipeline.keys import key_codes

_GUARDS: "weakref.WeakValueDictionary[tuple[str, str], object]" = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


def register_guard(pipeline: str, stage_id: str, stage) -> None:
    """A ``frame_diff`` stage registers itself so that downstream audits reach it."""
    with _LOCK:
        _GUARDS[(pipeline, stage_id)] = stage


def report(pipeline: str, stage_id: str, what: str, key: str, value: float) -> bool:
    """Deliver an audit score (``what="observe"``) or a result's confidence (``"observe_confidence"``) to the
    ``frame_diff`` stage ``stage_id`` of ``pipeline``; False if it is gone."""
    with _LOCK:
        stage = _GUARDS.get((pipeline, stage_id))
    if stage is None:
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


def exact_agreement(a, b) -> float:
    return float(np.array_equal(np.asarray(a), np.asarray(b)))


def key_column(batch: Batch, key: list[str]) -> np.ndarray:
    """One key per row, as an object array: the tag value for one key tag, the tuple of values for several."""
    codes, keys = key_codes(batch, key)
    table = np.empty(len(keys), dtype=object)
    for i, k in enumerate(keys):
        table[i] = k[0] if len(k) == 1 else k
    return table[codes]


class ReuseTracker:
    """Last computed result per key, for rows marked ``reused`` (see module docstring)."""

    def __init__(self, key: list[str], result_fields: list[str] | None = None, pipeline: str = "pipeline",
                 agreement: Callable[[float, float], float] | None = None, agreement_field: str | None = None,
                 confidence: str = "none"):
        self.key = list(key)
        self.result_fields = result_fields
        self.pipeline = pipeline
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
        return ~np.array([v is True or v == 1 for v in reused], dtype=bool)

    def merge(self, batch: Batch, mask: np.ndarray, computed: Batch) -> Batch:
        """``computed`` = the rows of ``batch[mask]`` with result fields/tags added (same order, none dropped)."""
        if "reused" not in batch.extra and "diff_by" not in batch.extra:
            return computed                      # no frame_diff upstream: nothing to reuse or report
        n = len(batch)
        fields = self.result_fields or [f for f in computed.fields if f not in batch.fields]
        tags = [t for t in computed.tags if t not in batch.tags]
        extra = [e for e in computed.extra if e not in batch.extra]
        for have, new in zip(self.names, (fields, tags, extra)):
            have.extend(x for x in new if x not in have)
        fields = self.result_fields or self.names[0]
        tags, extra = self.names[1], self.names[2]
        fcols = {f: np.full(n, np.nan) for f in fields}
        tcols = {t: np.full(n, None, dtype=object) for t in tags}
        ecols = {e: np.full(n, None, dtype=object) for e in extra}
        for e, c in ecols.items():
            if e in computed.extra:
                c[mask] = computed.extra[e]
        for f, c in fcols.items():
            if f in computed.fields:
                c[mask] = computed.fields[f]
        for t, c in tcols.items():
            if t in computed.tags:
                c[mask] = computed.tags[t]
        keys = key_column(batch, self.key)
        reason = batch.extra.get("reuse_reason")
        by = batch.extra.get("diff_by")
        afield = self.agreement_field or (fields[0] if fields else None)
        for i in range(n):        # rows of one key depend on each other in order; results are few columns
            k = keys[i]
            if mask[i]:
                src = by[i] if by is not None else None
                if src is not None and afield in fcols:
                    v = fcols[afield][i]
                    if reason is not None and reason[i] == "audit" and k in self.last:
                        score = self.agreement(self.last[k]["fields"].get(afield, np.nan), v)
                        report(self.pipeline, src, "observe", k, score)
                    if self.confidence == "rounding" and np.isfinite(v):
                        report(self.pipeline, src, "observe_confidence", k, 1.0 - 2.0 * abs(v - round(v)))
                self.last[k] = {"fields": {f: float(c[i]) for f, c in fcols.items()},
                                "tags": {t: c[i] for t, c in tcols.items()},
                                "extra": {e: c[i] for e, c in ecols.items()}}
            else:
                prev = self.last.get(k, {"fields": {}, "tags": {}, "extra": {}})
                for f, c in fcols.items():
                    c[i] = prev["fields"].get(f, np.nan)
                for t, c in tcols.items():
                    c[i] = prev["tags"].get(t)
                for e, c in ecols.items():
                    c[i] = prev["extra"].get(e)
        base = batch if not mask.all() else computed
        return base.with_fields(**fcols).with_tags(**tcols).with_extra(**ecols)

    def snapshot(self) -> dict:
        return {"last": {k: {p: dict(d) for p, d in v.items()} for k, v in self.last.items()},
                "names": tuple(list(x) for x in self.names)}

    def restore(self, state: dict | None) -> None:
        state = state or {"last": {}, "names": ([], [], [])}
        self.last = {k: {p: dict(d) for p, d in v.items()} for k, v in state["last"].items()}
        self.names = tuple(list(x) for x in state["names"])
