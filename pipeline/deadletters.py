"""Dead letters: the runtime's NDJSON file of rejected records, exactly once across a crash and a replay.

A dead letter is one line ``{"item", "reason", "record"}``: the item that rejected the record (a source that
could not decode a message, a stage that refused a value, a late or far-future reading), why, and the record
(a frame replaced by its shape). They go to ``runtime.dead_letter`` and to the sinks whose input is
``deadletter``.

Exactly once, the way the file sink is: the file's length is part of every checkpoint (``runtime:deadletter``),
written after it is fsynced, and a restart from that checkpoint first truncates what was appended after it;
the journal then replays the messages after the checkpoint, whose dead letters are written again, once. This
holds because every dead letter is written on the pipeline thread, in step with the source positions a
checkpoint records: a source's own dead letters (an undecodable message) travel with the batch they were
found in and are written when the pipeline takes that batch, not when the source decoded it (see
``pipeline.runtime``). A sink's ``dead_letter_path`` (records the sink could not write) is kept the same way
(``sink_dead:<id>``). A file found shorter than its checkpoint says (rotated or edited by someone else) is left
as it is, with a warning.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .batch import Batch
from .metrics import Metrics
from .redact import redact
from .sinks.encode import _dumps
from .stage import WHOLE, StateChanges

log = logging.getLogger("edgesieve")


class LineFile:
    """An append-only NDJSON file whose length is checkpointed: ``snapshot_changes``/``restore_entries``."""

    def __init__(self, path: str | Path, fsync_each: bool = False):
        self.path = Path(path)
        self.fsync_each = fsync_each
        self._fh = None
        self._lock = threading.Lock()     # a sink's thread appends, the pipeline thread checkpoints

    def _open(self):
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")
        return self._fh

    def append(self, lines: list[bytes]) -> None:
        with self._lock:
            fh = self._open()
            fh.write(b"".join(line + b"\n" for line in lines))
            fh.flush()
            if self.fsync_each:
                os.fsync(fh.fileno())

    def size(self) -> int:
        """Bytes written so far, flushed and fsynced (what a checkpoint may promise)."""
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                return self._fh.tell()
        return self.path.stat().st_size if self.path.exists() else 0

    def snapshot_changes(self) -> StateChanges:
        return StateChanges({WHOLE: {"size": self.size()}}, complete=True)

    def state_saved(self) -> None:
        pass

    def restore_entries(self, entries: dict, what: str) -> None:
        """Cut what was appended after the checkpoint: the replay writes it again."""
        state = entries.get(WHOLE)
        if not state:
            return
        size = int(state["size"])
        now = self.path.stat().st_size if self.path.exists() else 0
        if now < size:
            log.warning("%s %s is shorter (%d bytes) than at the checkpoint (%d bytes): rotated or edited by someone "
                        "else; appending to it as it is (dead letters after the checkpoint may be written again)",
                        what, self.path, now, size)
            return
        if now > size:
            self.close()
            with self._lock, open(self.path, "r+b") as fh:
                fh.truncate(size)
                fh.flush()
                os.fsync(fh.fileno())
            log.info("%s %s: %d bytes written after the checkpoint cut; the replay writes them again", what,
                     self.path, now - size)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def dead_letter_line(item_id: str, reason: str, record: dict) -> bytes:
    if "frame" in record:
        record["frame"] = {"shape": list(np.shape(record["frame"]))}
    return _dumps({"item": item_id, "reason": reason, "record": record})


class DeadLetters:
    """Where rejected records go: an NDJSON file (or memory), plus sinks that read the `deadletter` input."""

    ITEM = "runtime:deadletter"     # its checkpoint item: the file's length

    def __init__(self, metrics: Metrics, path: str | None, keep_in_memory: bool = False):
        self.metrics = metrics
        self.path = Path(path) if path else None
        self.records: list[dict] = [] if keep_in_memory else None
        self.listeners: list[Callable[[Batch], None]] = []
        self._lock = threading.Lock()
        self.file = LineFile(self.path) if self.path is not None and not keep_in_memory else None

    def __call__(self, item_id: str, batch: Batch, reasons: Sequence[str] | str) -> None:
        reasons = [reasons] * len(batch) if isinstance(reasons, str) else list(reasons)
        shown = {r: redact(r) for r in set(reasons)}          # no secret in the dead-letter file or log
        reasons = [shown[r] for r in reasons]
        records = batch.to_records()
        rows = [{"item": item_id, "reason": reason, "record": rec} for rec, reason in zip(records, reasons)]
        with self._lock:
            if self.records is not None:
                self.records.extend(rows)
            elif self.file is not None:
                self.file.append([dead_letter_line(item_id, r["reason"], r["record"]) for r in rows])
        if len(rows) and log.isEnabledFor(logging.WARNING):
            log.warning("%s rejected %d record(s): %s", item_id, len(rows), reasons[0])
        if self.listeners:
            annotated = batch.with_extra(item=np.full(len(batch), item_id, dtype=object),
                                         reason=np.array(reasons, dtype=object))
            for listener in self.listeners:
                listener(annotated)

    # checkpoint item (pipeline.runtime): the file's length
    def snapshot_changes(self) -> StateChanges:
        with self._lock:
            return self.file.snapshot_changes() if self.file is not None else StateChanges({}, complete=True)

    def state_saved(self) -> None:
        pass

    def restore_entries(self, entries: dict) -> None:
        if self.file is not None:
            self.file.restore_entries(entries, "dead-letter file")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
