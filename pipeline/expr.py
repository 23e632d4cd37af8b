"""Safe, vectorised expressions over a batch's fields and tags — no ``eval``.

An expression is parsed once with :mod:`ast`; only arithmetic, comparisons, boolean logic, ``in`` over
literal lists, a few math functions and names (fields, tags, ``ts``; ``fields["odd name"]`` / ``tags["x"]``)
are allowed. It is evaluated on whole numpy columns.

Limits keep a pipeline file or a record from exhausting the process: an expression has at most
``MAX_LENGTH`` characters, ``MAX_NESTING`` levels of brackets and unary operators and ``MAX_OPERATORS``
operators (checked on the tokens, before parsing, so nothing deep ever reaches the recursive parser).
Per record, a string result (or intermediate) longer than ``MAX_STRING`` characters and an integer result
outside the 64-bit range are errors for that record (see :meth:`Expression.evaluate_rows`), never a huge
allocation or a silently wrapped number.

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
import io
import operator
import tokenize
from typing import Any

import numpy as np

from .batch import Batch

_BIN = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.true_divide,
        ast.FloorDiv: np.floor_divide, ast.Mod: np.mod, ast.Pow: np.power}
_EXACT = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Pow: operator.pow,
          ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
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


MAX_LENGTH = 65_536        # characters of expression text (a long `in [...]` list is fine)
MAX_NESTING = 50           # brackets and unary operators inside one another
MAX_OPERATORS = 256        # operators in one expression (each can add a level to the tree)
MAX_STRING = 4096          # characters of any string a record's evaluation builds
INT_LIMIT = 2 ** 63        # integer results must stay inside int64, else the record is in error
_UNARY_WORDS = {"not"}
_OPERATOR_WORDS = {"and", "or", "not", "in", "is", "if"}


class ExpressionError(ValueError):
    pass


def check_size(text: str) -> None:
    """Refuse text too long or too deeply nested for the parser, from its tokens (no recursion); say where."""
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression of {len(text)} characters is longer than the limit of {MAX_LENGTH}")
    depth, unary_run, operators, prev = 0, 0, 0, None
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            word = tok.string
            if tok.type == tokenize.OP and word in "([{":
                depth += 1
            elif tok.type == tokenize.OP and word in ")]}":
                depth -= 1
            is_op = (tok.type == tokenize.OP and word not in "()[]{},:.") or (tok.type == tokenize.NAME and word in _OPERATOR_WORDS)
            operators += is_op
            prefix = is_op and (word in _UNARY_WORDS or (word in "+-~" and (prev is None or prev[0] == "op")))
            unary_run = unary_run + 1 if prefix else (unary_run if is_op or word in "([{" else 0)
            if depth + unary_run > MAX_NESTING:
                raise ExpressionError(f"expression nested deeper than {MAX_NESTING} levels (brackets and unary operators) "
                                      f"at column {tok.start[1] + 1}: simplify it")
            if operators > MAX_OPERATORS:
                raise ExpressionError(f"expression has more than {MAX_OPERATORS} operators (at column {tok.start[1] + 1}): "
                                      "split it over several map fields")
            if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.INDENT, tokenize.DEDENT):
                prev = ("op" if is_op or word in "([{," else "value", word)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return  # ast.parse reports the syntax error with its column


class Expression:
    """A parsed expression; :meth:`names` lists the columns it reads."""

    def __init__(self, text: str):
        self.text = text
        check_size(text)
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
        """The value per record; raises :class:`ExpressionError` when a record goes over a limit."""
        values, bad, reasons = self.evaluate_rows(batch)
        if bad.any():
            raise ExpressionError(reasons[int(np.flatnonzero(bad)[0])])
        return values

    def evaluate_rows(self, batch: Batch) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(values, bad mask, reason per record or None): records over a limit are marked, the rest are computed."""
        n = len(batch)
        self._bad = np.zeros(n, dtype=bool)
        self._reasons: list[str | None] = [None] * n
        result = self._eval(self.tree, batch, n)
        values = np.broadcast_to(np.asarray(result), (n,)) if np.ndim(result) == 0 else np.asarray(result)
        return values, self._bad, self._reasons

    def _mark(self, rows: np.ndarray, why) -> None:
        """Mark ``rows`` as in error; ``why`` is the reason, or a function of the row index giving it."""
        for i in np.flatnonzero(rows & ~self._bad):
            self._reasons[i] = f"expression {self.text!r}: {why(i) if callable(why) else why}"
        self._bad |= rows

    def _binop(self, node: ast.BinOp, left: Any, right: Any, n: int) -> Any:
        """Apply a binary operator within the string and integer limits; offending records are marked."""
        op = type(node.op)
        if op in (ast.Add, ast.Mult):
            left, right = self._limit_strings(op, left, right, n)
        if _is_int(left) and _is_int(right) and op in (ast.Add, ast.Sub, ast.Mult, ast.Pow, ast.FloorDiv, ast.Mod):
            with np.errstate(all="ignore"):
                try:
                    exact = _BIN[op](np.asarray(left, dtype=float), np.asarray(right, dtype=float))
                except OverflowError:  # a Python integer literal beyond float
                    exact = np.full(n, np.inf)
            if (op in (ast.FloorDiv, ast.Mod) and np.any(np.asarray(right) == 0)) or \
                    (op is ast.Pow and np.any(np.asarray(right) < 0)):
                return exact          # by zero: inf/nan (not 0); negative powers: floats (not an error)
            over = np.broadcast_to(~(np.abs(exact) < INT_LIMIT / 2), (n,)).copy()
            near = over & (np.broadcast_to(np.abs(exact), (n,)) < INT_LIMIT * 4)   # float rounding: decide exactly
            for i in np.flatnonzero(near):
                a, b = (int(v if np.ndim(v) == 0 else v[i]) for v in (left, right))
                over[i] = not -INT_LIMIT <= _EXACT[op](a, b) < INT_LIMIT
            if over.any():
                self._mark(over, f"integer result of {ast.unparse(node)!r} is beyond 64 bits (|x| >= 2**63)")
                if np.ndim(left) == 0 and np.ndim(right) == 0:
                    return np.zeros(n, dtype=np.int64)
                left, right = np.where(over, 0, left), np.where(over, 0, right)
        with np.errstate(all="ignore"):
            return _BIN[op](left, right)

    def _limit_strings(self, op: type, left: Any, right: Any, n: int) -> tuple[Any, Any]:
        ll, rl = _str_lengths(left, n), _str_lengths(right, n)
        if ll is None and rl is None:
            return left, right
        if op is ast.Add:
            size = (ll if ll is not None else 0) + (rl if rl is not None else 0)
        else:
            size = ll * _counts(right, n) if ll is not None else rl * _counts(left, n)
        over = size > MAX_STRING
        if not over.any():
            return left, right
        self._mark(over, lambda i: f"a string of {float(size[i]):,.0f} characters is longer than the limit of {MAX_STRING:,}")
        left, right = _blank(left, over, n) if ll is not None else left, _blank(right, over, n) if rl is not None else right
        return left, right

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
            return self._binop(node, self._eval(node.left, batch, n), self._eval(node.right, batch, n), n)
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


def _is_int(v: Any) -> bool:
    if isinstance(v, bool) or isinstance(v, np.bool_):
        return False
    if isinstance(v, (int, np.integer)):
        return True
    return isinstance(v, np.ndarray) and v.dtype.kind in "iu"


def _str_lengths(v: Any, n: int) -> np.ndarray | None:
    """Length per record of a string operand, None when it holds no strings."""
    if isinstance(v, str):
        return np.full(n, len(v))
    if isinstance(v, np.ndarray) and v.dtype.kind == "U":
        return np.broadcast_to(np.char.str_len(v), (n,))
    if isinstance(v, np.ndarray) and v.dtype == object:
        lengths = np.fromiter((len(x) if isinstance(x, str) else -1 for x in v.ravel()), dtype=np.int64, count=v.size)
        return None if (lengths < 0).all() else np.broadcast_to(np.maximum(lengths, 0), (n,))
    return None


def _counts(v: Any, n: int) -> np.ndarray:
    """The repeat count per record of a ``string * number`` product (0 where it is not a number)."""
    try:
        a = np.asarray(v, dtype=float)
    except (TypeError, ValueError, OverflowError):
        return np.zeros(n)
    return np.nan_to_num(np.broadcast_to(a, (n,)), nan=0.0, posinf=np.inf, neginf=0.0).clip(0)


def _blank(v: Any, rows: np.ndarray, n: int) -> np.ndarray:
    """``v`` as one object per record, with ``""`` in ``rows`` (so an oversized string is never built)."""
    out = np.empty(n, dtype=object)
    out[:] = np.broadcast_to(np.asarray(v, dtype=object), (n,))
    out[rows] = ""
    return out
