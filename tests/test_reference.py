"""The generated reference covers every key with readable types, documents expressions, and the JSON Schema
accepts ${VAR} wherever a value may be substituted; YAML mistakes get plain-language hints."""

import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from pipeline import registry
from pipeline.config import RuntimeConfig
from pipeline.errors import ConfigError
from pipeline.expr import FUNCTIONS
from pipeline.loader import parse_pipeline
from pipeline.reference import _BASE_FIELDS, pipeline_schema
from pipeline.stages.map import _UNITS

ROOT = Path(__file__).resolve().parents[1]
STAGES_MD = (ROOT / "docs" / "stages.md").read_text()


def _models(annotation):
    """Every pydantic model inside a type annotation (list[X], dict[str, X], X | None, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        yield from _models(arg)


def _keys(model, seen=None):
    seen = set() if seen is None else seen
    for name, info in model.model_fields.items():
        yield name
        for sub in _models(info.annotation):
            if sub not in seen:
                seen.add(sub)
                yield from _keys(sub, seen)


def _section(heading: str, after: str = "") -> str:
    start = STAGES_MD.index(heading, STAGES_MD.index(after) if after else 0) + len(heading)
    end = re.compile(r"^(### |## )", re.M).search(STAGES_MD, start)
    return STAGES_MD[start:end.start() if end else None]


@pytest.mark.parametrize("kind,name", [(k, n) for k, t in registry.KINDS.items() for n in sorted(t)])
def test_every_key_of_every_type_is_in_the_reference(kind, name):
    section = _section(f"### `{name}`\n", after=f"## {kind.capitalize()}\n")
    missing = [k for k in _keys(registry.load(kind, name).Config) if k not in _BASE_FIELDS and f"| `{k}` |" not in section]
    assert not missing, f"{kind} {name}: keys not in docs/stages.md: {missing}"


def test_runtime_sub_sections_and_readable_types():
    runtime = _section("## Runtime")
    assert all(f"| `{k}` |" in runtime for k in _keys(RuntimeConfig))
    rows = [line.replace("\\|", "/").split(" | ") for line in STAGES_MD.splitlines() if line.startswith("| `")]
    types_and_defaults = " ".join(" ".join(r[1:3]) for r in rows if len(r) >= 4)
    for internal in ("NoneType", "typing.", "connectors.", "pipeline.", "Annotated", "FieldInfo", "SecretStr", "min_delay="):
        assert internal not in types_and_defaults, internal
    assert "| `reconnect` | object (`reconnect` keys below) | `{\"min_delay\": 0.5, \"max_delay\": 30.0}` |" in STAGES_MD


def test_expression_reference_lists_every_function_and_unit():
    ref = STAGES_MD[STAGES_MD.index("## Expressions"):]
    assert all(f"`{name}(" in ref for name in FUNCTIONS)
    assert all(f"`{unit}`" in ref for unit in _UNITS)
    assert 'fields["Volume Flow RateRMS"]' in ref and "device == 'pump1'" in ref and "present(x)" in ref


def _pipeline_files():
    return sorted(ROOT.glob("examples/**/*.yaml")) + [ROOT / "compose" / "pipeline.yaml"]


@pytest.mark.parametrize("path", _pipeline_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_validate_against_the_json_schema(path):
    validator = jsonschema.Draft202012Validator(pipeline_schema())
    errors = [f"{list(e.path)}: {e.message[:200]}" for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
    assert not errors, errors


def test_schema_accepts_variables_where_substitution_is_allowed_and_still_checks_types():
    validator = jsonschema.Draft202012Validator(pipeline_schema())
    doc = {"pipeline": "p", "sinks": [{"id": "o", "type": "stdout", "inputs": ["a"]}],
           "sources": [{"id": "a", "type": "mqtt", "protocol": "${MQTT_PROTOCOL:-5}", "keepalive": "${KA}",
                        "persistent": "${PERSIST:-true}", "subscriptions": [{"topic": "x", "qos": "${QOS:-1}"}]}],
           "runtime": {"tick": "${TICK:-100ms}", "batching": {"max_records": "${N}"}}}
    assert list(validator.iter_errors(doc)) == []
    src = doc["sources"][0]
    for bad in ({**src, "keepalive": "soon"}, {**src, "subscriptions": [{"topic": "x", "qos": "high"}]},
                {**src, "type": "${KIND}"}):
        assert not validator.is_valid({**doc, "sources": [bad]}), bad


@pytest.mark.parametrize("text,line,hint", [
    ("pipeline: p\nsources:\n\t- {id: a}\n", 3, "not tabs"),
    ("pipeline: p\nsources:\n  - id: a\n    type replay\n    path: x\n", 4, "key without ':'"),
    ("pipeline: p\nsources:\n  - id: a\n    type: replay\n   path: x\n", 5, "indented differently"),
    ("pipeline: p\nsources:\n  - id: a\n     type: replay\n", 4, "indented deeper than the key above"),
    ("pipeline: p\nstages:\n  - id: a\n    where: t: 5\n", 4, "quote it"),
    ("pipeline: p\nsources: [{id: a, type: replay\nsinks: []\n", 2, "'{' opened on this line is not closed"),
])
def test_yaml_mistakes_get_plain_language_hints_with_the_line(text, line, hint):
    with pytest.raises(ConfigError) as e:
        parse_pipeline(text)
    [problem] = e.value.problems
    assert problem.line == line and hint in str(problem) and str(problem).startswith(f"<text>:{line}:")
