"""What a webhook body looks like, and what makes two events "the same transition".

The body is a CloudEvents 1.0 structured-mode JSON object (sent as
``content-type: application/json``)::

    {"specversion": "1.0", "id": "<ce_id>", "source": "<ce_source>",
     "type": "ampgate.passport.changed.v1", "subject": "<passport id | EVSE id>",
     "time": "<RFC 3339>", "datacontenttype": "application/json",
     "data": {<the event data exactly as on the topic (proto3 JSON)>}}

``id`` is also the ``webhook-id`` header, so receivers can deduplicate retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from services.common.timestamps import rfc3339

if TYPE_CHECKING:
    from services.common.events import ConsumedEvent


def _header(event: ConsumedEvent, name: str) -> str | None:
    value = event.headers.get(name)
    return value.decode("utf-8", "replace") if value is not None else None


def body(event: ConsumedEvent) -> bytes:
    time = _header(event, "ce_time") or rfc3339(event.time)
    doc: dict[str, Any] = {
        "specversion": "1.0",
        "id": event.id,
        "source": _header(event, "ce_source") or "",
        "type": event.type,
        "subject": event.subject,
        "time": time,
        "datacontenttype": "application/json",
        "data": event.data,
    }
    return orjson.dumps(doc)


def transition(event: ConsumedEvent) -> tuple[str, str, str] | None:
    """(key, previous_digest, digest) for change events, None for anything else.

    The key is the entity a digest belongs to: a price digest is per (EVSE, tariff
    context), a passport digest per passport."""
    data = event.data
    previous, digest = data.get("previous_digest") or "", data.get("digest") or ""
    if not isinstance(previous, str) or not isinstance(digest, str) or not (previous or digest):
        return None
    context = data.get("tariff_context") or ""
    return f"{event.type}\x1f{event.subject}\x1f{context}", previous, digest
