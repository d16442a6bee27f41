"""Dead letters: the original record (key, value, headers) plus ``dlq_*`` headers saying
why it could not be applied and where it came from.

The headers are built here, once, from the ``DLQ_*`` names of services.common.events:
the consumer runtime and the webhooks worker both send their dead letters with
``dead_letter_headers``; ``ampgate dlq replay`` drops them with ``without_dead_letter_headers``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaProducer, ConsumerRecord

from services.common.events import (
    DLQ_REASON,
    DLQ_SERVICE,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TOPIC,
)

DLQ_PREFIX = "dlq_"
# A reason longer than this is cut (a stack of nested errors must not bloat the record).
MAX_REASON_CHARS = 1000

Headers = list[tuple[str, bytes]]


def without_dead_letter_headers(headers: Iterable[tuple[str, bytes]] | None) -> Headers:
    """The record's own headers: those of an earlier dead-lettering dropped."""
    return [(k, v) for k, v in headers or () if not k.startswith(DLQ_PREFIX)]


def dead_letter_headers(
    original: Iterable[tuple[str, bytes]] | None,
    *,
    reason: str,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    service: str,
    extra: Mapping[str, str] | None = None,
) -> Headers:
    """The original headers (earlier ``dlq_*`` ones dropped), then ours; ``extra`` are
    further ``dlq_*`` headers of the caller's (the webhooks worker's subscription...)."""
    ours = {
        DLQ_REASON: reason,
        DLQ_SOURCE_TOPIC: source_topic,
        DLQ_SOURCE_PARTITION: str(source_partition),
        DLQ_SOURCE_OFFSET: str(source_offset),
        DLQ_SERVICE: service,
        **(extra or {}),
    }
    return without_dead_letter_headers(original) + [(k, v.encode()) for k, v in ours.items()]


async def send_dead_letter(producer: AIOKafkaProducer, topic: str, record: ConsumerRecord,
                           reason: str, service: str) -> None:
    """Send ``record`` to ``topic`` and wait for the broker's ack (raises if it fails)."""
    headers = dead_letter_headers(
        record.headers, reason=reason[:MAX_REASON_CHARS], source_topic=record.topic,
        source_partition=record.partition, source_offset=record.offset, service=service)
    await producer.send_and_wait(topic, value=record.value, key=record.key, headers=headers)
