"""Expression limits: string sizes and integer magnitudes are per-record errors (dead-lettered, named); nesting is
refused from the tokens with the expression's file:line, so `validate` never shows a RecursionError."""

import pytest

from pipeline import load_pipeline
from pipeline.batch import Batch
from pipeline.expr import MAX_NESTING, MAX_STRING, Expression, ExpressionError
from tests.support.cli import edgesieve

RECORDS = [{"ts": 1.0, "tags": {"device": "pump1"}, "fields": {"t": 30.0}},
           {"ts": 2.0, "tags": {"device": "p" * 3000}, "fields": {"t": 10.0}}]


def pipeline_with(stage: str):
    return load_pipeline(f"""
sources: [{{id: r, type: replay, path: r.csv, tags: [device]}}]
stages:
  - {stage}
sinks: [{{id: out, type: stdout, inputs: [s]}}]
runtime: {{dead_letter: null}}
""")


def test_a_huge_string_is_a_per_record_error_and_never_built():
    values, bad, why = Expression("device * 1000000000").evaluate_rows(Batch.from_records(RECORDS))
    assert bad.tolist() == [True, True] and all(len(v) == 0 for v in values)
    assert why[0] == (f"expression 'device * 1000000000': a string of 5,000,000,000 characters is longer than the "
                      f"limit of {MAX_STRING:,}")


def test_an_intermediate_string_is_bounded_too_and_short_ones_pass():
    values, bad, _ = Expression("(device + device) == 'pump1pump1'").evaluate_rows(Batch.from_records(RECORDS))
    assert values.tolist() == [True, False] and bad.tolist() == [False, True]   # 6,000 characters in the 2nd record


@pytest.mark.parametrize("text", ["9**9**9", "2**62 + 2**62", "3037000500 * 3037000500", "10**400 + 1", "-(2**62) - 2**62 - 1"])
def test_integer_overflow_is_an_error_not_a_wrapped_number(text):
    values, bad, why = Expression(text).evaluate_rows(Batch.from_records(RECORDS))
    assert bad.all() and "is beyond 64 bits" in why[0]


def test_exact_integers_and_float_edge_cases_stay_right():
    b = Batch.from_records(RECORDS)
    assert Expression("2**62 + (2**62 - 1)").evaluate(b).tolist() == [2 ** 63 - 1] * 2
    assert Expression("-(2**62) - 2**62").evaluate(b).tolist() == [-2 ** 63] * 2
    assert Expression("7 // 0").evaluate(b).tolist() == [float("inf")] * 2    # not a silent 0
    assert Expression("2 ** -1").evaluate(b).tolist() == [0.5] * 2
    assert Expression("t * 1e300 * 1e300").evaluate(b).tolist() == [float("inf")] * 2
    with pytest.raises(ExpressionError, match="beyond 64 bits"):
        Expression("9**9**9").evaluate(b)                   # the strict API raises instead of returning a number


def test_filter_and_map_dead_letter_the_record_with_stage_and_expression_and_keep_the_rest():
    p = pipeline_with("{id: s, type: filter, inputs: [r], where: \"device + device != ''\"}")
    out = p.run_records(RECORDS)["out"]
    assert [r["tags"]["device"] for r in out] == ["pump1"]
    (dead,) = p.dead_letters.records
    assert dead["item"] == "s" and dead["reason"].startswith("stage 's': expression \"device + device != ''\": a string of 6,000")
    p = pipeline_with("{id: s, type: map, inputs: [r], set: {big: 't * 0 + 3037000500 * 3037000500', ok: 't + 1'}}")
    assert p.run_records(RECORDS)["out"] == []
    assert [d["reason"] for d in p.dead_letters.records] == [
        "stage 's': field 'big': expression 't * 0 + 3037000500 * 3037000500': integer result of "
        "'3037000500 * 3037000500' is beyond 64 bits (|x| >= 2**63)"] * 2
    p = pipeline_with("{id: s, type: map, inputs: [r], set: {label: \"device * 2\"}}")
    out = p.run_records(RECORDS)["out"]
    assert [r["fields"]["label"] for r in out] == ["pump1pump1"] and len(p.dead_letters.records) == 1


@pytest.mark.parametrize("text", ["-" * 3000 + "t", "not " * 1000 + "t", "(" * 3000 + "t" + ")" * 3000,
                                  "+".join(["t"] * 3000)], ids=["unary minus", "not", "brackets", "a long sum"])
def test_deep_or_huge_expressions_are_refused_before_parsing(text):
    with pytest.raises(ExpressionError, match="nested deeper|more than 256 operators"):
        Expression(text)
    with pytest.raises(ExpressionError, match="longer than the limit"):
        Expression("t + " * 17_000 + "t")


def test_reasonable_nesting_and_long_lists_still_parse():
    Expression("(" * (MAX_NESTING - 1) + "t" + ")" * (MAX_NESTING - 1))
    Expression("device in [" + ", ".join(f"'d{i}'" for i in range(2000)) + "]")
    Expression("- - t > -(-(-1))")


def test_validate_reports_a_deep_expression_at_its_line_without_a_traceback(tmp_path):
    f = tmp_path / "deep.yaml"
    (tmp_path / "r.csv").write_text("ts,t\n1,2\n")
    f.write_text(f"""sources: [{{id: r, type: replay, path: r.csv}}]
stages:
  - id: f
    type: filter
    inputs: [r]
    where: "{'-' * 3000}t > 0"
sinks: [{{id: o, type: stdout, inputs: [f]}}]
""")
    result = edgesieve("validate", str(f))
    assert result.returncode == 1
    assert "RecursionError" not in result.stderr and "Traceback" not in result.stderr
    assert f"{f}:6:12: stage 'f' (filter): field 'where': expression nested deeper than {MAX_NESTING} levels" in result.stderr
