"""Background model swaps: load, verify, warm up and check a new model off the pipeline thread.

A :class:`Swapper` owns one worker thread. Requests (an explicit path, or a change seen by polling
the model file / the versioned directory's ``current`` pointer) are prepared by ``prepare``; a
prepared model waits in ``ready`` until the pipeline thread takes it between two batches, so a
record is never run by a half-loaded model. Failures leave the old model serving and are reported.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from .model import ModelError, ModelRefused, resolve_model

log = logging.getLogger("edgesieve.onnx")


def file_state(path: Path) -> tuple | None:
    """What identifies the model version on disk now: the resolved file and its stat (None if unreadable)."""
    try:
        file, version = resolve_model(path)
        st = os.stat(file)
    except (OSError, ModelError):
        return None
    return (str(file), version, st.st_mtime_ns, st.st_size, st.st_ino)


class Swapper:
    def __init__(self, prepare: Callable[[Path, str | None], Any], where: str,
                 watch_path: Path | None = None, interval: float = 2.0, count: Callable[[str], None] = lambda name: None):
        self._prepare = prepare
        self._count = count
        self.where = where
        self.watch_path = watch_path
        self.interval = interval
        self._requests: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._ready: tuple[Any, Future] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events: list[dict] = []          # {"ok": bool, "path": ..., "version"/"error": ...}
        self._seen = file_state(watch_path) if watch_path else None
        self._candidate = None
        if watch_path is not None:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"onnx-swap {self.where}", daemon=True)
            self._thread.start()

    def request(self, path: Path, sha256: str | None = None) -> Future:
        """Ask for ``path`` to replace the running model; the future resolves when it is ready (or failed)."""
        fut: Future = Future()
        self._requests.put((Path(path), sha256, fut))
        self._start()
        return fut

    def take_ready(self):
        """The prepared model, if one is waiting (pipeline thread); marks its future done."""
        if self._ready is None:
            return None
        with self._lock:
            item, self._ready = self._ready, None
        if item is None:
            return None
        prepared, fut = item
        return prepared, fut

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                path, sha, fut = self._requests.get(timeout=self.interval if self.watch_path else 0.5)
            except queue.Empty:
                if self.watch_path is not None:
                    self._poll()
                continue
            self._do(path, sha, fut)

    def _poll(self) -> None:
        now = file_state(self.watch_path)
        if now is None or now == self._seen:
            self._candidate = None
            return
        if now != self._candidate:        # changed: wait one more interval for the writer to finish
            self._candidate = now
            return
        self._seen, self._candidate = now, None
        self._do(self.watch_path, None, Future())

    def _do(self, path: Path, sha: str | None, fut: Future) -> None:
        try:
            prepared = self._prepare(path, sha)
        except Exception as exc:  # any failure keeps the old model; say why
            msg = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
            log.error("%s: model swap to %s refused, the running model keeps serving: %s", self.where, path, msg)
            self.events.append({"ok": False, "path": str(path), "error": msg})
            self._count("model_swap_failures")
            if isinstance(exc, ModelRefused):      # did not verify (digest, manifest, signature, pointer)
                self._count("model_refused")
            fut.set_exception(exc if isinstance(exc, ModelError) else ModelError(msg))
            return
        with self._lock:
            old = self._ready
            self._ready = (prepared, fut)
        if old is not None:  # a newer model superseded one that was never taken
            old[1].set_exception(ModelError(f"superseded by {path} before it was swapped in"))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
