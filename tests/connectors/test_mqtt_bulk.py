"""Decoding many json / json-batch messages at once gives exactly what decoding them one by one gives."""

import json
import random

import numpy as np
import pytest

import connectors.mqtt.bulk as bulk
from connectors.mqtt.bulk import decode_many
from connectors.mqtt.codecs import CodecOptions, Decoder, RowBuilder
from connectors.mqtt.readings import FieldError

T0 = 1_700_000_000.0


def _reading(rng, keys, i, with_ts, scale):
    r = {"ts": (T0 + i / 100) * scale} if with_ts else {}
    for k in keys:
        r[k] = rng.random() < 0.5 if k == "flag" else rng.randint(-5, 5) if k == "n" else rng.gauss(0, 1)
    u = rng.random()
    if u < 0.02:
        r.pop(keys[0])                     # irregular: a key missing
    elif u < 0.04:
        r[keys[0]] = None                  # null: absent
    elif u < 0.05:
        r[keys[0]] = "1.5"                 # a string: dropped, a tag or a number, per the options
    elif u < 0.055:
        r["status"] = "ok"                 # a text field beside the numbers
    elif u < 0.058:
        r["env"] = {"h": 40, "deep": {"x": 1.5}}   # nested: flattened
    elif u < 0.06:
        r["env"] = {}                      # an empty object
    elif u < 0.062:
        r["extra"] = 1                     # a key the others lack
    elif u < 0.065:
        r[keys[-1]] = True                 # a boolean among numbers
    elif u < 0.07 and with_ts:
        r["ts"] = True                     # a boolean timestamp
    elif u < 0.075 and with_ts:
        r["ts"] = -1.0                     # before 1970
    elif u < 0.08:
        r[keys[0]] = [1.0]                 # nested
    elif u < 0.085:
        r = {k: r[k] for k in reversed(list(r))}   # same keys, other order
    elif u < 0.09:
        r["tags"] = {"unit": "C"}
    elif u < 0.095:
        r["bad"] = float("nan")           # NaN beside good fields: dead-lettered alone
    return r


def _payload(rng, codec, m, keys, with_ts, scale):
    u = rng.random()
    if u < 0.01:
        return b"\xff not json"
    if u < 0.02:
        return b'{"ts": 1700000000, "t": NaN}'
    if u < 0.03:
        return b'{"t": 1e999}'
    if u < 0.04:
        return json.dumps({"pad": [0] * 400}).encode()         # over max_payload_bytes
    if codec == "json":
        return json.dumps(_reading(rng, keys, m, with_ts, scale)).encode()
    readings = [_reading(rng, keys, m * 20 + i, with_ts, scale) for i in range(rng.choice([0, 1, 2, 5, 20]))]
    return json.dumps(readings if m % 5 else {"readings": readings}).encode()


def _traffic(codec, seed, n=600):
    rng = random.Random(seed)
    msgs, keys, with_ts, scale = [], ["t", "p"], True, 1
    for m in range(n):
        if rng.random() < 0.08:            # devices change shape now and then: new runs
            keys = rng.choice([["t", "p"], ["p", "t"], ["t", "flag"], ["t", "n", "p"], ["flag"]])
            with_ts = rng.random() < 0.8
            scale = rng.choice([1, 1e3, 1e9])
        tags = {"site": f"s{m % 2}", "dev": f"d{m % 3}"} if rng.random() < 0.95 else {"dev": "x"}
        msgs.append((_payload(rng, codec, m, keys, with_ts, scale), tags, T0 + 1000 + m, None))
    return msgs


def _one_by_one(dec, msgs):
    b, errors, arrived = RowBuilder(), [], []
    for i, (payload, tags, arrival, props) in enumerate(msgs):
        before = len(b)
        try:
            dec.decode(payload, b, tags, arrival, props)
        except Exception as e:
            errors.append((i, getattr(e, "reason", type(e).__name__)))
        errors.extend((i, "field:" + e.reason) for e in dec.take_field_errors())
        arrived += [arrival] * (len(b) - before)          # every row of a message arrived with it
    rows = b.build()
    assert rows.arrival.tolist() == arrived
    return rows, errors


def _all_at_once(dec, msgs, chunk):
    b, errors = RowBuilder(), []
    for start in range(0, len(msgs), chunk):
        part = msgs[start:start + chunk]
        decode_many(dec, *([m[k] for m in part] for k in range(4)), b,
                    lambda i, e, s=start: errors.append((s + i, ("field:" if isinstance(e, FieldError) else "")
                                                         + getattr(e, "reason", type(e).__name__))))
    return b.build(), errors


def _assert_same(a, b):
    np.testing.assert_array_equal(a.ts, b.ts)
    np.testing.assert_array_equal(a.arrival, b.arrival)
    assert list(a.fields) == list(b.fields) and list(a.tags) == list(b.tags) and list(a.extra) == list(b.extra)
    for k in a.fields:
        assert a.fields[k].dtype == b.fields[k].dtype, k
        np.testing.assert_array_equal(a.fields[k], b.fields[k])
    for part in ("tags", "extra"):
        for k, col in getattr(a, part).items():
            assert col.tolist() == getattr(b, part)[k].tolist(), k


@pytest.mark.parametrize("codec", ["json", "json-batch"])
@pytest.mark.parametrize("unit", ["auto", "ms", "iso"])
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("tolerance", [{}, {"numbers_from_strings": True, "text_fields": "tags"}])
def test_bulk_decoding_equals_one_by_one(codec, unit, seed, tolerance, monkeypatch):
    dec = Decoder(CodecOptions(codec=codec, timestamp_unit=unit, max_payload_bytes=1000, **tolerance))
    msgs = _traffic(codec, seed)
    expected, expected_errors = _one_by_one(dec, msgs)
    runs = []
    columns = bulk._columns
    monkeypatch.setattr(bulk, "_columns", lambda *a: runs.append(columns(*a)) or runs[-1])
    for chunk in (1, 7, 200):
        got, errors = _all_at_once(dec, msgs, chunk)
        _assert_same(got, expected)
        assert errors == expected_errors
    reasons = {reason for _, reason in expected_errors}
    assert reasons >= {"undecodable", "payload_too_large", "field:wrong_type", "field:non_finite"}
    assert any("." in k for k in expected.fields) or unit == "iso"      # nested objects were flattened
    if unit != "iso":
        assert sum(r is not None for r in runs) > 20            # the run path really ran
        assert any(r is not None and len(r) > 5 for r in runs)


@pytest.mark.parametrize("codec", ["json", "json-batch"])
def test_regular_traffic_is_decoded_in_one_run(codec, monkeypatch):
    dec = Decoder(CodecOptions(codec=codec))
    per = 1 if codec == "json" else 10
    def body(i):
        if per == 1:
            return {"ts": T0 + i, "t": 1.5, "ok": True}
        readings = [{"ts": T0 + i * per + k, "t": float(k), "ok": k % 2 == 0} for k in range(per)]
        return {"readings": readings} if i % 2 else readings       # both json-batch forms

    msgs = [(json.dumps(body(i)).encode(), {"dev": f"d{i % 4}"}, T0, None) for i in range(50)]
    runs = []
    columns = bulk._columns
    monkeypatch.setattr(bulk, "_columns", lambda *a: runs.append(columns(*a)) or runs[-1])
    got, errors = _all_at_once(dec, msgs, 50)
    assert errors == [] and len(runs) == 1 and len(runs[0]) == 50 * per
    _assert_same(got, _one_by_one(dec, msgs)[0])
    assert got.fields["ok"].dtype == np.bool_ and got.tags["dev"].tolist()[:per + 1] == ["d0"] * per + ["d1"]


def test_other_codecs_and_options_decode_one_by_one():
    for opts in ({"codec": "senml"}, {"codec": "json", "tag_fields": ["room"]}, {"codec": "json", "fields": ["t"]}):
        dec = Decoder(CodecOptions(**opts))
        payload = json.dumps([{"n": "t", "v": 1.5, "t": T0}] if opts["codec"] == "senml"
                             else {"ts": T0, "t": 2.5, "room": "lab"}).encode()
        msgs = [(payload, {"dev": "a"}, T0, None), (b"[", {"dev": "a"}, T0, None)]
        got, errors = _all_at_once(dec, msgs, 2)
        _assert_same(got, _one_by_one(dec, msgs)[0])
        assert errors == [(1, "undecodable")]
