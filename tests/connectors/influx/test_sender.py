"""The sender against real HTTP: a scripted server for 400/401/429/503 and a real VictoriaMetrics for delivery."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from connectors.influx.outbox import Outbox
from connectors.influx.sender import Backoff, Sender
from connectors.influx.transport import InfluxTransport
from tests.support.victoria import free_port
from tests.support.waiting import wait_for

S = 1_000_000_000
TOKEN = "s3cr3t-T0KEN-never-print-me"


def points(meas, n, dev="a", start=None):
    start = start or (int(time.time()) - 7200) * S      # export ends at "now": stay in the past
    return [(meas, {"dev": dev, "site": "hall 1"}, start + i * 10 * S, {"t_mean": i + 0.5, "t_count": 10.0})
            for i in range(n)]


def make(tmp_path, url, *, batch_size=100, name="out", **kw):
    ob = Outbox(tmp_path / f"{name}.db", **kw)
    tr = InfluxTransport(url=url, org="o", bucket="b", token=TOKEN, sink_id=name, timeout_s=2)
    snd = Sender(ob, tr, name=name, batch_size=batch_size, flush_interval_s=0.05,
                 backoff=Backoff(initial_s=0.05, max_s=0.4, seed=1)).start()
    return ob, snd


def test_aggregates_land_with_tags_fields_and_timestamps(tmp_path, victoria_shared, measurement):
    ob, snd = make(tmp_path, victoria_shared.url)
    pts = points(measurement, 25)
    ob.put(pts)
    assert snd.drain(10)
    snd.stop()
    got = victoria_shared.samples(f'{{__name__=~"{measurement}_.*"}}')
    labels = (("dev", "a"), ("site", "hall 1"))
    assert got[(f"{measurement}_t_mean", labels)] == [(p[2] // 10**6, p[3]["t_mean"]) for p in pts]
    assert got[(f"{measurement}_t_count", labels)] == [(p[2] // 10**6, 10.0) for p in pts]
    assert ob.stats()["sent"] == 25 and snd.bytes_sent > 0


@pytest.mark.slow
def test_server_down_mid_run_every_point_arrives_once(tmp_path, victoria, measurement):
    ob, snd = make(tmp_path, victoria.url, batch_size=40)
    pts = points(measurement, 600)
    def produce():
        for i in range(0, 600, 20):
            ob.put(pts[i:i + 20])
            time.sleep(0.01)
    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.1)
    victoria.stop()                                   # the uplink goes dark while points keep coming
    time.sleep(1.0)
    producer.join()
    assert ob.pending() > 0 and snd.retries > 0
    victoria.start()
    assert snd.drain(20), ob.stats()
    snd.stop()
    got = victoria.samples(f'{{__name__="{measurement}_t_mean"}}')
    (series,) = got.values()
    assert series == [(p[2] // 10**6, p[3]["t_mean"]) for p in pts]     # all there, in order, none twice


def test_503_then_recovers(tmp_path, http_stub, measurement):
    http_stub.push((503, {}, {"code": "unavailable", "message": "busy"}), (503, {}, ""))
    ob, snd = make(tmp_path, http_stub.url)
    ob.put(points(measurement, 5))
    assert snd.drain(5)
    snd.stop()
    assert snd.retries == 2 and len(http_stub.requests) == 3
    assert http_stub.requests[-1].text.count("\n") == 4 and snd.error is None


def test_429_honours_retry_after(tmp_path, http_stub, measurement):
    http_stub.push((429, {"Retry-After": "1"}, {"code": "too many requests", "message": "slow down"}))
    ob, snd = make(tmp_path, http_stub.url)
    ob.put(points(measurement, 3))
    assert snd.drain(5)
    snd.stop()
    assert len(http_stub.requests) == 2
    first, second = http_stub.requests
    assert second.at - first.at >= 0.95          # the backoff alone would have been <= 0.05 s


def test_400_dead_letters_the_batch_with_the_message_and_goes_on(tmp_path, http_stub, measurement, caplog):
    http_stub.push((400, {}, {"code": "invalid", "message": "partial write: field type conflict"}))
    ob, snd = make(tmp_path, http_stub.url, batch_size=3)
    ob.put(points(measurement, 6))
    assert snd.drain(5)
    snd.stop()
    assert ob.stats()["dead"] == 3 and ob.stats()["sent"] == 3 and not snd.halted
    assert ob.dead_rows()[0][4] == 400 and "field type conflict" in ob.dead_rows()[0][5]
    assert snd.error.status == 400 and "field type conflict" in str(snd.error)
    assert any(r.levelno == logging.ERROR and "dead-letter" in r.getMessage() for r in caplog.records)


def test_401_halts_keeps_the_rest_and_never_shows_the_token(tmp_path, http_stub, measurement, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    http_stub.push((401, {}, {"code": "unauthorized", "message": "unauthorized access"}))
    ob, snd = make(tmp_path, http_stub.url, batch_size=2)
    ob.put(points(measurement, 6))
    assert wait_for(lambda: snd.halted, 5)
    time.sleep(0.2)
    snd.stop()
    assert ob.stats()["dead"] == 2 and ob.pending() == 4 and len(http_stub.requests) == 1
    assert "token" in str(snd.error) and "401" in str(snd.error)
    assert http_stub.requests[0].headers["Authorization"] == f"Token {TOKEN}"     # it was sent, to the server only
    out, err = capfd.readouterr()
    text = caplog.text + out + err + str(snd.error) + repr(snd.error) + str(ob.dead_rows())
    assert TOKEN not in text and "unauthorized access" in caplog.text


def test_connection_refused_is_transient(tmp_path, measurement):
    ob, snd = make(tmp_path, f"http://127.0.0.1:{free_port()}")
    ob.put(points(measurement, 2))
    assert wait_for(lambda: snd.retries >= 2, 5)
    snd.stop()
    assert ob.pending() == 2 and snd.error is None


@pytest.mark.parametrize("status, hint", [(403, "grant write access"), (404, "does not exist")])
def test_403_and_404_halt_with_a_hint(tmp_path, http_stub, measurement, status, hint):
    http_stub.push((status, {}, {"code": "x", "message": f"server says {status}"}))
    ob, snd = make(tmp_path, http_stub.url, batch_size=2)
    ob.put(points(measurement, 4))
    assert wait_for(lambda: snd.halted, 5)
    snd.stop()
    assert snd.error.status == status and hint in str(snd.error) and f"server says {status}" in str(snd.error)
    assert ob.stats()["dead"] == 2 and ob.pending() == 2
    assert ob.requeue_dead() == 2 and ob.pending() == 4          # after fixing the config, nothing is lost


def test_413_halves_the_batch(tmp_path, http_stub, measurement):
    http_stub.push((413, {}, {"code": "too large", "message": "request too large"}))
    ob, snd = make(tmp_path, http_stub.url, batch_size=8)
    ob.put(points(measurement, 8))
    assert snd.drain(5)
    snd.stop()
    assert snd.batch_size == 4 and ob.stats()["dead"] == 0 and ob.stats()["sent"] == 8
