"""Through the command line against a real VictoriaMetrics: the state folder's disk fills up and the server goes
down mid-stream, space is freed, the server comes back: every 10 s window arrives once, exactly as pandas says."""
from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest

from tests.connectors.influx.test_influxdb_sink import TOKEN, write_csv
from tests.support.cli import cli_env, start_edgesieve
from tests.support.small_disk import SmallDisk
from tests.support.victoria import free_port


def blocked(port: int) -> float | None:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith("edgesieve_sink_blocked{") and 'item="cloud"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.slow
def test_full_disk_and_outage_mid_stream_through_the_cli_every_window_arrives_once(tmp_path, victoria, measurement):
    with SmallDisk(2 * 2**20) as disk:
        if not disk.mounted:
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); "
                        "tests/connectors/influx/test_storage_errors.py covers the full disk with max_page_count")
        df = write_csv(tmp_path / "r.csv", devices=3, seconds=900, hz=10)
        cfg = tmp_path / "p.yaml"
        cfg.write_text(f"""
pipeline: fulldisk
sources: [{{id: readings, type: replay, path: {tmp_path / 'r.csv'}, tags: [device], speed: 60}}]
stages:
  - {{id: w10, type: window, inputs: [readings], size: 10s, key: [device], aggregates: {{t: [mean, max]}}}}
sinks:
  - {{id: cloud, type: influxdb, inputs: [w10], url: {victoria.url}, org: o, bucket: b, measurement: {measurement},
     flush_interval: 0.05, retry_initial: 0.05, retry_max: 0.3, drain_timeout: 60, fsync: off}}
runtime:
  state_dir: {disk.dir / 'state'}
  checkpoint: {{path: {disk.dir / 'cp.pickle'}, interval: 0.2}}
  dead_letter: null
""")
        port = free_port()
        proc = start_edgesieve("run", str(cfg), "--metrics-port", str(port), env=cli_env(INFLUX_TOKEN=TOKEN))
        match = f'{{__name__="{measurement}_t_mean"}}'

        def until(cond, what, timeout=60):
            deadline = time.monotonic() + timeout
            while not cond():
                assert proc.poll() is None, f"edgesieve exited before {what}: {proc.communicate()[1].decode()[-3000:]}"
                assert time.monotonic() < deadline, f"timed out waiting for {what}"
                time.sleep(0.05)

        until(lambda: victoria.count(match) > 0, "the first points landed")
        victoria.stop()                                 # the uplink drops ...
        disk.fill()                                     # ... and the state disk is full
        until(lambda: blocked(port) == 1, "the sink reported itself blocked")
        time.sleep(1.0)
        disk.free()                                     # space freed: the pipeline resumes by itself
        until(lambda: blocked(port) == 0, "the sink took data again")
        victoria.start()                                # the server is back
        try:
            out, err = proc.communicate(timeout=120)
        except Exception:
            proc.send_signal(2)
            time.sleep(3)
            proc.kill()
            out, err = proc.communicate()
            sizes = {str(p): p.stat().st_size for p in disk.dir.rglob("*")}
            raise AssertionError(f"{sizes}\n{err.decode()[-6000:]}") from None
        err = err.decode()
        assert proc.returncode == 0, err[-3000:]
        assert err.count("cannot take") >= 1 and "takes data again" in err
        got = victoria.samples(match)
        for dev, g in df.groupby("device"):
            expect = g.groupby((g.ts // 10 * 10).astype(int)).t.mean()
            series = got[(f"{measurement}_t_mean", (("device", dev),))]
            assert [ts for ts, _ in series] == [s * 1000 for s in expect.index]    # each window once, none missing
            assert np.allclose([v for _, v in series], expect.values, rtol=1e-12)
