"""The history service's app factory: it only wires."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.auth import Authenticator
from services.common.consumer import EventConsumer, attach_consumer
from services.common.events import HISTORY_DEAD_LETTER_TOPIC, PASSPORT_TOPIC, PRICE_TOPIC
from services.common.http import READINESS_KEY, base_app
from services.common.settings import Settings
from services.history.ingest import handle_batch
from services.history.keys import AUTH_KEY, METRICS_KEY, SETTINGS_KEY, STORE_KEY
from services.history.metrics import HistoryMetrics
from services.history.routes import add_routes
from services.history.store import open_store

log = structlog.get_logger("ampgate.history")

SERVICE = "history"
GROUP_ID = "ampgate-history"
DEAD_LETTER_TOPIC = HISTORY_DEAD_LETTER_TOPIC
# Records per batch unless AMPGATE_CONSUMER__BATCH_SIZE says otherwise: a batch costs a
# transaction, a lookup of the known ids and latest versions, a commit to Kafka; 2,000
# spreads that over four times as many events as the general default (500).
BATCH_SIZE = 2000


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = open_store(app[SETTINGS_KEY].history_database_url)
    await store.open()
    app[STORE_KEY] = store
    app[READINESS_KEY]["database"] = lambda: (True, {"status": "ok", "dialect": store.dialect})
    log.info("history_store_opened", dialect=store.dialect)
    yield
    await store.close()


def create_app(settings: Settings, registry: CollectorRegistry | None = None, *,
               consume: bool = True) -> web.Application:
    """``consume=False`` serves the API over the store without a Kafka consumer."""
    registry = registry or CollectorRegistry()
    app = base_app(registry)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = HistoryMetrics(registry)
    app[AUTH_KEY] = Authenticator(settings.clients)  # the gateway's clients and scopes
    app.cleanup_ctx.append(store_ctx)  # before the consumer: opened first, closed last
    if consume:
        attach_consumer(app, EventConsumer(
            SERVICE, GROUP_ID, [PASSPORT_TOPIC, PRICE_TOPIC], settings,
            partial(handle_batch, app), registry, dead_letter_topic=DEAD_LETTER_TOPIC,
            batch_size=BATCH_SIZE))
    add_routes(app)
    return app
