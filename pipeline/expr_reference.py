"""The "Expressions" section of docs/stages.md, generated from :mod:`pipeline.expr` and the map stage's units.

Every function of :data:`pipeline.expr.FUNCTIONS` must have a line in :data:`FUNCTION_HELP` (a test checks it),
so the reference cannot leave one out.
"""

from __future__ import annotations

FUNCTION_HELP = {
    "abs": ("abs(x)", "absolute value"),
    "sqrt": ("sqrt(x)", "square root (NaN below 0)"),
    "log": ("log(x)", "natural logarithm"),
    "log10": ("log10(x)", "base-10 logarithm"),
    "exp": ("exp(x)", "e to the power x"),
    "min": ("min(a, b)", "the smaller of two values, element by element"),
    "max": ("max(a, b)", "the larger of two values, element by element"),
    "round": ("round(x)", "nearest integer (halves to even)"),
    "floor": ("floor(x)", "largest integer not above x"),
    "ceil": ("ceil(x)", "smallest integer not below x"),
    "isnan": ("isnan(x)", "true where x is absent or not a number"),
    "present": ("present(x)", "true where the record has x (a field, tag or annotation)"),
}


def expression_reference() -> list[str]:
    """Markdown lines of the expression reference."""
    from .expr import FUNCTIONS
    from .stages.map import _UNITS

    missing = sorted(set(FUNCTIONS) - set(FUNCTION_HELP))
    if missing:
        raise RuntimeError(f"pipeline/expr_reference.py: document the expression functions {missing}")
    lines = [
        "## Expressions", "",
        "`filter` (`where:`) and `map` (`set:`) take expressions, evaluated on whole columns of a micro-batch "
        "(never with `eval`). Example: `where: \"temperature > 80 and device in ['pump1', 'pump2']\"`.", "",
        "| syntax | meaning |", "|---|---|",
        "| `temperature`, `device`, `ts` | a name is a field, else a tag, else an annotation; `ts` is the event time (seconds since the epoch) |",
        "| `fields[\"Volume Flow RateRMS\"]`, `tags[\"site-id\"]`, `fields[\"env.t\"]` | a name that is not a Python word (spaces, dashes, dots from flattened JSON) |",
        "| `'pump1'`, `\"pump1\"`, `21.5`, `True` | literals: text must be quoted (`device == 'pump1'`; `device == pump1` reads a field called pump1, and `validate` says so) |",
        "| `+ - * / // % **` | arithmetic |",
        "| `== != < <= > >=`, `1 < x < 5` | comparisons (chains allowed) |",
        "| `and`, `or`, `not` | boolean logic |",
        "| `x in ['a', 'b']`, `x not in [...]` | membership in a literal list |",
        "| `a if cond else b` | choice per record |", "",
        "A record without a name it reads has NaN there: comparisons with it are false, arithmetic gives NaN. Use "
        "`present(x)` to test for it. A name that no record of a batch has is logged once per stage and name with a "
        "did-you-mean from the names seen, and counted as `records_missing_name` on `/metrics`. A field whose value "
        "is not a number (text, a list) is dead-lettered by the stage, with the field named.", "",
        "| function | what it does |", "|---|---|",
    ]
    lines += [f"| `{FUNCTION_HELP[name][0]}` | {FUNCTION_HELP[name][1]} |" for name in FUNCTIONS]
    by_dim: dict[str, list[str]] = {}
    for unit, (dim, _scale, _offset) in _UNITS.items():
        by_dim.setdefault(dim, []).append(f"`{unit}`")
    lines += ["", "### Units (`map` stage, `units:`)", "",
              "`units: {temperature: degF->degC}` converts a field in place; both units must measure the same thing.", "",
              "| dimension | units |", "|---|---|"]
    lines += [f"| {dim} | {', '.join(units)} |" for dim, units in by_dim.items()]
    return lines + [""]
