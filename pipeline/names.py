"""No silent nothing: say so when a stage reads a name that no record has.

A filter on a misspelled field (``devce == 'pump1'``) or a ``match:`` on a key that is not a tag would otherwise
drop every record without a word. :class:`NameWatch` checks each batch for the names an expression (or a
``match:``) reads; a name that no record of a batch has, and that the stage has never seen, is logged once per
stage and name, with a did-you-mean from the names the stage has seen, and the records evaluated without it
are counted as ``records_missing_name`` (on ``/metrics``).

>>> import logging, sys
>>> from pipeline.batch import Batch
>>> from pipeline.testing import make_context
>>> ctx, _ = make_context("hot")
>>> watch = NameWatch(ctx, ["devce", "temp"])
>>> b = Batch.from_records([{"ts": 1, "tags": {"device": "p1"}, "fields": {"temp": 20.0}}])
>>> watch.check(b)
['devce']
>>> watch.message("devce")
"stage 'hot': no record has a field or tag 'devce' (did you mean 'device'?); the expression reads it as absent"
>>> watch.check(b)                     # warned once per name
[]
>>> ctx.metrics.get("hot", "records_missing_name")
2
"""

from __future__ import annotations

import ast
import difflib
import logging
from typing import Iterable

from .batch import Batch

log = logging.getLogger("edgesieve")
_MAX_SEEN = 2000          # names remembered per stage for did-you-mean


def compared_with_tag(text: str, tags: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Bare names compared with a tag in ``text`` (``device == pump1``): {name: (tag, the comparison quoted)}.

    >>> compared_with_tag("device == pump1 or site in [north, 'south']", ["device", "site"])
    {'pump1': ('device', "device == 'pump1'"), 'north': ('site', "site in ['north', 'south']")}
    """
    tags = set(tags)
    found: dict[str, tuple[str, str]] = {}
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return found
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or len(node.ops) != 1:
            continue
        left, right = node.left, node.comparators[0]
        if not (isinstance(left, ast.Name) and left.id in tags):
            left, right = right, left
        if not (isinstance(left, ast.Name) and left.id in tags):
            continue
        words = right.elts if isinstance(right, (ast.List, ast.Tuple)) else [right]
        bare = [w for w in words if isinstance(w, ast.Name) and w.id not in tags and w.id not in ("True", "False")]
        if not bare:
            continue
        fixed = _quote(node, {w.id for w in bare})
        for w in bare:
            found.setdefault(w.id, (left.id, ast.unparse(fixed)))
    return found


def _quote(node: ast.AST, words: set[str]) -> ast.AST:
    class Quote(ast.NodeTransformer):
        def visit_Name(self, n: ast.Name):
            return ast.Constant(n.id) if n.id in words else n
    return Quote().visit(ast.parse(ast.unparse(node), mode="eval").body)


class NameWatch:
    """Warn once per stage and name about names no record has (see the module docstring)."""

    def __init__(self, ctx, names: Iterable[str], where: str = "expression", match: bool = False,
                 texts: Iterable[str] = ()):
        """``match=True``: the names are ``match:`` keys, looked up in tags and annotations (not in fields)."""
        self.ctx = ctx
        self.names = [n for n in dict.fromkeys(names) if n != "ts"]
        self.where = where
        self.match = match
        self.texts = list(texts)            # the expressions, to spot `tag == word` (a word without quotes)
        self._found: set[str] = set()       # names some record had
        self._warned: set[str] = set()
        self._seen: dict[str, None] = {}
        self._fields: Iterable[str] = ()
        self._tags: set[str] = set()

    def _has(self, batch: Batch, name: str) -> bool:
        if self.match:
            return name in batch.tags or name in batch.extra
        return batch.column(name) is not None

    def check(self, batch: Batch) -> list[str]:
        """Names that are missing from ``batch`` and were never found; warns about the new ones. Returns those."""
        if not self.names or not len(batch):
            return []
        missing = []
        for name in self.names:
            if name in self._found:
                continue
            if self._has(batch, name):
                self._found.add(name)
            else:
                missing.append(name)
        if not missing:
            return []
        self.ctx.count("records_missing_name", len(batch) * len(missing))
        if len(self._seen) < _MAX_SEEN:
            for k in (*batch.tags, *batch.extra, *batch.fields):
                self._seen[k] = None
        self._fields = batch.fields.keys()
        self._tags.update(batch.tags)
        new = [n for n in missing if n not in self._warned]
        for name in new:
            self._warned.add(name)
            log.warning("%s", self.message(name))
        return new

    def _quoted(self, name: str) -> str | None:
        for text in self.texts:
            found = compared_with_tag(text, self._tags).get(name)
            if found:
                return found[1]
        return None

    def message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._seen), n=1, cutoff=0.6)
        if self.match and name in self._fields:
            hint = (f"{name!r} is a field, and match: looks at tags and annotations only: filter on it with a filter "
                    f"stage, e.g. where: {name} > 0")
        elif quoted := self._quoted(name):
            hint = f"write {quoted}: a word without quotes is read as a field name"
        elif close:
            hint = f"did you mean {close[0]!r}?"
        else:
            shown = sorted(self._seen)[:12]
            hint = f"names seen: {', '.join(shown)}" if shown else "no names seen yet"
        if self.match:
            return (f"{self.ctx.item_id!r}: match: no record has a tag or annotation {name!r} ({hint}); "
                    "nothing is matched")
        return f"stage {self.ctx.item_id!r}: no record has a field or tag {name!r} ({hint}); the {self.where} reads it as absent"
