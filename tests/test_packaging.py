"""Test and plotting tools are extras, not runtime dependencies; ./dev installs what the tests and the demo need."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _names(reqs):
    return {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for r in reqs}


def test_runtime_dependencies_hold_no_test_or_plotting_tools():
    runtime = _names(PYPROJECT["project"]["dependencies"])
    # cryptography is a runtime dependency on purpose: the onnx stage verifies signed model manifests (Ed25519)
    assert not runtime & {"pytest", "matplotlib", "jsonschema", "opencv-python-headless", "torch"}
    assert "cryptography" in runtime
    extras = {k: _names(v) for k, v in PYPROJECT["project"]["optional-dependencies"].items()}
    assert {"pytest", "jsonschema"} <= extras["test"]
    assert {"matplotlib", "opencv-python-headless", "amqtt"} <= extras["demo"]


def test_dev_installs_the_test_and_demo_extras():
    assert '-e ".[test,demo]"' in (ROOT / "dev").read_text()


def test_running_a_pipeline_imports_neither_pytest_nor_matplotlib():
    code = ("import sys\n"
            "from pipeline import registry\n"
            "for kind, table in registry.KINDS.items():\n"
            "    for name in table: registry.load(kind, name)\n"
            "import pipeline.cli, pipeline.runtime, pipeline.trial, connectors.simulate.demo\n"
            "bad = sorted(m for m in ('pytest', 'matplotlib', 'jsonschema') if m in sys.modules)\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_demo_says_how_to_get_the_png_without_matplotlib(monkeypatch, tmp_path):
    from connectors.simulate.demo import NO_MATPLOTLIB, report_png
    from connectors.simulate.demo.report import write_report

    monkeypatch.setitem(sys.modules, "matplotlib", None)           # as if it were not installed
    assert report_png(write_report, None, tmp_path / "r.png", "t", 0) == NO_MATPLOTLIB
    assert "pip install -e '.[demo]'" in NO_MATPLOTLIB and not (tmp_path / "r.png").exists()
