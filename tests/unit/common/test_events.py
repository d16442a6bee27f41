"""The CloudEvents envelope: what build_event emits and what parse_event accepts."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from aiokafka.structs import ConsumerRecord
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1 import kafka as ce_kafka_v1
from google.protobuf import json_format

from services.common.events import (
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    PRICE_CE_TYPE,
    PRICE_TOPIC,
    EventRecord,
    InvalidEvent,
    build_event,
    digest_of,
    envelope,
    parse_event,
)
from services.common.events.envelope import new_event_id
from services.common.events.schemas import PassportChanged, PriceChanged
from tests.unit.common.event_samples import passport_data, price_data

WHEN = datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)


def as_consumed(record: EventRecord, *, offset: int = 7, headers=None, key=...,
                value=None) -> ConsumerRecord:
    value = record.value if value is None else value
    return ConsumerRecord(
        topic=record.topic, partition=3, offset=offset, timestamp=0, timestamp_type=0,
        key=record.key if key is ... else key, value=value, checksum=None,
        serialized_key_size=len(record.key), serialized_value_size=len(value),
        headers=list(record.headers if headers is None else headers),
    )


def test_passport_event_is_cloudevents_binary_mode_with_key_and_proto_json():
    event_id = str(uuid.uuid4())
    record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data(),
                         event_id=event_id, time=WHEN)

    assert record.topic == "passport-changed"
    assert record.key == b"BP-000123"
    assert record.headers == (
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", b"ampgate/gateway"),
        ("ce_type", b"ampgate.passport.changed.v1"),
        ("ce_subject", b"BP-000123"),
        ("ce_time", b"2026-11-21T10:00:00.123456Z"),
        ("content-type", b"application/json"),
    )
    message = json_format.Parse(record.value, PassportChanged(), ignore_unknown_fields=False)
    assert message.passport_id == "BP-000123"
    assert message.passport["general_information"]["weight"] == 412
    assert orjson.loads(record.value) == passport_data()


def test_events_parse_with_the_cloudevents_sdk_kafka_bindings():
    record = build_event(PRICE_TOPIC, PRICE_CE_TYPE, "DE*EEE*E000001", price_data(), time=WHEN)
    message = ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)

    event = ce_kafka.from_binary(message, JSONFormat())
    assert event.get_type() == "ampgate.price.changed.v1"
    assert event.get_subject() == "DE*EEE*E000001"
    assert event.get_time() == WHEN
    assert event.get_data() == price_data()

    legacy = ce_kafka_v1.from_binary(
        ce_kafka_v1.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value))
    assert legacy["type"] == "ampgate.price.changed.v1"
    assert legacy["datacontenttype"] == "application/json"
    assert legacy.data == price_data()
    json_format.Parse(record.value, PriceChanged(), ignore_unknown_fields=False)


def test_default_id_is_a_fresh_uuid_and_time_is_utc_now():
    a = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-1", passport_data("BP-1"))
    b = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-1", passport_data("BP-1"))
    assert uuid.UUID(a.header("ce_id").decode()).version == 4
    assert a.header("ce_id") != b.header("ce_id")
    stamped = datetime.fromisoformat(a.header("ce_time").decode())
    assert a.header("ce_time").endswith(b"Z")
    assert abs(datetime.now(UTC) - stamped) < timedelta(seconds=5)


def test_time_in_another_zone_is_written_as_utc():
    local = WHEN.astimezone(timezone(timedelta(hours=2)))
    record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data(), time=local)
    assert record.header("ce_time") == b"2026-11-21T10:00:00.123456Z"


def test_deleted_passport_has_no_document_and_no_digest():
    data = passport_data(change="CHANGE_KIND_DELETED", digest="", changed_paths=[""])
    del data["passport"]
    record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", data)
    message = json_format.Parse(record.value, PassportChanged(), ignore_unknown_fields=False)
    assert not message.HasField("passport")


@pytest.mark.parametrize(
    ("topic", "ce_type", "subject", "data", "complaint"),
    [
        (PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data(extra=1), "extra"),
        (PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data(change="UPDATED"), "UPDATED"),
        (PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-9", passport_data(), "subject"),
        (PRICE_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data(), "belongs on"),
        (PASSPORT_TOPIC, "com.example.other", "BP-000123", passport_data(), "unknown event type"),
        (PRICE_TOPIC, PRICE_CE_TYPE, "DE*EEE*E000001",
         price_data(current={"rate_name": "x", "costTotal": 36}), "costTotal"),
    ],
)
def test_build_event_refuses_data_outside_the_contract(topic, ce_type, subject, data, complaint):
    with pytest.raises(ValueError, match=complaint):
        build_event(topic, ce_type, subject, data)


def test_parse_event_round_trip():
    record = build_event(PRICE_TOPIC, PRICE_CE_TYPE, "DE*EEE*E000001", price_data(),
                         event_id="e-1", time=WHEN)
    event = parse_event(as_consumed(record))
    assert (event.topic, event.partition, event.offset) == ("price-changed", 3, 7)
    assert (event.key, event.id, event.type, event.subject) == (
        "DE*EEE*E000001", "e-1", "ampgate.price.changed.v1", "DE*EEE*E000001")
    assert event.time == WHEN
    assert event.data == price_data()
    assert event.headers["ce_source"] == b"ampgate/gateway"


def _without(record: EventRecord, name: str):
    return [(k, v) for k, v in record.headers if k != name]


def _replace(record: EventRecord, name: str, value: bytes):
    return [(k, value if k == name else v) for k, v in record.headers]


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda r: {"headers": _without(r, "ce_id")}, "missing header ce_id"),
        (lambda r: {"headers": _replace(r, "ce_specversion", b"0.3")}, "ce_specversion"),
        (lambda r: {"headers": _replace(r, "ce_type", b"x.y")}, "unknown ce_type"),
        (lambda r: {"headers": _replace(r, "ce_time", b"yesterday")}, "ce_time"),
        (lambda r: {"headers": _replace(r, "content-type", b"text/plain")}, "content-type"),
        (lambda r: {"headers": [*r.headers, ("ce_id", b"again")]}, "duplicate header"),
        (lambda r: {"key": b"BP-other"}, "key differs"),
        (lambda r: {"value": b"{not json"}, "not JSON"),
        (lambda r: {"value": b"[1, 2]"}, "not a JSON object"),
        (lambda r: {"value": orjson.dumps(passport_data(unknown=True))}, "does not match"),
        (lambda r: {"value": orjson.dumps(passport_data("BP-other"))}, "differs from ce_subject"),
    ],
)
def test_parse_event_names_poison_messages(mangle, reason):
    record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data())
    with pytest.raises(InvalidEvent, match=reason) as caught:
        parse_event(as_consumed(record, **mangle(record)))
    assert reason.split()[0] in caught.value.reason


def test_parse_event_accepts_a_message_without_key_and_charset_parameter():
    record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data())
    headers = _replace(record, "content-type", b"application/json; charset=utf-8")
    event = parse_event(as_consumed(record, key=None, headers=headers))
    assert event.key is None and event.subject == "BP-000123"


def test_digest_is_sha256_of_canonical_json_independent_of_key_order():
    a = digest_of({"b": 1, "a": {"y": 2, "x": [1, 2]}})
    b = digest_of({"a": {"x": [1, 2], "y": 2}, "b": 1})
    assert a == b and a.startswith("sha256:") and len(a) == 7 + 64
    assert digest_of({"a": [2, 1]}) != digest_of({"a": [1, 2]})


@pytest.mark.parametrize("size", [100, 2046, 2047, 2048, 4094, 4095, 20_000])
def test_digest_of_a_large_document_is_the_sha256_of_all_of_it(size):
    """digest_of hashes in pieces below 2 KiB (so hashlib keeps the GIL): still one digest of
    the whole canonical text, at every piece boundary."""
    doc = {"pad": "x" * size}
    canonical = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    assert digest_of(doc) == "sha256:" + hashlib.sha256(canonical).hexdigest()


def test_event_ids_are_uuid4_text_unique_and_drawn_afresh_after_a_fork(monkeypatch):
    ids = [new_event_id() for _ in range(1000)]  # several refills of the pool
    assert len(set(ids)) == 1000
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    drawn: list[int] = []
    urandom = envelope.os.urandom
    monkeypatch.setattr(envelope.os, "urandom", lambda n: drawn.append(n) or urandom(n))
    new_event_id()
    new_event_id()
    assert len(drawn) <= 1  # from the pool (one refill at most, at its end)
    drawn.clear()
    pid = envelope.os.getpid()
    monkeypatch.setattr(envelope.os, "getpid", lambda: pid + 1)  # as in a forked child
    new_event_id()
    assert len(drawn) == 1  # the parent's pool is never used again


# parse_event's short cuts (headers read at once, key compared as bytes, the plain content
# type) must leave the general path's verdicts and reasons exactly as they were.
@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda r: {"headers": _replace(r, "ce_specversion", None)},
         "unsupported ce_specversion ''"),
        (lambda r: {"headers": [*r.headers, ("ce_id", None)]}, "duplicate header ce_id"),
        (lambda r: {"headers": [("x-a", b"1"), ("x-a", None), *r.headers]},
         "duplicate header x-a"),
        (lambda r: {"headers": _replace(r, "ce_source", b"\xff")}, "ce_* header is not UTF-8"),
        (lambda r: {"headers": [(k, v) for k, v in _replace(r, "ce_id", b"\xff")
                                if k != "ce_time"]},
         "ce_* header is not UTF-8"),  # the first problem in header order is named
        (lambda r: {"headers": _without(r, "ce_time")}, "missing header ce_time"),
        (lambda r: {"key": b"\xff"}, "key is not UTF-8"),
        (lambda r: {"headers": _replace(r, "content-type", None)},
         "content-type '' is not application/json"),
        (lambda r: {"headers": _replace(r, "content-type", b"application/json\xff")},
         "content-type 'application/json\ufffd' is not application/json"),
    ],
)
def test_parse_event_reasons_of_the_general_path(mangle, reason):
    record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-000123", passport_data())
    with pytest.raises(InvalidEvent) as caught:
        parse_event(as_consumed(record, **mangle(record)))
    assert caught.value.reason == reason


def test_parse_event_key_equal_to_a_non_ascii_subject_and_odd_content_types():
    subject = "BP-äöü-1"
    record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, subject, passport_data(subject))
    for content_type in (b"application/json", b" Application/JSON ; charset=utf-8"):
        headers = _replace(record, "content-type", content_type)
        event = parse_event(as_consumed(record, headers=headers))
        assert event.key == event.subject == subject
        assert event.headers == dict(headers)
        assert event.time.tzinfo is UTC
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.key = "other"  # type: ignore[misc]
