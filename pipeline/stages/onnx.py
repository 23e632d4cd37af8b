"""The ``onnx`` stage: micro-batched onnxruntime inference with sha256-verified, hot-swappable models.

Inputs are built per micro-batch from the record's ``frame``, its ``fields``, or a ``window`` of
its recent readings per key, and checked at start against the model's declared inputs. Outputs are
decoded into tags/fields (class label + probability, top-k, regression values) or kept raw.
Every output record carries the tag ``model_version``. Records wait for up to ``max_batch``
records or ``max_wait`` (flushed by ``tick``); a fixed-batch model gets padded/split chunks.

``feeds:`` maps each model input name to one of: ``{source: frame, size: [h, w], color: gray|rgb|bgr,
frame_order: bgr|rgb, resize: area|bilinear|nearest, scale: 1/255, mean: [...], std: [...],
layout: NCHW|NHWC, dtype}``; ``{source: fields, fields: [...], dtype}``; or ``{source: window,
fields: [...], length: N, key: [tags], flatten: false, dtype}`` (records before a key's window is full
are counted as ``window_filling``). ``outputs:`` maps model output names to ``{decode: label|topk|
regression|raw, field, labels: file-or-list, k, softmax, names}``. A record whose frame or fields cannot
be used is dead-lettered with the reason. ``sha256:`` pins the model: only that digest ever loads, whatever
lies beside it. A versioned folder's ``manifest.json`` (version -> sha256) is checked when present, and must be
signed by ``public_key:`` when one is named; with neither, ``<model>.sha256`` is checked when present
(see docs/security.md). ``watch:`` or ``request_swap(path, sha256)`` (thread-safe, e.g. from an MQTT command)
load, verify, warm up and check a new model in the background, then swap it in between two batches;
on any failure the running model keeps serving (counted as ``model_swap_failures``; a model that does not
verify also as ``model_refused``).

>>> from pipeline.testing import run_stage
>>> out = run_stage(Onnx, {"model": "examples/models/pump_state.onnx",
...     "feeds": {"window": {"source": "window", "length": 60, "key": ["pump"], "fields": SKAB_SENSORS}},
...     "outputs": {"probabilities": {"decode": "label", "field": "state"}}},
...     [{"ts": t, "tags": {"pump": "p1"}, "fields": dict.fromkeys(SKAB_SENSORS, 1.0)} for t in range(61)])
>>> len(out), sorted(out[0]["tags"]), "state_probability" in out[0]["fields"]
(2, ['model_version', 'pump', 'state'], True)
"""
from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path
from typing import Annotated, Callable, Literal

import numpy as np
from pydantic import Field

from ..batch import Batch
from ..config import INPUT, Duration, StageConfig
from ..errors import ConfigError, Problem
from ..inference.contract import OutputSpec, make_builders, make_decoders
from ..inference.inputs import FieldsInput, FrameInput, WindowInput
from ..inference.model import LoadedModel, ModelError, TrustPolicy, load_model
from ..inference.swap import Swapper
from ..stage import Context, Stage
from cache.options import CacheOptions, ReuseOptions, agreement_fn, cache_wrapper
from cache.reuse import ReuseTracker

log = logging.getLogger("edgesieve.onnx")
SKAB_SENSORS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
                "Thermocouple", "Voltage", "Volume Flow RateRMS"]
WARM_UP_ROWS = 64                    # the most zero records a model is warmed up on at load (``warm_up``)
WARM_UP_BYTES = 16 << 20             # ... and the most input bytes: a large image model warms up on fewer records
Input = Annotated[FrameInput | FieldsInput | WindowInput, Field(discriminator="source")]


class OnnxConfig(StageConfig):
    type: Literal["onnx"]
    model: str = Field(json_schema_extra=INPUT, description="The .onnx file, or a versioned folder with a `current` pointer "
                             "(relative: to the working directory, else to the pipeline file's folder).")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$",
                               description="Pin: the model's sha256; a mismatch refuses to start, and swaps then need a digest too. "
                                           "Without it a `<model>.sha256` file beside the model is checked when present.")
    public_key: str | None = Field(None, json_schema_extra=INPUT, description="Ed25519 public key (PEM) that must have signed the versioned folder's "
                                   "`manifest.json` (`edgesieve model manifest --sign`); unsigned or tampered models are refused.")
    feeds: dict[str, Input] = Field(min_length=1, description="Per model input name: how to build it from the record "
                                    "(`source: frame`, `fields` or `window`).")
    outputs: dict[str, OutputSpec] | None = Field(None, description="Per model output name: how to decode it; none = every output raw.")
    providers: list[str] = Field(["cpu"], min_length=1, description="Execution providers in order of preference "
                                 "(cpu, cuda, openvino, tensorrt, or full onnxruntime names); missing ones are skipped, CPU is the fallback.")
    intra_op_threads: int = Field(1, ge=0, le=256, description="onnxruntime intra-op threads (0 = onnxruntime decides).")
    max_batch: int = Field(32, ge=1, le=4096, description="Most records per model call.")
    max_wait: Duration = Field(0.0, le=10, description="Longest a record waits for its batch to fill (0 = run what each micro-batch brings).")
    watch: Duration | None = Field(None, gt=0, le=3600, description="Poll the model file / `current` pointer this often and hot-swap on change.")
    warmup_records: int = Field(4, ge=1, le=1024, description="Records a new model is warmed up and checked on before a swap.")
    warm_up: bool = Field(True, description="Run each model once on `max_batch` zero records (at most 64, and at most 16 MB "
                          "of input) when it loads, so "
                          "that the first burst of frames does not pay for onnxruntime's buffers (1.25-1.47x a steady batch "
                          "per frame without, 0.94-1.04x with: benchmarks/bench_onnx_shapes.py).")
    cache: CacheOptions | None = Field(None, description="Reuse results of identical or near inputs (computation-redundancy cache, see cache/).")
    reuse: ReuseOptions = Field(default_factory=ReuseOptions, description="Records marked `reused` by frame_diff skip the model and get their key's last result.")


class Onnx(Stage):
    """ONNX inference on micro-batches (see module docstring)."""

    Config = OnnxConfig
    EXAMPLE = {"model": "examples/models/pump_state.onnx",
               "feeds": {"window": {"source": "window", "length": 60, "key": ["device"], "fields": SKAB_SENSORS}},
               "outputs": {"probabilities": {"decode": "label", "field": "state"}}}

    def __init__(self, config: OnnxConfig, ctx: Context):
        super().__init__(config, ctx)
        self.where = f"stage {ctx.item_id!r} (onnx)"
        self.base_dir = ctx.base_dir or Path.cwd()
        path = self._path(config.model)
        try:
            self._model, self._builders, self._decoders = self._prepare(path, config.sha256, initial=True)
        except ModelError as exc:
            msg = str(exc).removeprefix(f"{self.where}: ")
            raise ConfigError([Problem(str(path), 1, 1, msg, item=self.where,
                                       hint="the pipeline cannot start without its model")]) from exc
        self._stateful = any(b.stateful for b in self._builders.values())   # window inputs see every row
        self._infer_fn: Callable[[dict], dict] = self._run_model
        self._pending: list[tuple[Batch, dict[str, np.ndarray]]] = []
        self._pending_n = 0
        self._since = 0.0
        self._sample: dict[str, np.ndarray] | None = None
        self._swap = Swapper(lambda p, s: self._prepare(p, s), self.where,
                             watch_path=path if config.watch else None, interval=config.watch or 2.0,
                             count=ctx.count)
        r = config.reuse
        self._reuse = ReuseTracker(r.key, None, ctx.peers, agreement_fn(r.agreement), r.agreement_field,
                                   confidence=r.confidence)
        if config.cache is not None:
            self.wrap_infer(cache_wrapper(config.cache, self, name=str(path), now=ctx.clock))

    # ------------------------------------------------------------------ model lifecycle
    def _prepare(self, path: Path, sha256: str | None, initial: bool = False):
        cfg = self.config
        model = load_model(path, policy=self._policy(path, sha256), providers=cfg.providers,
                           intra_op_threads=cfg.intra_op_threads)
        builders = make_builders(cfg.feeds, model, self.where)
        decoders = make_decoders(cfg.outputs, model, self._path, self.where)
        if cfg.warm_up:
            self._warm_up(model, builders)
        if not initial:
            self._check_new(model, builders)
        return model, builders, decoders

    def _warm_up(self, model: LoadedModel, builders: dict) -> None:
        """One call at the largest batch the stage makes (capped): onnxruntime allocates its buffers for that size
        now, not in the middle of the first burst of frames after a scene change. A model that fails on zeros of
        its declared shape is logged, not refused: real inputs decide."""
        per_row = sum(b.sample(1).nbytes for b in builders.values())
        rows = max(1, min(self.config.max_batch, WARM_UP_ROWS, WARM_UP_BYTES // max(per_row, 1)))
        if model.fixed_batch:                       # a fixed-batch model runs in chunks of its size: one is enough
            rows = model.fixed_batch
        try:
            model.run({name: b.sample(rows) for name, b in builders.items()})
        except Exception as exc:  # onnxruntime raises several types
            why = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            log.warning("%s: warm-up of %s on %d zero records failed (%s); the stage runs without it",
                        self.where, model.path.name, rows, why)

    def _policy(self, path: Path, sha256: str | None) -> TrustPolicy:
        """A digest given with a request pins that load; the configured pin holds every re-read of the configured
        model; a swap to another path under a pin needs its digest (side files are never trusted over a pin)."""
        cfg = self.config
        key = self._path(cfg.public_key) if cfg.public_key else None
        if sha256 is None and cfg.sha256 and path == self._path(cfg.model):
            sha256 = cfg.sha256
        return TrustPolicy(pin=sha256, public_key=key, require_digest=bool(cfg.sha256),
                           serial_file=Path(self.ctx.state_dir) / "onnx" / f"{self.ctx.item_id}.manifest-serials.json")

    def _check_new(self, model: LoadedModel, builders: dict) -> None:
        """Warm up on recent real inputs (or zeros) and compare output shapes with the running model."""
        sample = self._sample or {n: b.sample(self.config.warmup_records) for n, b in builders.items()}
        new = model.run(sample)
        old = self._model.run(sample)
        for name, arr in new.items():
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ModelError(f"{self.where}: new model {model.path.name} gives non-finite {name!r} on sample inputs")
        for name in old:
            if name not in new or new[name].shape != old[name].shape:
                got = new[name].shape if name in new else "nothing"
                raise ModelError(f"{self.where}: new model {model.path.name} gives {name!r} of shape {got} where the "
                                 f"running model gives {old[name].shape}; the outputs config would not fit")

    def _path(self, name: str | Path) -> Path:
        """Relative paths: from the working directory when there, else from the pipeline file's folder (like `replay`)."""
        here = Path(name)
        return here if here.is_absolute() or here.exists() else self.base_dir / here

    def request_swap(self, path: str | Path | None = None, sha256: str | None = None) -> Future:
        """Load ``path`` (default: the configured model, re-read) in the background and swap it in when it is ready.

        Thread-safe (for MQTT command handlers). The future gives the new ``model_version``, or the error
        that kept the old model serving."""
        target = self._path(path if path is not None else self.config.model)
        return self._swap.request(target, sha256)

    def _apply_swap(self) -> None:
        got = self._swap.take_ready()
        if got is None:
            return
        (model, builders, decoders), fut = got
        for name, b in builders.items():           # window history carries over
            if getattr(b, "stateful", False):
                b.history = self._builders[name].history
        old = self._model.version
        self._model, self._builders, self._decoders = model, builders, decoders
        self._stateful = any(b.stateful for b in builders.values())
        self.ctx.count("model_swaps")
        self._swap.events.append({"ok": True, "path": str(model.path), "version": model.version})
        log.info("%s: model %s swapped in (was %s)", self.where, model.version, old)
        fut.set_result(model.version)

    @property
    def model_version(self) -> str:
        return self._model.version

    @property
    def swap_events(self) -> list[dict]:
        """Every swap outcome so far: ``{"ok": True, "version"}`` or ``{"ok": False, "error"}``."""
        return self._swap.events

    # ------------------------------------------------------------------ inference
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The one place the model runs: input tensors (n records) -> output tensors (n records)."""
        return self._infer_fn(inputs)

    def wrap_infer(self, wrapper: Callable[[Callable], Callable]) -> None:
        """Put e.g. a result cache in front of the model: ``wrapper(inner) -> new infer function``.

        The wrapper can read ``stage.model_version`` to keep results of different models apart."""
        self._infer_fn = wrapper(self._infer_fn)

    def cache_stats(self) -> dict | None:
        """The redundancy cache's statistics (hits, misses, hit rate, ...), or None without ``cache:``."""
        cache = getattr(self._infer_fn, "cache", None)
        return None if cache is None else cache.stats()

    def _run_model(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._model.run(inputs)

    def _decode(self, batch: Batch, outputs: dict[str, np.ndarray]) -> Batch:
        fields, tags, extra = {}, {}, {}
        for name, fn in self._decoders:
            f, t, e = fn(outputs[name])
            fields.update(f), tags.update(t), extra.update(e)
        version = np.empty(len(batch), object)
        version[:] = self._model.version
        out = batch.with_fields(**fields).with_tags(**tags, model_version=version)
        return out.with_extra(**extra) if extra else out

    def _run(self, batch: Batch, inputs: dict[str, np.ndarray]) -> Batch:
        mask = self._reuse.compute_mask(batch)          # rows frame_diff marked `reused` skip the model
        if not mask.any():
            return self._reuse.merge(batch, mask, batch.take(mask))
        if not mask.all():
            inputs = {k: v[mask] for k, v in inputs.items()}
        outputs = self.infer(inputs)
        self._sample = {k: v[: self.config.warmup_records] for k, v in inputs.items()}  # views: swap warm-up data
        return self._reuse.merge(batch, mask, self._decode(batch.take(mask) if not mask.all() else batch, outputs))

    def _run_computed(self, batch: Batch, need: np.ndarray) -> Batch | None:
        """A micro-batch that runs at once (no ``max_wait``, at most ``max_batch`` rows, no window input), some of
        its rows marked ``reused``: only the rows to compute are checked, preprocessed and run, straight into tensors
        of their own (the general path builds every row's tensor and picks the computed rows out again). The same
        records as :meth:`_accept` + :meth:`_drain`. None: a computed row has a problem, take the general path."""
        part = batch.take(np.flatnonzero(need))
        for b in self._builders.values():
            if b.problems(part)[0].any():
                return None
        inputs = {name: b.build(part)[0] for name, b in self._builders.items()}
        outputs = self.infer(inputs)
        self._sample = {k: v[: self.config.warmup_records] for k, v in inputs.items()}  # views: swap warm-up data
        return self._reuse.merge(batch, need, self._decode(part, outputs))

    # ------------------------------------------------------------------ stage API
    def _accept(self, batch: Batch, need: np.ndarray | None = None) -> tuple[Batch, dict[str, np.ndarray]] | None:
        bad = np.zeros(len(batch), bool)
        reasons: dict[int, str] = {}
        if need is None:                            # frames marked `reused` are neither checked nor preprocessed
            need = self._reuse.compute_mask(batch)
        given = batch
        rows = None if need.all() else np.flatnonzero(need)
        for b in self._builders.values():
            if b.stateful or rows is None:
                m, r = b.problems(batch)
            elif not len(rows):
                continue
            else:                                   # check only the rows that will be used
                sub, r_sub = b.problems(batch.take(rows))
                m = np.zeros(len(batch), bool)
                m[rows] = sub
                r = {int(rows[i]): why for i, why in r_sub.items()}
            bad |= m
            for i, why in r.items():
                reasons.setdefault(i, why)
        if bad.any():
            self.ctx.dead_letter(batch.take(bad), [reasons[i] for i in np.flatnonzero(bad)])
            batch = batch.take(~bad)
        if not len(batch):
            return None
        inputs, ready = {}, np.ones(len(batch), bool)
        stateful = {n: b for n, b in self._builders.items() if b.stateful}
        for name, b in stateful.items():
            x, r = b.build(batch)
            inputs[name] = (x, r)
            ready &= r
        if not ready.all():
            self.ctx.count("window_filling", int((~ready).sum()))
            self.ctx.count("filtered", int((~ready).sum()))
        inputs = {n: x[ready[r]] for n, (x, r) in inputs.items()}
        batch = batch.take(ready) if not ready.all() else batch
        if not len(batch):
            return None
        if batch is not given:                      # rows were dropped: the mask of those left
            need = self._reuse.compute_mask(batch)
        for name, b in self._builders.items():
            if not b.stateful:
                if need.all():
                    inputs[name] = b.build(batch)[0]
                elif need.any():
                    x = b.sample(len(batch))
                    x[need] = b.build(batch.take(need))[0]
                    inputs[name] = x
                else:                               # nothing to run: a read-only placeholder, no memory
                    inputs[name] = np.broadcast_to(b.sample(1), (len(batch),) + b.sample(1).shape[1:])
        return batch, inputs

    def process(self, batch: Batch) -> Batch:
        self._apply_swap()
        need = None
        if not self._pending and not self._stateful and "reused" in batch.extra and len(batch):
            need = self._reuse.compute_mask(batch)
            if not (need[0] if len(need) == 1 else need.any()):   # every row reused: no checks, no preprocessing, no model
                return self._reuse.merge_reused(batch)
            if self.config.max_wait <= 0 and len(batch) <= self.config.max_batch and not need.all():
                out = self._run_computed(batch, need)
                if out is not None:
                    return out
        got = self._accept(batch, need)
        if got is not None:
            if not self._pending:
                self._since = self.ctx.clock()
            self._pending.append(got)
            self._pending_n += len(got[0])
        limit = self.config.max_batch
        if self.config.max_wait <= 0:
            return self._drain(everything=True)
        return self._drain(everything=False) if self._pending_n >= limit else Batch.empty()

    def _drain(self, everything: bool) -> Batch:
        if not self._pending:
            return Batch.empty()
        if len(self._pending) == 1:
            batch, inputs = self._pending[0]
        else:
            batch = Batch.concat([b for b, _ in self._pending])
            inputs = {n: np.concatenate([i[n] for _, i in self._pending]) for n in self._pending[0][1]}
        k = self.config.max_batch
        n = len(batch)
        upto = n if everything else n - n % k
        outs = [self._run(batch.take(slice(s, min(s + k, upto))), {m: v[s:min(s + k, upto)] for m, v in inputs.items()})
                for s in range(0, upto, k)]
        rest = batch.take(slice(upto, n)) if upto < n else None
        self._pending = [(rest, {m: v[upto:] for m, v in inputs.items()})] if rest is not None else []
        self._pending_n = n - upto  # `_since` stays: the rest waited at most since then (never past max_wait)
        return Batch.concat(outs)

    def tick(self, now: float) -> Batch | None:
        self._apply_swap()
        if self._pending and self.ctx.clock() - self._since >= self.config.max_wait:
            return self._drain(everything=True)
        return None

    def flush(self) -> Batch | None:
        self._apply_swap()
        return self._drain(everything=True)

    def snapshot(self):
        windows = {n: b.snapshot() for n, b in self._builders.items() if b.stateful}
        cache = getattr(self._infer_fn, "cache", None)
        return {"windows": windows, "pending": list(self._pending), "model_version": self._model.version,
                "reuse": self._reuse.snapshot(),
                "cache": cache.snapshot(self.config.cache.snapshot_entries) if cache is not None else None}

    def restore(self, state) -> None:
        for n, h in state["windows"].items():
            if n in self._builders:
                self._builders[n].restore(h)
        self._pending = list(state["pending"])
        self._pending_n = sum(len(b) for b, _ in self._pending)
        self._since = self.ctx.clock()
        self._reuse.restore(state.get("reuse"))
        cache = getattr(self._infer_fn, "cache", None)
        if cache is not None and state.get("cache") is not None:
            cache.restore(state["cache"])

    def close(self) -> None:
        self._swap.close()
        release = getattr(self._infer_fn, "release", None)
        if release is not None:       # this stage no longer uses its shared cache (the last user drops it)
            release()

    @classmethod
    def sample_records(cls) -> list[dict]:
        return [{"ts": 1000.0 + i, "tags": {"device": f"d{i % 2}"},
                 "fields": {s: 1.0 + 0.01 * i for s in SKAB_SENSORS}} for i in range(130)]

    @classmethod
    def sample_bad_record(cls) -> dict:
        return {"ts": 2000.0, "tags": {"device": "d0"}, "fields": {**dict.fromkeys(SKAB_SENSORS, 1.0), "Current": "hot"}}
