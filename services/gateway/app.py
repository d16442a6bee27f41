"""The gateway's app factory: it only wires (settings → resources → routes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.events import EVENT_TOPICS
from services.common.http import READINESS_KEY, base_app
from services.common.outbox import Outbox, OutboxPublisher
from services.common.settings import Settings
from services.gateway.auth import Authenticator
from services.gateway.cache import ResponseCache
from services.gateway.changes import ChangeDetector
from services.gateway.docs import add_docs_routes
from services.gateway.eviction import CACHE_TOPIC, evict_change, evict_event
from services.gateway.invalidation import InvalidationConsumer
from services.gateway.keys import (
    AUTH_KEY,
    CACHE_KEY,
    CONTEXTS_KEY,
    DETECTOR_KEY,
    METRICS_KEY,
    OUTBOX_KEY,
    POLICIES_KEY,
    PUBLISHER_KEY,
    SETTINGS_KEY,
    UPSTREAMS_KEY,
)
from services.gateway.metrics import GatewayMetrics
from services.gateway.openapi import openapi_handler
from services.gateway.pollers import PassportPoller, PricePoller
from services.gateway.routes import ROUTES, register
from services.gateway.upstreams import http_session_ctx, upstreams_ctx

log = structlog.get_logger("ampgate.gateway")


def create_app(settings: Settings, *, registry: CollectorRegistry | None = None) -> web.Application:
    settings.require("passport", "cpo", "pricing")
    registry = registry or CollectorRegistry()
    app = base_app(registry, client_max_size=settings.http.max_body_bytes)
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = GatewayMetrics(
        registry, cache_routes=[r.name for r in ROUTES if r.cached])
    app[AUTH_KEY] = Authenticator(settings.clients)
    app[POLICIES_KEY] = {r.name: settings.cache.policy(r.name) for r in ROUTES if r.cached}
    app[CONTEXTS_KEY] = {
        next(iter(c.upstream_params().items())): c.name for c in settings.tariff_contexts
    }
    app.cleanup_ctx.extend([
        http_session_ctx,
        upstreams_ctx,
        cache_ctx,
        outbox_ctx,
        publisher_ctx,
        invalidation_ctx,
        pollers_ctx,
    ])
    app.router.add_get("/openapi.json", openapi_handler, name="openapi")
    add_docs_routes(app)
    register(app)
    return app


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    cache = ResponseCache(app[SETTINGS_KEY].cache.max_bytes, app[METRICS_KEY])
    app[CACHE_KEY] = cache
    yield
    await cache.close()


async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(settings.state_dir / "gateway.sqlite3")
    outbox.open()
    app[OUTBOX_KEY] = outbox
    cache = app[CACHE_KEY]
    app[DETECTOR_KEY] = ChangeDetector(outbox, app[METRICS_KEY],
                                       on_change=lambda *change: evict_change(cache, *change))
    yield
    outbox.close()


async def publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    publisher = OutboxPublisher(app[OUTBOX_KEY], app[SETTINGS_KEY].kafka, app[METRICS_KEY],
                                topics=(*EVENT_TOPICS, CACHE_TOPIC))
    await publisher.start()
    app[PUBLISHER_KEY] = publisher
    # Kafka down makes the publisher degraded, not the gateway unready: events wait.
    app[READINESS_KEY]["publisher"] = lambda: (True, publisher.status()[1])
    yield
    # Shutdown: the listener is closed and the pollers are stopped by now (cleanup runs
    # in reverse order), so nothing adds events: drain, bounded by the grace.
    await publisher.drain(app[SETTINGS_KEY].shutdown.grace_s)


async def invalidation_ctx(app: web.Application) -> AsyncIterator[None]:
    """Every replica evicts what any replica (or poller) saw change, its own events too."""
    cache = app[CACHE_KEY]
    consumer = InvalidationConsumer(
        app[SETTINGS_KEY].kafka, lambda topic, key, data: evict_event(cache, topic, key, data))
    await consumer.start()
    yield
    await consumer.stop()


async def pollers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, upstreams, detector = app[SETTINGS_KEY], app[UPSTREAMS_KEY], app[DETECTOR_KEY]
    tasks = []
    if settings.poll.passports_interval_s > 0:
        poller = PassportPoller(upstreams.passport, settings, detector)
        tasks.append(asyncio.create_task(poller.run_forever(settings.poll.passports_interval_s)))
    if settings.poll.prices_interval_s > 0 and settings.tariff_contexts:
        poller = PricePoller(upstreams.pricing, settings, detector)
        tasks.append(asyncio.create_task(poller.run_forever(settings.poll.prices_interval_s)))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with suppress(asyncio.CancelledError):
            await task
