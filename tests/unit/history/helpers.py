"""Events as the gateway publishes them, for history tests (built and parsed by the shared
envelope code, so they follow the contract)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from services.common.events import (
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    PRICE_CE_TYPE,
    PRICE_TOPIC,
    ConsumedEvent,
    EventRecord,
    build_event,
    digest_of,
    parse_event,
    rfc3339,
)
from services.common.kafka import ensure_topics

T0 = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def passport_doc(pid: str, capacity: float) -> dict[str, Any]:
    return {"id": pid, "general_information": {"name": "Cell pack"},
            "performance": {"rated_capacity_kwh": capacity}}


def tariff(price: float) -> dict[str, Any]:
    return {"rate_name": "AC standard", "cost_id": "42", "currency": "EUR",
            "price_structure": {"energy": [{"intervalCosts": price, "unit": "kWh"}]},
            "session_fee": 0.5}


def passport_record(pid: str, doc: dict | None, prev: dict | None, minutes: float, *,
                    change: str | None = None, event_id: str | None = None,
                    detected_by: str = "DETECTION_POLL") -> EventRecord:
    if change is None:
        change = ("CHANGE_KIND_SNAPSHOT" if prev is None else
                  "CHANGE_KIND_DELETED" if doc is None else "CHANGE_KIND_UPDATED")
    data: dict[str, Any] = {
        "passport_id": pid, "change": change, "detected_by": detected_by,
        "digest": digest_of(doc) if doc is not None else "",
        "changed_paths": ["/performance/rated_capacity_kwh"] if prev and doc else [],
        "observed_at": rfc3339(at(minutes)),
    }
    if prev is not None:
        data["previous_digest"] = digest_of(prev)
    if doc is not None:
        data["passport"] = doc
    return build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, pid, data,
                       event_id=event_id or str(uuid.uuid4()), time=at(minutes))


def price_record(evse: str, context: str, cur: dict | None, prev: dict | None,
                 minutes: float, *, event_id: str | None = None) -> EventRecord:
    change = ("CHANGE_KIND_SNAPSHOT" if prev is None else
              "CHANGE_KIND_DELETED" if cur is None else "CHANGE_KIND_UPDATED")
    data: dict[str, Any] = {
        "evse_id": evse, "tariff_context": context, "change": change,
        "detected_by": "DETECTION_POLL", "digest": digest_of(cur) if cur is not None else "",
        "changed_paths": ["/price_structure"] if prev and cur else [],
        "observed_at": rfc3339(at(minutes)),
    }
    if prev is not None:
        data["previous_digest"] = digest_of(prev)
        data["previous"] = prev
    if cur is not None:
        data["current"] = cur
    return build_event(PRICE_TOPIC, PRICE_CE_TYPE, evse, data,
                       event_id=event_id or str(uuid.uuid4()), time=at(minutes))


def consumed(record: EventRecord, offset: int = 0) -> ConsumedEvent:
    """The ConsumedEvent a consumer would get for ``record``."""
    msg = ConsumerRecord(topic=record.topic, partition=0, offset=offset, timestamp=0,
                         timestamp_type=0, key=record.key, value=record.value, checksum=None,
                         serialized_key_size=len(record.key),
                         serialized_value_size=len(record.value),
                         headers=list(record.headers))
    return parse_event(msg)


def flip_flop(pid: str) -> list[EventRecord]:
    """A→B→A→B: four transitions, four versions."""
    a, b = passport_doc(pid, 60.0), passport_doc(pid, 58.5)
    return [passport_record(pid, a, None, 0), passport_record(pid, b, a, 10),
            passport_record(pid, a, b, 20), passport_record(pid, b, a, 30)]


# -- Kafka, for the integration tests --------------------------------------------------

async def produce(bootstrap: str, records: list[EventRecord] | list[tuple], *,
                  one_by_one: bool = False) -> None:
    """Send EventRecords (or raw (topic, key, value, headers) tuples) and wait for acks.

    ``one_by_one``: one record per produce batch. tansu reports end offsets (ListOffsets,
    fetch highwater) too low after multi-record batches; exact lag figures need this."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False)
    await producer.start()
    try:
        acks = []
        for r in records:
            if one_by_one and acks:
                await acks[-1]
            if isinstance(r, EventRecord):
                acks.append(await producer.send(r.topic, r.value, key=r.key,
                                                headers=list(r.headers)))
            else:
                topic, key, value, headers = r
                acks.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 15.0) -> list:
    """The first ``count`` records of ``topic`` (no group, from the start)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    out: list = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(out) < count and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(recs)
    finally:
        await consumer.stop()
    return out


async def create_topics(bootstrap: str, topics: list[str], partitions: int = 2) -> None:
    await ensure_topics(bootstrap, topics, partitions, 1)


async def wait_until(predicate, timeout_s: float = 20.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


def sample(registry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def fresh_postgres_database(dsn: str) -> str:
    """A new empty database on the server of ``dsn``; its DSN."""
    import asyncpg

    name = f"history_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + name
