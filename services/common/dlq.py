"""``ampgate dlq replay --topic <dead-letter topic>`` (DESIGN.md §7): dead letters back to
the topic they came from, once the reason they could not be applied is fixed.

Each dead letter goes to its ``dlq_source_topic`` with its key, value and original
headers (``ce_*``, ``content-type``); the ``dlq_*`` headers are dropped. The replay reads
with a group of its own per dead-letter topic and commits only after the broker has
acknowledged every republished record, so a second replay sends only dead letters that
arrived since (a crash in between sends some again: consumers are idempotent).

Before anything is sent every record is checked: a topic whose records have no
``dlq_source_topic`` is not a dead-letter topic, and nothing is replayed from it.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from services.common.consumer.dead_letter import without_dead_letter_headers
from services.common.errors import AmpgateError
from services.common.events import DLQ_SOURCE_TOPIC, EVENT_TOPICS
from services.common.kafka import make_producer
from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings

# How long a fetch may come back empty before the topic counts as read to its end.
IDLE_S = 1.0
REQUEST_TIMEOUT_S = 10.0


class ReplayError(AmpgateError):
    """Bad input (no such topic, not a dead-letter topic); the message is one line."""


def replay_group(topic: str) -> str:
    return f"ampgate-dlq-replay.{topic}"


async def replay(settings: KafkaSettings, topic: str, *, idle_s: float = IDLE_S) -> int:
    """Republish the dead letters of ``topic`` not replayed before; return how many."""
    if topic in EVENT_TOPICS:
        raise ReplayError(f"{topic} is an event topic, not a dead-letter topic")
    consumer = AIOKafkaConsumer(
        **client_options(settings), client_id=f"{settings.client_id}-dlq-replay",
        group_id=replay_group(topic), enable_auto_commit=False, auto_offset_reset="earliest",
        request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000))
    await consumer.start()
    try:
        # All topics' metadata: naming the topic could make the broker create it.
        if topic not in await consumer.topics():
            raise ReplayError(f"no such topic: {topic}")
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        records = await _read_to_end(consumer, idle_s)
        for r in records:
            if DLQ_SOURCE_TOPIC not in dict(r.headers or ()):
                raise ReplayError(f"{topic} is not a dead-letter topic: record {r.partition}/"
                                  f"{r.offset} has no {DLQ_SOURCE_TOPIC} header")
        if not records:
            return 0
        producer = make_producer(settings, request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000))
        await producer.start()
        try:
            sends = []
            for r in records:
                headers = without_dead_letter_headers(r.headers)
                source = dict(r.headers)[DLQ_SOURCE_TOPIC].decode()
                sends.append(await producer.send(source, value=r.value, key=r.key,
                                                 headers=headers))
            await asyncio.gather(*sends)
        finally:
            await producer.stop()
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(last.get(tp, 0), r.offset + 1)
        await consumer.commit(last)
        return len(records)
    finally:
        await consumer.stop()


async def _read_to_end(consumer: AIOKafkaConsumer, idle_s: float) -> list[ConsumerRecord]:
    """Everything after the group's last commit, until fetches stay empty for ``idle_s``
    (tansu's end offsets are not exact, an empty fetch is)."""
    records: list[ConsumerRecord] = []
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while loop.time() - quiet_since < idle_s:
        batch = await consumer.getmany(timeout_ms=200)
        for tp in sorted(batch, key=lambda tp: tp.partition):
            if batch[tp]:
                records.extend(batch[tp])
                quiet_since = loop.time()
    return records
