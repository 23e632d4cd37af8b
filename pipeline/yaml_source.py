"""Load YAML keeping the line and column of every value, and substitute ``${VAR}`` / ``${VAR:-default}``.

>>> doc = load_yaml_with_positions("a:\\n  b: [1, 2]\\n", "x.yaml")
>>> doc.data, doc.position(("a", "b", 1))
({'a': {'b': [1, 2]}}, (2, 10))
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml
from yaml.constructor import SafeConstructor

from .errors import ConfigError, Problem

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class YamlDocument:
    data: Any
    file: str
    positions: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: tuple) -> tuple[int, int]:
        """Line and column (1-based) of the value at ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path and path not in self.positions:
            path = path[:-1]
        return self.positions.get(path, (1, 1))


def substitute_env(text: str, env: Mapping[str, str], missing: list[str]) -> str:
    def repl(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    return _VAR.sub(repl, text)


def load_yaml_with_positions(text: str, file: str, env: Mapping[str, str] | None = None) -> YamlDocument:
    env = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError([Problem(file, line, col, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    doc = YamlDocument(data=None, file=file)
    problems: list[Problem] = []
    constructor = SafeConstructor()

    def build(node: yaml.Node, path: tuple) -> Any:
        doc.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if key in out:
                    problems.append(Problem(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                            f"key {key!r} appears twice", hint="keep one of them"))
                out[key] = build(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(child, path + (i,)) for i, child in enumerate(node.value)]
        value = constructor.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            missing: list[str] = []
            value = substitute_env(value, env, missing)
            for name in missing:
                problems.append(Problem(file, *doc.positions[path], f"environment variable {name} is not set",
                                        hint=f"export {name}=... or write ${{{name}:-default}}"))
        return value

    doc.data = {} if root is None else build(root, ())
    if problems:
        raise ConfigError(problems)
    return doc
