"""Run the ``edgesieve`` command line from this checkout, installed or not."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def edgesieve(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """``edgesieve ARGS`` run to completion, output captured as text."""
    kwargs.setdefault("env", cli_env())
    kwargs.setdefault("timeout", 120)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, **kwargs)


def start_edgesieve(*args: str, **kwargs) -> subprocess.Popen:
    kwargs.setdefault("env", cli_env())
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
