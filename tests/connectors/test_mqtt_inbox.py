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
