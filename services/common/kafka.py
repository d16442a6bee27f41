"""Kafka topics and producers, as every service makes them: ``ensure_topics`` creates
what is missing (never by naming topics in a metadata request, which would auto-create
them), ``make_producer`` builds a producer with acks=all and the configured idempotence.
The gateway's outbox publisher is in services.common.outbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from services.common.errors import AmpgateError
from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings

log = structlog.get_logger("ampgate.kafka")

_TOPIC_ALREADY_EXISTS = 36


class TopicsMissing(AmpgateError, KafkaError):
    """Topics do not exist and ``AMPGATE_KAFKA__CREATE_TOPICS`` is false."""

    def __str__(self) -> str:
        return str(self.args[0])


async def ensure_topics(
    kafka: KafkaSettings | str,
    topics: Sequence[str],
    partitions: int | None = None,
    replication: int | None = None,
    *,
    request_timeout_s: float = 10.0,
) -> list[str]:
    """Create the missing topics, accept existing ones; return the names created.

    ``kafka``: the settings (address, TLS/SASL, ``create_topics``), or a plaintext bootstrap
    address. With ``create_topics`` false nothing is created: a missing topic raises
    ``TopicsMissing`` naming it (the publisher and the consumers report it in /readyz)."""
    settings = kafka if isinstance(kafka, KafkaSettings) else KafkaSettings(bootstrap_servers=kafka)
    partitions = settings.partitions if partitions is None else partitions
    replication = settings.replication_factor if replication is None else replication
    admin = AIOKafkaAdminClient(
        **client_options(settings), request_timeout_ms=int(request_timeout_s * 1000)
    )
    await admin.start()
    try:
        # Metadata for ALL topics: naming topics would let the broker auto-create them.
        existing = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(None)}
        for name in topics:
            if name in existing and existing[name] < partitions:
                log.warning("topic_has_fewer_partitions", topic=name,
                            partitions=existing[name], wanted=partitions)
        missing = [name for name in topics if name not in existing]
        if not missing:
            return []
        if not settings.create_topics:
            raise TopicsMissing(f"missing topics {', '.join(missing)} "
                                "(AMPGATE_KAFKA__CREATE_TOPICS=false: create them on the cluster)")
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication) for name in missing]
        )
        created = []
        for name, code, message in response.topic_errors:
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:  # a concurrent creator won: fine
                raise KafkaError(f"create topic {name}: error {code} {message or ''}".strip())
        if created:
            log.info("topics_created", topics=created, partitions=partitions)
        return created
    finally:
        await admin.close()


def make_producer(settings: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """acks=all; idempotence as configured (off for brokers without it, e.g. tansu)."""
    options: dict[str, Any] = {
        **client_options(settings),
        "client_id": settings.client_id,
        "acks": "all",
        "enable_idempotence": settings.enable_idempotence,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)
