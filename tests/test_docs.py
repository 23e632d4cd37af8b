"""Docs come from code: the stage reference is current, and every pipeline example in the docs is valid."""

import re
from pathlib import Path

import pytest
import yaml

from pipeline import load_pipeline
from pipeline.loader import parse_pipeline
from pipeline.reference import pipeline_schema, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").rglob("*.md"))]


def yaml_blocks():
    for path in DOCS:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)):
            doc = yaml.safe_load(block)
            if isinstance(doc, dict) and "sources" in doc:
                yield pytest.param(block, id=f"{path.relative_to(ROOT)}#{i}")


def test_stage_reference_is_current():
    committed = (ROOT / "docs" / "stages.md").read_text()
    assert committed == reference_markdown(), "docs/stages.md is stale: run `edgesieve docs`"


@pytest.mark.parametrize("block", list(yaml_blocks()))
def test_pipeline_examples_in_docs_are_valid(block):
    parse_pipeline(block, env={})


def test_example_pipeline_files_are_valid():
    files = sorted((ROOT / "examples").rglob("pipeline*.yaml")) + sorted((ROOT / "examples").rglob("*.pipeline.yaml"))
    assert files
    for f in files:
        parse_pipeline(f, env={})


def test_readme_python_api_example():
    p = load_pipeline(ROOT / "examples" / "quickstart" / "pipeline.yaml")
    out = p.run_records([{"ts": 1767225600.0 + i, "tags": {"site": "plant1", "device": "pump1"},
                          "fields": {"temperature": 61.0 + i, "pressure": 2.0, "vibration": 0.3}} for i in range(120)])
    assert [r["fields"]["count"] for r in out["aggregates"]] == [60, 60]
    assert out["aggregates"][0]["fields"]["temperature_max"] == 120.0


def test_schema_has_every_type():
    schema = pipeline_schema()
    text = str(schema)
    for name in ("replay", "filter", "map", "window", "file", "stdout"):
        assert f"'const': '{name}'" in text or f"'enum': ['{name}']" in text, name
