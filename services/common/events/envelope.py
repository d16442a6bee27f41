"""CloudEvents 1.0 in Kafka binary mode (DESIGN.md §7): building the records the
gateway publishes and parsing the ones consumers read.

Attributes travel as ``ce_*`` headers (UTF-8), ``content-type`` is the data content
type, the key is the entity id (per-entity order) and the value is the proto3 JSON of
the topic's message. Values are checked against the compiled protos on both sides, so
a detector bug fails where it is made and a poison message is named, not half-applied.
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from services.common.errors import AmpgateError
from services.common.events import schemas
from services.common.timestamps import parse_rfc3339, rfc3339

PASSPORT_TOPIC = "passport-changed"
PRICE_TOPIC = "price-changed"
PASSPORT_CE_TYPE = "ampgate.passport.changed.v1"
PRICE_CE_TYPE = "ampgate.price.changed.v1"
CE_SOURCE = "ampgate/gateway"
CONTENT_TYPE = "application/json"
SPEC_VERSION = "1.0"

# ce_type -> (topic, message, field holding the entity id == ce_subject == key)
_CONTRACTS: dict[str, tuple[str, type[Message], str]] = {
    PASSPORT_CE_TYPE: (PASSPORT_TOPIC, schemas.PassportChanged, "passport_id"),
    PRICE_CE_TYPE: (PRICE_TOPIC, schemas.PriceChanged, "evse_id"),
}
TOPIC_CE_TYPES = {topic: ce_type for ce_type, (topic, _, _) in _CONTRACTS.items()}
_REQUIRED = ("ce_specversion", "ce_id", "ce_source", "ce_type", "ce_subject", "ce_time")
_required_values = operator.itemgetter(*_REQUIRED)
_CONTENT_TYPE_BYTES = CONTENT_TYPE.encode()


@dataclass(frozen=True, slots=True)
class EventRecord:
    """What goes into the outbox and onto Kafka, byte for byte."""

    topic: str
    key: bytes
    headers: tuple[tuple[str, bytes], ...]
    value: bytes

    def header(self, name: str) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """A Kafka message that is a valid ampgate event."""

    topic: str
    partition: int
    offset: int
    key: str | None
    id: str
    type: str
    subject: str
    time: datetime
    data: dict[str, Any]
    headers: dict[str, bytes]


class InvalidEvent(AmpgateError):
    """A message that is not a valid ampgate event (poison: dead-letter it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# hashlib lets go of the GIL for an update of 2 KiB or more. On the loop, with the outbox's
# writer thread waiting for the GIL, every such release hands it over and the loop waits to
# get it back: a 6 KB passport's 5 us hash cost ~0.2 ms in the events bench. Updates below
# that size keep the GIL (same digest).
_HASH_CHUNK = 2047


def digest_of(document: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON (sorted keys) of a document or tariff."""
    canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    h = hashlib.sha256(canonical[:_HASH_CHUNK])
    for start in range(_HASH_CHUNK, len(canonical), _HASH_CHUNK):
        h.update(canonical[start:start + _HASH_CHUNK])
    return "sha256:" + h.hexdigest()


# Event ids: random UUIDs (version 4) cut from one os.urandom() call per 256 ids. Each
# os.urandom() releases the GIL (see digest_of); refilled after a fork so that two
# processes never share ids.
_IDS_PER_FILL = 256
_random_pool: list[Any] = [b"", 0, -1]  # bytes, offset, pid


def new_event_id() -> str:
    """A random (version 4) UUID, as ``str(uuid.uuid4())`` gives it."""
    pool, offset, pid = _random_pool
    if offset >= len(pool) or pid != os.getpid():
        pool, offset = os.urandom(16 * _IDS_PER_FILL), 0
        _random_pool[0], _random_pool[2] = pool, os.getpid()
    _random_pool[1] = offset + 16
    n = int.from_bytes(pool[offset:offset + 16])
    n = (n & ~(0xF000 << 64) | (4 << 76)) & ~(0xC000 << 48) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def build_event(
    topic: str,
    ce_type: str,
    subject: str,
    data: Mapping[str, Any],
    *,
    event_id: str | None = None,
    time: datetime | None = None,
    time_text: str | None = None,
    validate: bool = True,
) -> EventRecord:
    """An event record for ``topic``; ``data`` is the proto3 JSON of the message.

    Raises ValueError when topic, type, subject and data do not fit the contract
    (wrong topic for the type, entity id differing from the subject, a value that
    does not parse with the compiled protos). ``validate=False`` skips the proto parse
    (a third of an event's cost): for producers whose output the tests parse anyway.
    ``time_text``: ``rfc3339(time)``, when the caller has it already."""
    contract = _CONTRACTS.get(ce_type)
    if contract is None:
        raise ValueError(f"unknown event type {ce_type!r}")
    want_topic, message_type, id_field = contract
    if topic != want_topic:
        raise ValueError(f"{ce_type} belongs on {want_topic!r}, not {topic!r}")
    if not subject:
        raise ValueError("empty subject")
    if data.get(id_field) != subject:
        raise ValueError(f"data.{id_field} must equal the subject {subject!r}")
    if validate:
        try:
            schemas.check(message_type, data)
        except json_format.ParseError as exc:
            raise ValueError(f"{message_type.DESCRIPTOR.full_name}: {exc}") from None
    headers = (
        ("ce_specversion", SPEC_VERSION.encode()),
        ("ce_id", (event_id or new_event_id()).encode()),
        ("ce_source", CE_SOURCE.encode()),
        ("ce_type", ce_type.encode()),
        ("ce_subject", subject.encode()),
        ("ce_time", (time_text or rfc3339(time or datetime.now(UTC))).encode()),
        ("content-type", CONTENT_TYPE.encode()),
    )
    return EventRecord(topic=topic, key=subject.encode(), headers=headers, value=orjson.dumps(data))


def parse_event(msg: Any) -> ConsumedEvent:
    """Turn an aiokafka ConsumerRecord into a ConsumedEvent or raise InvalidEvent(reason).

    Every consumer runs this on its event loop for each record: the usual record (unique
    headers, all present and ASCII, the plain content type, key == subject) takes short
    cuts; anything else goes the general way, so the verdict and the reason never change."""
    raw_headers = msg.headers or ()
    headers = dict(raw_headers)
    if len(headers) != len(raw_headers) or None in headers.values():
        headers = _headers_of(raw_headers)  # names the duplicate; None -> b""
    try:
        spec, event_id, _, ce_type, subject, ce_time = [
            v.decode() for v in _required_values(headers)]
    except (KeyError, UnicodeDecodeError):
        _required_attributes(headers)  # raises InvalidEvent with the reason
        raise  # not reached
    if spec != SPEC_VERSION:
        raise InvalidEvent(f"unsupported ce_specversion {spec!r}")
    content_type = headers.get("content-type", b"")
    if content_type != _CONTENT_TYPE_BYTES:
        content_type = content_type.decode("utf-8", "replace")
        if content_type.split(";")[0].strip().lower() != CONTENT_TYPE:
            raise InvalidEvent(f"content-type {content_type!r} is not {CONTENT_TYPE}")
    contract = _CONTRACTS.get(ce_type)
    if contract is None:
        raise InvalidEvent(f"unknown ce_type {ce_type!r}")
    _, message_type, id_field = contract
    try:
        time = parse_rfc3339(ce_time)
    except ValueError:
        raise InvalidEvent("ce_time is not an RFC 3339 date-time with offset") from None
    key = msg.key
    if key is not None:
        if key == headers["ce_subject"]:
            key = subject  # same bytes, same text: no second decode
        else:
            try:
                key = key.decode()
            except UnicodeDecodeError:
                raise InvalidEvent("key is not UTF-8") from None
            if key != subject:
                raise InvalidEvent("key differs from ce_subject")
    try:
        data = orjson.loads(msg.value)
    except (orjson.JSONDecodeError, TypeError):
        raise InvalidEvent("value is not JSON") from None
    if not isinstance(data, dict):
        raise InvalidEvent("value is not a JSON object")
    try:
        schemas.validate(message_type, data, json=msg.value)
    except json_format.ParseError as exc:
        raise InvalidEvent(f"value does not match {message_type.DESCRIPTOR.full_name}: {exc}") from None
    if data.get(id_field) != subject:
        raise InvalidEvent(f"{id_field} differs from ce_subject")
    return _consumed_event(msg.topic, msg.partition, msg.offset, key, event_id, ce_type,
                           subject, time, data, headers)


def _headers_of(raw_headers: Any) -> dict[str, bytes]:
    headers: dict[str, bytes] = {}
    for name, value in raw_headers:
        if name in headers:
            raise InvalidEvent(f"duplicate header {name}")
        headers[name] = value if value is not None else b""
    return headers


def _required_attributes(headers: dict[str, bytes]) -> dict[str, str]:
    try:
        return {name: headers[name].decode() for name in _REQUIRED}
    except KeyError as exc:
        raise InvalidEvent(f"missing header {exc.args[0]}") from None
    except UnicodeDecodeError:
        raise InvalidEvent("ce_* header is not UTF-8") from None


# ConsumedEvent(...) of a frozen dataclass goes through object.__setattr__ for each field
# (~2 us an event on the loop); its slots' own setters do the same in well under half.
_set_topic = ConsumedEvent.topic.__set__  # type: ignore[attr-defined]
_set_partition = ConsumedEvent.partition.__set__  # type: ignore[attr-defined]
_set_offset = ConsumedEvent.offset.__set__  # type: ignore[attr-defined]
_set_key = ConsumedEvent.key.__set__  # type: ignore[attr-defined]
_set_id = ConsumedEvent.id.__set__  # type: ignore[attr-defined]
_set_type = ConsumedEvent.type.__set__  # type: ignore[attr-defined]
_set_subject = ConsumedEvent.subject.__set__  # type: ignore[attr-defined]
_set_time = ConsumedEvent.time.__set__  # type: ignore[attr-defined]
_set_data = ConsumedEvent.data.__set__  # type: ignore[attr-defined]
_set_headers = ConsumedEvent.headers.__set__  # type: ignore[attr-defined]


def _consumed_event(topic: str, partition: int, offset: int, key: str | None, event_id: str,
                    ce_type: str, subject: str, time: datetime, data: dict[str, Any],
                    headers: dict[str, bytes]) -> ConsumedEvent:
    event = object.__new__(ConsumedEvent)
    _set_topic(event, topic)
    _set_partition(event, partition)
    _set_offset(event, offset)
    _set_key(event, key)
    _set_id(event, event_id)
    _set_type(event, ce_type)
    _set_subject(event, subject)
    _set_time(event, time)
    _set_data(event, data)
    _set_headers(event, headers)
    return event
