"""Fixtures for the cloud sinks: a real VictoriaMetrics and a scripted HTTP server (see tests/support/)."""
from __future__ import annotations

import itertools

import pytest

from tests.support.http_stub import StubServer
from tests.support.victoria import VictoriaMetrics

_names = itertools.count()


def _require_vm():
    if not VictoriaMetrics.available():
        pytest.skip("victoria-metrics binary not found at /usr/bin/victoria-metrics (Debian package victoria-metrics)")


@pytest.fixture(scope="session")
def victoria_shared():
    """One VictoriaMetrics for the session; tests keep apart by a unique measurement (see ``measurement``)."""
    _require_vm()
    with VictoriaMetrics() as vm:
        yield vm


@pytest.fixture
def victoria():
    """A VictoriaMetrics of this test's own, which the test may stop and start (same port, same storage)."""
    _require_vm()
    with VictoriaMetrics() as vm:
        yield vm


@pytest.fixture
def measurement(request) -> str:
    """A measurement name unique to this test."""
    return f"t{next(_names)}_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"[:60]


@pytest.fixture
def http_stub():
    """A real HTTP server on loopback; script answers with ``http_stub.push((status, headers, body), ...)``."""
    with StubServer() as s:
        yield s
