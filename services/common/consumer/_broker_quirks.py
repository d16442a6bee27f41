"""Workarounds for tansu (the dev and test broker), in one place. Each is harmless on
Kafka, so the runtime applies them whatever the broker.

* A topic auto-created by a metadata request gets the broker's default partition count,
  and records produced before the topic exists may never be readable: topics are
  created before subscribing (``ensure_topics_first``).
* tansu numbers the first group generation 0 and aiokafka leaves a group only from
  generation > 0, so a stopped member would hold its partitions until its session times
  out: ``generation_zero_member`` tells, ``leave_group`` says goodbye ourselves.
* tansu answers the requests of one connection in order, so a ListOffsets on the group
  consumer's connection waits behind its long-polling Fetch (lag uses a client of its
  own), and its ListOffsets answers the last batch's base offset + 1 (lag keeps the
  highest end it has seen; see ``lag.Lag.raise_end``).
* tansu also waits half the session timeout before answering a JoinGroup (see the
  session timeout in ``runtime``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

from services.common.kafka import ensure_topics
from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings

log = structlog.get_logger("ampgate.consumer")


async def ensure_topics_first(kafka: KafkaSettings, topics: Sequence[str],
                              timeout_s: float) -> None:
    """Create missing topics before subscribing."""
    await asyncio.wait_for(
        ensure_topics(kafka, topics, kafka.partitions,
                      kafka.replication_factor, request_timeout_s=timeout_s),
        timeout_s + 1)


def generation_zero_member(consumer: AIOKafkaConsumer) -> str | None:
    """The member id if the consumer joined generation 0 (tansu), else None."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or getattr(coordinator, "generation", None) != 0:
        return None
    member_id = getattr(coordinator, "member_id", "")
    return member_id or None


async def leave_group(kafka: KafkaSettings, service: str, group_id: str, member_id: str,
                      timeout_s: float) -> None:
    """Leave ``group_id`` as ``member_id`` (best effort, like aiokafka's own)."""
    client = AIOKafkaClient(**client_options(kafka), client_id=f"{kafka.client_id}-{service}")
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        node = await asyncio.wait_for(
            client.coordinator_lookup(CoordinationType.GROUP, group_id), timeout_s)
        await asyncio.wait_for(
            client.send(node, LeaveGroupRequest(group_id, member_id)), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.debug("leave_group_failed", service=service, error=str(exc))
    finally:
        await client.close()
