"""The gateway's durable outbox (``store``: events wait in SQLite until Kafka has them)
and the publisher that drains it to Kafka (``publisher``)."""

from services.common.outbox.publisher import OutboxPublisher, PublisherMetrics
from services.common.outbox.store import DB_FILENAME, ClaimSpec, Outbox, UnclaimedRow, outbox_path

__all__ = ["DB_FILENAME", "ClaimSpec", "Outbox", "OutboxPublisher", "PublisherMetrics",
           "UnclaimedRow", "outbox_path"]
