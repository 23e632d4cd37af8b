"""Nearest-neighbour index over fixed-capacity slots: brute force (one matrix product) or p-stable LSH.

Distances are RMS differences (``||a - b|| / sqrt(d)``), so a radius reads in the feature's own units
(gray levels for downscaled frames). ``method="lsh"`` hashes with E2LSH (``floor((a.x + b) / w)``,
``hashes`` per table, ``tables`` tables, seeded) and only measures the candidates in the query's buckets;
``"brute"`` measures every slot; ``"auto"`` uses brute force below ``brute_below`` live slots.

>>> import numpy as np
>>> ix = NeighborIndex(dim=4, capacity=8)
>>> ix.add(0, np.zeros(4)); ix.add(1, np.ones(4)); ix.add(2, np.full(4, 5.0))
>>> idx, dist = ix.query(np.array([[0.9, 0.9, 0.9, 0.9]]), k=2)
>>> idx.tolist(), dist.round(2).tolist()
([[1, 0]], [[0.1, 0.9]])
"""

from __future__ import annotations

import numpy as np


class NeighborIndex:
    def __init__(self, dim: int, capacity: int, method: str = "auto", *, radius: float = 4.0,
                 tables: int = 6, hashes: int = 4, brute_below: int = 2048, seed: int = 0):
        self.dim, self.capacity, self.method = int(dim), int(capacity), method
        self.brute_below = int(brute_below)
        self.feats = np.zeros((self.capacity, self.dim), np.float32)
        self.valid = np.zeros(self.capacity, bool)
        rng = np.random.default_rng(seed)
        self.width = 4.0 * radius * np.sqrt(self.dim)        # bucket width in L2 units
        self.proj = rng.normal(size=(tables, hashes, self.dim)).astype(np.float32)
        self.offs = rng.uniform(0, self.width, size=(tables, hashes)).astype(np.float32)
        self.buckets: list[dict] = [dict() for _ in range(tables)]
        self.slot_keys: dict[int, list] = {}

    def __len__(self) -> int:
        return int(self.valid.sum())

    def _keys(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (n, tables) int64 bucket ids."""
        h = np.floor((np.einsum("thd,nd->nth", self.proj, x) + self.offs[None]) / self.width).astype(np.int64)
        mult = np.int64(1_000_003) ** np.arange(h.shape[2], dtype=np.int64)
        return (h * mult).sum(axis=2)

    def add(self, slot: int, feat: np.ndarray) -> None:
        f = np.asarray(feat, np.float32).reshape(self.dim)
        if self.valid[slot]:
            self.remove(slot)
        self.feats[slot], self.valid[slot] = f, True
        keys = self._keys(f[None])[0].tolist()
        self.slot_keys[slot] = keys
        for t, key in enumerate(keys):
            self.buckets[t].setdefault(key, set()).add(slot)

    def remove(self, slot: int) -> None:
        if not self.valid[slot]:
            return
        self.valid[slot] = False
        for t, key in enumerate(self.slot_keys.pop(slot, [])):
            b = self.buckets[t].get(key)
            if b is not None:
                b.discard(slot)
                if not b:
                    del self.buckets[t][key]

    def clear(self) -> None:
        self.valid[:] = False
        self.buckets = [dict() for _ in self.buckets]
        self.slot_keys = {}

    def query(self, q: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """k nearest live slots per query row: (idx (n, k) with -1 for none, RMS dist (n, k) with inf)."""
        q = np.asarray(q, np.float32).reshape(-1, self.dim)
        n = len(q)
        idx = np.full((n, k), -1, np.int64)
        dist = np.full((n, k), np.inf)
        live = np.flatnonzero(self.valid)
        if n == 0 or len(live) == 0:
            return idx, dist
        use_lsh = self.method == "lsh" or (self.method == "auto" and len(live) >= self.brute_below)
        if not use_lsh:
            q64, f64 = q.astype(np.float64), self.feats[live].astype(np.float64)   # float32 cancels badly
            d2 = (f64 * f64).sum(1)[None] + (q64 * q64).sum(1)[:, None] - 2.0 * (q64 @ f64.T)
            d = np.sqrt(np.maximum(d2, 0.0) / self.dim)
            kk = min(k, len(live))
            part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
            order = np.take_along_axis(d, part, 1).argsort(axis=1)
            part = np.take_along_axis(part, order, 1)
            idx[:, :kk] = live[part]
            dist[:, :kk] = np.take_along_axis(d, part, 1)
            return idx, dist
        qkeys = self._keys(q)
        for i in range(n):
            cand = set()
            for t, key in enumerate(qkeys[i].tolist()):
                cand |= self.buckets[t].get(key, set())
            if not cand:
                continue
            c = np.fromiter(cand, np.int64)
            d = np.sqrt(((self.feats[c] - q[i]) ** 2).mean(axis=1))
            o = np.argsort(d)[:k]
            idx[i, :len(o)], dist[i, :len(o)] = c[o], d[o]
        return idx, dist
