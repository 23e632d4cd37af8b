"""The files a pipeline reads and writes, found from its config models, and the rules they must follow.

A config field that names a file says so in its ``Field`` (markers in :mod:`pipeline.config`): ``json_schema_extra=INPUT`` (a file edgesieve reads:
data, models, keys, passwords, certificates) or ``OUTPUT`` (one it writes: sinks, outboxes, checkpoints).

Rules (docs/security.md):

- A relative path is taken from the working directory when it exists there, else from the pipeline file's folder.
- A relative path that climbs out of the pipeline file's folder with ``..`` is reported by ``edgesieve validate``
  with its ``file:line:column``: as a warning by default, as an error (also for ``run``) with
  ``runtime.outside_paths: refuse``.
- An absolute path is the operator's explicit choice (a mount point, ``/run/secrets/...``) and is always allowed.
- An input file that does not exist is an error of ``edgesieve validate``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

from .errors import Problem


def path_fields(model: BaseModel, loc: tuple = ()) -> Iterator[tuple[tuple, str, str]]:
    """Every ``(location, "input"|"output", value)`` of a path-valued field in ``model`` and the models inside it."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name, None)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("path") and isinstance(value, str) and value:
            yield loc + (name,), extra["path"], value
        elif isinstance(value, BaseModel):
            yield from path_fields(value, loc + (name,))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if isinstance(v, BaseModel):
                    yield from path_fields(v, loc + (name, i))
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, BaseModel):
                    yield from path_fields(v, loc + (name, k))


def resolve(value: str, base_dir: Path) -> Path:
    """Where a configured path points (see the rules above)."""
    here = Path(value)
    return here if here.is_absolute() or here.exists() else Path(base_dir) / here


def leaves_folder(value: str, base_dir: Path) -> bool:
    """A relative path with ``..`` that ends outside ``base_dir``."""
    here = Path(value)
    if here.is_absolute() or ".." not in here.parts:
        return False
    return not resolve(value, base_dir).resolve().is_relative_to(Path(base_dir).resolve())


def _every_path(spec) -> Iterator[tuple[tuple, str | None, str, str]]:
    for kind, items in (("sources", spec.sources), ("stages", spec.stages), ("sinks", spec.sinks)):
        for i, cfg in enumerate(items):
            item = f"{kind[:-1]} {cfg.id!r} ({cfg.type})"
            for loc, what, value in path_fields(cfg):
                yield (kind, i) + loc, item, what, value
    for loc, what, value in path_fields(spec.runtime):
        yield ("runtime",) + loc, "runtime", what, value


def _where(loc: tuple) -> str:
    return ".".join(str(x) for x in loc[2:] if not isinstance(x, int)) if loc[0] != "runtime" else ".".join(map(str, loc))


def escape_problems(spec) -> list[Problem]:
    """A problem for every relative path that climbs out of the pipeline file's folder."""
    out = []
    for loc, item, _what, value in _every_path(spec):
        if leaves_folder(value, spec.base_dir):
            out.append(Problem(spec.file, *_position(spec, loc), f"{_where(loc)}: {value!r} leaves the pipeline's "
                               f"folder {spec.base_dir} with '..'", item=item,
                               hint="keep files inside that folder, or write an absolute path if it is meant"))
    return out


def missing_input_problems(spec) -> list[Problem]:
    """A problem for every input file (data, model, key, password, certificate) that does not exist."""
    out = []
    for loc, item, what, value in _every_path(spec):
        if what == "input" and not resolve(value, spec.base_dir).exists():
            out.append(Problem(spec.file, *_position(spec, loc), f"{_where(loc)}: {value!r} does not exist "
                               f"(looked in {Path.cwd()} and {spec.base_dir})", item=item,
                               hint="fix the path, or create the file before running"))
    return out


def _position(spec, loc: tuple) -> tuple[int, int]:
    return spec.document.position(loc) if spec.document is not None else (1, 1)
