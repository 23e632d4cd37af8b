"""Integrity you can see: a lost or damaged WAL, a truncated or foreign outbox file are reported with the file,
the sink, what may be lost and the command to run; `edgesieve outbox recover / set-aside / accept` do what they say."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from connectors.influx.integrity import OutboxDamaged
from connectors.influx.outbox import Outbox
from tests.support.cli import ROOT, cli_env, edgesieve

S = 1_000_000_000
T0 = 1_794_999_600 * S


def pts(n, start=0):
    return [("win", {"dev": f"d{i % 4}"}, T0 + (start + i // 4) * 10 * S, {"t_mean": float(i)}) for i in range(n)]


def crash_after_checkpoint(path, n=1440):
    """Another process puts ``n`` points, checkpoints (as the pipeline does) and dies without closing (kill -9):
    everything it committed is in the WAL. Returns what the pipeline's checkpoint recorded of the outbox."""
    code = ("import sys, os, json; from connectors.influx.outbox import Outbox; from tests.connectors.influx.test_integrity import pts; "
            f"ob = Outbox(sys.argv[1], name='cloud'); ob.put(pts(4)); ob.checkpoint(); ob.put(pts({n} - 4, 1)); "
            "ob.checkpoint(); print(json.dumps(ob.snapshot()), flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=cli_env(),
                         cwd=ROOT, check=True)
    assert os.path.getsize(str(path) + "-wal") > 0
    return json.loads(out.stdout)


def test_a_lost_wal_is_reported_with_the_file_the_sink_what_is_lost_and_the_way_forward(tmp_path):
    db = tmp_path / "outbox-cloud.db"
    recorded = crash_after_checkpoint(db)
    os.remove(str(db) + "-wal")                    # the WAL is gone (a bad copy, a cleanup script, a broken disk)
    ob = Outbox(db, name="cloud")
    with pytest.raises(OutboxDamaged) as e:
        ob.verify(recorded)
    msg = str(e.value)
    assert str(db) in msg and "sink 'cloud'" in msg and "outbox-cloud.db-wal was lost or damaged" in msg
    assert "1440 pending at the checkpoint" in msg and "at least 1440" in msg
    assert f"edgesieve outbox accept {db} --generation {recorded['outbox_generation']}" in msg
    assert f"edgesieve outbox set-aside {db}" in msg
    ob.close()
    r = edgesieve("outbox", "accept", str(db), "--generation", str(recorded["outbox_generation"]))
    assert r.returncode == 0, r.stderr
    ob = Outbox(db, name="cloud")
    ob.verify(recorded)                            # accepted: the pipeline goes on with what the file holds
    ob.close()


def test_a_damaged_wal_is_caught_as_well(tmp_path):
    db = tmp_path / "o.db"
    recorded = crash_after_checkpoint(db)
    wal = str(db) + "-wal"
    with open(wal, "r+b") as fh:                   # a few flipped bytes in the middle of the log
        fh.seek(os.path.getsize(wal) // 2)
        fh.write(b"\xde\xad\xbe\xef" * 64)
    ob = Outbox(db, name="cloud")
    with pytest.raises(OutboxDamaged, match="is behind the pipeline's checkpoint"):
        ob.verify(recorded)
    assert ob.pending() < 1440                     # what SQLite dropped silently is now said out loud
    ob.close()


def test_an_intact_outbox_passes_and_a_fresh_start_after_set_aside_is_accepted(tmp_path):
    db = tmp_path / "o.db"
    recorded = crash_after_checkpoint(db)
    ob = Outbox(db, name="cloud")
    ob.verify(recorded)                            # kill -9 alone loses nothing: the WAL is replayed
    assert ob.pending() == 1440
    ob.close()
    r = edgesieve("outbox", "set-aside", str(db))
    assert r.returncode == 0 and "moved aside" in r.stdout, r.stderr
    ob = Outbox(db, name="cloud")
    ob.verify(recorded)
    assert ob.pending() == 0 and list(tmp_path.glob("o.db.damaged-*"))
    ob.close()


def test_a_truncated_outbox_is_refused_with_the_way_forward_and_recover_saves_what_can_be_read(tmp_path):
    db = tmp_path / "o.db"
    ob = Outbox(db, name="cloud")
    for i in range(20):
        ob.put(pts(500, start=i * 125))
    ob.close()                                     # WAL checkpointed into the main file
    size = os.path.getsize(db)
    with open(db, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(OutboxDamaged) as e:
        Outbox(db, name="cloud")
    msg = str(e.value)
    assert str(db) in msg and "sink 'cloud'" in msg and "is damaged" in msg
    assert f"edgesieve outbox recover {db}" in msg and f"edgesieve outbox set-aside {db}" in msg
    r = edgesieve("outbox", "recover", str(db))
    assert r.returncode == 0, r.stderr
    ob = Outbox(db, name="cloud")
    n = ob.pending()
    assert 0 < n < 10_000 and f"recovered {n} pending points" in r.stdout
    rows = ob.claim(10**6)
    assert [r.ts for r in rows] == sorted(r.ts for r in rows)          # in order
    ob.close()
    assert list(tmp_path.glob("o.db.damaged-*"))


@pytest.mark.parametrize("content", ["text", "sqlite"])
def test_a_foreign_file_is_refused(tmp_path, content):
    db = tmp_path / "o.db"
    if content == "text":
        db.write_text("time,value\n1,2\n" * 100)
    else:
        c = sqlite3.connect(db)
        c.execute("CREATE TABLE readings (ts, value)")
        c.commit()
        c.close()
    with pytest.raises(OutboxDamaged, match="not an SQLite database|SQLite file of something else") as e:
        Outbox(db, name="cloud")
    assert str(db) in str(e.value) and "sink 'cloud'" in str(e.value)
    with pytest.raises(OutboxDamaged):             # the same answer again, not "in use": the lock was released
        Outbox(db, name="cloud")
