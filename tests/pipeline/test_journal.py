"""The input journal (pipeline/journal.py): numbering, replay from a position, pruning, crash damage."""

import logging
import os
import stat

import pytest

from pipeline.journal import Journal, JournalError


def bodies(j: Journal, after: int = 0) -> list[tuple[int, bytes]]:
    return [(s, bytes(b)) for s, b in j.read(after=after)]


def test_records_are_numbered_and_replayed_from_a_position_across_reopen_and_segments(tmp_path):
    j = Journal(tmp_path / "j", segment_bytes=100)
    for i in range(10):
        j.append([f"r{i}".encode() * 10])               # ~40 bytes each: several segments
    j.close()
    assert len(list((tmp_path / "j").glob("*.journal"))) > 2
    j = Journal(tmp_path / "j", segment_bytes=100)
    assert j.head == 10
    assert bodies(j, after=7) == [(8, b"r7" * 10), (9, b"r8" * 10), (10, b"r9" * 10)]
    assert j.append([b"x", b"y"]) == 12
    assert [s for s, _ in j.read(after=0)] == list(range(1, 13))


def test_prune_keeps_what_the_checkpoint_does_not_cover_and_the_newest_records(tmp_path):
    j = Journal(tmp_path / "j", segment_bytes=1)        # one record per segment
    for i in range(10):
        j.append([b"%d" % i])
    j.prune(position=6, keep_last=2)
    assert [s for s, _ in j.read()] == [7, 8, 9, 10]      # the checkpoint covers 1..6
    j.prune(position=10, keep_last=3)
    assert [s for s, _ in j.read()] == [8, 9, 10]         # the newest 3 stay for the redelivery horizon


def test_numbering_continues_after_a_restored_position(tmp_path):
    j = Journal(tmp_path / "j", start_after=500)
    assert j.append([b"a"]) == 501


def test_a_torn_tail_record_is_truncated_with_a_warning(tmp_path, caplog):
    j = Journal(tmp_path / "j")
    j.append([b"one", b"two", b"three"])
    j.close()
    seg = next((tmp_path / "j").glob("*.journal"))
    size = seg.stat().st_size
    with open(seg, "r+b") as fh:
        fh.truncate(size - 2)                           # a crash in the middle of writing the last record
    with caplog.at_level(logging.WARNING):
        j = Journal(tmp_path / "j")
    assert j.head == 2 and bodies(j) == [(1, b"one"), (2, b"two")]
    assert seg.name in caplog.text and "truncated" in caplog.text
    assert j.append([b"again"]) == 3
    assert bodies(Journal(tmp_path / "j")) == [(1, b"one"), (2, b"two"), (3, b"again")]


def test_a_damaged_last_record_is_cut_too(tmp_path, caplog):
    j = Journal(tmp_path / "j")
    j.append([b"one", b"two"])
    j.close()
    seg = next((tmp_path / "j").glob("*.journal"))
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF                                    # garbage where the last record's bytes should be
    seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        assert bodies(Journal(tmp_path / "j")) == [(1, b"one")]
    assert "truncated" in caplog.text


def test_a_crc_mismatch_before_the_end_is_refused_with_the_file_name(tmp_path):
    j = Journal(tmp_path / "j")
    j.append([b"one", b"two", b"three"])
    j.close()
    seg = next((tmp_path / "j").glob("*.journal"))
    data = bytearray(seg.read_bytes())
    data[16] ^= 0xFF                                    # inside the first record's body
    seg.write_bytes(bytes(data))
    with pytest.raises(JournalError, match=rf"record 1 at byte 0 of {seg.name} fails its CRC check.*Move the folder away"):
        Journal(tmp_path / "j")


def test_a_foreign_file_is_refused_and_files_are_private(tmp_path):
    j = Journal(tmp_path / "j")
    j.append([b"a"])
    j.close()
    assert stat.S_IMODE(os.stat(tmp_path / "j").st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (tmp_path / "j").glob("*.journal"))
    (tmp_path / "j" / "notes.journal").write_text("hello")
    with pytest.raises(JournalError, match="notes.journal is not a journal segment"):
        Journal(tmp_path / "j")


def test_fsync_policy_is_checked(tmp_path):
    with pytest.raises(ValueError, match="fsync must be one of full, normal, off"):
        Journal(tmp_path / "j", fsync="always")
