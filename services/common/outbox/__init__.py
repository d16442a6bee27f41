"""The gateway's durable outbox (``store``: events wait in SQLite until Kafka has them),
its group commit (``writer``: one thread, many jobs per transaction) and the publisher
that drains it to Kafka (``publisher``)."""

from services.common.outbox.publisher import (
    PUBLISHER_BATCH_BYTES,
    OutboxPublisher,
    PublisherMetrics,
)
from services.common.outbox.store import DB_FILENAME, ClaimSpec, Outbox, UnclaimedRow, outbox_path

__all__ = ["DB_FILENAME", "PUBLISHER_BATCH_BYTES", "ClaimSpec", "Outbox", "OutboxPublisher",
           "PublisherMetrics", "UnclaimedRow", "outbox_path"]
