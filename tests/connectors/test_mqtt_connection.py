"""Connection helpers: the buffered socket under paho, credentials, client ids, backoff."""

import socket

import pytest
from pydantic import SecretStr

from connectors.mqtt.connection import _BufferedSocket
from pipeline.backoff import Backoff
from connectors.mqtt.settings import MqttConnectionFields, credentials, default_client_id


def test_buffered_socket_serves_small_reads_from_one_recv():
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        s = _BufferedSocket(a)
        b.sendall(b"\x30\x05hello\x30\x02hi")
        assert s.recv(1) == b"\x30" and s.pending() == 10       # one recv() took everything
        assert s.recv(1) == b"\x05" and s.recv(5) == b"hello"
        assert s.recv(100) == b"\x30\x02hi"                        # at most what is buffered
        assert s.pending() == 0
        with pytest.raises(BlockingIOError):                     # nothing left: paho sees EAGAIN as usual
            s.recv(1)
        b.sendall(b"xyz")
        assert s.recv(2) == b"xy" and s.recv(2) == b"z"
        assert s.fileno() == a.fileno()                          # everything else is the socket's
    finally:
        a.close()
        b.close()


def test_credentials_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PW", "s3cret")
    f = tmp_path / "pw"
    f.write_text("from-file\nignored\n")
    user, pw = credentials(MqttConnectionFields(username="u", password_env="PW"), "here")
    assert (user, pw.get_secret_value()) == ("u", "s3cret") and "s3cret" not in repr(pw)
    assert credentials(MqttConnectionFields(username="u", password_file=str(f)), "here")[1].get_secret_value() == "from-file"
    assert credentials(MqttConnectionFields(username="u", password=SecretStr("x")), "here")[1].get_secret_value() == "x"
    monkeypatch.delenv("PW")
    with pytest.raises(ValueError, match="PW .* is not set"):
        credentials(MqttConnectionFields(username="u", password_env="PW"), "source 'in'")
    with pytest.raises(ValueError, match="cannot read password_file"):
        credentials(MqttConnectionFields(username="u", password_file=str(tmp_path / "nope")), "source 'in'")


def test_client_id_is_stable_bounded_and_unique_per_host_and_state_dir(tmp_path):
    cid = default_client_id("gw1", "plant", "in", tmp_path, host="h1")
    assert cid.startswith("edgesieve-gw1-plant-in-") and cid == default_client_id("gw1", "plant", "in", tmp_path, host="h1")
    assert cid != default_client_id("gw1", "plant", "in", tmp_path / "other", host="h1")    # second pipeline, same node
    assert cid != default_client_id("gw1", "plant", "in", tmp_path, host="h2")              # same node name elsewhere
    long = default_client_id("g" * 80, "p", "in", tmp_path)
    assert len(long) <= 64 and long == default_client_id("g" * 80, "p", "in", tmp_path)


def test_backoff_doubles_with_jitter_up_to_the_cap():
    b = Backoff(0.5, 4.0, jitter=0.5, seed=3)      # what the MQTT connection uses for reconnects
    delays = [b.next() for _ in range(8)]
    caps = [0.5, 1, 2, 4, 4, 4, 4, 4]
    assert all(c / 2 <= d <= c for d, c in zip(delays, caps))
    b.reset()
    assert b.next() <= 0.5
