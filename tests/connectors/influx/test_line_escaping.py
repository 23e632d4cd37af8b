"""Line protocol escaping of names and tag values, and what a real server (VictoriaMetrics) stores from it.

A tag value or field name ending in a backslash escaped the separator after it: VictoriaMetrics answered 204 and
dropped the point (the outbox counted it sent), InfluxDB refuses the line with 400 and the whole batch goes to dead
letters. Found by a field-conditions review.
"""

from __future__ import annotations

import time

import yaml

from connectors.influx.outbox import Row
from connectors.influx.transport import line
from pipeline import load_pipeline


def test_backslashes_commas_spaces_and_equals_are_escaped():
    row = Row(measurement="m s,x\\", tags={"device": "pump\\", "a=b": "c d,e", "path": "C:\\temp"},
              fields={"t\\": 1.0, "x y": 2.0}, ts=1_000_000_000, res=0.0, id=1, approx=False, rev=0)
    assert line(row, "s") == ("m\\ s\\,x\\\\,a\\=b=c\\ d\\,e,device=pump\\\\,path=C:\\\\temp t\\\\=1.0,x\\ y=2.0 1")


def test_a_device_named_with_a_trailing_backslash_lands(tmp_path, victoria_shared, measurement, monkeypatch):
    monkeypatch.setenv("INFLUX_TOKEN", "t")
    t0 = (int(time.time()) // 3600 - 2) * 3600
    csv = tmp_path / "r.csv"
    csv.write_text("ts,device,v\n" + "".join(f"{t0 + i},{dev},{i}\n" for i in range(60)
                                             for dev in ("pump1", '"pump\\"', '"C:\\temp"')))
    p = load_pipeline(yaml.safe_dump({
        "pipeline": "escaping",
        "sources": [{"id": "in", "type": "replay", "path": str(csv), "tags": ["device"], "speed": "max"}],
        "stages": [{"id": "w", "type": "window", "inputs": ["in"], "size": "10s", "key": ["device"],
                    "aggregates": {"v": ["sum"]}}],
        "sinks": [{"id": "cloud", "type": "influxdb", "inputs": ["w"], "url": victoria_shared.url, "org": "o",
                   "bucket": "b", "measurement": measurement, "flush_interval": 0.05, "drain_timeout": 5}],
        "runtime": {"state_dir": str(tmp_path / "state"), "dead_letter": None}}))
    s = p.run()
    assert s.error is None and s.counters["cloud"]["outbox_sent"] == 18
    victoria_shared.force_flush()
    got = victoria_shared.samples(f'{{__name__="{measurement}_v_sum"}}')
    sums = {dict(k[1])["device"]: sum(v for _, v in points) for k, points in got.items()}
    assert sums == {"pump1": sum(range(60)), "pump\\": sum(range(60)), "C:\\temp": sum(range(60))}, sums
