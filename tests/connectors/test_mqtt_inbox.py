"""The mqtt source's inbox (connectors/mqtt/inbox.py) on its own: redelivery filter, journal, replay, acks.

A fake connection stands in for paho (generation + the acks sent); the broker-level behaviour is tested against
a real Mosquitto in test_mqtt_exactly_once.py.
"""

from connectors.mqtt.inbox import Inbox


class FakeConn:
    def __init__(self):
        self.generation = 1
        self.client = self
        self.acked: list[tuple[int, int]] = []

    def ack(self, mid, qos):
        self.acked.append((mid, qos))


def make(tmp_path, conn, durable=True, horizon=100):
    counts = {}
    inbox = Inbox(conn, where="source 'in'", count=lambda n, k: counts.__setitem__(n, counts.get(n, 0) + k),
                  journal_dir=tmp_path / "j" if durable else None, fsync="full", horizon=horizon, keep_props=False)
    return inbox, counts


def drain(inbox) -> list:
    out = []
    while (chunk := inbox.next_chunk(1000)) is not None:
        out.append((chunk.payloads, chunk.position))
    return out


def test_redeliveries_are_dropped_counted_and_acknowledged_after_the_journal(tmp_path):
    conn = FakeConn()
    inbox, counts = make(tmp_path, conn)
    inbox.open(0)
    for mid in (1, 2, 3):
        inbox.put(0.0, "t/a", b"m%d" % mid, mid, 1, None)
    inbox.put(0.0, "t/a", b"m2", 2, 1, None)        # the same message again (its ack was lost)
    inbox.put(0.0, "t/a", b"m2", 9, 1, None)        # the same payload under another packet id: a new message
    inbox.take()
    assert drain(inbox) == [([b"m1", b"m2", b"m3", b"m2"], 4)]
    assert counts == {"duplicates": 1} and conn.acked == [(1, 1), (2, 1), (3, 1), (2, 1), (9, 1)]
    assert inbox.journal.head == 4


def test_a_restart_replays_after_the_checkpoint_and_still_knows_what_it_journaled(tmp_path):
    conn = FakeConn()
    inbox, _ = make(tmp_path, conn)
    inbox.open(0)
    for mid in range(1, 6):
        inbox.put(float(mid), "t/a", b"m%d" % mid, mid, 1, None)
    inbox.take()
    inbox.close()                                    # "kill -9": a checkpoint covered position 2
    conn2 = FakeConn()
    again, counts = make(tmp_path, conn2)
    again.open(2)
    again.connected(1, session_present=True)
    again.put(9.0, "t/a", b"m5", 5, 1, None)         # the broker redelivers one whose ack was lost
    again.put(9.0, "t/a", b"m6", 6, 1, None)
    again.take()
    assert drain(again) == [([b"m3", b"m4", b"m5"], 5), ([b"m6"], 6)]
    assert counts == {"duplicates": 1}


def test_a_new_session_forgets_the_horizon(tmp_path):
    conn = FakeConn()
    inbox, counts = make(tmp_path, conn)
    inbox.open(0)
    inbox.put(0.0, "t/a", b"same", 1, 1, None)
    inbox.take()
    conn.generation = 2
    inbox.connected(2, session_present=False)        # broker lost the session: packet ids start at 1 again
    inbox.put(0.0, "t/a", b"same", 1, 1, None)
    inbox.take()
    assert [p for p, _ in drain(inbox)] == [[b"same", b"same"]] and counts == {}


def test_without_checkpoints_acks_wait_for_the_pipeline(tmp_path):
    conn = FakeConn()
    inbox, _ = make(tmp_path, conn, durable=False)
    inbox.open(0)
    inbox.put(0.0, "t/a", b"a", 1, 1, None)
    inbox.put(0.0, "t/a", b"b", 2, 0, None)          # QoS 0: nothing to acknowledge
    inbox.put(0.0, "t/a", b"c", 3, 1, None)
    inbox.take()
    (payloads, position), = drain(inbox)
    assert conn.acked == [] and position == 3
    inbox.committed(2)
    assert conn.acked == [(1, 1)]
    inbox.committed(3)
    assert conn.acked == [(1, 1), (3, 1)]
    assert not (tmp_path / "j").exists()


def test_acks_of_an_older_connection_are_not_sent(tmp_path):
    conn = FakeConn()
    inbox, _ = make(tmp_path, conn)
    inbox.open(0)
    inbox.put(0.0, "t/a", b"a", 1, 1, None)
    conn.generation = 2                              # reconnected before the take: the broker sends it again
    inbox.take()
    assert conn.acked == []


def test_a_replay_hands_on_each_message_with_the_arrival_time_it_was_journaled_with(tmp_path):
    # the window stage judges max_future against it: a replay a day later must not move it to the replay's clock
    inbox, _ = make(tmp_path, FakeConn())
    inbox.open(0)
    for mid in range(1, 5):
        inbox.put(1_700_000_000.0 + mid / 8, "t/a", b"m%d" % mid, mid, 1, None)
    inbox.take()
    inbox.close()
    again, _ = make(tmp_path, FakeConn())
    again.open(1)
    chunk = again.next_chunk(10)
    assert chunk.payloads == [b"m2", b"m3", b"m4"]
    assert chunk.arrivals == [1_700_000_000.0 + mid / 8 for mid in (2, 3, 4)]


def journaled(tmp_path, name: bytes, n: int, committed: int | None = None) -> None:
    """A run that journals ``name`` 1..n from position 0 and hands them on, a checkpoint covering ``committed``
    (none: no checkpoint), then ends ("kill -9": nothing else is written)."""
    inbox, _ = make(tmp_path, FakeConn())
    inbox.open(0)
    for mid in range(1, n + 1):
        inbox.put(float(mid), "t/a", name + b"%d" % mid, mid, 1, None)
    inbox.take()
    drain(inbox)
    if committed is not None:
        inbox.committed(committed)
    inbox.close()


def restarted(tmp_path, position: int) -> list:
    inbox, _ = make(tmp_path, FakeConn())
    inbox.open(position)
    return drain(inbox)


def test_a_start_without_a_position_of_its_own_skips_what_an_earlier_checkpoint_covered(tmp_path):
    journaled(tmp_path, b"m", 5, committed=3)                     # a checkpoint covered m1-m3, then "kill -9"
    assert restarted(tmp_path, 0) == [([b"m4", b"m5"], 5)]        # that checkpoint is gone: m4, m5 never covered
    assert restarted(tmp_path, 5) == []                           # a checkpoint of its own: as before


def test_a_committed_mark_beyond_the_journal_is_ignored(tmp_path):
    journaled(tmp_path, b"m", 3)
    (tmp_path / "j" / "committed").write_text("99\n")            # e.g. segments deleted by hand after a checkpoint
    assert restarted(tmp_path, 0) == [([b"m1", b"m2", b"m3"], 3)]  # nothing skipped on the word of a wrong mark


def test_a_stale_mark_is_removed_before_new_records_could_fall_under_it(tmp_path):
    journaled(tmp_path, b"old", 5, committed=5)
    for seg in (tmp_path / "j").glob("*.journal"):               # the operator deletes the segments, not the mark
        seg.unlink()
    journaled(tmp_path, b"new", 7)                                # killed before its first periodic checkpoint
    assert restarted(tmp_path, 0) == [([b"new%d" % i for i in range(1, 8)], 7)]   # before: new1-new5 skipped


def test_a_restored_position_above_the_mark_raises_the_mark(tmp_path):
    journaled(tmp_path, b"m", 4)                                  # a checkpoint covered 4 but no mark was written
    restarted(tmp_path, 4)
    assert (tmp_path / "j" / "committed").read_text().strip() == "4"


def retained_inbox(tmp_path, conn, retained="dedupe", durable=True):
    counts = {}
    inbox = Inbox(conn, where="source 'in'", count=lambda n, k: counts.__setitem__(n, counts.get(n, 0) + k),
                  journal_dir=tmp_path / "j" if durable else None, fsync="full", horizon=None, keep_props=False,
                  segment_bytes=200, retained=retained)
    return inbox, counts


def test_a_retained_copy_of_the_last_message_taken_is_dropped_and_acknowledged_a_new_one_is_taken(tmp_path):
    conn = FakeConn()
    inbox, counts = retained_inbox(tmp_path, conn, durable=False)
    inbox.open(0)
    inbox.put(0.0, "t/a", b"a1", 1, 1, None)
    inbox.put(0.0, "t/b", b"b1", 2, 0, None)
    inbox.take()
    inbox.put(1.0, "t/a", b"a1", 3, 1, None, retain=True)      # the broker's copy of a1 (a resubscribe)
    inbox.put(1.0, "t/b", b"b1", 0, 0, None, retain=True)      # a QoS 0 copy too
    inbox.put(1.0, "t/c", b"c1", 4, 1, None, retain=True)      # never seen: published while there was no session
    inbox.put(1.0, "t/a", b"a2", 5, 1, None, retain=True)      # not the last taken on t/a: new
    inbox.put(1.0, "t/a", b"a2", 6, 1, None)                  # live, the same payload again: a reading, kept
    inbox.take()
    assert [p for ps, _ in drain(inbox) for p in ps] == [b"a1", b"b1", b"c1", b"a2", b"a2"]
    assert counts == {"retained_copies": 2}
    inbox.committed(10)
    assert 3 in [mid for mid, _ in conn.acked]                # the dropped copy was acknowledged


def test_retained_ignore_drops_every_copy_and_all_keeps_them(tmp_path):
    for policy, kept, counted in (("ignore", [b"a1"], {"retained_ignored": 2}), ("all", [b"a1", b"a1", b"z"], {})):
        conn = FakeConn()
        inbox, counts = retained_inbox(tmp_path / policy, conn, retained=policy, durable=False)
        inbox.open(0)
        inbox.put(0.0, "t/a", b"a1", 1, 1, None)
        inbox.put(1.0, "t/a", b"a1", 2, 1, None, retain=True)
        inbox.put(1.0, "t/z", b"z", 3, 1, None, retain=True)
        inbox.take()
        assert [p for ps, _ in drain(inbox) for p in ps] == kept and counts == counted, policy


def test_a_restart_knows_the_last_payloads_from_its_file_and_the_journal_after_it(tmp_path):
    conn = FakeConn()
    inbox, _ = retained_inbox(tmp_path, conn)
    inbox.open(0)
    for i in range(40):                                       # many segments of 200 bytes
        inbox.put(float(i), f"t/{i % 4}", b"v%d" % i, i + 1, 1, None)
        inbox.take()
    drain(inbox)
    inbox.committed(40)
    inbox.prune()                                             # writes last_payloads, then drops covered segments
    assert (tmp_path / "j" / "last_payloads").exists()
    assert min(s for s, _ in inbox.journal.read(after=0)) > 1  # the early records are gone from the journal
    inbox.put(50.0, "t/0", b"after", 50, 1, None)             # journaled after the file, no checkpoint: a crash
    inbox.take()
    inbox.close()

    again, counts = retained_inbox(tmp_path, FakeConn())
    again.open(40)
    again.put(60.0, "t/1", b"v37", 1, 1, None, retain=True)    # t/1's last before the checkpoint (from the file)
    again.put(60.0, "t/0", b"after", 2, 1, None, retain=True)  # t/0's last, journaled after the file
    again.put(60.0, "t/2", b"v2", 3, 1, None, retain=True)     # an old payload of t/2, not its last: taken
    again.take()
    assert [p for ps, _ in drain(again) for p in ps] == [b"after", b"v2"]     # the replay, then the new copy
    assert counts == {"retained_copies": 2}


def test_a_qos0_retained_reading_is_known_after_a_restart_though_it_is_not_journaled(tmp_path):
    inbox, _ = retained_inbox(tmp_path, FakeConn())
    inbox.open(0)
    inbox.put(0.0, "t/a", b"a1", 0, 0, None)          # QoS 0 (Tasmota, Zigbee2MQTT publish so): no journal position
    inbox.take()
    (_, position), = drain(inbox)
    inbox.committed(position)
    inbox.prune()
    inbox.close()
    again, counts = retained_inbox(tmp_path, FakeConn())
    again.open(position)
    again.put(1.0, "t/a", b"a1", 0, 0, None, retain=True)
    again.take()
    assert drain(again) == [] and counts == {"retained_copies": 1}


def test_a_failed_last_payloads_write_keeps_the_journal_it_would_need(tmp_path, monkeypatch):
    from connectors.mqtt import retained
    inbox, _ = retained_inbox(tmp_path, FakeConn())
    inbox.open(0)
    mids = iter(range(1, 1000))

    def send(topic, payload):
        inbox.put(0.0, topic, payload, next(mids), 1, None)
        inbox.take()
    send("t/a", b"old")
    for i in range(10):
        send("t/x", b"x%d" % i)
    drain(inbox)
    inbox.committed(inbox.journal.head)
    inbox.prune()                                     # the file: t/a = old
    send("t/a", b"new")
    for i in range(10, 40):
        send("t/x", b"x%d" % i)
    drain(inbox)
    inbox.committed(inbox.journal.head)               # a checkpoint counted "new"

    def full_disk(path, data, durable=True):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(retained, "write_private", full_disk)
    inbox.prune()                                     # the write fails: "new" must stay in the journal
    monkeypatch.undo()
    restored = inbox.journal.head
    inbox.journal.close()                             # killed: no save at close
    again, counts = retained_inbox(tmp_path, FakeConn())
    again.open(restored)
    again.put(99.0, "t/a", b"new", 1, 1, None, retain=True)
    again.take()
    assert drain(again) == [] and counts == {"retained_copies": 1}


def test_switching_to_dedupe_knows_what_was_taken_under_all(tmp_path):
    inbox, _ = retained_inbox(tmp_path, FakeConn(), retained="all")
    inbox.open(0)
    for mid in range(1, 40):
        inbox.put(float(mid), "t/a" if mid == 1 else "t/x", b"a1" if mid == 1 else b"x%d" % mid, mid, 1, None)
        inbox.take()
    drain(inbox)
    inbox.committed(39)
    inbox.prune()
    assert min(s for s, _ in inbox.journal.read(after=0)) > 1        # t/a's record is pruned
    inbox.journal.close()
    again, counts = retained_inbox(tmp_path, FakeConn(), retained="dedupe")
    again.open(39)
    again.put(99.0, "t/a", b"a1", 1, 1, None, retain=True)
    again.take()
    assert drain(again) == [] and counts == {"retained_copies": 1}


def test_last_payloads_hold_digests_not_frames_and_forget_the_topics_heard_from_longest_ago(tmp_path, monkeypatch):
    import tracemalloc
    from connectors.mqtt import retained
    inbox, _ = retained_inbox(tmp_path, FakeConn(), durable=False)
    inbox.open(0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for cam in range(30):
        inbox.put(0.0, f"cam/{cam}", bytes(1 << 20), 0, 0, None)          # 1 MiB frames
    inbox.take()
    drain(inbox)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held < 1 << 20, held                                           # before: 30 MiB
    frame = bytes(range(256)) * 4096
    inbox.put(1.0, "cam/0", frame, 0, 0, None)
    inbox.take()
    drain(inbox)
    changed = frame[:500_000] + b"\1" + frame[500_001:]                   # another frame, same size
    assert inbox._last.is_copy("cam/0", frame) and not inbox._last.is_copy("cam/1", frame)
    assert not inbox._last.is_copy("cam/0", frame[:-1])
    assert inbox._last.is_copy("cam/0", changed)       # only its first and last 32 KiB: documented
    monkeypatch.setattr(retained, "MAX_TOPICS", 30)
    inbox.put(2.0, "cam/1", b"x", 0, 0, None)                             # heard from again: newest
    inbox.put(2.0, "cam/new", b"y", 0, 0, None)
    inbox.take()
    assert "cam/1" in inbox._last.last and "cam/0" in inbox._last.last and "cam/2" not in inbox._last.last
