"""Base classes for stages, sources and sinks (the contract is in docs/architecture.md)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

from .batch import Batch
from .config import ItemConfig, SinkConfig, SourceConfig, StageConfig
from .metrics import Metrics


class Peers:
    """The items of one running graph by id, for an item that reports to another (an ``onnx`` stage's audits to the
    ``frame_diff`` upstream of it): owned by the graph, never a module-level registry, so two pipelines in one process
    (even with the same name) never reach each other's stages. A reload hands the same object to the new graph, which
    replaces what it holds once it is built, so a kept stage reaches a rebuilt one."""

    def __init__(self):
        self._by_id: dict[str, Any] = {}
        self._lock = threading.Lock()

    def add(self, item_id: str, item: Any) -> None:
        with self._lock:
            self._by_id[item_id] = item

    def get(self, item_id: str) -> Any:
        with self._lock:
            return self._by_id.get(item_id)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._by_id)

    def replace(self, items: dict[str, Any]) -> None:
        with self._lock:
            self._by_id = dict(items)


class Context:
    """What the runtime gives a stage, source or sink: its id, counters, dead-letter path, clock, state folder,
    whether checkpoints are written, and the other items of its graph (``peers``)."""

    def __init__(
        self,
        item_id: str,
        metrics: Metrics,
        dead_letter: Callable[[str, Batch, Sequence[str] | str], None] | None = None,
        state_dir: Path | str = ".edgesieve",
        pipeline: str = "pipeline",
        clock: Callable[[], float] = time.time,
        base_dir: Path | str | None = None,
        checkpoints: bool = False,
        peers: Peers | None = None,
    ):
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.item_id = item_id
        self.metrics = metrics
        self._dead_letter = dead_letter
        self.state_dir = Path(state_dir)
        self.pipeline = pipeline
        self.clock = clock
        self.checkpoints = checkpoints      # the runtime writes checkpoints (a source may journal its input)
        self.peers = peers if peers is not None else Peers()
        self.on_fatal: Callable[[str], None] | None = None   # set by the runtime: stops the pipeline
        self.fatal: str | None = None

    def stop_pipeline(self, message: str) -> None:
        """A part of this item (e.g. a sink's own thread) cannot go on: stop the pipeline and report ``message``."""
        self.fatal = self.fatal or message
        if self.on_fatal is not None:
            self.on_fatal(message)

    @property
    def stage_id(self) -> str:
        return self.item_id

    def count(self, name: str, n: int = 1) -> None:
        self.metrics.count(self.item_id, name, n)

    def dead_letter(self, batch: Batch, reasons: Sequence[str] | str) -> None:
        """Reject the records of ``batch`` with a reason each (or one for all); they are counted and kept with the reason."""
        if not len(batch):
            return
        self.count("dead_lettered", len(batch))
        if self._dead_letter is not None:
            self._dead_letter(self.item_id, batch, reasons)


WHOLE = ""  # the key of an item's state saved as one entry


@dataclass
class StateChanges:
    """What an item's state changed since its last saved checkpoint, per key (see `pipeline.checkpoint`).

    ``entries``: key -> the key's state, for keys that are new or changed (a value of None is not stored);
    ``deleted``: keys that are gone; ``complete``: ``entries`` is the whole state, so keys not in it are gone too.
    Keys and values are plain data (`pipeline.statecodec`); a key is usually a tuple of tag values.
    """

    entries: dict[Any, Any]
    deleted: list[Any] = field(default_factory=list)
    complete: bool = False


class _Item:
    Config: ClassVar[type[ItemConfig]]
    EXAMPLE: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: ItemConfig, ctx: Context):
        self.config = config
        self.ctx = ctx
        if type(self).gauges is not _Item.gauges:      # read at scrape time (see pipeline/prometheus.py)
            ctx.metrics.gauge_source(ctx.item_id, self.gauges)

    def gauges(self) -> dict[str, float]:
        """Current values (open windows, keys held, connected...) for /metrics; read on the scraping thread."""
        return {}

    def snapshot(self) -> Any:
        """The whole state as plain data (`pipeline.statecodec`: no arbitrary objects); None = stateless."""
        return None

    def restore(self, state: Any) -> None:
        pass

    def snapshot_changes(self) -> StateChanges:
        """The state changed since the last checkpoint, per key; by default the whole `snapshot()` as one entry.

        An item with many keys (one model per device) overrides this, `restore_entries` and `state_saved`, so
        that a checkpoint costs what changed, not every key ever seen.
        """
        return StateChanges({WHOLE: self.snapshot()}, complete=True)

    def restore_entries(self, entries: dict[Any, Any]) -> None:
        """Become the state the saved ``entries`` ({key: state}) describe; by default `restore` the one entry."""
        if entries.get(WHOLE) is not None:
            self.restore(entries[WHOLE])

    def state_saved(self) -> None:
        """The changes the last `snapshot_changes` returned are durable: forget them (not called if saving failed)."""

    def close(self) -> None:
        pass


class Stage(_Item):
    Config: ClassVar[type[StageConfig]]

    def process(self, batch: Batch) -> Batch:  # pragma: no cover - abstract
        raise NotImplementedError

    def tick(self, now: float) -> Batch | None:
        return None

    def flush(self) -> Batch | None:
        return None

    def adopt(self, old: "Stage") -> bool:
        """A reload changed this stage's settings: take over what ``old`` (the instance it replaces) holds, if these
        settings allow it, and return True; False (the default): ``old`` emits what it holds and this starts empty."""
        return False

    @classmethod
    def sample_records(cls) -> list[dict]:
        """Good records for the conformance test; override when the stage needs e.g. frames."""
        return [
            {"ts": 1000.0 + i, "tags": {"site": "s1", "device": f"d{i % 3}"},
             "fields": {"temperature": 20.0 + i, "pressure": 1.0 + 0.1 * i, "vibration": 0.5}}
            for i in range(30)
        ]

    @classmethod
    def sample_bad_record(cls) -> dict:
        """A record the stage must dead-letter (not raise on) in the conformance test."""
        return {"ts": 1030.0, "tags": {"site": "s1", "device": "d0"},
                "fields": {"temperature": "hot", "pressure": 1.0, "vibration": 0.5}}


class Source(_Item):
    Config: ClassVar[type[SourceConfig]]

    def run(self, emit: Callable[..., None], stop: threading.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def committed(self, position: Any) -> None:
        """Everything up to ``position`` is processed (and checkpointed when checkpoints are on)."""


class Sink(_Item):
    Config: ClassVar[type[SinkConfig]]

    def write(self, batch: Batch) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def started(self, resumed: bool) -> None:
        """Called once before the first write: ``resumed`` says whether state was restored from a checkpoint."""

    def flush(self) -> None:
        pass
