"""Reloading a changed pipeline file into a running pipeline (SIGHUP, or ``edgesieve run --watch``).

The file is validated as a whole first; an invalid file is refused, its problems are logged, and the running
graph goes on untouched. Stages whose configuration did not change are carried over as they are (their state:
open windows, detector models, reference frames); a changed or removed stage first emits what it holds (as at the
end of a stream) and is then rebuilt or dropped, unless the rebuilt stage ``adopt``s the old one's state (a window
whose size, hop, key and watermark did not change keeps its open windows); new stages start empty. ``inputs`` and ``match`` of sinks may
change too. Sources, the sinks' own settings and ``runtime`` are not reloaded: a change there is refused with a
message that a restart applies it. What changed is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger("edgesieve")


def _dump(cfg, exclude=()) -> dict:
    return cfg.model_dump(mode="json", exclude=set(exclude))


def needs_restart(old, new) -> list[str]:
    """What differs between two specs that a reload cannot apply."""
    why = []
    if old.name != new.name:
        why.append("the pipeline name")
    if [_dump(c) for c in old.sources] != [_dump(c) for c in new.sources]:
        why.append("sources")
    if {c.id: _dump(c, ("inputs", "match")) for c in old.sinks} != {c.id: _dump(c, ("inputs", "match")) for c in new.sinks}:
        why.append("sinks (other than their inputs and match)")
    if _dump(old.runtime) != _dump(new.runtime):
        why.append("runtime")
    return why


def stage_changes(old, new) -> tuple[list[str], list[str], list[str], list[str]]:
    """(kept, changed, added, removed) stage ids."""
    before = {c.id: _dump(c) for c in old.stages}
    after = {c.id: _dump(c) for c in new.stages}
    kept = [s for s in after if s in before and before[s] == after[s]]
    changed = [s for s in after if s in before and before[s] != after[s]]
    added = [s for s in after if s not in before]
    removed = [s for s in before if s not in after]
    return kept, changed, added, removed


def reload_graph(pipeline, path: str | Path):
    """The new graph for ``pipeline`` from the file at ``path``, or None when the reload is refused or a no-op.

    Runs on the pipeline thread, between micro-batches. On success ``pipeline.spec`` is the new spec.
    """
    from .graph import Graph
    from .loader import parse_pipeline

    try:
        new = parse_pipeline(Path(path))
    except ConfigError as exc:
        log.error("reload of %s refused; the running pipeline goes on unchanged. Problems:\n  %s",
                  path, "\n  ".join(str(p) for p in exc.problems))
        return None
    except Exception as exc:        # a file the loader cannot read at all must not stop the running pipeline either
        log.error("reload of %s refused; the running pipeline goes on unchanged: %s: %s",
                  path, type(exc).__name__, exc, exc_info=exc)
        return None
    old, graph = pipeline.spec, pipeline.graph
    why = needs_restart(old, new)
    if why:
        log.error("reload of %s refused: %s changed, which only a restart applies; the running pipeline goes on "
                  "unchanged", path, ", ".join(why))
        return None
    kept, changed, added, removed = stage_changes(old, new)
    routing = {c.id: (c.inputs, c.match) for c in old.sinks} != {c.id: (c.inputs, c.match) for c in new.sinks}
    if not (changed or added or removed or routing) and [c.id for c in old.stages] == [c.id for c in new.stages]:
        log.info("reload of %s: nothing changed", path)
        return None
    try:
        fresh = Graph(new, pipeline.metrics, pipeline.dead_letters, pipeline.clock,
                      reuse={sid: graph.stages[sid] for sid in kept}, peers=graph.peers)
    except Exception as exc:  # a new stage that cannot start (model file ...): keep the old graph
        log.error("reload of %s refused: a stage cannot start: %s: %s; the running pipeline goes on unchanged",
                  path, type(exc).__name__, exc)
        return None
    adopted = []
    for sid in old.order:            # upstream first: what a changed stage emits reaches the old downstream
        if sid in changed and _adopted(fresh.stages[sid], graph.stages[sid], sid):
            adopted.append(sid)      # its state goes on in the new instance (open windows across the reload)
            continue
        if sid in changed or sid in removed:
            out = graph.call(sid, "flush")
            if out is not None and len(out):
                graph.push(sid, out)
    for sid in (*changed, *removed):
        graph.stages[sid].close()
        if sid in removed:
            pipeline.metrics.drop_gauge_source(sid)
    fresh.deliver = graph.deliver
    pipeline.spec = new
    pipeline.rebuilt |= {*changed, *added}
    flushed = [s for s in changed if s not in adopted]
    for what, ids in (("changed (rebuilt; what it held was emitted first)", flushed),
                      ("changed (rebuilt; what it held carried over)", adopted), ("added", added),
                      ("removed (what it held was emitted first)", removed), ("unchanged (state kept)", kept)):
        if ids:
            log.info("reload of %s: stage%s %s %s", path, "s" if len(ids) > 1 else "", ", ".join(map(repr, ids)), what)
    if routing:
        log.info("reload of %s: sink inputs/match changed", path)
    return fresh


def _adopted(new, old, sid: str) -> bool:
    """``new.adopt(old)``; a failure is logged and the old stage emits what it holds instead (``new`` is unused yet)."""
    try:
        return bool(new.adopt(old))
    except Exception as exc:
        log.error("reload: stage %r could not take over its earlier state (%s: %s); it emits what it held instead",
                  sid, type(exc).__name__, exc)
        return False
