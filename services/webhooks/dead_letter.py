"""Publishing given-up deliveries to the dead-letter topic.

Jobs wait in the queue (state ``dead_letter``) until the topic has them, so a Kafka
outage delays dead letters but never loses them, and never blocks delivery workers.
A dead letter is the original event (key, value, ``ce_*`` headers) plus the ``dlq_*``
headers of every dead letter (services.common.consumer.dead_letter) and this worker's
``dlq_subscription``, ``dlq_attempts``, ``dlq_last_error``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaProducer

from services.common.consumer.dead_letter import dead_letter_headers
from services.common.events import WEBHOOKS_DEAD_LETTER_TOPIC
from services.common.kafka import ensure_topics, make_producer
from services.common.settings import KafkaSettings
from services.webhooks.metrics import WebhookMetrics
from services.webhooks.store import DeadJob, JobStore

DEAD_LETTER_TOPIC = WEBHOOKS_DEAD_LETTER_TOPIC
SERVICE = "webhooks"

log = structlog.get_logger("ampgate.webhooks")


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


# Sends a batch and returns once the broker has acknowledged all of it (or raises).
DeadLetterSink = Callable[[list[DeadLetter]], Awaitable[None]]


def to_dead_letter(job: DeadJob, topic: str = DEAD_LETTER_TOPIC) -> DeadLetter:
    headers = dead_letter_headers(
        job.event_headers, reason=job.reason, source_topic=job.source_topic,
        source_partition=job.source_partition, source_offset=job.source_offset,
        service=SERVICE, extra={
            "dlq_subscription": job.subscription,
            "dlq_attempts": str(job.attempts),
            "dlq_last_error": job.last_error or "",
        })
    return DeadLetter(topic, job.entity.encode(), job.event_value, tuple(headers))


class DeadLetterPublisher:
    def __init__(self, store: JobStore, sink: DeadLetterSink, metrics: WebhookMetrics, *,
                 topic: str = DEAD_LETTER_TOPIC, batch: int = 100,
                 retry_s: tuple[float, float] = (0.5, 30.0)) -> None:
        self._store = store
        self._sink = sink
        self._metrics = metrics
        self._topic = topic
        self._batch = batch
        self._retry_s = retry_s
        self._wake = asyncio.Event()
        self.healthy = True

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = self._retry_s[0]
        while True:
            self._wake.clear()
            jobs = self._store.dead_letters(self._batch)
            if not jobs:
                await self._wake.wait()
                continue
            try:
                await self._sink([to_dead_letter(j, self._topic) for j in jobs])
            except Exception as exc:  # noqa: BLE001 broker down: keep them queued, back off
                self.healthy = False
                log.warning("webhook_dead_letter_publish_failed", error=type(exc).__name__,
                            pending=len(jobs), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_s[1])
                continue
            self.healthy = True
            delay = self._retry_s[0]
            self._store.mark_dead_lettered([j.id for j in jobs])
            self._metrics.deliveries.labels("dead_lettered").inc(len(jobs))
            for j in jobs:
                log.warning("webhook_dead_lettered", subscription=j.subscription,
                            reason=j.reason, attempts=j.attempts, last_error=j.last_error,
                            source_topic=j.source_topic, source_offset=j.source_offset)


class KafkaDeadLetterSink:
    """A ``DeadLetterSink`` on its own producer, connected on first use and rebuilt
    after a failure, so the worker starts (and delivers) while Kafka is down."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._kafka = kafka
        self._producer: AIOKafkaProducer | None = None

    async def __call__(self, letters: list[DeadLetter]) -> None:
        try:
            producer = await self._connect()
            sent = [await producer.send(d.topic, value=d.value, key=d.key, headers=list(d.headers))
                    for d in letters]
            await asyncio.gather(*sent)
        except Exception:
            await self.close()
            raise

    async def _connect(self) -> AIOKafkaProducer:
        if self._producer is None:
            k = self._kafka
            await ensure_topics(k, [DEAD_LETTER_TOPIC], k.partitions,
                                k.replication_factor)
            producer = make_producer(k, client_id=f"{k.client_id}-{SERVICE}-dead-letters")
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with suppress(Exception):
                await producer.stop()
