"""Tolerant JSON: text fields, nested objects, numbers sent as text and bad fields cost a field, never the reading."""

import base64
import json
import uuid

import pytest

from connectors.mqtt.codecs import CodecOptions, Decoder, DecodeError, RowBuilder
from connectors.mqtt.readings import FieldError
from tests.connectors.test_mqtt_source import start
from tests.support.clients import read_ndjson

T0 = 1_700_000_000.0


def decode(payload, **opts):
    dec, b = Decoder(CodecOptions(**opts)), RowBuilder()
    dec.decode(json.dumps(payload).encode() if not isinstance(payload, bytes) else payload, b, {}, T0 + 9)
    return b.build().to_records(), [(e.reason, str(e)) for e in dec.take_field_errors()], dec.take_counts()


def test_text_field_is_dropped_and_counted_never_the_reading(caplog):
    recs, errors, counts = decode({"ts": T0, "t": 21.5, "status": "ok"})
    assert recs == [{"ts": T0, "tags": {}, "fields": {"t": 21.5}}] and errors == []
    assert counts == {"text_fields_dropped": 1}
    assert "'status' is text" in caplog.text and "tag_fields" in caplog.text


def test_text_fields_become_tags_when_listed_or_configured():
    recs, _, counts = decode({"ts": T0, "t": 1, "status": "ok", "mode": "auto"}, tag_fields=["status"])
    assert recs[0]["tags"] == {"status": "ok"} and counts == {"text_fields_dropped": 1}
    recs, _, counts = decode({"ts": T0, "t": 1, "status": "ok", "mode": "auto"}, text_fields="tags")
    assert recs[0]["tags"] == {"status": "ok", "mode": "auto"} and counts == {}


def test_nested_objects_flatten_to_dotted_names():
    recs, _, _ = decode({"ts": T0, "env": {"t": 21.5, "hum": {"rel": 40}}, "meta": {"site": "p1"}},
                        tag_fields=["meta.site"])
    assert recs == [{"ts": T0, "tags": {"meta.site": "p1"}, "fields": {"env.t": 21.5, "env.hum.rel": 40.0}}]
    recs, _, _ = decode({"env": {"t": 1}}, flatten_separator="_")
    assert recs[0]["fields"] == {"env_t": 1.0}
    with pytest.raises(DecodeError) as e:
        decode({"a": {"b": {"c": {"d": 1}}}}, max_json_depth=3)
    assert e.value.reason == "json_too_deep" and "'a.b.c'" in str(e.value)


def test_numbers_from_strings():
    recs, _, counts = decode({"ts": T0, "t": "21.5", "n": " 7 ", "s": "nan", "w": "warm"}, numbers_from_strings=True)
    assert recs[0]["fields"] == {"t": 21.5, "n": 7.0} and counts == {"text_fields_dropped": 2}
    recs, _, _ = decode({"t": "21.5"}, fields=["t"], numbers_from_strings=True)
    assert recs[0]["fields"] == {"t": 21.5}


@pytest.mark.parametrize("bad,reason", [([1, 2], "wrong_type"), (b"NaN", "non_finite"), (b"1e999", "non_finite")])
def test_a_bad_field_is_reported_alone_and_the_rest_kept(bad, reason):
    value = bad.decode() if isinstance(bad, bytes) else json.dumps(bad)
    recs, errors, _ = decode(f'{{"ts": {T0}, "t": 21.5, "bad": {value}}}'.encode())
    assert recs == [{"ts": T0, "tags": {}, "fields": {"t": 21.5}}]
    assert [r for r, _ in errors] == [reason] and "'bad'" in errors[0][1] and "other fields were kept" in errors[0][1]
    with pytest.raises(DecodeError) as e:          # nothing usable left: the reading is refused whole
        decode(f'{{"ts": {T0}, "bad": {value}}}'.encode())
    assert e.value.reason == reason and not isinstance(e.value, FieldError)


def test_listed_field_sent_as_text_is_a_bad_field():
    recs, errors, _ = decode({"a": 1, "b": "x"}, fields=["a", "b"])
    assert recs[0]["fields"] == {"a": 1.0} and errors[0][0] == "wrong_type" and "listed in fields" in errors[0][1]


def test_json_batch_keeps_good_fields_of_each_reading():
    recs, errors, counts = decode([{"ts": T0, "t": 1, "s": "a"}, {"ts": T0 + 1, "t": 2, "bad": [0]}], codec="json-batch")
    assert [r["fields"] for r in recs] == [{"t": 1.0}, {"t": 2.0}]
    assert [e[1].split(" field")[0] for e in errors] == ["reading [1]"] and counts == {"text_fields_dropped": 1}


def test_over_mosquitto(broker, topic_prefix, tmp_path, run_pipeline, clients):
    node = f"gw-{uuid.uuid4().hex[:8]}"
    dl = clients(broker).subscribe(f"edgesieve/{node}/deadletter")
    p = start(run_pipeline, clients, broker, tmp_path, {"node": node, "subscriptions": [
        {"topic_template": f"{topic_prefix}/{{device}}", "codec": "json", "tag_fields": ["meta.site"],
         "numbers_from_strings": True}]})
    pub = clients(broker)
    pub.publish(f"{topic_prefix}/d1", {"ts": T0, "t": "21.5", "status": "ok", "env": {"h": 40}, "meta": {"site": "p1"}})
    pub.publish(f"{topic_prefix}/d1", b'{"ts": 1700000001, "t": 22, "bad": NaN}')
    pub.publish(f"{topic_prefix}/d2", {"ts": T0 + 2, "t": 23})
    assert p.wait_counter("out", "out", 3) == 3
    msg = dl.wait_for(1)[0]
    summary = p.stop()
    out = read_ndjson(tmp_path / "out.ndjson")
    assert [(r["tags"], r["fields"]) for r in out] == [
        ({"device": "d1", "meta.site": "p1"}, {"t": 21.5, "env.h": 40.0}),
        ({"device": "d1"}, {"t": 22.0}), ({"device": "d2"}, {"t": 23.0})]
    dead = json.loads(msg.payload)
    assert dead["reason"] == "non_finite" and "'bad'" in dead["detail"] and b"NaN" in base64.b64decode(dead["payload_b64"])
    assert summary.counters["in"]["text_fields_dropped"] == 1
    assert summary.counters["in"]["dead_lettered.non_finite"] == 1


def test_json_batch_refuses_a_bad_reading_alone_and_keeps_the_rest():
    payload = [{"ts": T0, "t": 1}, {"ts": "yesterday", "t": 2}, 7, {"ts": T0 + 3, "t": 4}]
    dec, b = Decoder(CodecOptions(codec="json-batch")), RowBuilder()
    assert dec.decode(json.dumps(payload).encode(), b, {}, T0 + 9) == 2
    assert [(r["ts"], r["fields"]) for r in b.build().to_records()] == [(T0, {"t": 1.0}), (T0 + 3, {"t": 4.0})]
    errors = dec.take_field_errors()
    assert [e.reason for e in errors] == ["bad_timestamp", "wrong_type"]
    assert "reading [1]" in str(errors[0]) and "reading [2]" in str(errors[1])
    assert "the message's other 2 readings were kept" in str(errors[0])
    assert [json.loads(e.payload) for e in errors] == [payload[1], 7]      # each dead letter carries its reading only


def test_senml_keeps_the_good_records_of_a_pack():
    pack = [{"bn": "urn:dev:a:", "bt": T0, "n": "t", "v": 21.5}, {"n": "state", "vs": "on"},
            {"n": "h", "v": "40"}, {"n": "p", "v": 3}]
    dec, b = Decoder(CodecOptions(codec="senml")), RowBuilder()
    assert dec.decode(json.dumps(pack).encode(), b, {}, T0 + 9) == 1
    assert b.build().to_records() == [{"ts": T0, "tags": {"device": "urn:dev:a"}, "fields": {"t": 21.5, "p": 3.0}}]
    errors = dec.take_field_errors()
    assert [(e.reason, json.loads(e.payload)) for e in errors] == [("wrong_type", pack[2])]   # "40": a string v
    assert dec.take_counts() == {"text_fields_dropped": 1}                                     # vs: dropped, counted


def test_json_batch_bad_reading_over_mosquitto(broker, topic_prefix, tmp_path, run_pipeline, clients):
    node = f"gw-{uuid.uuid4().hex[:8]}"
    dl = clients(broker).subscribe(f"edgesieve/{node}/deadletter")
    p = start(run_pipeline, clients, broker, tmp_path, {"node": node, "subscriptions": [
        {"topic_template": f"{topic_prefix}/{{device}}", "codec": "json-batch"}]})
    pub = clients(broker)
    pub.publish(f"{topic_prefix}/d1", [{"ts": T0 + i, "t": float(i)} for i in range(3)]
                + [{"ts": -5, "t": 99.0}] + [{"ts": T0 + i, "t": float(i)} for i in range(3, 6)])
    assert p.wait_counter("out", "out", 6) == 6
    msg = dl.wait_for(1)[0]
    summary = p.stop()
    out = read_ndjson(tmp_path / "out.ndjson")
    assert [(r["ts"], r["fields"]["t"]) for r in out] == [(T0 + i, float(i)) for i in range(6)]
    dead = json.loads(msg.payload)
    assert dead["reason"] == "bad_timestamp" and "reading [3]" in dead["detail"]
    assert json.loads(base64.b64decode(dead["payload_b64"])) == {"ts": -5, "t": 99.0}
    assert summary.counters["in"]["dead_lettered.bad_timestamp"] == 1
