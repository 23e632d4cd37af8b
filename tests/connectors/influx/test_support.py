"""The test support itself: VictoriaMetrics starts, restarts on the same port, and export shows what landed."""
import time
import urllib.request

import pytest


def _write(url, body):
    req = urllib.request.Request(url + "/api/v2/write?org=o&bucket=b&precision=s", data=body.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


def test_victoria_maps_measurement_field_and_keeps_duplicates(victoria):
    now = int(time.time())
    assert _write(victoria.url, f"win,device=d1 temp_mean=1.5,ok=true {now}\nwin,device=d1 temp_mean=1.5 {now}") == 204
    got = victoria.samples()
    assert got[("win_temp_mean", (("device", "d1"),))] == [(now * 1000, 1.5), (now * 1000, 1.5)]
    assert got[("win_ok", (("device", "d1"),))] == [(now * 1000, 1.0)]


def test_victoria_restarts_on_same_port_and_keeps_data(victoria):
    now = int(time.time())
    _write(victoria.url, f"m,d=x f=2 {now}")
    port = victoria.port
    victoria.stop()
    with pytest.raises(OSError):
        _write(victoria.url, f"m,d=x f=3 {now + 1}")
    victoria.start()
    assert victoria.port == port
    assert victoria.count('{__name__="m_f"}') == 1
