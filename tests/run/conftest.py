"""Fixtures for the run/simulate/demo/compose tests: a real Mosquitto broker and a unique topic prefix per test."""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory):
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    workdir = tmp_path_factory.mktemp("mosquitto-run")
    with Mosquitto(workdir) as b:
        yield b


@pytest.fixture
def prefix(request) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:40]
    return f"t/{name}-{uuid.uuid4().hex[:6]}"
