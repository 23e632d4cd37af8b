"""The stage graph: builds stage instances, routes batches through them in topological order, applies error policies.

Both ways of running a pipeline use it: :meth:`pipeline.runtime.Pipeline.run` (threads, real sources and sinks)
and :meth:`pipeline.runtime.Pipeline.run_records` (synchronous, records in, records out).
"""

from __future__ import annotations

import fnmatch
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import registry
from .batch import Batch
from .deadletters import DeadLetters
from .config import TagMatch
from .errors import PipelineStopped
from .loader import DEAD_LETTER_ID, PipelineSpec
from .metrics import Metrics
from .names import NameWatch
from .stage import Context, Peers, Stage

log = logging.getLogger("edgesieve")


def match_mask(batch: Batch, match: TagMatch) -> np.ndarray:
    """Rows whose tags (or, for a key that is not a tag, annotations such as ``event``) match every
    ``{tag: value | [values]}`` entry (``*`` and ``?`` glob)."""
    keep = np.ones(len(batch), dtype=bool)
    for tag, wanted in match.items():
        col = batch.tags.get(tag)
        if col is None:
            col = batch.extra.get(tag)          # an annotation, e.g. the anomaly stage's `event`
        if col is None:
            return np.zeros(len(batch), dtype=bool)
        values = wanted if isinstance(wanted, list) else [wanted]
        if any(any(ch in v for ch in "*?[") for v in values):
            hit = np.array([v is not None and any(fnmatch.fnmatchcase(v, w) for w in values) for v in col], dtype=bool)
        else:
            hit = np.isin(col, np.asarray(values, dtype=object))
        keep &= hit
    return keep


class Graph:
    """Stage instances and the routing between them."""

    def __init__(self, spec: PipelineSpec, metrics: Metrics, dead_letters: DeadLetters, clock=time.time,
                 reuse: dict[str, Stage] | None = None, peers: Peers | None = None):
        """``reuse``: stage instances to carry over by id instead of building them (a reload keeps their state);
        ``peers``: the running graph's, on a reload (the stages of this graph replace what it holds once all are
        built; if one cannot be built it is left as it was)."""
        self.peers = peers if peers is not None else Peers()
        before = self.peers.snapshot()
        try:
            self._build(spec, metrics, dead_letters, clock, reuse)
        except BaseException:
            self.peers.replace(before)
            raise
        self.peers.replace(self.stages)

    def _build(self, spec, metrics, dead_letters, clock, reuse) -> None:
        self.spec = spec
        self.metrics = metrics
        self.dead_letters = dead_letters
        self.state_dir = Path(spec.runtime.state_dir)
        self.stages: dict[str, Stage] = {}
        self.configs = {c.id: c for c in spec.items()}
        self.consumers: dict[str, list[tuple[str, str]]] = {}  # producer -> [(consumer id, "stage"|"sink")]
        for c in spec.stages:
            self.stages[c.id] = reuse[c.id] if reuse and c.id in reuse else \
                registry.load("stages", c.type)(c, self.context(c.id, clock))
        for kind, items in (("stage", spec.stages), ("sink", spec.sinks)):
            for c in items:
                for inp in c.inputs:
                    self.consumers.setdefault(inp, []).append((c.id, kind))
        self.order = spec.order
        self._match_names = {c.id: NameWatch(self.context(c.id, clock), c.match, match=True)
                             for kind in (spec.stages, spec.sinks) for c in kind if c.match}
        self.deliver: Callable[[str, Batch], None] = lambda sink_id, batch: None

    def context(self, item_id: str, clock=time.time) -> Context:
        return Context(item_id, self.metrics, dead_letter=self.dead_letters, state_dir=self.state_dir,
                       pipeline=self.spec.name, clock=clock, base_dir=self.spec.base_dir,
                       checkpoints=self.spec.runtime.checkpoint.path is not None, peers=self.peers)

    def push(self, producer: str, batch: Batch) -> None:
        """Hand ``batch`` produced by ``producer`` to every consumer, depth first, in file order."""
        for consumer, kind in self.consumers.get(producer, ()):
            cfg = self.configs[consumer]
            part = batch
            if cfg.match:
                self._match_names[consumer].check(batch)
                mask = match_mask(batch, cfg.match)
                if not mask.all():
                    part = batch.take(mask)
            if not len(part):
                continue
            if kind == "sink":
                self.metrics.count(consumer, "in", len(part))
                self.deliver(consumer, part)
            else:
                out = self.call(consumer, "process", part)
                if out is not None and len(out):
                    self.push(consumer, out)

    def call(self, stage_id: str, method: str, batch: Batch | None = None, *args: Any) -> Batch | None:
        """Run one stage method under its error policy, with counters and latency."""
        stage = self.stages[stage_id]
        if batch is not None:
            self.metrics.count(stage_id, "in", len(batch))
        started = time.perf_counter()
        try:
            out = getattr(stage, method)(batch, *args) if batch is not None else getattr(stage, method)(*args)
        except Exception as exc:  # the stage's error policy decides
            self.metrics.count(stage_id, "errors", len(batch) if batch is not None else 1)
            policy = self.configs[stage_id].on_error
            message = f"stage {stage_id!r} ({self.configs[stage_id].type}) failed in {method}: {type(exc).__name__}: {exc}"
            if policy == "stop":
                raise PipelineStopped(message) from exc
            log.error("%s (on_error: %s)", message, policy)
            if batch is not None and policy == "dead_letter":
                self.dead_letters(stage_id, batch, message)
            return None
        self.metrics.observe_latency(stage_id, time.perf_counter() - started)
        if out is not None and len(out):
            self.metrics.count(stage_id, "out", len(out))
        return out

    def tick(self, now: float) -> None:
        for stage_id in self.order:
            out = self.call(stage_id, "tick", None, now)
            if out is not None and len(out):
                self.push(stage_id, out)

    def flush(self) -> None:
        """End of stream: every stage emits what it holds, upstream first."""
        for stage_id in self.order:
            out = self.call(stage_id, "flush")
            if out is not None and len(out):
                self.push(stage_id, out)

    def snapshot(self) -> dict[str, Any]:
        return {sid: s.snapshot() for sid, s in self.stages.items()}

    def restore(self, states: dict[str, Any]) -> None:
        for sid, state in states.items():
            if sid in self.stages and state is not None:
                self.stages[sid].restore(state)
            elif sid not in self.stages:
                log.warning("checkpoint has state for stage %r, which is no longer in the pipeline; ignored", sid)

    def restore_entries(self, items: dict[str, dict[Any, Any]]) -> None:
        """Restore every stage from its saved entries (``{stage id: {key: state}}``, see `pipeline.checkpoint`)."""
        for sid, entries in items.items():
            if sid in self.stages:
                self.stages[sid].restore_entries(entries)
            else:
                log.warning("checkpoint has state for stage %r, which is no longer in the pipeline; ignored "
                            "(and dropped at the next checkpoint)", sid)

    def close(self) -> None:
        for s in self.stages.values():
            s.close()

    def dead_letter_consumers(self) -> list[str]:
        return [c for c, kind in self.consumers.get(DEAD_LETTER_ID, ()) if kind == "sink"]
