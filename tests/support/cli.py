"""Run the ``edgesieve`` command line from this checkout, installed or not."""

import os
import subprocess
import sys
import urllib.request
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


def metric(port: int, item: str, event: str | None, name: str = "edgesieve_records_total", label: str = "event") -> int:
    """A counter of a running ``edgesieve run --metrics-port PORT``, e.g. ``metric(port, "in", "out")``; ``event``
    None for a metric without that label. -1 while it does not answer yet."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return -1
    for line in text.splitlines():
        if line.startswith(name + "{") and f'item="{item}"' in line and (event is None or f'{label}="{event}"' in line):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0
