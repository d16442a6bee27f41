"""The gateway's durable outbox (``store``: events wait in SQLite until Kafka has them)
and the publisher that drains it to Kafka (``publisher``)."""

from services.common.outbox.publisher import OutboxPublisher, PublisherMetrics
from services.common.outbox.store import DB_FILENAME, Outbox, outbox_path

__all__ = ["DB_FILENAME", "Outbox", "OutboxPublisher", "PublisherMetrics", "outbox_path"]
