"""The replay source: formats, timestamps, folders, loops, and bad rows dead-lettered with file:line."""

import threading

import pytest

from pipeline.batch import Batch
from pipeline.sources.replay import Replay, ReplayConfig
from pipeline.testing import make_context


def replay(path, **options):
    ctx, dead = make_context("src")
    src = Replay(ReplayConfig(id="src", type="replay", path=str(path), **options), ctx)
    got = []
    src.run(lambda b, position=None: got.append((b, position)), threading.Event())
    return Batch.concat([b for b, _ in got]).to_records(), dead, [p for _, p in got]


def test_bad_rows_are_dead_lettered_with_their_line(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("ts,device,t\n1,a,1.0\n2,a,2.0,extra\nnot-a-time,a,3.0\n4,a,warm\n5,a,5.0\n")
    out, dead, _ = replay(f, tags=["device"])
    assert [r["fields"]["t"] for r in out] == [1.0, 5.0]
    reasons = [r for _, _, rs in dead for r in ([rs] if isinstance(rs, str) else rs)]
    assert "r.csv:3: expected 3 fields, saw 4" in reasons
    assert "r.csv:4: timestamp 'not-a-time' is not a time" in reasons
    assert "r.csv:5: field 't' is 'warm', not a number" in reasons


def test_line_numbers_stay_right_across_chunks_and_bad_lines(tmp_path):
    f = tmp_path / "r.csv"
    rows = [f"{i},{i}" for i in range(40)]
    rows[7] += ",extra"
    rows[21] = "21,x"
    f.write_text("ts,t\n" + "\n".join(rows) + "\n")
    out, dead, positions = replay(f, chunk_size=5)
    reasons = [r for _, _, rs in dead for r in ([rs] if isinstance(rs, str) else rs)]
    assert sorted(reasons) == ["r.csv:23: field 't' is 'x', not a number", "r.csv:9: expected 2 fields, saw 3"]
    assert [r["ts"] for r in out] == [float(i) for i in range(40) if i not in (7, 21)]
    assert positions[-1] == (0, 40, 0)


def test_semicolons_iso_times_file_tag_and_static_tags(tmp_path):
    f = tmp_path / "valve1.csv"
    f.write_text("datetime;Pressure;Temperature\n2020-03-09 10:14:33;0.05;90.1\n2020-03-09 10:14:34;0.06;90.2\n")
    out, dead, _ = replay(f, timestamp="datetime", timestamp_format="%Y-%m-%d %H:%M:%S", file_tag="experiment",
                          static_tags={"site": "lab"})
    assert not dead
    assert out[0] == {"ts": 1583748873.0, "tags": {"experiment": "valve1", "site": "lab"},
                      "fields": {"Pressure": 0.05, "Temperature": 90.1}}
    auto, _, _ = replay(f, timestamp="datetime")  # ISO-like text is detected with the default `auto`
    assert [r["ts"] for r in auto] == [1583748873.0, 1583748874.0]


def test_millisecond_and_nanosecond_epochs_are_detected(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("ts,t\n1700000000123,1\n1700000001000000000,2\n1700000002,3\n")
    out, _, _ = replay(f)
    assert [r["ts"] for r in out] == [1700000000.123, 1700000001.0, 1700000002.0]


def test_folder_ndjson_loop_and_positions(tmp_path):
    (tmp_path / "a.ndjson").write_text('{"ts": 1, "device": "x", "t": 1}\n{oops\n{"ts": 2, "tags": {"device": "y"}, "fields": {"t": 2}}\n')
    (tmp_path / "b.csv").write_text("ts,device,t\n3,x,3\n")
    out, dead, positions = replay(tmp_path, tags=["device"], loop=False)
    assert [(r["ts"], r["tags"]["device"], r["fields"]["t"]) for r in out] == [(1.0, "x", 1), (2.0, "y", 2), (3.0, "x", 3.0)]
    assert dead[0][2].startswith("a.ndjson:2: ")
    assert positions == [(0, 3, 0), (1, 1, 0)]


def test_restore_skips_what_was_processed(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("ts,t\n" + "".join(f"{i},{i}\n" for i in range(10)))
    ctx, _ = make_context("src")
    src = Replay(ReplayConfig(id="src", type="replay", path=str(f), chunk_size=4), ctx)
    src.restore((0, 6, 0))
    got = []
    src.run(lambda b, position=None: got.append(b), threading.Event())
    assert [r["ts"] for r in Batch.concat(got).to_records()] == [6.0, 7.0, 8.0, 9.0]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="source 'src': .*nope.csv does not exist"):
        replay(tmp_path / "nope.csv")
