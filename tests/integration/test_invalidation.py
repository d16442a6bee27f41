"""The gateway's invalidation consumer against a real broker: every replica sees every new
event, creates no topic, and survives a broker that is down at start."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from services.common.events import (
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    PRICE_CE_TYPE,
    PRICE_TOPIC,
    build_event,
)
from services.common.kafka import ensure_topics
from services.gateway.invalidation import InvalidationConsumer
from tests.fixtures.kafka import unique_name

pytestmark = pytest.mark.integration

DIGEST = "sha256:" + "0" * 64


def passport_event(pid: str):
    return build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, pid, {
        "passport_id": pid, "change": "CHANGE_KIND_UPDATED", "detected_by": "DETECTION_WRITE",
        "digest": DIGEST, "passport": {"id": pid}, "observed_at": "2026-11-21T10:00:00.000001Z"})


def price_event(evse: str):
    return build_event(PRICE_TOPIC, PRICE_CE_TYPE, evse, {
        "evse_id": evse, "tariff_context": "fleet", "change": "CHANGE_KIND_UPDATED",
        "detected_by": "DETECTION_POLL", "digest": DIGEST, "current": {"rate_name": "x"},
        "observed_at": "2026-11-21T10:00:00.000001Z"})


async def produce(bootstrap: str, items: list[tuple[str, Any]]) -> None:
    """(topic, EventRecord | raw (key, value, headers)) onto the test's own topics."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    await producer.start()
    try:
        for topic, r in items:
            key, value, headers = (r.key, r.value, list(r.headers)) if hasattr(r, "key") else r
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


async def wait_until(check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def existing_topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"] for t in await admin.describe_topics(None)}
    finally:
        await admin.close()


class Replica:
    """What a gateway replica's cache would be told to evict."""

    def __init__(self, kafka, topics: tuple[str, ...], *, fail_on: str | None = None,
                 cache_topic: str | None = None) -> None:
        self.evicted: list[tuple[str, str]] = []
        self.data: list[dict] = []
        self.fail_on = fail_on
        self.consumer = InvalidationConsumer(kafka.kafka_settings(), self.on_change,
                                             topics=topics, retry_max_s=0.2,
                                             cache_topic=cache_topic or unique_name("cache"))

    async def on_change(self, topic: str, entity_id: str, data: dict) -> None:
        if entity_id == self.fail_on:
            raise RuntimeError("eviction failed")
        self.evicted.append((topic, entity_id))
        self.data.append(data)


async def test_every_replica_evicts_every_new_event(kafka) -> None:
    passports, prices = unique_name("passport-changed"), unique_name("price-changed")
    await ensure_topics(kafka.bootstrap, [passports, prices], 3, 1)
    await produce(kafka.bootstrap, [(passports, passport_event("OLD"))])  # before we start

    a = Replica(kafka, (passports, prices), fail_on="BAD")
    b = Replica(kafka, (passports, prices))
    for r in (a, b):
        await r.consumer.start()
    try:
        for r in (a, b):
            await asyncio.wait_for(r.consumer.ready.wait(), 15)
        with structlog.testing.capture_logs() as logs:
            await produce(kafka.bootstrap, [
                (passports, passport_event("BAD")),
                (passports, (b"P1", b"{not an event", [])),
                (passports, passport_event("P1")),
                (prices, price_event("DE*EEE*E000001")),
            ])
            want = {(passports, "P1"), (prices, "DE*EEE*E000001")}
            await wait_until(lambda: want <= set(a.evicted) and len(b.evicted) == 3)
        assert sorted(a.evicted) == sorted(want)  # not OLD; BAD's eviction failed, logged
        assert sorted(b.evicted) == sorted(want | {(passports, "BAD")})
        events = [e["event"] for e in logs]
        assert "invalidation_failed" in events and "invalidation_event_invalid" in events
    finally:
        for r in (a, b):
            await r.consumer.stop()


async def test_the_internal_cache_topic_reaches_every_replica(kafka) -> None:
    """What has no change event (a user update) travels as ``{"tags": [...]}`` on the
    gateway's internal topic: plain JSON, not a CloudEvent, read like the others."""
    passports, prices, cache = (unique_name("passport-changed"), unique_name("price-changed"),
                                unique_name("gateway-cache-invalidation"))
    await ensure_topics(kafka.bootstrap, [passports, prices, cache], 2, 1)
    replicas = [Replica(kafka, (passports, prices, cache), cache_topic=cache) for _ in range(2)]
    for r in replicas:
        await r.consumer.start()
    try:
        for r in replicas:
            await asyncio.wait_for(r.consumer.ready.wait(), 15)
        with structlog.testing.capture_logs() as logs:
            await produce(kafka.bootstrap, [
                (cache, (b"users/me", b"not json", [])),
                (cache, (b"users/me", b'{"tags": [["users", "me"]]}',
                         [("content-type", b"application/json")])),
            ])
            await wait_until(lambda: all(r.evicted for r in replicas))
        for r in replicas:
            assert r.evicted == [(cache, "users/me")]
            assert r.data == [{"tags": [["users", "me"]]}]
        assert "invalidation_event_invalid" in [e["event"] for e in logs]
    finally:
        for r in replicas:
            await r.consumer.stop()


async def test_a_topic_created_later_is_read_whole_and_never_auto_created(kafka) -> None:
    passports, prices = unique_name("passport-changed"), unique_name("price-changed")
    replica = Replica(kafka, (passports, prices))
    await replica.consumer.start()
    try:
        await asyncio.wait_for(replica.consumer.ready.wait(), 15)
        await asyncio.sleep(1.5)  # a metadata look or two
        assert not {passports, prices} & await existing_topics(kafka.bootstrap)

        await ensure_topics(kafka.bootstrap, [passports], 2, 1)
        # Published right after creation, likely before our next look: still seen.
        await produce(kafka.bootstrap, [(passports, passport_event("EARLY"))])
        await wait_until(lambda: replica.evicted == [(passports, "EARLY")])
    finally:
        await replica.consumer.stop()


async def test_broker_down_at_start_blocks_nothing(private_kafka) -> None:
    private_kafka.stop()
    passports, prices = PASSPORT_TOPIC, PRICE_TOPIC
    replica = Replica(private_kafka, (passports, prices))
    started = time.monotonic()
    await replica.consumer.start()
    assert time.monotonic() - started < 1  # a blocking connect would wait out its timeout
    await asyncio.sleep(0.5)
    assert not replica.consumer.connected

    await asyncio.to_thread(private_kafka.start)
    await ensure_topics(private_kafka.bootstrap, [passports, prices], 2, 1)
    try:
        await asyncio.wait_for(replica.consumer.ready.wait(), 20)
        await produce(private_kafka.bootstrap, [(passports, passport_event("P9"))])
        await wait_until(lambda: replica.evicted == [(passports, "P9")])
    finally:
        await replica.consumer.stop()


@pytest.mark.slow
async def test_a_restarted_empty_broker_is_followed(private_kafka) -> None:
    """tansu keeps nothing across a restart: offsets start again at 0 and we must not wait
    for the old ones."""
    passports, prices = PASSPORT_TOPIC, PRICE_TOPIC
    await ensure_topics(private_kafka.bootstrap, [passports, prices], 2, 1)
    replica = Replica(private_kafka, (passports, prices))
    await replica.consumer.start()
    try:
        await asyncio.wait_for(replica.consumer.ready.wait(), 15)
        await produce(private_kafka.bootstrap,
                      [(passports, passport_event(f"A{i}")) for i in range(20)])
        await wait_until(lambda: len(replica.evicted) == 20)

        await asyncio.to_thread(private_kafka.restart)
        await ensure_topics(private_kafka.bootstrap, [passports, prices], 2, 1)
        await produce(private_kafka.bootstrap,
                      [(passports, passport_event(f"B{i}")) for i in range(5)])
        await wait_until(lambda: len(replica.evicted) == 25, timeout_s=20)
        assert {e for _, e in replica.evicted[20:]} == {f"B{i}" for i in range(5)}
    finally:
        await replica.consumer.stop()
