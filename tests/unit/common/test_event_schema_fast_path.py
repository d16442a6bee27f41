"""schemas.validate (the consumers' quick check) gives exactly ParseDict's verdict and
error, on canonical values and on every odd spelling proto3 JSON allows or refuses."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import orjson
import pytest
from google.protobuf import json_format

from services.common.events import schemas
from services.common.events.schemas import PassportChanged, PriceChanged
from tests.unit.common.event_samples import passport_data, price_data


def _deep(levels: int) -> dict:
    doc: dict = {"leaf": 1}
    for _ in range(levels):
        doc = {"n": doc}
    return doc


PASSPORT_VARIANTS = [
    {},
    {"passportId": "BP-1"},  # json_name
    {"passport_id": "BP-1", "passportId": "BP-2"},
    {"change": 2}, {"change": "2"}, {"change": "CHANGE_KIND_NOPE"}, {"change": None},
    {"detected_by": True},
    {"digest": 5}, {"digest": "\ud800"}, {"digest": "é"},
    {"changed_paths": "/a"}, {"changed_paths": ["/a", None]}, {"changed_paths": ["/a", 1]},
    {"changed_paths": []}, {"changed_paths": ("/a",)},
    {"passport": None}, {"passport": []}, {"passport": "x"}, {"passport": {}},
    {"passport": {"a": [1, 2.5, None, True, "s", {"b": []}]}},
    {"passport": {"big": 10**400}}, {"passport": {"big": 2**63}}, {"passport": {"f": float("nan")}},
    {"passport": {"f": float("inf")}}, {"passport": {"s": "\udfff"}}, {"passport": {1: "x"}},
    {"passport": {"obj": object()}}, {"passport": _deep(20)}, {"passport": _deep(29)},
    {"passport": _deep(45)}, {"passport": _deep(60)},
    {"observed_at": "2026-11-21T10:00:00Z"}, {"observed_at": "2026-11-21T10:00:00.1Z"},
    {"observed_at": "2026-11-21T10:00:00.123456789Z"},
    {"observed_at": "2026-11-21T10:00:00.1234567891Z"},
    {"observed_at": "2026-11-21T10:00:00+02:00"}, {"observed_at": "2026-11-21t10:00:00Z"},
    {"observed_at": "2026-02-30T10:00:00Z"}, {"observed_at": "2026-11-21T24:00:00Z"},
    {"observed_at": "2026-11-21T10:00:60Z"}, {"observed_at": "2026-11-21T10:00:00"},
    {"observed_at": "0001-01-01T00:00:00Z"}, {"observed_at": "9999-12-31T23:59:59.999999Z"},
    {"observed_at": "9999-12-31T23:59:59Z"}, {"observed_at": "0999-01-01T00:00:00Z"},
    {"observed_at": 1700000000}, {"observed_at": "2026-11-21T10:00:00Z "},
    {"observedAt": "2026-11-21T10:00:00Z"},
    {"unknown": 1}, {"[ext.x]": 1},
]

PRICE_VARIANTS = [
    {}, {"current": None}, {"current": {}}, {"current": {"cost_id": "2206"}},
    {"current": {"cost_id": 2206.0}}, {"current": {"cost_id": 2206.5}},
    {"current": {"cost_id": True}}, {"current": {"cost_id": 2**63}},
    {"current": {"cost_id": -(2**63)}}, {"current": {"session_fee": 1}},
    {"current": {"session_fee": "1.5"}}, {"current": {"session_fee": True}},
    {"current": {"session_fee": None}}, {"current": {"session_fee": 1e308}},
    {"current": {"tax": None}}, {"current": {"tax": {"rate": 19}}}, {"current": {"tax": 19}},
    {"current": {"tax": [1, "a"]}}, {"current": {"price_structure": []}},
    {"current": {"sessionFee": 1.0}}, {"current": {"nope": 1}}, {"current": []},
    {"previous": "x"}, {"tariff_context": 3},
]


def _verdict(fn, message_type, data):
    try:
        fn(message_type, data)
    except Exception as exc:  # noqa: BLE001 - the exact outcome is what is compared
        return type(exc), str(exc)
    return None


def _cases(base, variants):
    for variant in variants:
        data = copy.deepcopy(base)
        if "current" in variant and isinstance(variant["current"], dict) and "current" in data:
            current = {**data["current"], **variant["current"]}
            data["current"] = current
            data.update({k: v for k, v in variant.items() if k != "current"})
        else:
            data.update(variant)
        yield data


@pytest.mark.parametrize(("message_type", "data"), [
    *((PassportChanged, d) for d in _cases(passport_data(), PASSPORT_VARIANTS)),
    *((PriceChanged, d) for d in _cases(price_data(), PRICE_VARIANTS)),
])
def test_validate_gives_parse_dicts_verdict(message_type, data):
    assert _verdict(schemas.validate, message_type, data) == _verdict(
        schemas.check, message_type, data)


def test_canonical_values_take_the_fast_path(monkeypatch):
    calls = []
    parse_dict = json_format.ParseDict

    def counting(*args, **kwargs):
        calls.append(args)
        return parse_dict(*args, **kwargs)

    monkeypatch.setattr(schemas.json_format, "ParseDict", counting)
    schemas.validate(PassportChanged, passport_data())
    schemas.validate(PriceChanged, price_data())
    assert calls == []
    with pytest.raises(json_format.ParseError):
        schemas.validate(PassportChanged, passport_data(change="CHANGE_KIND_NOPE"))
    assert len(calls) == 1


def _as_json(data):
    try:
        return orjson.dumps(data)
    except (TypeError, orjson.JSONEncodeError):
        return None  # cannot arrive from Kafka


@pytest.mark.parametrize(("message_type", "raw"), [
    *((PassportChanged, raw) for d in _cases(passport_data(), PASSPORT_VARIANTS)
      if (raw := _as_json(d)) is not None),
    *((PriceChanged, raw) for d in _cases(price_data(), PRICE_VARIANTS)
      if (raw := _as_json(d)) is not None),
])
def test_validate_of_values_read_from_json_gives_parse_dicts_verdict(message_type, raw):
    data = orjson.loads(raw)
    assert _verdict(lambda t, d: schemas.validate(t, d, json=raw), message_type, data) == \
        _verdict(schemas.check, message_type, data)


@pytest.mark.parametrize("text", [
    "2026-11-21T10:00:00.123456Z", "2026-11-21T10:00:00.000000Z", "0001-01-01T00:00:00.000000Z",
    "9999-12-31T23:59:59.999999Z", "2024-02-29T12:00:00.5Z", "2026-02-29T10:00:00.123456Z",
    "2026-11-21T24:00:00.123456Z", "2026-11-21T10:00:60.123456Z", "2026-11-21T10:00:00.123456Z\n",
    "2026-11-21t10:00:00.123456Z", "2026-11-21T10:00:00.123456z", "2026-11-21 10:00:00.123456Z",
])
def test_parse_rfc3339_quick_path_answers_like_the_general_one(text):
    from services.common import timestamps

    def general(value):
        m = timestamps._TIME.match(value)
        if m is None:
            raise ValueError("not an RFC 3339 date-time with offset")
        date, clock, frac, offset = m.groups()
        offset = "+00:00" if offset in ("Z", "z") else offset
        return datetime.fromisoformat(
            f"{date}T{clock}.{(frac or '0')[:6].ljust(6, '0')}{offset}").astimezone(UTC)

    assert _verdict(lambda _, v: timestamps.parse_rfc3339(v), None, text) == \
        _verdict(lambda _, v: general(v), None, text)
    if _verdict(lambda _, v: general(v), None, text) is None:
        assert timestamps.parse_rfc3339(text) == general(text)
        assert timestamps.parse_rfc3339(text).tzinfo is UTC
