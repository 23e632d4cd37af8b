"""Safe, vectorised expressions over a batch's fields and tags — no ``eval``.

An expression is parsed once with :mod:`ast`; only arithmetic, comparisons, boolean logic, ``in`` over
literal lists, a few math functions and names (fields, tags, ``ts``; ``fields["odd name"]`` / ``tags["x"]``)
are allowed. It is evaluated on whole numpy columns.

>>> from pipeline.batch import Batch
>>> b = Batch.from_records([{"ts": 1, "tags": {"device": "a"}, "fields": {"t": 30.0}},
...                         {"ts": 2, "tags": {"device": "b"}, "fields": {"t": 10.0}}])
>>> Expression("t > 20 and device in ['a', 'c']").evaluate(b).tolist()
[True, False]
>>> Expression("(t - 32) * 5 / 9").evaluate(b).round(2).tolist()
[-1.11, -12.22]
"""

from __future__ import annotations

import ast
import operator
from typing import Any

import numpy as np

from .batch import Batch

_BIN = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
        ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power}
_CMP = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}
FUNCTIONS = {"abs": np.abs, "sqrt": np.sqrt, "log": np.log, "log10": np.log10, "exp": np.exp,
             "min": np.minimum, "max": np.maximum, "round": np.round, "floor": np.floor, "ceil": np.ceil,
             "isnan": lambda x: np.isnan(np.asarray(x, dtype=float)), "present": lambda x: _present(x)}


def _present(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == object:
        return np.array([v is not None and v == v for v in x], dtype=bool)
    return ~np.isnan(x.astype(float))


class ExpressionError(ValueError):
    pass


class Expression:
    """A parsed expression; :meth:`names` lists the columns it reads."""

    def __init__(self, text: str):
        self.text = text
        try:
            self.tree = ast.parse(text, mode="eval").body
        except SyntaxError as exc:
            raise ExpressionError(f"cannot parse {text!r}: {exc.msg} at column {exc.offset}") from None
        self._names: list[str] = []
        self._check(self.tree)

    def names(self) -> list[str]:
        return list(dict.fromkeys(self._names))

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            if node.id not in ("True", "False"):
                self._names.append(node.id)
            return
        if isinstance(node, ast.Subscript):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("fields", "tags")
                    and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str)):
                raise ExpressionError(f"in {self.text!r}: only fields['name'] or tags['name'] may be subscripted")
            self._names.append(node.slice.value)
            return
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS) or node.keywords:
                name = ast.unparse(node.func)
                raise ExpressionError(f"in {self.text!r}: function {name!r} is not allowed; allowed: {', '.join(FUNCTIONS)}")
            for a in node.args:
                self._check(a)
            return
        allowed = (ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Constant, ast.List, ast.Tuple,
                   ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, ast.In, ast.NotIn, ast.Load, ast.IfExp,
                   *_BIN, *_CMP)
        if not isinstance(node, allowed):
            raise ExpressionError(f"in {self.text!r}: {type(node).__name__} is not allowed in an expression")
        for child in ast.iter_child_nodes(node):
            self._check(child)

    def evaluate(self, batch: Batch) -> np.ndarray:
        n = len(batch)
        result = self._eval(self.tree, batch, n)
        return np.broadcast_to(np.asarray(result), (n,)) if np.ndim(result) == 0 else np.asarray(result)

    def _column(self, name: str, batch: Batch, n: int) -> np.ndarray:
        col = batch.column(name)
        if col is None:
            return np.full(n, np.nan)
        return col

    def _eval(self, node: ast.AST, batch: Batch, n: int) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return {"True": True, "False": False}.get(node.id) if node.id in ("True", "False") \
                else self._column(node.id, batch, n)
        if isinstance(node, ast.Subscript):
            return self._column(node.slice.value, batch, n)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._eval(e, batch, n) for e in node.elts]
        if isinstance(node, ast.BinOp):
            with np.errstate(all="ignore"):
                return _BIN[type(node.op)](self._eval(node.left, batch, n), self._eval(node.right, batch, n))
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, batch, n)
            if isinstance(node.op, ast.Not):
                return np.logical_not(v)
            return np.negative(v) if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BoolOp):
            fn = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            out = self._eval(node.values[0], batch, n)
            for v in node.values[1:]:
                out = fn(out, self._eval(v, batch, n))
            return out
        if isinstance(node, ast.IfExp):
            return np.where(self._eval(node.test, batch, n), self._eval(node.body, batch, n),
                            self._eval(node.orelse, batch, n))
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, batch, n)
            out = True
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, batch, n)
                if isinstance(op, (ast.In, ast.NotIn)):
                    values = right if isinstance(right, list) else [right]
                    r = np.isin(np.asarray(left, dtype=object), np.asarray(values, dtype=object))
                    r = ~r if isinstance(op, ast.NotIn) else r
                else:
                    with np.errstate(invalid="ignore"):
                        r = _CMP[type(op)](left, right)
                out = np.logical_and(out, r)
                left = right
            return out
        if isinstance(node, ast.Call):
            with np.errstate(all="ignore"):
                return FUNCTIONS[node.func.id](*[self._eval(a, batch, n) for a in node.args])
        raise ExpressionError(f"cannot evaluate {type(node).__name__}")  # pragma: no cover - _check forbids it
