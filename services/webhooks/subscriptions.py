"""Which subscriptions want an event, and how to name an endpoint in logs."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from services.common.settings import WebhookSubscription

if TYPE_CHECKING:
    from services.common.events import ConsumedEvent

ALL_EVENTS = "*"


def wants(subscription: WebhookSubscription, event: ConsumedEvent) -> bool:
    """Event type listed (or ``*``) and, when the subscription filters by entity, the
    event's subject (passport id / EVSE id) listed."""
    if ALL_EVENTS not in subscription.events and event.type not in subscription.events:
        return False
    return subscription.entity_ids is None or event.subject in subscription.entity_ids


def safe_endpoint(url: str) -> str:
    """``scheme://host:port`` only: paths may carry tokens, userinfo carries passwords."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
