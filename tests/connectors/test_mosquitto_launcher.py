"""The test broker launcher itself: start, restart on the same port, passwords, TLS, cleanup."""

import ssl
import threading

import paho.mqtt.client as mqtt
import pytest

from tests.support.mosquitto import Mosquitto


def _connect(broker, **kw):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    done = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        done.set()

    c.on_connect = on_connect
    if kw.get("user"):
        c.username_pw_set(kw["user"], kw.get("password"))
    if kw.get("ca"):
        c.tls_set(ca_certs=str(kw["ca"]))
    c.connect(broker.host, broker.port)
    c.loop_start()
    assert done.wait(5), broker.log()
    c.disconnect()
    c.loop_stop()
    return result["rc"]


def test_shared_broker_accepts_anonymous(broker):
    assert broker.running and broker.url.startswith("mqtt://127.0.0.1:")
    assert not _connect(broker).is_failure


def test_restart_keeps_port_and_stop_cleans_up(tmp_path):
    b = Mosquitto(tmp_path).start()
    port, proc = b.port, b._proc
    b.restart()
    assert b.port == port and b.running and b._proc is not proc
    assert not _connect(b).is_failure
    b.close()
    assert not b.running and proc.poll() is not None


def test_password_and_tls(make_broker, tls_files):
    b = make_broker(users={"alice": "s3cret"}, tls=tls_files)
    assert b.url.startswith("mqtts://localhost:")
    assert not _connect(b, user="alice", password="s3cret", ca=tls_files.ca).is_failure
    assert _connect(b, user="alice", password="wrong", ca=tls_files.ca).is_failure
    with pytest.raises(ssl.SSLError):
        _connect(b, user="alice", password="s3cret", ca=tls_files.server_cert)  # not the CA: untrusted
