"""The webhooks worker's app factory: wiring only.

Start order (cleanup contexts, torn down in reverse): queue store → delivery engine
(workers + dead-letter publisher) → consumer. On SIGTERM the consumer stops first
(finishes and commits its batch, leaves the group), then in-flight deliveries get a
short grace period, then the queue is closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.consumer import EventConsumer, attach_consumer
from services.common.events import PASSPORT_TOPIC, PRICE_TOPIC
from services.common.http import READINESS_KEY, base_app
from services.common.settings import Settings
from services.webhooks.dead_letter import DEAD_LETTER_TOPIC, KafkaDeadLetterSink
from services.webhooks.engine import CONCURRENCY, WebhookEngine
from services.webhooks.keys import ENGINE_KEY, METRICS_KEY, SETTINGS_KEY, STORE_KEY
from services.webhooks.metrics import WebhookMetrics
from services.webhooks.store import JobStore

SERVICE = "webhooks"
GROUP_ID = "ampgate-webhooks"
QUEUE_FILE = "webhooks.sqlite3"


async def store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[STORE_KEY]
    store.open()
    yield
    store.close()


async def engine_ctx(app: web.Application) -> AsyncIterator[None]:
    engine = app[ENGINE_KEY]
    await engine.start()
    yield
    await engine.stop()


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None,
               concurrency: int = CONCURRENCY, group_id: str = GROUP_ID) -> web.Application:
    registry = registry or CollectorRegistry()
    app = base_app(registry)
    metrics = WebhookMetrics(registry)
    store = JobStore(settings.state_dir / QUEUE_FILE)
    sink = KafkaDeadLetterSink(settings.kafka)
    engine = WebhookEngine(settings.webhooks, store, sink, metrics, concurrency=concurrency,
                           dead_letter_topic=DEAD_LETTER_TOPIC, close_sink=sink.close)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics
    app[STORE_KEY] = store
    app[ENGINE_KEY] = engine
    app[READINESS_KEY]["webhooks"] = engine.status
    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.append(engine_ctx)
    attach_consumer(app, EventConsumer(SERVICE, group_id, [PASSPORT_TOPIC, PRICE_TOPIC], settings,
                                       engine.handle_batch, registry,
                                       dead_letter_topic=DEAD_LETTER_TOPIC))
    return app
