"""Safe expressions (filter/map): what is allowed, what is refused, and vectorised results."""

import pytest

from pipeline.batch import Batch
from pipeline.expr import Expression, ExpressionError
from pipeline.stages.map import Map
from pipeline.testing import run_stage

B = Batch.from_records([{"ts": 1, "tags": {"device": "a", "odd name": "z"}, "fields": {"t": 30.0, "p": 2.0}},
                        {"ts": 2, "tags": {"device": "b"}, "fields": {"t": -5.0}}])


@pytest.mark.parametrize("text, expected", [
    ("t > 0 and p > 1", [True, False]),          # absent p compares false
    ("not present(p)", [False, True]),
    ("abs(t) >= 5 if device == 'b' else t > 100", [False, True]),
    ("tags['odd name'] == 'z'", [True, False]),
    ("device not in ['a']", [False, True]),
    ("max(t, 0) + sqrt(4)", [32.0, 2.0]),
])
def test_expressions(text, expected):
    assert Expression(text).evaluate(B).tolist() == expected


@pytest.mark.parametrize("text, message", [
    ("t.__class__", "Attribute is not allowed"),
    ("open('/etc/passwd')", "function 'open' is not allowed"),
    ("[x for x in t]", "ListComp is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("t >", "cannot parse"),
])
def test_unsafe_or_broken_expressions_are_refused(text, message):
    with pytest.raises(ExpressionError, match=message):
        Expression(text)


def test_map_units_and_bad_values():
    out = run_stage(Map, {"units": {"p": "bar->psi", "t": "degC->K"}}, [{"ts": 1, "fields": {"p": 1.0, "t": 0.0}}])
    assert out[0]["fields"] == pytest.approx({"p": 14.503773773, "t": 273.15})
    with pytest.raises(Exception, match="cannot convert degC"):
        Map.Config.model_validate({"id": "m", "type": "map", "inputs": ["a"], "units": {"t": "degC->bar"}})
