"""Cache invalidation across replicas (issue 3 §4): every replica reads every change event.

Each gateway replica consumes both topics WITHOUT a consumer group (aiokafka assigns us
every partition and notices new topics/partitions by metadata refresh), so each replica
sees each event; there is nothing to commit. For every event it calls
``on_change(topic, entity_id, data)``; the gateway maps that to cache eviction.

Where reading starts:
* partitions assigned when the consumer first starts: their END (DESIGN.md §11: the
  invalidation consumer reads from the latest — a replica's cache starts empty, history
  holds nothing it needs to evict);
* partitions that appear later (a topic created after we started): their BEGINNING —
  everything in them was published after we started;
* an offset out of range (the tansu broker restarted empty, or retention ran ahead of
  us): the earliest offset, again everything there is new to us.
Evicting twice is harmless; missing an eviction serves a stale document.

The broker may be down when the gateway starts: ``start()`` returns at once, and a
background task keeps trying (jittered backoff) without ever blocking start-up.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from services.common.events import PASSPORT_TOPIC, PRICE_TOPIC, InvalidEvent, parse_event
from services.common.settings import KafkaSettings

log = structlog.get_logger(__name__)

OnChange = Callable[[str, str, dict[str, Any]], Awaitable[None] | None]
TOPICS = (PASSPORT_TOPIC, PRICE_TOPIC)
_INITIAL_ASSIGNMENT_WAIT_S = 5.0


class InvalidationConsumer:
    def __init__(self, settings: KafkaSettings, on_change: OnChange, *,
                 topics: tuple[str, ...] = TOPICS, retry_max_s: float = 10.0) -> None:
        self._settings = settings
        self._on_change = on_change
        self._topics = topics
        self._retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.ready = asyncio.Event()  # set once positioned on the initial partitions
        self.events_seen = 0

    @property
    def connected(self) -> bool:
        return self._consumer is not None

    async def start(self) -> None:
        """Returns at once; connecting (and reconnecting) happens in the background."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="invalidation-consumer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.2, max=self._retry_max_s),
            retry=retry_if_exception_type(Exception),  # never give up; CancelledError is not one
            before_sleep=lambda s: log.warning(
                "invalidation_consumer_retry", attempt=s.attempt_number,
                error=type(s.outcome.exception()).__name__ if s.outcome else None),
        )
        async for attempt in retrying:
            with attempt:
                await self._consume()

    async def _consume(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._settings.bootstrap_servers,
            client_id=f"{self._settings.client_id}-invalidation",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # for partitions that appear later; see module doc
            metadata_max_age_ms=5_000,     # how soon a topic created after us is noticed
        )
        consumer.subscribe(list(self._topics))
        try:
            await consumer.start()
            initial = await _initial_assignment(consumer)
            if initial:
                await consumer.seek_to_end(*initial)
                for tp in initial:  # resolve now: "end" means the end at start-up
                    await consumer.position(tp)
            self._consumer = consumer
            self.ready.set()
            log.info("invalidation_consumer_started", partitions=len(initial))
            while True:
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    for record in records:
                        await self._handle(record)
        finally:
            self._consumer = None
            self.ready.clear()
            with suppress(Exception):
                await consumer.stop()

    async def _handle(self, record: Any) -> None:
        try:
            event = parse_event(record)
        except InvalidEvent as exc:
            log.warning("invalidation_event_invalid", topic=record.topic,
                        partition=record.partition, offset=record.offset, reason=str(exc))
            return
        self.events_seen += 1
        try:
            result = self._on_change(event.topic, event.subject, event.data)
            if inspect.isawaitable(result):
                await result
        except Exception:  # noqa: BLE001 — one bad eviction must not stop invalidation
            log.error("invalidation_failed", topic=event.topic, partition=event.partition,
                      offset=event.offset, exc_info=True)


async def _initial_assignment(consumer: AIOKafkaConsumer) -> set[TopicPartition]:
    """Partitions of the topics that exist now (none if none exist yet)."""
    topics = await consumer.topics()  # one metadata round trip: which of ours exist?
    wanted = {t for t in consumer.subscription() if t in topics}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _INITIAL_ASSIGNMENT_WAIT_S
    while loop.time() < deadline:
        assigned = consumer.assignment()
        if {tp.topic for tp in assigned} >= wanted:
            return set(assigned)
        await asyncio.sleep(0.02)
    return set(consumer.assignment())
