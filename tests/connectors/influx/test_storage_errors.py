"""The outbox on a disk that fills up, and its sender when recording a delivery fails: nothing lost, nothing twice."""
from __future__ import annotations

import sqlite3
import time

import pytest

from connectors.influx.outbox import Outbox
from tests.connectors.influx.test_sender import make, points, wait_for
from tests.support.small_disk import SmallDisk, truncate_wal


@pytest.fixture(params=["tmpfs", "max_page_count"])
def disk(request):
    with SmallDisk(2 * 2**20) as d:
        if request.param == "tmpfs" and not d.mounted:
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the max_page_count variant runs")
        if request.param == "max_page_count":
            d.mounted = False              # SQLite's own limit on this outbox, whatever the machine allows
        yield d


@pytest.fixture
def tmpfs():
    with SmallDisk(2 * 2**20) as d:
        if not d.mounted:
            pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
        yield d


def test_a_full_disk_refuses_the_put_changes_nothing_and_takes_it_once_freed(disk):
    ob = Outbox(disk.dir / "o.db")
    first = points("m", 50)
    ob.put(first)
    before = (ob.pending(), dict(ob.counters), ob.stats()["pending_bytes"])
    disk.fill(ob)
    later = points("m", 3000, start=first[-1][2] + 10**10)
    with pytest.raises(sqlite3.OperationalError, match="full"):
        ob.put(later)
    assert (ob.pending(), dict(ob.counters), ob.stats()["pending_bytes"]) == before   # rolled back, counters too
    assert len(ob.claim(10**6)) == 50
    ob.release()
    disk.free()
    assert ob.put(later) == 3000                  # the same connection works again
    rows = ob.claim(10**6)
    assert [r.ts for r in rows] == [p[2] for p in first + later]
    ob.close()
    ob = Outbox(disk.dir / "o.db")                # and all of it is durable
    assert ob.pending() == 3050 and ob.counters["put"] == 3050
    ob.close()


def test_the_sender_survives_a_full_disk_when_recording_a_delivery_and_sends_nothing_twice(tmpfs, victoria_shared,
                                                                                          measurement, caplog):
    ob = Outbox(tmpfs.dir / "out.db")
    pts = points(measurement, 200)
    ob.put(pts)
    truncate_wal(tmpfs.dir / "out.db")            # so that recording the delivery needs new disk blocks
    tmpfs.fill()
    ob.close()
    ob, snd = make(tmpfs.dir, victoria_shared.url, batch_size=500)      # reopens out.db on the full disk
    assert wait_for(lambda: snd.storage_blocked, 10), "the delivery should not be recordable on a full disk"
    match = f'{{__name__="{measurement}_t_mean"}}'
    assert wait_for(lambda: victoria_shared.count(match) == 200)
    time.sleep(0.5)
    assert snd._thread.is_alive() and ob.pending() == 200 and victoria_shared.count(match) == 200
    tmpfs.free()
    assert wait_for(lambda: ob.pending() == 0, 15)
    snd.stop()
    assert victoria_shared.count(match) == 200    # recorded, not sent again
    assert ob.counters["sent"] == 200 and snd.unrecorded == 0 and snd.storage_retries > 0
    warnings = [r.getMessage() for r in caplog.records if "cannot record a delivered batch" in r.getMessage()]
    assert len(warnings) == 1 and "nothing is lost" in warnings[0]
    ob.close()
