"""Codecs of the mqtt source: every format, every timestamp unit, every reason a message is refused."""

import io
import json
import random

import numpy as np
import pytest

from connectors.mqtt.codecs import REASONS, CodecOptions, Decoder, DecodeError, RowBuilder
from connectors.mqtt.topics import TopicTemplate

T0 = 1_700_000_000.0


def decode(payload, arrival=T0 + 99, tags=None, props=None, **opts):
    b = RowBuilder()
    payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    Decoder(CodecOptions(**opts)).decode(payload, b, tags or {}, arrival, props)
    return b.build().to_records()


def reason(payload, **opts):
    with pytest.raises(DecodeError) as e:
        decode(payload, **opts)
    assert e.value.reason in REASONS
    return e.value.reason


def test_json_one_reading_with_tags_and_booleans():
    recs = decode({"ts": T0, "temp": 21.5, "count": 3, "ok": True, "note": None, "tags": {"unit": "C"},
                   "room": "lab"}, codec="json", tag_fields=["room"], tags={"site": "p1"})
    assert recs == [{"ts": T0, "tags": {"site": "p1", "unit": "C", "room": "lab"},
                     "fields": {"temp": 21.5, "count": 3.0, "ok": True}}]


def test_json_fields_whitelist_requires_each_field():
    assert decode({"ts": T0, "a": 1, "b": 2}, fields=["a"])[0]["fields"] == {"a": 1.0}
    assert reason({"ts": T0, "b": 2}, fields=["a"]) == "missing_field"


@pytest.mark.parametrize("payload", [[{"ts": T0, "x": 1}, {"ts": T0 + 1, "x": 2}],
                                     {"readings": [{"ts": T0, "x": 1}, {"ts": T0 + 1, "x": 2}]}])
def test_json_batch_list_or_object(payload):
    recs = decode(payload, codec="json-batch")
    assert [(r["ts"], r["fields"]["x"]) for r in recs] == [(T0, 1.0), (T0 + 1, 2.0)]


def test_json_batch_shape_errors():
    assert reason({"items": []}, codec="json-batch") == "missing_field"
    assert reason({"readings": 3}, codec="json-batch") == "wrong_type"
    assert reason([5, "x"], codec="json-batch") == "wrong_type"       # nothing usable: the message is refused
    assert reason([1, 2], codec="json") == "wrong_type"


@pytest.mark.parametrize("value,unit,expected", [
    (T0, "auto", T0), (T0 * 1e3, "auto", T0), (T0 * 1e6, "auto", T0), (T0 * 1e9, "auto", T0),
    (int(T0 * 1e9), "auto", T0), (1_000, "s", 1_000.0), (1_000, "ms", 1.0), (5e9, "ns", 5.0),
    ("2023-11-14T22:13:20Z", "auto", T0), ("2023-11-14T23:13:20+01:00", "iso", T0),
    ("2023-11-14T22:13:20.250", "auto", T0 + 0.25)])
def test_timestamp_units(value, unit, expected):
    for codec, payload in (("json", {"ts": value, "x": 1}), ("json-batch", [{"ts": value, "x": 1}] * 3)):
        recs = decode(payload, codec=codec, timestamp_unit=unit)
        assert recs[0]["ts"] == pytest.approx(expected, abs=1e-6), codec
        assert "ts_source" not in recs[0]


def test_timestamp_field_name_is_configurable():
    assert decode({"time": 5, "x": 1}, timestamp_field="time")[0]["ts"] == 5.0


@pytest.mark.parametrize("ts,unit", [("yesterday", "auto"), ("2024-01-01", "ms"), (-5, "auto"), ([1], "auto"),
                                     (True, "auto"), (T0, "iso")])
def test_bad_timestamps(ts, unit):
    assert reason({"ts": ts, "x": 1}, timestamp_unit=unit) == "bad_timestamp"
    assert reason([{"ts": ts, "x": 1}, {"ts": ts, "x": 1}], codec="json-batch", timestamp_unit=unit) == "bad_timestamp"


def test_missing_timestamp_is_arrival_time_and_annotated():
    recs = decode([{"x": 1}, {"x": 2}], codec="json-batch", arrival=T0 + 7)
    assert [r["ts"] for r in recs] == [T0 + 7] * 2 and all(r["ts_source"] == "arrival" for r in recs)


@pytest.mark.parametrize("payload,expected", [
    (b"\xff\xfe not utf8", "undecodable"), (b'{"ts": 1, "x": ', "undecodable"), (b"", "undecodable"),
    (b'{"x": NaN}', "non_finite"), (b'{"x": -Infinity}', "non_finite"), (b'{"x": 1e999}', "non_finite"),
    (b'{"x": 1' + b"0" * 400 + b"}", "non_finite"), (b'{"x": -1' + b"0" * 309 + b"}", "non_finite"),
    (b'{"x": {"y": [1]}}', "wrong_type"), (b'{"x": [1, 2]}', "wrong_type"), (b'{"tags": "a"}', "wrong_type"),
    (b'{"tags": {"a": [1]}}', "wrong_type"), (b'{"x": ' + b"[" * 50 + b"]" * 50 + b"}", "json_too_deep"),
    (b"[" * 400 + b"]" * 400, "json_too_deep"), (b'{"x": 1, "pad": "' + b"a" * 2000 + b'"}', "payload_too_large")],
    ids=lambda v: v[:20].decode("latin-1") if isinstance(v, bytes) else v)
def test_bad_json_payloads(payload, expected):
    assert reason(payload, max_payload_bytes=1000) == expected


@pytest.mark.parametrize("payload,expected", [
    (b'[{"ts": 1, "x": 1}, {"ts": 2, "x": NaN}]', "non_finite"), (b'[{"x": 1}, {"x": [1]}]', "wrong_type"),
    (b'[{"x": 1}, {"x": 1e999}]', "non_finite"), (b'[{"x": 1}, {"x": 1' + b"0" * 400 + b"}]", "non_finite"),
    (b'[{"x": {"y": {"z": {"w": {"v": {"u": {"t": 1}}}}}}}]', "json_too_deep")])
def test_bad_json_batch_payloads(payload, expected):
    """A bad reading is reported with its reason; the message's good readings are kept (refused whole: none)."""
    dec, b = Decoder(CodecOptions(codec="json-batch", max_json_depth=6)), RowBuilder()
    try:
        n = dec.decode(payload, b, {}, T0)
    except DecodeError as e:
        assert len(json.loads(payload.replace(b"NaN", b"0").replace(b"1e999", b"0"))) == 1, "good readings lost"
        assert e.reason == expected
        return
    rows = b.build().to_records()
    assert n == len(rows) == 1 and rows[0]["fields"] == {"x": 1.0}
    assert [e.reason for e in dec.take_field_errors()] == [expected]


def test_failed_message_leaves_builder_unchanged():
    b = RowBuilder()
    dec = Decoder(CodecOptions(codec="json-batch"))
    dec.decode(b'[{"ts": 1, "a": 1}]', b, {"s": "x"}, T0)
    with pytest.raises(DecodeError):        # no usable reading: the message is refused whole
        dec.decode(b'[{"ts": 2, "a": [2], "new": [5], "tags": {"t": "v"}}, {"ts": 3, "a": [1]}]', b, {"s": "y"}, T0)
    # a reading refused half-way (a tag and a field already added) leaves no trace; its good neighbour is kept
    assert dec.decode(b'[{"ts": 3, "a": 3}, {"ts": 4, "tags": {"t": "v", "u": [1]}, "new": 5}]', b, {"s": "w"}, T0) == 1
    dec.decode(b'[{"ts": 4, "a": 4}, {"ts": 5, "a": 5}]', b, {"s": "z"}, T0)
    rows = b.build()
    assert rows.ts.tolist() == [1, 3, 4, 5] and set(rows.fields) == {"a"} and set(rows.tags) == {"s"}
    assert rows.tags["s"].tolist() == ["x", "w", "z", "z"]


def test_columnar_json_batch_equals_per_value_path():
    rng = random.Random(7)
    payloads = []
    for m in range(60):
        keys = rng.sample(["a", "b", "flag", "n"], k=rng.randint(1, 4))
        with_ts = rng.random() < 0.8
        scale = rng.choice([1, 1e3, 1e9])
        readings = []
        for i in range(rng.randint(1, 20)):
            r = {"ts": (T0 + m + i / 100) * scale} if with_ts else {}
            for k in keys:
                r[k] = rng.random() < 0.5 if k == "flag" else rng.randint(-5, 5) if k == "n" else rng.gauss(0, 1)
            u = rng.random()
            if u < 0.03:
                r.pop(keys[0])            # irregular: falls back to the per-value path
            elif u < 0.05:
                r[keys[0]] = None         # null: absent
            elif u < 0.06:
                r[keys[0]] = "1.5"        # a string: dropped and counted
            elif u < 0.065:
                r[keys[0]] = [1.5]        # a list: a bad field (the reading is refused when it has no other)
            elif u < 0.07:
                r["extra"] = 1            # a key the first reading lacks
            readings.append(r)
        payloads.append(json.dumps(readings).encode() if m % 7 else json.dumps({"readings": readings}).encode())
    out, outcomes = [], []
    for columnar in (True, False):
        dec, b, reasons = Decoder(CodecOptions(codec="json-batch"), columnar=columnar), RowBuilder(), []
        vectorised = []
        inner = dec._columns
        dec._columns = lambda *a: vectorised.append(inner(*a)) or vectorised[-1]
        for i, p in enumerate(payloads):
            try:
                dec.decode(p, b, {"dev": f"d{i % 3}"}, T0 + 1000)
                reasons.append(tuple((e.reason, str(e)) for e in dec.take_field_errors()) or None)
            except DecodeError as e:
                reasons.append(e.reason)
        out.append(b.build())
        outcomes.append(reasons)
        if columnar:
            assert sum(v is not None for v in vectorised) > 20      # the vectorised path really ran
    assert outcomes[0] == outcomes[1]
    assert any(r == "wrong_type" for o in outcomes[0] if isinstance(o, tuple) for r, _ in o)
    fast, slow = out
    np.testing.assert_array_equal(fast.ts, slow.ts)
    assert fast.fields.keys() == slow.fields.keys() and fast.tags.keys() == slow.tags.keys()
    for k in fast.fields:
        assert fast.fields[k].dtype == slow.fields[k].dtype, k
        np.testing.assert_array_equal(fast.fields[k], slow.fields[k])
    for k in fast.tags:
        assert fast.tags[k].tolist() == slow.tags[k].tolist()
    assert fast.extra["ts_source"].tolist() == slow.extra["ts_source"].tolist()


def test_senml_rfc8428_resolution():
    pack = [{"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e+09, "bu": "%RH", "v": 20},
            {"u": "lon", "n": "lon", "v": 24.30621},
            {"n": "lat", "v": 60.07965, "t": 0},
            {"n": "temp", "v": 23.1, "t": 60},
            {"bn": "urn:dev:ow:other/", "bt": 0, "bv": 10, "n": "temp", "v": 1.5},
            {"n": "door", "vb": True, "t": 2},
            {"n": "energy", "s": 42}]
    recs = decode(pack, codec="senml", arrival=T0, tags={"site": "p1"})
    assert recs == [
        {"ts": 1.320067464e9, "tags": {"site": "p1", "device": "urn:dev:ow:10e2073a01080063"},
         "fields": {"value": 20.0, "lon": 24.30621, "lat": 60.07965}},
        {"ts": 1.320067464e9 + 60, "tags": {"site": "p1", "device": "urn:dev:ow:10e2073a01080063"},
         "fields": {"temp": 23.1}},
        {"ts": T0, "tags": {"site": "p1", "device": "urn:dev:ow:other"}, "fields": {"temp": 11.5, "energy_sum": 42.0}},
        {"ts": T0 + 2, "tags": {"site": "p1", "device": "urn:dev:ow:other"}, "fields": {"door": True}},
    ]


def test_senml_without_time_is_arrival():
    recs = decode([{"n": "t", "v": 1}], codec="senml", arrival=T0, senml_device_tag="dev")
    assert recs == [{"ts": T0, "tags": {}, "fields": {"t": 1.0}, "ts_source": "arrival"}]


@pytest.mark.parametrize("pack,expected", [([{"n": "s", "vs": "on"}], "wrong_type"), ([{"n": "x"}], "missing_field"),
                                           ([{"n": "x", "v": 1}, {"bn": 7, "n": "y", "v": 2}], "wrong_type"),
                                           ([], "wrong_type"), ([{"n": 5, "v": 1}], "wrong_type"),
                                           ([{"n": "x", "v": True}], "wrong_type"), ([{"n": "x", "v": 1e999}], "non_finite"),
                                           ([{"n": "x", "v": 10 ** 400}], "non_finite"),
                                           ("text", "wrong_type")])
def test_senml_bad_packs(pack, expected):
    assert reason(pack, codec="senml") == expected


def npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_frame_npy_and_raw():
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    (r,) = decode(npy(a), codec="frame", tags={"cam": "c1"}, arrival=T0)
    np.testing.assert_array_equal(r["frame"], a)
    assert r["ts"] == T0 and r["ts_source"] == "arrival" and r["tags"] == {"cam": "c1"}
    (r,) = decode(a.tobytes(), codec="frame", dtype="uint16", shape=[3, 4])
    np.testing.assert_array_equal(r["frame"], a)
    props = {"dtype": "float32", "shape": "2,2", "ts": str(T0 * 1e3)}
    (r,) = decode(np.ones(4, np.float32).tobytes(), codec="frame", frame_format="raw", dtype="uint8", props=props)
    assert r["frame"].shape == (2, 2) and r["frame"].dtype == np.float32 and r["ts"] == T0 and "ts_source" not in r


@pytest.mark.parametrize("payload,opts,expected", [
    (b"\x00" * 10, {"dtype": "uint8", "shape": [3, 4]}, "bad_frame"),
    (b"\x00" * 10, {}, "bad_frame"),
    (b"\x93NUMPY garbage", {}, "undecodable"),
    (npy(np.array([1.0, np.nan])), {}, "non_finite"),
    (b"\x00" * 3, {"dtype": "float32"}, "bad_frame"),
])
def test_bad_frames(payload, opts, expected):
    assert reason(payload, codec="frame", **opts) == expected


def test_unknown_dtype_is_a_config_error():
    with pytest.raises(Exception, match="dtype"):
        CodecOptions(codec="frame", dtype="uint7")


def test_topic_templates():
    t = TopicTemplate("sensors/{site}/+/{kind}/#")
    assert t.subscription_filter() == "sensors/+/+/+/#"
    assert t.match("sensors/a/x/vib") == {"site": "a", "kind": "vib"}
    assert t.match("sensors/a/x/vib/more/levels") == {"site": "a", "kind": "vib"}
    assert t.match("other/a/x/vib") is None and t.match("sensors/a/x") is None
    assert TopicTemplate("s/{site}").match("s/") is None
    assert TopicTemplate("s/{path...}").match("s/a/b/c") == {"path": "a/b/c"}
    out = TopicTemplate("alerts/{site}/{device}")
    assert out.format({"site": "p", "device": "d"}) == "alerts/p/d"
    with pytest.raises(KeyError, match="needs tag 'device'"):
        out.format({"site": "p"})
    with pytest.raises(ValueError, match="cannot be a topic level"):
        out.format({"site": "p", "device": "a/b"})
    for bad in ["a/{x}/{x}", "a/#/b", "a/x{y}", "", "a/{r...}/b"]:
        with pytest.raises(ValueError):
            TopicTemplate(bad)


def test_unexpected_decoder_error_still_rolls_back(monkeypatch):
    dec, b = Decoder(CodecOptions(codec="json")), RowBuilder()
    dec.decode(b'{"ts": 1, "a": 1}', b, {}, T0)
    monkeypatch.setattr(RowBuilder, "end_row", lambda self: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError):
        dec.decode(b'{"ts": 2, "a": 2, "b": 3}', b, {}, T0)
    monkeypatch.undo()
    assert b.build().to_records() == [{"ts": 1.0, "tags": {}, "fields": {"a": 1.0}}]


def test_timestamps_match_the_replay_source():
    import pandas as pd

    from pipeline.sources.replay import _timestamps

    raw = [1_700_000_000.123, 1_700_000_000_123, 1_700_000_000_123_456, 1_700_000_000_123_456_789, 99_999_999_999]
    expected = _timestamps(pd.Series(raw), "auto")
    single = [decode({"ts": v, "x": 1})[0]["ts"] for v in raw]
    batch = [r["ts"] for r in decode([{"ts": v, "x": 1} for v in raw], codec="json-batch")]
    assert single == batch == expected.tolist()


def test_an_integer_beyond_a_float_costs_only_its_field():
    """A valid JSON integer of 400 digits stopped the pipeline: it passed the per-message checks and failed when the
    micro-batch was built, outside them, and the journal replayed it into the same failure at every restart."""
    dec, b = Decoder(CodecOptions()), RowBuilder()
    assert dec.decode(b'{"ts": 1700000100, "v": 7, "big": 1' + b"0" * 400 + b"}", b, {}, T0) == 1
    assert b.build().to_records()[0]["fields"] == {"v": 7.0}
    (err,) = dec.take_field_errors()
    assert err.reason == "non_finite" and "'big'" in str(err) and "401 digits" in str(err)
    assert decode(b'{"x": 1' + b"0" * 308 + b"}")[0]["fields"] == {"x": 1e308}       # the largest still is one


def test_senml_values_of_one_name_at_one_time_are_each_a_reading():
    """Three temperatures at one time were one reading of the last (the other two lost, uncounted)."""
    recs = decode([{"bn": "dev1:", "bt": T0, "n": "temp", "v": 1}, {"n": "temp", "v": 2}, {"n": "hum", "v": 40},
                   {"n": "temp", "v": 3}, {"n": "temp", "t": 1, "v": 4}], codec="senml")
    assert [(r["ts"] - T0, r["fields"]) for r in recs] == [
        (0, {"temp": 1.0, "hum": 40.0}), (0, {"temp": 2.0}), (0, {"temp": 3.0}), (1, {"temp": 4.0})]
