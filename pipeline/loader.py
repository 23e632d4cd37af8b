"""Read and validate a pipeline file as a whole: every problem at once, each with file:line:column and item id."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from . import registry
from .config import ItemConfig, RuntimeConfig
from .errors import ConfigError, Problem
from .redact import mask_url_credentials, remember_config
from .yaml_source import YamlDocument, load_yaml_with_positions

_SECRET = re.compile(r"(token|password|passwd|secret|api_?key|private_?key)", re.I)
TOP_LEVEL = ("pipeline", "sources", "stages", "sinks", "runtime")
DEAD_LETTER_ID = "deadletter"


@dataclass
class PipelineSpec:
    """A validated pipeline file."""

    name: str
    sources: list[ItemConfig]
    stages: list[ItemConfig]
    sinks: list[ItemConfig]
    runtime: RuntimeConfig
    file: str
    base_dir: Path
    document: YamlDocument | None = None
    order: list[str] = field(default_factory=list)  # stage ids in topological order

    def items(self) -> list[ItemConfig]:
        return [*self.sources, *self.stages, *self.sinks]


def _describe(kind: str, raw: Mapping[str, Any]) -> str:
    word = kind[:-1]
    return f"{word} {raw.get('id', '?')!r} ({raw.get('type', '?')})"


def _pydantic_problems(doc: YamlDocument, path: tuple, exc: ValidationError, item: str | None) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(err.get("loc", ()))
        line, col = doc.position(path + loc)
        field_name = ".".join(str(x) for x in loc) or "(item)"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        hint = None
        if err.get("type") == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}"
            hint = "remove it or check the spelling (see `edgesieve stages`)"
        elif err.get("type") == "missing":
            msg = f"required key {field_name!r} is missing"
        else:
            value = err.get("input")
            secret = any(_SECRET.search(str(part)) for part in loc)
            shown = "" if isinstance(value, (dict, list)) or value is None or secret else \
                f" (got {mask_url_credentials(repr(value))})"  # no credentials written into a URL
            msg = f"field {field_name!r}: {msg}{shown}"
        out.append(Problem(doc.file, line, col, msg, item=item, hint=hint))
    return out


def parse_pipeline(source: str | Path, env: Mapping[str, str] | None = None) -> PipelineSpec:
    """Validate a pipeline given as a path or YAML text; raise :class:`ConfigError` listing every problem."""
    text, file, base = _read(source)
    doc = load_yaml_with_positions(text, file, env)
    problems: list[Problem] = []
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, 1, "a pipeline file is a mapping with keys " + ", ".join(TOP_LEVEL))])
    for key in data:
        if isinstance(key, str) and key.startswith("x-"):     # a place for anchors (`x-window: &w {...}`), as compose
            continue
        if key not in TOP_LEVEL:
            close = difflib.get_close_matches(str(key), TOP_LEVEL, n=1)
            problems.append(Problem(file, *doc.position((key,)), f"unknown top-level key {key!r}",
                                    hint=f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(TOP_LEVEL)))
    name = data.get("pipeline", Path(file).stem if file != "<text>" else "pipeline")
    try:
        runtime = RuntimeConfig.model_validate(data.get("runtime") or {})
    except ValidationError as exc:
        problems += _pydantic_problems(doc, ("runtime",), exc, "runtime")
        runtime = RuntimeConfig()

    parsed: dict[str, list[ItemConfig]] = {"sources": [], "stages": [], "sinks": []}
    positions: dict[str, tuple[int, int]] = {}
    for kind in ("sources", "stages", "sinks"):
        items = data.get(kind) or []
        if not isinstance(items, list):
            problems.append(Problem(file, *doc.position((kind,)), f"{kind!r} must be a list of items"))
            continue
        for i, raw in enumerate(items):
            path = (kind, i)
            if not isinstance(raw, dict):
                problems.append(Problem(file, *doc.position(path), f"each of {kind} is a mapping with id and type"))
                continue
            item = _describe(kind, raw)
            type_name = raw.get("type")
            known = registry.KINDS[kind]
            if type_name not in known:
                close = difflib.get_close_matches(str(type_name), list(known), n=1)
                hint = f"did you mean {close[0]!r}?" if close else "known: " + ", ".join(sorted(known))
                problems.append(Problem(file, *doc.position(path + ("type",)),
                                        f"unknown {kind[:-1]} type {type_name!r}", item=item, hint=hint))
                continue
            cls = registry.load(kind, type_name)
            try:
                cfg = cls.Config.model_validate(raw)
            except ValidationError as exc:
                problems += _pydantic_problems(doc, path, exc, item)
                continue
            if cfg.id in positions or cfg.id == DEAD_LETTER_ID:
                why = "is reserved for rejected records" if cfg.id == DEAD_LETTER_ID else \
                    "is already used at line %d" % positions[cfg.id][0]
                problems.append(Problem(file, *doc.position(path + ("id",)), f"id {cfg.id!r} {why}",
                                        item=item, hint="give every item a unique id"))
                continue
            remember_config(cfg)                   # its SecretStr values are masked in every output from now on
            positions[cfg.id] = doc.position(path)
            parsed[kind].append(cfg)

    spec = PipelineSpec(str(name), parsed["sources"], parsed["stages"], parsed["sinks"], runtime, file, base, doc)
    problems += _graph_problems(spec, doc)
    if runtime.outside_paths == "refuse":
        from .paths import escape_problems

        problems += escape_problems(spec)
    if problems:
        raise ConfigError(problems)
    return spec


def _graph_problems(spec: PipelineSpec, doc: YamlDocument) -> list[Problem]:
    """Graph checks on the raw items, so that an item with a bad field still counts as a producer (no cascades)."""
    problems: list[Problem] = []
    raw = {kind: [r for r in (doc.data.get(kind) or []) if isinstance(r, dict)] if isinstance(doc.data.get(kind), list) else []
           for kind in ("sources", "stages", "sinks")}
    producers = {str(r.get("id")) for r in raw["sources"] + raw["stages"]} | {DEAD_LETTER_ID}
    stage_inputs: dict[str, list[str]] = {}
    for kind in ("stages", "sinks"):
        for i, r in enumerate(doc.data.get(kind) or []):
            if not isinstance(r, dict) or not isinstance(r.get("inputs"), list):
                continue
            item = _describe(kind, r)
            if kind == "stages":
                stage_inputs[str(r.get("id"))] = [str(x) for x in r["inputs"]]
            for j, inp in enumerate(r["inputs"]):
                inp = str(inp)
                if inp == str(r.get("id")):
                    problems.append(Problem(doc.file, *doc.position((kind, i, "inputs", j)),
                                            "a stage cannot read its own output", item=item))
                elif inp not in producers:
                    close = difflib.get_close_matches(inp, sorted(producers), n=1)
                    problems.append(Problem(doc.file, *doc.position((kind, i, "inputs", j)),
                                            f"input {inp!r} is not a source or stage", item=item,
                                            hint=f"did you mean {close[0]!r}?" if close else "inputs name ids of sources or stages"))
    if not raw["sources"]:
        problems.append(Problem(doc.file, *doc.position(("sources",)), "the pipeline has no sources", hint="add a `sources:` list"))
    if not raw["sinks"]:
        problems.append(Problem(doc.file, *doc.position(("sinks",)), "the pipeline has no sinks", hint="add a `sinks:` list"))
    # cycles (Kahn's algorithm over the stages)
    deps = {s: {i for i in ins if i in stage_inputs and i != s} for s, ins in stage_inputs.items()}
    order: list[str] = []
    ready = [s for s in deps if not deps[s]]
    while ready:
        s = ready.pop(0)
        order.append(s)
        for k, v in deps.items():
            if s in v:
                v.discard(s)
                if not v and k not in order and k not in ready:
                    ready.append(k)
    cyclic = [s for s in stage_inputs if s not in order]
    for s in cyclic:
        i = _raw_index(doc, "stages", s, 0)
        problems.append(Problem(doc.file, *doc.position(("stages", i, "inputs")), f"is part of a cycle ({' -> '.join(cyclic)})",
                                item=_describe("stages", doc.data["stages"][i]), hint="a pipeline is a DAG: remove one of the inputs"))
    spec.order = [s for s in order if s in {c.id for c in spec.stages}]
    consumed = {i for ins in stage_inputs.values() for i in ins}
    consumed |= {str(x) for r in raw["sinks"] if isinstance(r.get("inputs"), list) for x in r["inputs"]}
    for i, r in enumerate(doc.data.get("stages") or []):
        if isinstance(r, dict) and str(r.get("id")) not in consumed:
            problems.append(Problem(doc.file, *doc.position(("stages", i, "id")), "its output goes nowhere",
                                    item=_describe("stages", r), hint="add it to the inputs of a sink or stage"))
    return problems


def _raw_index(doc: YamlDocument, kind: str, item_id: str, default: int) -> int:
    for i, raw in enumerate(doc.data.get(kind) or []):
        if isinstance(raw, dict) and raw.get("id") == item_id:
            return i
    return default


def _read(source: str | Path) -> tuple[str, str, Path]:
    if isinstance(source, Path) or ("\n" not in str(source) and str(source).endswith((".yaml", ".yml"))):
        path = Path(source)
        if not path.exists():
            raise ConfigError([Problem(str(path), 1, 1, "file not found")])
        return path.read_text(), str(path), path.parent.resolve()
    return str(source), "<text>", Path.cwd()
