"""Cache invalidation across replicas: every replica reads every change event.

Each gateway replica reads both change topics, and the gateway's internal
``gateway-cache-invalidation`` topic, WITHOUT a consumer group: it assigns itself every
partition, so each replica sees each record and there is nothing to commit. For every
record it calls ``on_change(topic, key, data)``; services.gateway.eviction says what that
evicts. Change events are CloudEvents (parsed and checked); records of the internal
topic are a plain JSON object ``{"tags": [...]}`` keyed by what they evict.

Which partitions: found by asking the broker for ALL topics' metadata (an admin
``describe_topics(None)``), never by naming ours — naming a missing topic makes Kafka and
tansu auto-create it with the broker's default partition count, racing the gateway's own
creation (``AMPGATE_KAFKA__PARTITIONS``). Topics missing at start are looked for again
every second; once all are there, every 30 s (partitions added later).

Where reading starts:
* partitions found by the first look: their END (DESIGN.md §11: the invalidation consumer
  reads from the latest — a fresh replica's cache is empty, old events evict nothing);
* partitions found later (a topic created after we started): their BEGINNING — all of it
  was published after we started;
* after a reconnect: where we were (positions are kept across reconnects);
* an offset out of range (retention overtook us), or beyond a partition's end (tansu
  restarted empty; it answers no error there, so we compare with the end offsets every
  2 s): the beginning.
Evicting twice is harmless; missing an eviction serves a stale document.

The broker may be down when the gateway starts: ``start()`` returns at once and a
background task keeps trying (jittered backoff), never blocking start-up.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Container
from contextlib import suppress
from typing import Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from services.common.events import PASSPORT_TOPIC, PRICE_TOPIC, InvalidEvent, parse_event
from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings
from services.gateway.eviction import CACHE_TOPIC

log = structlog.get_logger(__name__)

OnChange = Callable[[str, str, dict[str, Any]], Awaitable[None] | None]
TOPICS = (PASSPORT_TOPIC, PRICE_TOPIC, CACHE_TOPIC)
_LOOK_MISSING_S = 1.0
_LOOK_COMPLETE_S = 30.0
_CHECK_ENDS_S = 2.0


class InvalidationConsumer:
    def __init__(self, settings: KafkaSettings, on_change: OnChange, *,
                 topics: tuple[str, ...] = TOPICS, cache_topic: str = CACHE_TOPIC,
                 retry_max_s: float = 10.0,
                 evicted_here: Container[str] = frozenset()) -> None:
        self._settings = settings
        self._on_change = on_change
        # Ids of events this replica announced and evicted for already (eviction.EvictedHere).
        self._evicted_here = evicted_here
        self._topics = tuple(topics)
        self._cache_topic = cache_topic
        self._retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None
        # next offset to read per partition; kept across reconnects
        self._positions: dict[TopicPartition, int] = {}
        self._first_look_done = False
        self.ready = asyncio.Event()  # set while connected and positioned
        self.events_seen = 0

    @property
    def connected(self) -> bool:
        return self.ready.is_set()

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
            retry=retry_if_exception_type(Exception),  # never give up; not CancelledError
            before_sleep=lambda s: log.warning(
                "invalidation_consumer_retry", attempt=s.attempt_number,
                error=type(s.outcome.exception()).__name__ if s.outcome else None),
        )
        async for attempt in retrying:
            with attempt:
                await self._consume()

    async def _consume(self) -> None:
        common = {**client_options(self._settings),
                  "client_id": f"{self._settings.client_id}-invalidation"}
        consumer = AIOKafkaConsumer(**common, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest")  # see module doc
        admin = AIOKafkaAdminClient(**common)
        loop = asyncio.get_running_loop()
        try:
            await consumer.start()
            await admin.start()
            assigned: frozenset[TopicPartition] = frozenset()
            next_look = next_check = 0.0
            while True:
                if loop.time() >= next_look:
                    found = await self._look(admin)
                    if found is not None:
                        if found != assigned:
                            await self._assign(consumer, found)
                            assigned = found
                        self._first_look_done = True
                    if found is not None and not self.ready.is_set():
                        self.ready.set()
                        log.info("invalidation_consumer_started", partitions=len(assigned))
                    complete = {tp.topic for tp in assigned} >= set(self._topics)
                    next_look = loop.time() + (_LOOK_COMPLETE_S if complete else _LOOK_MISSING_S)
                if not assigned:
                    await asyncio.sleep(max(0.0, min(next_look - loop.time(), _LOOK_MISSING_S)))
                    continue
                if loop.time() >= next_check:
                    await self._rewind_if_truncated(consumer, assigned)
                    next_check = loop.time() + _CHECK_ENDS_S
                batches = await consumer.getmany(timeout_ms=500)
                for tp, records in batches.items():
                    for record in records:
                        await self._handle(record)
                    self._positions[tp] = records[-1].offset + 1
        finally:
            self.ready.clear()
            with suppress(Exception):
                await admin.close()
            with suppress(Exception):
                await consumer.stop()

    async def _look(self, admin: AIOKafkaAdminClient) -> frozenset[TopicPartition] | None:
        """Partitions of our topics that exist now; None if the broker could not say."""
        try:
            described = await admin.describe_topics(None)  # all topics: creates none
        except KafkaError as exc:
            log.warning("invalidation_topics_unknown", error=type(exc).__name__)
            return None
        return frozenset(
            TopicPartition(t["topic"], p["partition"])
            for t in described if t["topic"] in self._topics and not t.get("error_code")
            for p in t["partitions"])

    async def _assign(self, consumer: AIOKafkaConsumer, tps: frozenset[TopicPartition]) -> None:
        consumer.assign(list(tps))
        ends, beginnings = [], []
        for tp in tps:
            if tp in self._positions:
                consumer.seek(tp, self._positions[tp])
            elif not self._first_look_done:
                ends.append(tp)
            else:
                beginnings.append(tp)
        if ends:
            await consumer.seek_to_end(*ends)
        if beginnings:
            await consumer.seek_to_beginning(*beginnings)
        for tp in (*ends, *beginnings):  # resolve now: "the end" is the end at this moment
            self._positions[tp] = await consumer.position(tp)
        log.info("invalidation_partitions_assigned", partitions=len(tps),
                 from_end=len(ends), from_beginning=len(beginnings))

    async def _rewind_if_truncated(self, consumer: AIOKafkaConsumer,
                                   assigned: frozenset[TopicPartition]) -> None:
        """A partition whose end is now BEFORE our position was emptied (tansu restarted
        with nothing, the topic re-created): all of it is new to us — read it from the
        beginning. tansu does not answer OFFSET_OUT_OF_RANGE there, it just stays silent."""
        # The highwater of fetch responses, not ListOffsets: tansu answers ListOffsets with
        # the last batch's base offset + 1, which would look like a truncation after every
        # multi-record batch.
        behind = [tp for tp in assigned
                  if tp in self._positions and (hw := consumer.highwater(tp)) is not None
                  and hw < self._positions[tp]]
        if behind:
            log.warning("invalidation_partitions_truncated", partitions=len(behind))
            await consumer.seek_to_beginning(*behind)
            for tp in behind:
                self._positions[tp] = await consumer.position(tp)

    async def _handle(self, record: Any) -> None:
        # This replica's own announcement, evicted for already (see below): not even
        # parsed, which spares ~6 KB of JSON and a proto check for every write made here.
        if record.topic != self._cache_topic and self._announced_here(record):
            self.events_seen += 1
            return
        try:
            topic, key, data, event_id = self._parse(record)
        except InvalidEvent as exc:
            log.warning("invalidation_event_invalid", topic=record.topic,
                        partition=record.partition, offset=record.offset, reason=exc.reason)
            return
        self.events_seen += 1
        if event_id is not None and event_id in self._evicted_here:
            return  # evicted when announced here; again would drop the answer that showed it
        try:
            result = self._on_change(topic, key, data)
            if inspect.isawaitable(result):
                await result
        except Exception:  # one bad eviction must not stop invalidation
            log.exception("invalidation_failed", topic=record.topic, partition=record.partition,
                          offset=record.offset)

    def _announced_here(self, record: Any) -> bool:
        for name, value in record.headers or ():
            if name == "ce_id":
                try:
                    return value is not None and value.decode() in self._evicted_here
                except UnicodeDecodeError:
                    return False
        return False

    def _parse(self, record: Any) -> tuple[str, str, dict[str, Any], str | None]:
        if record.topic != self._cache_topic:
            event = parse_event(record)
            return event.topic, event.subject, event.data, event.id
        try:
            data = orjson.loads(record.value)
            key = record.key.decode() if record.key is not None else ""
        except (orjson.JSONDecodeError, UnicodeDecodeError, TypeError):
            raise InvalidEvent("not a JSON object with a UTF-8 key") from None
        if not isinstance(data, dict):
            raise InvalidEvent("not a JSON object")
        return record.topic, key, data, None
