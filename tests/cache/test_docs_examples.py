"""Every YAML pipeline in docs/redundancy.md is a valid pipeline file."""

import re
from pathlib import Path

import pytest

from pipeline.loader import parse_pipeline

DOC = Path(__file__).resolve().parents[2] / "docs" / "redundancy.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("text", BLOCKS)
def test_yaml_examples_validate(text):
    spec = parse_pipeline(text, env={})
    assert spec.stages
