"""The computation-redundancy cache: reuse an expensive stage's earlier results for the same (or a near) input.

Two tiers, shared by every device that asks the same model:

* **exact**: a hash of the input bytes (with shape and dtype) and the model version;
* **approximate**: the k nearest stored inputs by a compact feature (a 16x12 gray thumbnail of a
  frame, or a binned vector), within ``radius`` (RMS, in input units); a result is reused only when at
  least ``min_neighbors`` neighbours are inside the radius and they all gave the same result (and, with
  ``max_age``, one of them was computed at most ``max_age`` ago: a change too small for the radius, such as a
  person walking in at the edge of a frame, cannot keep an old result for longer than that).

Bounded in entries and bytes, evicted by LRU or cost-aware (GreedyDual-Size), entries expire after
``ttl`` seconds (of the caller's clock; the onnx stage passes the pipeline clock, processing time), and
everything is dropped when the model version changes. Approximate hits are audited (a seeded ``audit_rate``
of them is computed anyway); an audited hit that disagrees counts as a false reuse and tightens the radius
(:class:`AccuracyGuard`).

Use: ``r = cache.lookup(inputs, now)``; compute the rows in ``r.compute``; ``cache.complete(r, fresh)``
stores them, scores the audits and returns every row's result.

>>> import numpy as np
>>> c = RedundancyCache(model_version="m1", min_neighbors=1, audit_rate=0.0)
>>> a, b = np.zeros((24, 32), np.uint8), np.full((24, 32), 200, np.uint8)
>>> r = c.lookup([a, b, a], now=0.0)
>>> r.kind.tolist(), r.compute.tolist()          # the third row is the first's twin in this batch
(['miss', 'miss', 'batch'], [True, True, False])
>>> c.complete(r, ["dark", "bright"]).tolist()
['dark', 'bright', 'dark']
>>> r = c.lookup([a, b + 1], now=1.0)
>>> r.kind.tolist(), c.complete(r, []).tolist()
(['exact', 'approx'], ['dark', 'bright'])
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from cache.features import default_feature
from cache.guard import AccuracyGuard, uniform
from cache.neighbors import NeighborIndex
from pipeline.statecodec import dumps as state_bytes

_SHARED: dict[tuple, "RedundancyCache"] = {}
_USERS: dict[tuple, int] = {}
_SHARED_LOCK = threading.Lock()
log = logging.getLogger(__name__)


def shared(name: str, signature=None, **kwargs) -> "RedundancyCache":
    """The process-wide cache called ``name`` (created with ``kwargs`` on first use): shared across devices.

    ``signature`` (hashable: the options the caller was configured with) keeps caches of one name apart when their
    options differ: a stage never silently gets another stage's radius, ``max_age`` or bounds (a warning is logged
    for each new set of options under a name in use). Each call is a user until :func:`release`."""
    with _SHARED_LOCK:
        key = (name, signature)
        c = _SHARED.get(key)
        if c is None:
            if any(n == name for n, _ in _SHARED):
                log.warning("cache %r is named by stages with different options: each set of options gets its own "
                            "cache (give them the same options to share results)", name)
            c = _SHARED[key] = RedundancyCache(**kwargs)
        _USERS[key] = _USERS.get(key, 0) + 1
        return c


def release(name: str, signature=None) -> None:
    """One user of :func:`shared`'s cache is done (a stage closed); the last one drops it from the registry (a reload
    that changed a stage's ``cache:`` options would otherwise keep the old cache for the life of the process)."""
    with _SHARED_LOCK:
        key = (name, signature)
        left = _USERS.get(key, 0) - 1
        if left > 0:
            _USERS[key] = left
        else:
            _USERS.pop(key, None)
            _SHARED.pop(key, None)


def value_key(v) -> bytes:
    """Bytes that are equal exactly when two results are equal (used to check neighbours agree)."""
    if isinstance(v, np.ndarray):
        return b"nd" + str((v.dtype.str, v.shape)).encode() + v.tobytes()
    if isinstance(v, dict):
        return b"d" + b"|".join(k.encode() + b"=" + value_key(v[k]) for k in sorted(v))
    if isinstance(v, (list, tuple)):
        return b"l" + b"|".join(value_key(x) for x in v)
    return repr(v).encode()


def exact_agreement(a, b) -> float:
    return float(value_key(a) == value_key(b))


@dataclass
class Lookup:
    kind: np.ndarray      # object (n,): exact | approx | audit | miss | batch
    compute: np.ndarray   # bool (n,): rows the caller must compute (misses, audits; not batch twins)
    values: np.ndarray    # object (n,): cached value for hits (and for audits, the value it would have reused)
    dup_of: np.ndarray    # int (n,): for "batch" rows, the row whose result they share
    hashes: list
    feats: np.ndarray | None
    now: float
    stale: dict = field(default_factory=dict)   # row -> [(slot, hash)]: agreeing neighbours older than max_age


class RedundancyCache:
    def __init__(self, *, model_version: str = "", max_entries: int = 4096, max_bytes: int = 64 << 20,
                 ttl: float | None = None, max_age: float | None = None, eviction: str = "lru",
                 approximate: bool = True,
                 radius: float = 4.0, k: int = 3, min_neighbors: int = 2, index: str = "auto",
                 audit_rate: float = 0.05, seed: int = 0, adaptive: bool = True, target: float = 0.95,
                 feature: Callable | None = None, agreement: Callable | None = None,
                 key_fn: Callable | None = None):
        if eviction not in ("lru", "cost"):
            raise ValueError(f"eviction must be 'lru' or 'cost', got {eviction!r}")
        self.model_version = str(model_version)
        self.max_entries, self.max_bytes, self.ttl, self.eviction = int(max_entries), int(max_bytes), ttl, eviction
        self.max_age = max_age             # approximate hits need a neighbour computed at most this long ago
        self.approximate, self.k, self.min_neighbors = approximate, int(k), int(min_neighbors)
        self.index_method, self.audit_rate, self.seed = index, float(audit_rate), int(seed)
        self.feature = feature or default_feature
        self.agreement = agreement or exact_agreement
        self.key_fn = key_fn or value_key            # results with equal keys agree (approximate tier); None: never reused
        # the radius loosens on every agreeing audit, as it was measured (frame_diff's threshold: one step per
        # min_audits audits, docs/redundancy.md "The guard on views it was not tuned on")
        self.guard = AccuracyGuard(radius, target, adaptive, min_threshold=radius / 16, max_threshold=radius * 2,
                                   loosen_every=1)
        self.lock = threading.RLock()
        self.counters = {"exact_hits": 0, "approx_hits": 0, "misses": 0, "batch_hits": 0, "audits": 0,
                         "false_reuses": 0, "evictions": 0, "expired": 0, "invalidations": 0, "renewed": 0}
        self._lookups = 0
        self._clear()

    # -- storage ---------------------------------------------------------------------------------
    def _clear(self) -> None:
        self.entries: dict[int, dict] = {}       # slot -> {"hash", "value", "vkey", "bytes", "t", "used", "prio", "dim"}
        self.by_hash: dict[bytes, int] = {}
        self.indexes: dict[int, NeighborIndex] = {}
        self.free = list(range(self.max_entries - 1, -1, -1))
        self.bytes = 0
        self.tick = 0
        self.inflation = 0.0                     # GreedyDual-Size "L"

    def __len__(self) -> int:
        return len(self.entries)

    def _hash(self, x) -> bytes:
        a = np.ascontiguousarray(x)
        h = hashlib.blake2b(digest_size=16)
        h.update(self.model_version.encode() + b"\0" + str((a.dtype.str, a.shape)).encode())
        h.update(a.data if a.dtype != object else state_bytes(a))
        return h.digest()

    def set_model_version(self, version: str) -> bool:
        """Drop everything when the model changed; returns True when it did."""
        with self.lock:
            if str(version) == self.model_version:
                return False
            self.model_version = str(version)
            self._clear()
            self.guard.restore(None)
            self.counters["invalidations"] += 1
            return True

    def _index(self, dim: int) -> NeighborIndex:
        ix = self.indexes.get(dim)
        if ix is None:
            ix = self.indexes[dim] = NeighborIndex(dim, self.max_entries, self.index_method,
                                                   radius=self.guard.initial, seed=self.seed)
        return ix

    def _evict(self, slot: int, counter: str | None = "evictions") -> None:
        e = self.entries.pop(slot)
        self.by_hash.pop(e["hash"], None)
        if e["dim"]:
            self.indexes[e["dim"]].remove(slot)
        self.bytes -= e["bytes"]
        self.free.append(slot)
        if counter:
            self.counters[counter] += 1

    def _victim(self) -> int:
        key = "used" if self.eviction == "lru" else "prio"
        slot = min(self.entries, key=lambda s: self.entries[s][key])
        if self.eviction == "cost":
            self.inflation = self.entries[slot]["prio"]
        return slot

    def _store(self, h: bytes, feat, value, vkey, now: float, cost: float) -> None:
        if h in self.by_hash:
            self._evict(self.by_hash[h], None)
        vb = value.nbytes if isinstance(value, np.ndarray) else len(state_bytes(value))
        nbytes = 16 + vb + (feat.nbytes if feat is not None else 0) + 64
        if nbytes > self.max_bytes:
            return
        while self.entries and (not self.free or self.bytes + nbytes > self.max_bytes):
            self._evict(self._victim())
        slot = self.free.pop()
        dim = 0
        if feat is not None:
            dim = feat.shape[0]
            self._index(dim).add(slot, feat)
        self.tick += 1
        self.entries[slot] = {"hash": h, "value": value, "vkey": vkey, "bytes": nbytes, "t": now, "used": self.tick,
                              "prio": self.inflation + cost / nbytes, "cost": cost, "dim": dim}
        self.by_hash[h] = slot
        self.bytes += nbytes

    def _touch(self, slot: int) -> None:
        e = self.entries[slot]
        self.tick += 1
        e["used"] = self.tick
        e["prio"] = self.inflation + e["cost"] / e["bytes"]

    def _expire(self, now: float) -> None:
        if self.ttl is None:
            return
        for s in [s for s, e in self.entries.items() if now - e["t"] > self.ttl]:
            self._evict(s, "expired")

    # -- lookups ---------------------------------------------------------------------------------
    def lookup(self, inputs, now: float = 0.0, features=None) -> Lookup:
        with self.lock:
            n = len(inputs)
            self._expire(now)
            kind = np.full(n, "miss", dtype=object)
            values = np.full(n, None, dtype=object)
            dup_of = np.full(n, -1, np.int64)
            hashes = [self._hash(x) for x in inputs]
            first: dict[bytes, int] = {}
            for i, h in enumerate(hashes):
                slot = self.by_hash.get(h)
                if slot is not None:
                    kind[i], values[i] = "exact", self.entries[slot]["value"]
                    self._touch(slot)
                elif h in first:
                    kind[i], dup_of[i] = "batch", first[h]
                else:
                    first[h] = i
            feats, stale = None, {}
            if self.approximate and n:
                feats = (np.stack([np.asarray(f, np.float32) for f in features]) if features is not None
                         else self._features(inputs))
                stale = self._approx(np.flatnonzero(kind == "miss"), feats, kind, values, now)
            self._lookups += n
            for name, key in (("exact", "exact_hits"), ("approx", "approx_hits"), ("batch", "batch_hits"),
                              ("audit", "audits")):
                self.counters[key] += int((kind == name).sum())
            self.counters["misses"] += int((kind == "miss").sum())
            compute = (kind == "miss") | (kind == "audit")
            return Lookup(kind, compute, values, dup_of, hashes, feats, now, stale)

    def _features(self, inputs):
        fs = [self.feature(x) for x in inputs]
        if len({f.shape for f in fs}) == 1:
            return np.stack(fs)
        return np.array(fs, dtype=object)     # mixed shapes: looked up per dimension

    def _approx(self, rows, feats, kind, values, now: float) -> dict:
        """Mark approximate hits (and audits among them); returns the rows whose agreeing neighbours are all older
        than ``max_age``, with those neighbours (``complete`` renews them when the fresh result agrees)."""
        stale: dict[int, list] = {}
        if len(rows) == 0:
            return stale
        radius = self.guard.threshold("approx")
        by_dim: dict[int, list] = {}
        for i in rows:
            by_dim.setdefault(len(feats[i]), []).append(i)
        for dim, rs in by_dim.items():
            ix = self.indexes.get(dim)
            if ix is None or len(ix) == 0:
                continue
            idx, dist = ix.query(np.stack([np.asarray(feats[i], np.float32) for i in rs]), self.k)
            for i, ids, ds in zip(rs, idx, dist):
                near = [s for s, d in zip(ids, ds) if s >= 0 and d <= radius]
                keys = {self.entries[s]["vkey"] for s in near}
                if len(near) < self.min_neighbors or len(keys) != 1 or None in keys:
                    continue          # too few, they disagree, or key_fn says a result is not to be reused
                if self.max_age is not None and max(self.entries[s]["t"] for s in near) < now - self.max_age:
                    stale[i] = [(s, self.entries[s]["hash"]) for s in near]
                    continue           # every neighbour is old: the scene may have moved on within the radius
                values[i] = self.entries[near[0]]["value"]
                kind[i] = "approx"
                for s in near:
                    self._touch(s)
        hits = np.flatnonzero(kind == "approx")
        if len(hits) and self.audit_rate > 0:
            u = uniform(self.seed, "approx", self._lookups + hits)
            kind[hits[u < self.audit_rate]] = "audit"
        return stale

    def complete(self, res: Lookup, fresh, cost: float = 1.0) -> np.ndarray:
        """Store the computed rows (``fresh``: one result per ``res.compute`` row, in order), score audits,
        return the results of every row."""
        with self.lock:
            out = res.values.copy()
            rows = np.flatnonzero(res.compute)
            if len(fresh) != len(rows):
                raise ValueError(f"complete() got {len(fresh)} results for {len(rows)} computed rows")
            for i, v in zip(rows, fresh):
                if res.kind[i] == "audit":
                    score = self.agreement(res.values[i], v)
                    self.guard.observe("approx", score)
                    if score < 1.0:
                        self.counters["false_reuses"] += 1
                out[i] = v
                vkey = self.key_fn(v)
                feat = None if res.feats is None or vkey is None else np.asarray(res.feats[i], np.float32)
                # (a None key is never reused approximately: kept for the exact tier only, out of the k nearest)
                if i in res.stale and self._renew(res.stale[i], res.hashes[i], feat, v, vkey, res.now, cost):
                    continue
                self._store(res.hashes[i], feat, v, vkey, res.now, cost)
            for i in np.flatnonzero(res.dup_of >= 0):
                out[i] = out[res.dup_of[i]]
            return out

    def _renew(self, near: list, h: bytes, feat, value, vkey, now: float, cost: float) -> bool:
        """A row computed because its agreeing neighbours were all older than ``max_age``. When the fresh result
        agrees with them they are confirmed: the oldest is replaced by the new row (so the entry count stays, and
        the exact tier knows the newest bytes), the others are fresh again (their time is ``now``, as if computed
        again; ``ttl`` counts from there too). Storing a near twin per ``max_age`` instead would crowd the fresh
        entries out of the k nearest on a still camera, and reuse would collapse. False: store as usual."""
        live = [s for s, hs in near if s in self.entries and self.entries[s]["hash"] == hs]
        if feat is None or len(live) != len(near) or vkey != self.entries[live[0]]["vkey"]:
            return False
        oldest = min(live, key=lambda s: self.entries[s]["t"])
        for s in live:
            if s != oldest:
                self.entries[s]["t"] = now
                self._touch(s)
        self._evict(oldest, None)
        self._store(h, feat, value, vkey, now, cost)
        self.counters["renewed"] += 1
        return True

    def run(self, inputs, fn: Callable, now: float = 0.0, cost: float = 1.0) -> tuple[np.ndarray, Lookup]:
        """Lookup, compute the misses with ``fn(list_of_inputs) -> list_of_results``, complete."""
        r = self.lookup(inputs, now)
        rows = np.flatnonzero(r.compute)
        fresh = fn([inputs[i] for i in rows]) if len(rows) else []
        return self.complete(r, fresh, cost), r

    # -- statistics and state --------------------------------------------------------------------
    def stats(self) -> dict:
        with self.lock:
            looked = sum(self.counters[k] for k in ("exact_hits", "approx_hits", "misses", "batch_hits", "audits"))
            hits = self.counters["exact_hits"] + self.counters["approx_hits"] + self.counters["batch_hits"]
            return {**self.counters, "entries": len(self.entries), "bytes": self.bytes,
                    "hit_rate": hits / looked if looked else 0.0, "radius": self.guard.threshold("approx"),
                    "model_version": self.model_version, **{f"guard_{k}": v for k, v in
                                                            self.guard.stats("approx").items() if k != "threshold"}}

    def snapshot(self, max_entries: int | None = 1024) -> dict:
        """Counters, guard and the ``max_entries`` most recently used entries (bounded checkpoint)."""
        with self.lock:
            slots = sorted(self.entries, key=lambda s: self.entries[s]["used"], reverse=True)[:max_entries]
            ents = []
            for s in reversed(slots):
                e = self.entries[s]
                feat = self.indexes[e["dim"]].feats[s].copy() if e["dim"] else None
                ents.append({k: e[k] for k in ("hash", "value", "t", "cost", "prio")} | {"feat": feat})
            return {"model_version": self.model_version, "counters": dict(self.counters), "entries": ents,
                    "guard": self.guard.snapshot(), "lookups": self._lookups, "inflation": self.inflation}

    def restore(self, state: dict | None) -> None:
        with self.lock:
            self._clear()
            if not state:
                return
            self.model_version = state["model_version"]
            self.counters.update(state["counters"])
            self.guard.restore(state["guard"])
            self._lookups = state["lookups"]
            for e in state["entries"]:
                self._store(e["hash"], e["feat"], e["value"], self.key_fn(e["value"]), e["t"], e["cost"])
                self.entries[self.by_hash[e["hash"]]]["prio"] = e["prio"]
            self.inflation = state["inflation"]
