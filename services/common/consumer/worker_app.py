"""The workers' HTTP side: /healthz /readyz /metrics and the consumer's lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.consumer.runtime import EventConsumer
from services.common.http import READINESS_KEY, base_app
from services.common.runner import serve
from services.common.settings import Settings

CONSUMER_KEY = web.AppKey("consumer", EventConsumer)


async def _consumer_ctx(app: web.Application) -> AsyncIterator[None]:
    consumer = app[CONSUMER_KEY]
    await consumer.start()
    yield
    await consumer.stop()


def attach_consumer(app: web.Application, consumer: EventConsumer) -> None:
    """Start ``consumer`` with the app, stop it (gracefully) with the app, report it in
    /readyz. Add it AFTER the cleanup contexts of what its handler uses, so those are
    opened before and closed after it."""
    app[CONSUMER_KEY] = consumer
    app[READINESS_KEY]["consumer"] = consumer.status
    app.cleanup_ctx.append(_consumer_ctx)


def worker_app(registry: CollectorRegistry, consumer: EventConsumer) -> web.Application:
    """A bare worker: /healthz /readyz /metrics and the consumer's lifecycle."""
    app = base_app(registry)
    attach_consumer(app, consumer)
    return app


def run_worker(app: web.Application, settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT; the app's cleanup stops the consumer gracefully."""
    serve(app, settings.http, shutdown_timeout=5.0)
