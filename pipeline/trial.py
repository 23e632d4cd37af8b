"""``edgesieve test FILE``: what every stage makes of a few sample inputs, like ``telegraf --test``.

The sources run until they gave ``--samples`` records (or ``--timeout`` passed), or the records come from an
``--input`` file instead; they go through the stages, and what each source, stage and sink would get is printed.
Nothing is written: no sink is opened, no checkpoint is read or written, state goes to a temporary folder, and
a source that talks to a broker runs with a clean, throw-away session (its own client id, no retained status, no
dead-letter publishing, no acknowledgements), so a pipeline running for real is not disturbed.

An ``--input`` file holds one record per line (NDJSON) or a JSON list: ``{"ts", "tags", "fields"}`` records, or
flat readings such as ``{"ts": 1700000000, "device": "pump1", "temperature": 21.5}`` (text values are tags,
numbers and booleans fields).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import registry
from .batch import Batch
from .graph import DeadLetters, Graph
from .metrics import Metrics
from .sinks.encode import _dumps

# Config keys a source has for talking to a broker, set so that a test run leaves no trace there
_SAFE_SOURCE = {"persistent": False, "status": False, "deadletter_topic": None}
_SHOWN = 20          # records printed per item


def read_input(path: str) -> list[dict]:
    """Records from an NDJSON or JSON file (see the module docstring); ValueError names the line."""
    text = Path(path).read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = [(i + 1, obj) for i, obj in enumerate(json.loads(text))]
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    records = []
    for n, obj in items:
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: a record is a JSON object, got {type(obj).__name__}")
        if "fields" in obj or "tags" in obj:
            records.append(obj)
            continue
        rec: dict[str, Any] = {"ts": obj.get("ts", time.time()), "tags": {}, "fields": {}}
        for k, v in obj.items():
            if k != "ts":
                rec["tags" if isinstance(v, str) else "fields"][k] = v
        records.append(rec)
    return records


def _safe(cfg):
    update = {k: v for k, v in _SAFE_SOURCE.items() if k in type(cfg).model_fields}
    if "client_id" in type(cfg).model_fields:
        update["client_id"] = f"edgesieve-test-{uuid.uuid4().hex[:12]}"
    return cfg.model_copy(update=update)


def collect(spec, samples: int, timeout: float, graph: Graph) -> dict[str, list[Batch]]:
    """Run every source until ``samples`` records in all (or ``timeout`` seconds); return their batches."""
    got: dict[str, list[Batch]] = {c.id: [] for c in spec.sources}
    lock, stop = threading.Lock(), threading.Event()
    count = [0]

    def emitter(sid):
        def emit(batch: Batch, position: Any = None) -> None:
            with lock:
                left = samples - count[0]
                if left <= 0 or not len(batch):
                    return
                if len(batch) > left:
                    batch = batch.take(np.arange(left))
                got[sid].append(batch)
                count[0] += len(batch)
                if count[0] >= samples:
                    stop.set()
        return emit

    sources, threads = [], []
    for c in spec.sources:
        src = registry.load("sources", c.type)(_safe(c), graph.context(c.id))
        sources.append(src)

        def target(src=src, sid=c.id):
            try:
                src.run(emitter(sid), stop)
            except Exception as exc:  # noqa: BLE001 - reported, the others go on
                print(f"source {sid!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
        t = threading.Thread(target=target, name=f"test:{c.id}", daemon=True)
        threads.append(t)
        t.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set() and any(t.is_alive() for t in threads):
        stop.wait(0.05)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    for src in sources:
        src.close()
    return got


def _show(out: TextIO, title: str, batches: list[Batch]) -> None:
    records = Batch.concat(batches).to_records() if batches else []
    print(f"{title}: {len(records)} record{'s' if len(records) != 1 else ''}", file=out)
    for r in records[:_SHOWN]:
        print("  " + _dumps(r).decode(), file=out)
    if len(records) > _SHOWN:
        print(f"  ... and {len(records) - _SHOWN} more", file=out)


def run_test(spec, samples: int = 5, input_file: str | None = None, source: str | None = None,
             timeout: float = 10.0, out: TextIO = sys.stdout) -> int:
    """Print what each source, stage and sink makes of the samples; 0 when the sources gave something."""
    with tempfile.TemporaryDirectory(prefix="edgesieve-test-") as tmp:
        runtime = spec.runtime.model_copy(update={"state_dir": tmp, "dead_letter": None})
        spec = dataclasses.replace(spec, runtime=runtime)
        metrics = Metrics(spec.name)
        dead = DeadLetters(metrics, None, keep_in_memory=True)
        graph = Graph(spec, metrics, dead)
        emitted: dict[str, list[Batch]] = {c.id: [] for c in spec.stages}
        received: dict[str, list[Batch]] = {c.id: [] for c in spec.sinks}
        call = graph.call

        def recording_call(stage_id, method, batch=None, *args):
            result = call(stage_id, method, batch, *args)
            if result is not None and len(result):
                emitted[stage_id].append(result)
            return result
        graph.call = recording_call
        graph.deliver = lambda sink_id, batch: received[sink_id].append(batch)
        if input_file is not None:
            ids = [c.id for c in spec.sources]
            sid = source or ids[0]
            if sid not in ids:
                print(f"edgesieve: no source {sid!r} (sources: {', '.join(ids)})", file=sys.stderr)
                return 2
            inputs = {c: [] for c in ids}
            inputs[sid] = [Batch.from_records(read_input(input_file)[:samples] if samples else read_input(input_file))]
        else:
            inputs = collect(spec, samples, timeout, graph)
        for sid, batches in inputs.items():
            c = next(x for x in spec.sources if x.id == sid)
            _show(out, f"source {sid!r} ({c.type})", batches)
            for b in batches:
                graph.push(sid, b)
        graph.flush()          # end of the samples: windows and other held records come out
        for c in spec.stages:
            _show(out, f"stage {c.id!r} ({c.type}) <- {', '.join(c.inputs)}", emitted[c.id])
        for c in spec.sinks:
            _show(out, f"sink {c.id!r} ({c.type}) would receive (nothing written)", received[c.id])
        if dead.records:
            print(f"dead letters: {len(dead.records)}", file=out)
            for row in dead.records[:_SHOWN]:
                print(f"  {row['item']}: {row['reason']}", file=out)
        graph.close()
        if not any(inputs.values()):
            print(f"no source gave a record within {timeout:g}s (is anything publishing? check the url and topics)",
                  file=sys.stderr)
            return 1
        return 0
