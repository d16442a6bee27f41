"""From consumed events to stored versions: the history worker's batch handler."""

from __future__ import annotations

import structlog
from aiohttp import web

from services.common.consumer import TransientError
from services.common.events import ConsumedEvent
from services.history.keys import METRICS_KEY, STORE_KEY
from services.history.store import StoreUnavailable
from services.history.versions import version_from_event

log = structlog.get_logger("ampgate.history")


async def handle_batch(app: web.Application, events: list[ConsumedEvent]) -> None:
    """Record a batch in one transaction. Data we cannot record raises BadEventData
    (dead-lettered by the runtime); a database that is away raises TransientError."""
    versions = [version_from_event(e) for e in events]
    try:
        stored = await app[STORE_KEY].record(versions)
    except StoreUnavailable as exc:
        raise TransientError(str(exc)) from exc
    metrics = app[METRICS_KEY]
    for v in stored:
        metrics.versions.labels(v.key.entity).inc()
    log.info("versions_recorded", events=len(events), recorded=len(stored),
             duplicates=len(events) - len(stored))
