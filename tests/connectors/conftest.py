"""Fixtures for tests against a real Mosquitto broker (see tests/support/mosquitto.py).

- ``broker``: one anonymous broker shared by the whole session; isolate tests with ``topic_prefix``.
- ``make_broker(**options)``: a private broker for this test (passwords, TLS, restarts), stopped afterwards.
- ``tls_files``: a CA, server and client certificate generated for this session.
- ``topic_prefix``: a topic prefix unique to this test, e.g. ``t/test_round_trip-1a2b3c``.
- ``clients(broker, **kw)``: paho test clients (publish, subscribe, wait_for), closed afterwards.
- ``run_pipeline(yaml_text)``: a pipeline running on a thread (``stop()``/``wait()`` return its RunSummary).
"""

from __future__ import annotations

import re
import uuid

import pytest

from tests.support.clients import Client, RunningPipeline
from tests.support.mosquitto import Mosquitto, available, make_tls_files


def _require_mosquitto() -> None:
    if not available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    _require_mosquitto()
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-shared")) as b:
        yield b


@pytest.fixture
def make_broker(tmp_path):
    _require_mosquitto()
    started: list[Mosquitto] = []

    def factory(**options) -> Mosquitto:
        b = Mosquitto(tmp_path / f"mosquitto-{len(started)}", **options)
        started.append(b)
        return b.start()

    yield factory
    for b in started:
        b.close()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    pytest.importorskip("cryptography", reason="TLS tests generate certificates with the cryptography package")
    return make_tls_files(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def topic_prefix(request) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:40]
    return f"t/{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def clients():
    """``clients(broker, **kw)`` makes a test Client; all are closed afterwards."""
    made: list[Client] = []

    def factory(broker, **kw) -> Client:
        made.append(Client(broker, **kw))
        return made[-1]

    yield factory
    for c in made:
        c.close()


@pytest.fixture
def run_pipeline():
    """``run_pipeline(yaml_text)`` starts a pipeline on a thread; any still running are stopped afterwards."""
    started: list[RunningPipeline] = []

    def factory(text: str, env: dict | None = None) -> RunningPipeline:
        started.append(RunningPipeline(text, env))
        return started[-1]

    yield factory
    for p in started:
        if p.thread.is_alive():
            p.stop()
