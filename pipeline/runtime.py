"""Running a pipeline: sources on their threads, stages on one pipeline thread, sinks on their threads.

Micro-batches from a source wait in a bounded queue (``overload: block`` back-pressures the source, ``shed``
drops and counts). The pipeline thread merges what is queued into micro-batches (``runtime.batching``), runs
them through the graph, ticks time-driven stage work, and writes atomic checkpoints. On stop (end of sources,
``--for``, SIGINT/SIGTERM) it stops ingest, drains, checkpoints, flushes open windows and sinks, and returns a summary.

Rows carry their arrival time (``Batch.arrival``): the ``mqtt`` source stamps each message when it receives it
and keeps the stamp in its journal; the rows of a source that does not are stamped with the pipeline clock when
the source hands them on. Sources and stages share the pipeline clock (``Pipeline(spec, clock=...)``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from . import registry
from .bandwidth import Bandwidth
from .batch import Batch
from .checkpoint import CheckpointStore
from .statecodec import StateFileError
from .graph import DeadLetters, Graph
from .lint import window_collision_problems
from .loader import PipelineSpec
from .lock import StateLock
from .metrics import Metrics
from .redact import redact
from .sink_worker import SinkWorker
from .stage import Source, StateChanges

log = logging.getLogger("edgesieve")
_DONE = object()


@dataclass
class RunSummary:
    pipeline: str
    seconds: float
    counters: dict[str, dict[str, int]]
    stopped_by: str
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    """A validated, built pipeline. ``run()`` runs it for real; ``run_records()`` feeds records synchronously."""

    def __init__(self, spec: PipelineSpec, clock=time.time):
        self.spec = spec
        self.name = spec.name
        self.metrics = Metrics(spec.name)
        self.dead_letters = DeadLetters(self.metrics, None, keep_in_memory=True)
        self.clock = clock
        self.graph = Graph(spec, self.metrics, self.dead_letters, clock)
        self._stop = threading.Event()
        self._interrupted = threading.Event()   # stop requested (signal, --for, a fatal error): do not wait on blocked sinks
        self._fatal: str | None = None
        self._reload = threading.Event()
        self.rebuilt: set[str] = set()   # stages a reload rebuilt: their next checkpoint replaces all their entries
        self.stopped_by = "end of sources"
        self._store: CheckpointStore | None = None

    # ------------------------------------------------------------------ synchronous API
    def run_records(self, records: Iterable[dict], source: str | None = None, batch_size: int | None = None) -> dict[str, list[dict]]:
        """Feed ``records`` as if ``source`` (default: the only source) emitted them; flush; return ``{sink_id: records}``.

        Sinks are not opened: what each sink would have received is returned instead. Rejected records are in
        ``self.dead_letters.records``. The pipeline keeps its state between calls (windows are flushed at the end of each).
        """
        source_ids = [s.id for s in self.spec.sources]
        if source is None:
            if len(source_ids) != 1:
                raise ValueError(f"the pipeline has {len(source_ids)} sources ({', '.join(source_ids)}): name one with source=")
            source = source_ids[0]
        elif source not in source_ids:
            raise ValueError(f"no source {source!r} in this pipeline (sources: {', '.join(source_ids)})")
        out: dict[str, list[Batch]] = {s.id: [] for s in self.spec.sinks}
        self.graph.deliver = lambda sink_id, batch: out[sink_id].append(batch)
        records = list(records)
        size = batch_size or self.spec.runtime.batching.max_records
        for i in range(0, len(records), size):
            batch = Batch.from_records(records[i:i + size])
            self.metrics.count(source, "out", len(batch))
            self.graph.push(source, batch)
        self.graph.flush()
        return {sid: Batch.concat(bs).to_records() for sid, bs in out.items()}

    # ------------------------------------------------------------------ threaded run
    def request_reload(self) -> None:
        """Reload the pipeline file between micro-batches (SIGHUP, --watch); see pipeline/reload.py."""
        self._reload.set()

    def stop(self, reason: str = "stop requested") -> None:
        self.stopped_by = reason
        self._interrupted.set()
        self._stop.set()

    def fail(self, message: str) -> None:
        """Stop the pipeline because a part of it cannot go on (``Context.stop_pipeline``); the run reports ``message``."""
        if self._fatal is None:
            self._fatal = message
        self.stop("error")

    def run(self, duration: float | None = None, on_tick=None) -> RunSummary:
        spec, rt = self.spec, self.spec.runtime
        started = time.monotonic()
        self.dead_letters = DeadLetters(self.metrics, rt.dead_letter)
        self.graph.dead_letters = self.dead_letters
        for stage in self.graph.stages.values():
            stage.ctx._dead_letter = self.dead_letters
        sources: dict[str, Source] = {}
        sinks: dict[str, SinkWorker] = {}
        threads: list[threading.Thread] = []
        error: str | None = None
        lock = StateLock(rt.state_dir, self.name)
        try:
            lock.acquire()        # one owner per state folder (checkpoint, journals, outboxes, client ids)
            held: dict[str, list] = {}
            for c in spec.sources:
                ctx = self.graph.context(c.id, self.clock)
                # a source's dead letters go with the batch they were found in (see _source_loop)
                ctx._dead_letter = lambda item, batch, reasons, h=held.setdefault(c.id, []): h.append((item, batch, reasons))
                sources[c.id] = registry.load("sources", c.type)(c, ctx)
            for c in spec.sinks:
                ctx = self.graph.context(c.id)
                ctx.on_fatal = self.fail
                sinks[c.id] = SinkWorker(registry.load("sinks", c.type)(c, ctx), self.metrics, self._interrupted, self.fail)
            for sid in self.graph.dead_letter_consumers():
                self.dead_letters.listeners.append(lambda b, w=sinks[sid]: w.put(b))
            self.graph.deliver = lambda sink_id, batch: sinks[sink_id].put(batch)
            positions = self._restore(sources, sinks)
            if rt.checkpoint.path and not self._resumed:
                # a first checkpoint before anything is read: no source position yet, the output and dead-letter
                # files as they are, so a crash before the first periodic checkpoint cuts them back to this when
                # the journal replays from its start (as after any later checkpoint), and writes nothing twice
                self._checkpoint(positions, sources, sinks)
            for problem in window_collision_problems(spec):       # validate refuses it; a run says so
                log.warning("%s", problem)
            if rt.checkpoint.path:     # the state now is the restored checkpoint (or the first one): age 0
                self.metrics.set_gauge("runtime", "last_checkpoint_time", time.time())
            elif live := [c.id for c in spec.sources if c.type == "mqtt"]:
                log.warning("pipeline %r runs without checkpoints (runtime.checkpoint.path is not set): source(s) %s "
                            "acknowledge messages as soon as they are processed and open windows and learned models "
                            "live only in memory, so a restart or crash loses them; set runtime.checkpoint.path to "
                            "keep them", self.name, ", ".join(live))
            self._source_error = None
            queues = {sid: queue.Queue(maxsize=c.max_queue) for sid, c in ((c.id, c) for c in spec.sources)}
            wake = threading.Event()
            for sid, src in sources.items():
                t = threading.Thread(target=self._source_loop, args=(sid, src, queues[sid], wake, held[sid]),
                                     name=f"source:{sid}", daemon=True)
                threads.append(t)
                t.start()
            self._loop(sources, sinks, queues, threads, wake, positions, duration, started, on_tick)
            if self._fatal:
                error, self.stopped_by = self._fatal, "error"
        except Exception as exc:
            error = redact(f"{type(exc).__name__}: {exc}")
            self.stopped_by = "error"
            log.error("pipeline %r stopped: %s", self.name, error)
            self._stop.set()
        finally:
            self._stop.set()
            for t in threads:
                t.join(timeout=10)
            for w in sinks.values():
                w.stop()
                w.sink.close()
                if w.dead_file is not None:
                    w.dead_file.close()
            for s in sources.values():
                s.close()
            self.graph.close()
            self.dead_letters.close()
            if self._store is not None:
                self._store.close()
            lock.release()
        counters = self.metrics.by_item()
        return RunSummary(self.name, time.monotonic() - started, counters, self.stopped_by, error,
                          extra={"bandwidth": Bandwidth.of_pipeline(spec, counters)})

    def _source_loop(self, sid: str, src: Source, q: queue.Queue, wake: threading.Event, held: list) -> None:
        """Run a source; what it emits is queued for the pipeline thread with the dead letters the source found
        since its last batch (``held``, filled through its context): the pipeline thread writes them when it takes
        that batch, so the dead-letter file and the source positions in a checkpoint always agree, and a replay
        after a crash writes each one once (``pipeline/deadletters.py``)."""
        shed = self.spec.sources[[c.id for c in self.spec.sources].index(sid)].overload == "shed"

        def emit(batch: Batch, position: Any = None) -> bool:
            """Queue ``batch``; False when it was not (shed, or the pipeline stopped): a source stops handing on."""
            if not len(batch) and position is None and not held:
                return True
            dead = held[:]
            if batch.arrival is None and len(batch):   # a source that does not stamp arrival: it arrives now
                batch = batch.with_arrival(np.full(len(batch), self.clock()))
            if shed:
                try:
                    q.put_nowait((batch, position, dead))
                except queue.Full:
                    self.metrics.count(sid, "shed", len(batch))
                    return False          # its dead letters stay held: they go with the next batch taken
            else:
                try:
                    q.put_nowait((batch, position, dead))
                except queue.Full:
                    self.metrics.count(sid, "blocked", 1)  # back-pressure: the source waits for the pipeline
                    while not self._stop.is_set():
                        try:
                            q.put((batch, position, dead), timeout=0.1)
                            break
                        except queue.Full:
                            pass
                    else:
                        return False
            del held[:len(dead)]
            wake.set()
            return True

        try:
            src.run(emit, self._stop)
        except Exception as exc:
            log.error("source %r failed: %s: %s", sid, type(exc).__name__, exc)
            self.metrics.count(sid, "errors", 1)
            self._source_error = f"source {sid!r} failed: {type(exc).__name__}: {exc}"
        finally:
            if held:      # found after its last batch (a source that ended): written when the pipeline takes them
                q.put((Batch.empty(), None, held[:]))
                held.clear()
            q.put((None, _DONE, []))
            wake.set()

    def _loop(self, sources, sinks, queues, threads, wake, positions, duration, started, on_tick) -> None:
        rt = self.spec.runtime
        max_records, max_wait = rt.batching.max_records, rt.batching.max_wait
        pending: dict[str, list] = {sid: [] for sid in queues}
        pending_n: dict[str, int] = {sid: 0 for sid in queues}  # records in pending[sid], kept as items arrive
        first_at: dict[str, float] = {}
        live = set(queues)
        last_tick = last_checkpoint = time.monotonic()
        while True:
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                self.stopped_by = f"--for {duration:g}s elapsed"
                self._interrupted.set()
                break
            if self._stop.is_set() or not live and not any(pending.values()):
                break
            wake.wait(timeout=min(rt.tick, max_wait) if any(pending.values()) else rt.tick)
            wake.clear()
            for sid, q in queues.items():
                while True:
                    try:
                        batch, position, dead = q.get_nowait()
                    except queue.Empty:
                        break
                    if position is _DONE:
                        live.discard(sid)
                        break
                    pending[sid].append((batch, position, dead))
                    pending_n[sid] += len(batch)
                    first_at.setdefault(sid, time.monotonic())
                    if pending_n[sid] >= max_records:
                        wake.set()  # more may be queued: take it right after this micro-batch, without waiting
                        break
            for sid, items in pending.items():
                if not items:
                    continue
                if pending_n[sid] >= max_records or sid not in live or time.monotonic() - first_at[sid] >= max_wait:
                    self._process(sid, items, positions, sources)
                    pending[sid] = []
                    pending_n[sid] = 0
                    first_at.pop(sid, None)
            if self._reload.is_set():
                self._reload.clear()
                from .reload import reload_graph

                graph = reload_graph(self, self.spec.file)
                if graph is not None:
                    self.graph = graph
            now = time.monotonic()
            if now - last_tick >= rt.tick:
                self.graph.tick(self.clock())   # the pipeline clock, as the stages stamp what they see
                last_tick = now
                if on_tick:
                    on_tick(self)
            if rt.checkpoint.path and now - last_checkpoint >= rt.checkpoint.interval:
                self._checkpoint(positions, sources, sinks)
                last_checkpoint = now
        self._stop.set()
        for t in threads:
            t.join(timeout=10)
        for sid, q in queues.items():  # drain what the sources already handed over
            items = pending[sid]
            while True:
                try:
                    batch, position, dead = q.get_nowait()
                except queue.Empty:
                    break
                if position is not _DONE:
                    items.append((batch, position, dead))
            if items:
                self._process(sid, items, positions, sources)
        # a finished replay checkpoints after the last flush (a restart has nothing left to send); a stopped one
        # before it, with its open windows, which reopen on restart
        finished = not live and not self._source_error and not self._interrupted.is_set()
        if rt.checkpoint.path and not finished:
            self._checkpoint(positions, sources, sinks)
        self.graph.flush()
        self._flush_sinks(sinks)
        if rt.checkpoint.path and finished:
            self._checkpoint(positions, sources, sinks)
        if self._source_error:
            raise RuntimeError(self._source_error)

    def _process(self, sid: str, items: list, positions: dict, sources: dict) -> None:
        for _, _, dead in items:         # the source's dead letters, on this thread, before the batch's position counts
            for args in dead:
                self.dead_letters(*args)
        batch = Batch.concat([b for b, _, _ in items]) if len(items) > 1 else items[0][0]
        position = next((p for _, p, _ in reversed(items) if p is not None), None)
        self.metrics.count(sid, "out", len(batch))
        if len(batch):
            self.graph.push(sid, batch)
        if position is not None:
            positions[sid] = position
            if not self.spec.runtime.checkpoint.path:
                sources[sid].committed(position)

    def _flush_sinks(self, sinks: dict) -> None:
        """Wait until every sink wrote what it was given, then flush it; a sink's failure is logged and counted, not fatal."""
        for sid, w in sinks.items():
            w.drain()
            try:
                w.sink.flush()
            except Exception as exc:
                self.metrics.count(sid, "errors", 1)
                log.error("sink %r failed to flush: %s: %s", sid, type(exc).__name__, exc)

    def _checkpoint(self, positions: dict, sources: dict, sinks: dict) -> None:
        """Save what changed since the last checkpoint, with the source positions, in one transaction; then ack.

        Only once every sink holds what it was given: never past data a sink did not take."""
        self._flush_sinks(sinks)
        held = [sid for sid, w in sinks.items() if not w.clean]
        if held:
            log.error("pipeline %r: no checkpoint written: sink(s) %s did not take all their data; the last "
                      "checkpoint stays, and a restart produces that data again", self.name, ", ".join(held))
            return
        items = {**{f"stage:{sid}": st for sid, st in self.graph.stages.items()},
                 **{f"sink:{sid}": w.sink for sid, w in sinks.items()},
                 **{f"sink_dead:{sid}": w.dead_file for sid, w in sinks.items() if w.dead_file is not None},
                 DeadLetters.ITEM: self.dead_letters}
        try:
            changes = {name: item.snapshot_changes() for name, item in items.items()}
            for sid in self.rebuilt:   # a fresh instance's changes are its whole state: drop the old instance's entries
                if f"stage:{sid}" in changes:
                    changes[f"stage:{sid}"] = StateChanges(changes[f"stage:{sid}"].entries, complete=True)
            stats = self._store.save(positions, changes)
        except Exception as exc:   # e.g. a full disk: the previous checkpoint stays valid; try again next time
            self.metrics.count("runtime", "checkpoint_errors", 1)
            log.error("pipeline %r: checkpoint not written (%s: %s); the previous one stays, retrying at the next "
                      "interval", self.name, type(exc).__name__, exc)
            return
        self.rebuilt.clear()
        for item in items.values():
            item.state_saved()
        self.metrics.count("runtime", "checkpoints", 1)
        self.metrics.set_gauge("runtime", "last_checkpoint_time", time.time())
        self.metrics.count("runtime", "checkpoint_rows", stats.rows)
        self.metrics.count("runtime", "checkpoint_bytes", stats.bytes)
        for sid, position in positions.items():
            sources[sid].committed(position)

    def _restore(self, sources: dict, sinks: dict) -> dict:
        path = self.spec.runtime.checkpoint.path
        self._store = CheckpointStore(path) if path else None
        state = self._store.load() if self._store else None
        self._resumed = state is not None
        for w in sinks.values():
            w.sink.started(resumed=state is not None)
        if state is None:
            return {}
        log.info("resuming pipeline %r from checkpoint %s", self.name, path)
        for sid, position in state.sources.items():
            if sid in sources:
                sources[sid].restore(position)
        self.dead_letters.restore_entries(state.items.get(DeadLetters.ITEM, {}))   # cut what came after it
        for sid, w in sinks.items():
            if w.dead_file is not None:
                w.dead_file.restore_entries(state.items.get(f"sink_dead:{sid}", {}), f"sink {sid!r} dead_letter_path")
        try:
            self.graph.restore_entries({n[len("stage:"):]: e for n, e in state.items.items() if n.startswith("stage:")})
            for name, entries in state.items.items():
                sid = name[len("sink:"):]
                if name.startswith("sink:") and sid in sinks:
                    sinks[sid].sink.restore_entries(entries)
        except StateFileError as exc:  # an entry the item itself decodes (a model) names the item, not the file
            raise self._store.refusal(str(exc)) from None
        return dict(state.sources)
