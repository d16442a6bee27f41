"""Change events (DESIGN.md §7, §11): topics, the CloudEvents envelope and the
compiled contracts. Public names live here; see envelope.py, kinds.py and schemas.py."""

from services.common.events.envelope import (
    CE_SOURCE,
    CONTENT_TYPE,
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    PRICE_CE_TYPE,
    PRICE_TOPIC,
    TOPIC_CE_TYPES,
    ConsumedEvent,
    EventRecord,
    InvalidEvent,
    build_event,
    digest_of,
    parse_event,
    rfc3339,
)
from services.common.events.kinds import (
    CHANGE_KIND_UNSPECIFIED,
    DETECTION_UNSPECIFIED,
    DETECTIONS,
    ENTITIES,
    PASSPORT,
    PRICE,
    ChangeKind,
    Detection,
)

EVENT_TOPICS = (PASSPORT_TOPIC, PRICE_TOPIC)

# Dead-letter topics of the workers and the headers a dead-lettered copy carries
# (documented in proto-schemas/asyncapi.yaml).
HISTORY_DEAD_LETTER_TOPIC = "history-dead-letter"
WEBHOOKS_DEAD_LETTER_TOPIC = "webhooks-dead-letter"
DLQ_REASON = "dlq_reason"
DLQ_SOURCE_TOPIC = "dlq_source_topic"
DLQ_SOURCE_PARTITION = "dlq_source_partition"
DLQ_SOURCE_OFFSET = "dlq_source_offset"
DLQ_SERVICE = "dlq_service"

__all__ = [
    "CE_SOURCE",
    "CHANGE_KIND_UNSPECIFIED",
    "CONTENT_TYPE",
    "DETECTIONS",
    "DETECTION_UNSPECIFIED",
    "DLQ_REASON",
    "DLQ_SERVICE",
    "DLQ_SOURCE_OFFSET",
    "DLQ_SOURCE_PARTITION",
    "DLQ_SOURCE_TOPIC",
    "ENTITIES",
    "EVENT_TOPICS",
    "HISTORY_DEAD_LETTER_TOPIC",
    "PASSPORT",
    "PASSPORT_CE_TYPE",
    "PASSPORT_TOPIC",
    "PRICE",
    "PRICE_CE_TYPE",
    "PRICE_TOPIC",
    "TOPIC_CE_TYPES",
    "WEBHOOKS_DEAD_LETTER_TOPIC",
    "ChangeKind",
    "ConsumedEvent",
    "Detection",
    "EventRecord",
    "InvalidEvent",
    "build_event",
    "digest_of",
    "parse_event",
    "rfc3339",
]
