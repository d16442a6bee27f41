"""The webhooks worker through a real broker: events on the topic become signed
webhooks; an endpoint that always fails ends in the dead-letter topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from standardwebhooks import Webhook

from services.common.dlq import replay
from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, PRICE_TOPIC, build_event
from services.common.kafka import ensure_topics
from services.common.settings import Settings
from services.webhooks.app import create_app
from services.webhooks.dead_letter import DEAD_LETTER_TOPIC
from tests.fixtures.kafka import unique_name
from tests.unit.webhooks.conftest import new_secret
from tests.unit.webhooks.receiver import Receiver, always, eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for r in started:
        await r.stop()


def worker_settings(kafka, state_dir: Path, subscriptions: list[dict]) -> Settings:
    return Settings(
        http={"port": 0},
        kafka=kafka.kafka_settings(),
        state_dir=state_dir,
        webhooks={"subscriptions": subscriptions, "retry_schedule_s": [0.05, 0.05],
                  "timeout_s": 2.0},
        consumer={"retry_backoff_s": 0.1},
    )


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def produce(kafka, records) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for rec in records:
            await producer.send_and_wait(rec.topic, value=rec.value, key=rec.key,
                                         headers=list(rec.headers))
    finally:
        await producer.stop()


async def dead_letters_for(kafka, event_id: str, timeout: float = 20.0) -> dict[str, str]:
    consumer = AIOKafkaConsumer(DEAD_LETTER_TOPIC, bootstrap_servers=kafka.bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for rec in records:
                    headers = {k: v.decode() for k, v in rec.headers}
                    if headers.get("ce_id") == event_id:
                        return {**headers, "_key": rec.key.decode(), "_value": rec.value.decode()}
        raise AssertionError(f"no dead letter for {event_id}")
    finally:
        await consumer.stop()


async def test_topic_to_signed_webhook_and_dead_letter(kafka, tmp_path, receivers):
    ok = await Receiver(always(200)).start()
    bad = await Receiver(always(500)).start()
    receivers += [ok, bad]
    passport_id = f"BP-WH-{uuid.uuid4().hex[:8]}"
    secret = new_secret()
    settings = worker_settings(kafka, tmp_path, [
        {"name": "ok", "url": ok.url, "events": [PASSPORT_CE_TYPE], "secret": secret,
         "entity_ids": [passport_id]},
        {"name": "bad", "url": bad.url, "events": ["*"], "secret": new_secret(),
         "entity_ids": [passport_id]},
    ])
    await ensure_topics(kafka.bootstrap, [PASSPORT_TOPIC, PRICE_TOPIC, DEAD_LETTER_TOPIC], 6, 1)
    runner, base = await serve(create_app(settings, group_id=unique_name("webhooks")))
    try:
        record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, passport_id, {
            "passport_id": passport_id, "change": "CHANGE_KIND_CREATED",
            "detected_by": "DETECTION_WRITE", "digest": "sha256:" + "a" * 64,
            "changed_paths": [""], "passport": {"id": passport_id},
            "observed_at": "2026-11-21T10:00:00.123456Z"})
        event_id = dict(record.headers)["ce_id"].decode()
        await produce(kafka, [record])

        await eventually(lambda: len(ok.requests) == 1, timeout=30)
        got = ok.requests[0]
        payload = Webhook(secret).verify(got.body, got.headers)
        assert got.headers["webhook-id"] == event_id
        assert payload["subject"] == passport_id
        assert payload["data"]["passport"] == {"id": passport_id}

        letter = await dead_letters_for(kafka, event_id)
        assert letter["dlq_reason"] == "max_attempts"
        assert letter["dlq_subscription"] == "bad"
        assert letter["dlq_service"] == "webhooks"
        assert letter["dlq_source_topic"] == PASSPORT_TOPIC
        assert letter["_key"] == passport_id
        assert orjson.loads(letter["_value"])["passport_id"] == passport_id
        assert len(bad.requests) == 3  # 1 + len(retry_schedule_s)

        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            async with http.get(f"{base}/readyz") as resp:
                ready = await resp.json()
        assert 'ampgate_webhook_deliveries_total{outcome="success"} 1.0' in text
        assert 'ampgate_webhook_deliveries_total{outcome="dead_lettered"} 1.0' in text
        assert "ampgate_consumer_lag" in text
        assert ready["checks"]["webhooks"]["subscriptions"] == 2
        await asyncio.sleep(0.3)
        assert len(ok.requests) == 1  # exactly once
    finally:
        await runner.cleanup()


async def test_a_replayed_dead_letter_is_delivered_once_the_endpoint_is_back(
        kafka, tmp_path, receivers):
    healthy = asyncio.Event()
    flaky = await Receiver(lambda n, body: (200 if healthy.is_set() else 500, {})).start()
    other = await Receiver(always(200)).start()
    receivers += [flaky, other]
    passport_id = f"BP-WH-{uuid.uuid4().hex[:8]}"
    secret = new_secret()
    settings = worker_settings(kafka, tmp_path, [
        {"name": "flaky", "url": flaky.url, "events": ["*"], "secret": secret,
         "entity_ids": [passport_id]},
        {"name": "other", "url": other.url, "events": ["*"], "secret": new_secret(),
         "entity_ids": [passport_id]},
    ])
    await ensure_topics(kafka.bootstrap, [PASSPORT_TOPIC, PRICE_TOPIC, DEAD_LETTER_TOPIC], 6, 1)
    runner, _ = await serve(create_app(settings, group_id=unique_name("webhooks")))
    try:
        record = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, passport_id, {
            "passport_id": passport_id, "change": "CHANGE_KIND_CREATED",
            "detected_by": "DETECTION_WRITE", "digest": "sha256:" + "b" * 64,
            "changed_paths": [""], "passport": {"id": passport_id},
            "observed_at": "2026-11-21T10:00:00.123456Z"})
        event_id = dict(record.headers)["ce_id"].decode()
        await produce(kafka, [record])
        await dead_letters_for(kafka, event_id)
        assert len(flaky.requests) == 3 and len(other.requests) == 1

        healthy.set()
        replayed = await replay(settings.kafka, DEAD_LETTER_TOPIC)
        assert replayed >= 1
        await eventually(lambda: len(flaky.requests) == 4, timeout=30)
        got = flaky.requests[3]
        assert got.status == 200 and got.headers["webhook-id"] == event_id
        assert Webhook(secret).verify(got.body, got.headers)["subject"] == passport_id
        await asyncio.sleep(0.5)
        # The endpoint that had it already is not called again; the fixed one once.
        assert (len(flaky.requests), len(other.requests)) == (4, 1)
    finally:
        await runner.cleanup()
