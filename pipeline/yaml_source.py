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


_YAML_HINTS = (   # (what the parser says, which mark to point at, what it usually means)
    ("found character '\\t'", "problem", "YAML indents with spaces, not tabs: replace the tab on this line with spaces"),
    ("could not find expected ':'", "context", "this line has a key without ':' (write `key: value`, with a space after the colon)"),
    ("mapping values are not allowed", "problem",
     "a ':' where none can be: this line is indented deeper than the key above it, or a value contains ': ' "
     "(quote it: where: \"t: 5\"), or the line above lacks the space after its colon (write `key: value`)"),
    ("expected <block end>", "problem",
     "this line is indented differently from the lines above it: the keys of one mapping, and the '-' of one "
     "list, must start in the same column"),
    ("did not find expected key", "problem", "this line is indented differently from the keys above it"),
    ("did not find expected '-'", "problem", "this list item is indented differently from the items above it"),
    ("expected ',' or '}'", "context", "a '{' opened on this line is not closed (or an item in it lacks a ',')"),
    ("expected ',' or ']'", "context", "a '[' opened on this line is not closed (or an item in it lacks a ',')"),
    ("unexpected end of stream", "context", "a quote or bracket opened on this line is never closed"),
)


def yaml_problem(exc: yaml.YAMLError, file: str) -> Problem:
    """A YAML syntax error as a Problem at file:line:col, with what it usually means in plain words.

    >>> try:
    ...     yaml.compose("sources:\\n  - id: a\\n    type replay\\n    path: x\\n", Loader=yaml.SafeLoader)
    ... except yaml.YAMLError as e:
    ...     print(yaml_problem(e, "p.yaml"))
    p.yaml:3:5: not valid YAML: could not find expected ':' — this line has a key without ':' (write `key: value`, with a space after the colon)
    """
    problem = str(getattr(exc, "problem", None) or exc)
    hint, which = None, "problem"
    for text, mark_name, meaning in _YAML_HINTS:
        if text in problem:
            hint, which = meaning, mark_name
            break
    mark = getattr(exc, f"{which}_mark", None) or getattr(exc, "problem_mark", None)
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return Problem(file, line, col, f"not valid YAML: {problem}", hint=hint)


def load_yaml_with_positions(text: str, file: str, env: Mapping[str, str] | None = None) -> YamlDocument:
    env = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc, file)]) from None
    doc = YamlDocument(data=None, file=file)
    problems: list[Problem] = []
    constructor = SafeConstructor()

    written: dict[int, set[int]] = {}        # each mapping's own key nodes, before any merge flattens it in place

    def note_written(node: yaml.Node) -> None:
        stack = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, yaml.MappingNode) and id(n) not in written:
                written[id(n)] = {id(k) for k, _ in n.value}
                stack += [c for pair in n.value for c in pair]
            elif isinstance(n, yaml.SequenceNode) and id(n) not in written:
                written[id(n)] = set()
                stack += n.value

    def build(node: yaml.Node, path: tuple) -> Any:
        doc.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            own = written[id(node)]
            constructor.flatten_mapping(node)        # `<<: *anchor` merge keys, as yaml.safe_load reads them
            out, merged = {}, set()                  # merged: keys a merge gave, which a key written here overrides
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if key is not None and not isinstance(key, (str, int, float, bool)):
                    problems.append(Problem(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1,
                                            f"a {type(key).__name__} is not a key", hint="keys are plain names"))
                    continue
                if id(key_node) not in own:
                    merged.add(key)
                elif key in merged:
                    merged.discard(key)
                elif key in out:
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

    if root is not None:
        note_written(root)
    try:
        doc.data = {} if root is None else build(root, ())
    except yaml.YAMLError as exc:       # an unknown tag (`!secret`), a merge of a non-mapping: at its line, no traceback
        raise ConfigError([*problems, yaml_problem(exc, file)]) from None
    if problems:
        raise ConfigError(problems)
    return doc
