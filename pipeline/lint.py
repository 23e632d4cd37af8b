"""Checks ``validate`` makes beyond the schema: mistakes that validate but would silently match nothing.

An expression that compares a tag with a word without quotes (``device == pump1``) reads ``pump1`` as a field
name, so it is never true. The tag keys are what the pipeline file itself declares: topic-template levels,
``tag_fields``, ``tags``/``static_tags``/``file_tag`` of a source, ``key`` lists and ``match:`` keys.

>>> from pipeline.loader import parse_pipeline
>>> spec = parse_pipeline('''
... pipeline: p
... sources: [{id: r, type: replay, path: x.csv, tags: [device]}]
... stages: [{id: hot, type: filter, inputs: [r], where: "device == pump1 and t > 2"}]
... sinks: [{id: out, type: stdout, inputs: [hot]}]
... ''')
>>> for line in expression_problems(spec): print(line)
<text>:4:54: stage 'hot' (filter): 'pump1' has no quotes, so it is read as a field name and the comparison with tag 'device' is never true (hint: device == 'pump1')
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from .names import compared_with_tag

_TEMPLATE_NAME = re.compile(r"\{(\w+)(?:\.\.\.)?\}")
_LIST_KEYS = ("key", "tags", "tag_fields")
_NAME_KEYS = ("file_tag", "topic_tag")


def declared_tags(spec) -> set[str]:
    """Tag keys the pipeline file declares anywhere (see the module docstring)."""
    found: set[str] = set()
    for cfg in spec.items():
        _collect(cfg.model_dump(mode="json"), found)
    return found


def _collect(node: Any, found: set[str]) -> None:
    if isinstance(node, list):
        for x in node:
            _collect(x, found)
        return
    if not isinstance(node, dict):
        return
    for k, v in node.items():
        if k in _LIST_KEYS and isinstance(v, list):
            found.update(x for x in v if isinstance(x, str))
        elif k in _NAME_KEYS and isinstance(v, str):
            found.add(v)
        elif k in ("static_tags", "match") and isinstance(v, dict):
            found.update(v)
        elif k == "topic_template" and isinstance(v, str):
            found.update(m.group(1) for m in _TEMPLATE_NAME.finditer(v))
        elif k == "senml_device_tag" and node.get("codec") == "senml":
            found.add(v)
        else:
            _collect(v, found)


def _expressions(spec) -> Iterator[tuple[int, Any, tuple, str]]:
    """(stage index, config, path inside the stage, expression text) of every expression in the stages."""
    for i, c in enumerate(spec.stages):
        where = getattr(c, "where", None)
        if isinstance(where, str):
            yield i, c, ("where",), where
        assignments = getattr(c, "set", None)
        if isinstance(assignments, dict):
            for name, text in assignments.items():
                if isinstance(text, str):
                    yield i, c, ("set", name), text


def expression_problems(spec) -> list[str]:
    """``file:line:col: stage ...: problem (hint: ...)`` for every tag compared with a word without quotes."""
    tags = declared_tags(spec)
    out = []
    for i, c, path, text in _expressions(spec):
        for word, (tag, fixed) in compared_with_tag(text, tags).items():
            line, col = spec.document.position(("stages", i, *path)) if spec.document else (1, 1)
            out.append(f"{spec.file}:{line}:{col}: stage {c.id!r} ({c.type}): {word!r} has no quotes, so it is read "
                       f"as a field name and the comparison with tag {tag!r} is never true (hint: {fixed})")
    return out


_KEYED_SINKS = ("sqlite", "influxdb")      # sinks that key a point by (measurement, tags, ts): a second one replaces


def window_collision_problems(spec) -> list[str]:
    """``file:line:col: sink ...`` for every sink keyed by window start that windows of different size or hop with
    the same key reach: at a start they share, the point of one replaces (or merges into) the other's."""
    stages = {c.id: c for c in spec.stages}

    def windows(item_id: str, seen: set) -> set[str]:
        if item_id in seen or item_id not in stages:
            return set()
        seen.add(item_id)
        c = stages[item_id]
        if c.type == "window":
            return {item_id}
        return set().union(*(windows(i, seen) for i in c.inputs)) if c.inputs else set()

    out = []
    for n, sink in enumerate(spec.sinks):
        if sink.type not in _KEYED_SINKS:
            continue
        by_key: dict[tuple, dict[tuple, str]] = {}
        for w in sorted(set().union(*(windows(i, set()) for i in sink.inputs))):
            c = stages[w]
            by_key.setdefault(tuple(c.key), {}).setdefault((c.size, c.hop or c.size), w)
        for key, shapes in by_key.items():
            if len(shapes) > 1:
                line, col = spec.document.position(("sinks", n)) if spec.document else (1, 1)
                named = ", ".join(f"{w!r} ({size:g}s" + (f", hop {hop:g}s)" if hop != size else ")")
                                  for (size, hop), w in sorted(shapes.items()))
                out.append(f"{spec.file}:{line}:{col}: sink {sink.id!r} ({sink.type}): windows {named} with the same "
                           "key reach it; at a window start they share, the point of one replaces the other's "
                           f"(the sink keys points by measurement, tags and ts) (hint: give each window size its "
                           f"own sink with its own measurement)")
    return out
