"""The ``cache:`` and ``reuse:`` options of the ``onnx`` stage (usable by any expensive stage).

``cache:`` puts a :class:`cache.redundancy.RedundancyCache` in front of the model (exact tier on the
input tensors' bytes + model version, approximate tier on a thumbnail of one input), shared by every
stage that names the same cache. ``reuse:`` says how records that ``frame_diff`` marked ``reused`` get
the last result of their key, and how audited records are scored.

>>> import numpy as np
>>> calls = []
>>> def model(inputs):
...     calls.append(len(inputs["x"]))
...     return {"y": inputs["x"].reshape(len(inputs["x"]), -1).mean(axis=1, keepdims=True).round()}
>>> class Stage: model_version = "m@1"
>>> infer = cache_wrapper(CacheOptions(agree="round", min_neighbors=1, audit_rate=0), Stage(), name="doc")(model)
>>> x = np.zeros((3, 1, 12, 16), np.float32); x[1] += 5
>>> infer({"x": x})["y"].ravel().tolist(), calls
([0.0, 5.0, 0.0], [2])
>>> infer({"x": x + 0.01})["y"].ravel().tolist(), calls     # near the stored inputs: approximate hits
([0.0, 5.0, 0.0], [2])
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cache.redundancy import RedundancyCache, release, shared
from cache.reuse import count_agreement, exact_agreement, rounded_agreement
from pipeline.config import Duration


class CacheOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="Stages (devices) that name the same cache share it; default: one per model file.")
    max_entries: int = Field(4096, ge=1, le=10_000_000, description="Most results kept.")
    max_bytes: int = Field(64 << 20, ge=1024, description="Most bytes kept (results + features).")
    ttl: Duration | None = Field(None, gt=0, description="Forget a result this long after it was computed (processing time: the pipeline clock).")
    max_age: Duration | None = Field(1.0, gt=0, description="Approximate hits only when one of the agreeing neighbours (of the `k` nearest) was computed at "
                                     "most this long ago (processing time): bounds how long a change the thumbnail hides can reuse an old result; `null`: no limit. Exact hits are not limited.")
    eviction: Literal["lru", "cost"] = Field("lru", description="`lru`, or `cost` (GreedyDual-Size: keeps results that were expensive per byte).")
    approximate: bool = Field(True, description="Also reuse results of near inputs (k nearest neighbours that agree).")
    feature_input: str | None = Field(None, description="Model input whose thumbnail is the approximate feature; default: the first.")
    radius: float = Field(0.02, gt=0, description="Largest RMS distance of a neighbour's feature, in the input's units (0.02 = 5 gray levels at scale 1/255).")
    k: int = Field(3, ge=1, le=64, description="Neighbours looked at.")
    min_neighbors: int = Field(2, ge=1, le=64, description="Neighbours within the radius needed, all with the same result, to reuse.")
    index: Literal["auto", "brute", "lsh"] = Field("auto", description="Nearest-neighbour search: brute-force matrix product, LSH, or by size.")
    agree_output: str | None = Field(None, description="Model output that decides whether results agree; default: the first.")
    agree: Literal["exact", "round", "argmax"] = Field(
        "exact", description="How results of `agree_output` are compared: `exact`, `round` (rounded values, e.g. counts; "
        "audits score 1 - |dcount|/max), `argmax` (same class).")
    min_confidence: float = Field(0.4, ge=0, lt=1, description="`agree: round`: a result whose rounding confidence (1 - 2 x its distance to the "
                                  "nearest integer) is below this is never reused by the approximate tier (a count near x.5 flips on a small change). 0 = off.")
    audit_rate: float = Field(0.05, ge=0, le=1, description="Fraction of approximate hits computed anyway to check them.")
    adaptive: bool = Field(True, description="Shrink the radius at once when audits disagree, grow it slowly when they agree.")
    target: float = Field(0.95, gt=0, le=1, description="Agreement target of the guard (Wilson lower bound over audits).")
    seed: int = Field(0, description="Seed of the audit draws.")
    snapshot_entries: int = Field(256, ge=0, le=1_000_000, description="Most recently used entries saved in checkpoints.")


class ReuseOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    key: list[str] = Field(default_factory=lambda: ["device"], description="Tags whose last result a `reused` record gets (as in frame_diff).")
    agreement_field: str | None = Field(None, description="Result field that audits compare; default: the first result field.")
    agreement: Literal["exact", "count", "rounded"] = Field(
        "exact", description="Audit score: `exact` equality, `count` = 1 - |dcount| / max(count) on rounded values (lenient), "
        "or `rounded` = 1 when the rounded counts are equal, else 0 (strict).")
    confidence: Literal["none", "rounding"] = Field(
        "none", description="Report each result's confidence to frame_diff: `rounding` = 1 - 2 x distance of the value "
        "to the nearest integer (for counts), used by frame_diff's `confidence_power`.")


def agreement_fn(kind: str) -> Callable[[float, float], float]:
    return {"count": count_agreement, "rounded": rounded_agreement}.get(kind, exact_agreement)


def _row_key(agree: str, out: str | None, min_confidence: float = 0.0):
    """Bytes equal exactly when two results agree; ``None`` (the approximate tier never reuses it) for a ``round``
    result whose rounding confidence, 1 - 2 x its distance to the nearest integer, is below ``min_confidence``."""
    def key(value: dict) -> bytes | None:
        name = out or next(iter(value))
        v = np.asarray(value[name])
        if agree == "round":
            r = np.round(v)
            if min_confidence > 0 and v.size and float((1 - 2 * np.abs(v - r)).min()) < min_confidence:
                return None
            return r.astype(np.int64).tobytes()
        if agree == "argmax":
            return str(int(np.argmax(v))).encode()
        return v.tobytes()
    return key


def _row_agreement(agree: str, out: str | None):
    def score(a: dict, b: dict) -> float:
        name = out or next(iter(a))
        x, y = np.asarray(a[name]).ravel(), np.asarray(b[name]).ravel()
        if agree == "round" and x.size == 1:
            return count_agreement(x[0], y[0])
        return float(_row_key(agree, out)(a) == _row_key(agree, out)(b))
    return score


def cache_key(opts: CacheOptions, name: str) -> tuple:
    """(registry name, options signature) of the shared cache ``opts`` asks for (``snapshot_entries`` is the stage's
    own business: it does not keep caches apart)."""
    return opts.name or name, tuple(sorted(opts.model_dump(exclude={"name", "snapshot_entries"}).items()))


def make_cache(opts: CacheOptions, name: str) -> RedundancyCache:
    return shared(*cache_key(opts, name), max_entries=opts.max_entries, max_bytes=opts.max_bytes, ttl=opts.ttl,
                  max_age=opts.max_age, eviction=opts.eviction, approximate=opts.approximate, radius=opts.radius, k=opts.k,
                  min_neighbors=opts.min_neighbors, index=opts.index, audit_rate=opts.audit_rate, seed=opts.seed,
                  adaptive=opts.adaptive, target=opts.target,
                  key_fn=_row_key(opts.agree, opts.agree_output, opts.min_confidence),
                  agreement=_row_agreement(opts.agree, opts.agree_output))


def cache_wrapper(opts: CacheOptions, stage, name: str, now: Callable[[], float] = lambda: 0.0):
    """``wrapper(infer) -> infer`` for ``Onnx.wrap_infer``: results come from the cache where it can."""
    cache = make_cache(opts, name)

    def wrap(inner: Callable[[dict], dict]) -> Callable[[dict], dict]:
        def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            cache.set_model_version(stage.model_version)
            names = list(inputs)
            n = len(inputs[names[0]])
            rows = ([inputs[names[0]][i] for i in range(n)] if len(names) == 1 else
                    [np.concatenate([np.ascontiguousarray(inputs[m][i]).view(np.uint8).ravel() for m in names])
                     for i in range(n)])
            feats = None
            if opts.approximate:
                src = inputs[opts.feature_input or names[0]]
                feats = [cache.feature(src[i]) for i in range(n)]
            before = dict(cache.counters)
            look = cache.lookup(rows, now=now(), features=feats)
            todo = np.flatnonzero(look.compute)
            fresh = []
            if len(todo):
                out = inner({m: inputs[m][todo] for m in names})
                fresh = [{k: v[j] for k, v in out.items()} for j in range(len(todo))]
            values = cache.complete(look, fresh)
            ctx = getattr(stage, "ctx", None)
            if ctx is not None:  # this stage's share of the (possibly shared) cache's counters, for /metrics
                for key, value in cache.counters.items():
                    if isinstance(value, (int, np.integer)) and value != before.get(key, 0):
                        ctx.count(f"cache_{key}", int(value - before.get(key, 0)))
            return {k: np.stack([v[k] for v in values]) for k in values[0]}
        infer.cache = cache
        released = []

        def done() -> None:           # once per stage, however often it is closed
            if not released:
                released.append(True)
                release(*cache_key(opts, name))
        infer.release = done
        return infer
    return wrap
