"""The gateway's app factory: it only wires (settings → resources → routes)."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.events import EVENT_TOPICS
from services.common.http import READINESS_KEY, REGISTRY_KEY, base_app
from services.common.outbox import Outbox, OutboxPublisher, outbox_path
from services.common.redis_security import redis_options
from services.common.runner import FRONT_HANDLER_KEY
from services.common.settings import Settings
from services.gateway.auth import Authenticator
from services.gateway.cache import ResponseCache
from services.gateway.changes import ChangeDetector
from services.gateway.claims import CLAIM_FAULT_KEY, Claimer
from services.gateway.cluster import (
    Channels,
    ClusterMetrics,
    ClusterStore,
    SharedCache,
    SharedDigests,
)
from services.gateway.cluster import shared_cache as shared_cache_module
from services.gateway.cluster import tokens as shared_tokens_module
from services.gateway.docs import add_docs_routes
from services.gateway.eviction import CACHE_TOPIC, EvictedHere, evict_change, evict_event
from services.gateway.hot_path import front_handler
from services.gateway.invalidation import InvalidationConsumer
from services.gateway.keys import (
    AUTH_KEY,
    CACHE_KEY,
    CLUSTER_KEY,
    CONTEXTS_KEY,
    DETECTOR_KEY,
    EVICTED_HERE_KEY,
    HIT_ROUTES_KEY,
    INVALIDATION_KEY,
    METRICS_KEY,
    OUTBOX_KEY,
    POLICIES_KEY,
    SETTINGS_KEY,
    UPSTREAMS_KEY,
    Cluster,
)
from services.gateway.metrics import GatewayMetrics
from services.gateway.openapi import openapi_handler
from services.gateway.pollers import PassportPoller, PricePoller, SharedMembers, run_leased
from services.gateway.routes import ROUTES, hit_routes, register
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
    app[CLUSTER_KEY] = None
    app[HIT_ROUTES_KEY] = hit_routes(app[POLICIES_KEY])
    # In front of aiohttp's router and middleware: a fresh hit ends there (hot_path.py).
    app[FRONT_HANDLER_KEY] = front_handler
    if settings.cluster.redis_url:
        app.middlewares.append(settle_evictions)
    app.cleanup_ctx.extend([
        cluster_ctx,
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


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


async def cluster_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cluster mode (DESIGN.md §12): the Redis store, the one pub/sub connection and the
    cluster metrics of this replica, as ``app[CLUSTER_KEY]``; None (and nothing started)
    when ``settings.cluster.redis_url`` is unset. A Redis that is down at start-up does
    not stop the gateway: the store starts "down" and comes up by itself."""
    settings = app[SETTINGS_KEY]
    url = settings.cluster.redis_url
    if not url:
        yield
        return
    rid = replica_id()
    metrics = ClusterMetrics(app[REGISTRY_KEY])
    store = ClusterStore(url, namespace=settings.cluster.key_prefix,
                         timeout_s=settings.cluster.timeout_s,
                         on_state=metrics.store_state,
                         on_call=metrics.observe_call,
                         client_name=f"ampgate-gateway-{rid}"[:64],
                         connection_options=redis_options(settings.cluster, url))
    await store.start()
    channels = Channels(store, [shared_tokens_module.channel(store),
                                *shared_cache_module.channels(store)])
    await channels.start()
    app[CLUSTER_KEY] = Cluster(store=store, channels=channels, replica_id=rid, metrics=metrics,
                               lease_s=settings.cluster.lease_s)
    # Redis down: still serving (memory tier, local tokens), so still ready; the state
    # is reported for operators and alerts.
    app[READINESS_KEY]["cluster"] = lambda: (True, "ok" if store.is_up else "degraded")
    log.info("cluster_mode", replica_id=rid, store_up=store.is_up)
    yield
    await channels.stop()
    await store.close()


def _fill_lock_ttl_s(settings: Settings) -> float:
    """How long one replica's fill may hold a key cluster-wide: the slowest upstream's
    request timeout (its retries stay inside it), plus a second."""
    return max(s.timeout_s for s in (settings.passport, settings.cpo, settings.pricing)
               if s is not None) + 1.0


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, cluster = app[SETTINGS_KEY], app[CLUSTER_KEY]
    shared = None
    if cluster is not None:
        shared = SharedCache(cluster.store, cluster.channels, replica_id=cluster.replica_id)
    cache = ResponseCache(settings.cache.max_bytes, app[METRICS_KEY], shared=shared,
                          fill_lock_ttl_s=_fill_lock_ttl_s(settings))
    if cluster is not None:
        cluster.store.add_state_listener(cache.store_state)
    app[CACHE_KEY] = cache
    app[EVICTED_HERE_KEY] = EvictedHere()
    yield
    await cache.close()
    if shared is not None:
        await shared.close()


@web.middleware
async def settle_evictions(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                           ) -> web.StreamResponse:
    """Cluster mode: a write answers once its cache evictions reached Redis (and so every
    replica's subscription), so the next read anywhere sees it. Reads never wait here."""
    response = await handler(request)
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        await request.app[CACHE_KEY].settled()
    return response


async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS_KEY]
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(outbox_path(settings.state_dir))
    outbox.open()
    outbox.start_writer()  # group commit: writes await their commit (changes.settled)
    app[OUTBOX_KEY] = outbox
    cache = app[CACHE_KEY]
    cluster = app[CLUSTER_KEY]
    claimer = None
    if cluster is not None:  # each transition announced once cluster-wide (claims.py)
        claimer = Claimer(outbox, SharedDigests(cluster.store),
                          after_claim=app.get(CLAIM_FAULT_KEY))
    app[DETECTOR_KEY] = ChangeDetector(outbox, app[METRICS_KEY],
                                       on_change=lambda *change: evict_change(
                                           cache, *change, evicted_here=app[EVICTED_HERE_KEY]),
                                       claims=claimer)
    if claimer is not None:
        await claimer.start()  # decides what a previous run left unclaimed: before the relay
        detector = app[DETECTOR_KEY]
        await claimer.seed_now(detector.shared_digests())
        # A store back up may be empty (flushed, replaced): seed what this replica knows.
        cluster.store.add_state_listener(
            lambda up: claimer.seed(detector.shared_digests()) if up else None)
    yield
    if claimer is not None:
        await claimer.stop()
    outbox.close()


async def publisher_ctx(app: web.Application) -> AsyncIterator[None]:
    publisher = OutboxPublisher(app[OUTBOX_KEY], app[SETTINGS_KEY].kafka, app[METRICS_KEY],
                                topics=(*EVENT_TOPICS, CACHE_TOPIC))
    await publisher.start()
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
        app[SETTINGS_KEY].kafka, lambda topic, key, data: evict_event(cache, topic, key, data),
        evicted_here=app[EVICTED_HERE_KEY])
    app[INVALIDATION_KEY] = consumer
    await consumer.start()
    yield
    await consumer.stop()


async def pollers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, upstreams, detector = app[SETTINGS_KEY], app[UPSTREAMS_KEY], app[DETECTOR_KEY]
    cluster = app[CLUSTER_KEY]
    shared = SharedMembers(cluster.store) if cluster is not None else None
    pollers: list[tuple[PassportPoller | PricePoller, float]] = []
    if settings.poll.passports_interval_s > 0:
        pollers.append((PassportPoller(upstreams.passport, settings, detector, shared=shared),
                        settings.poll.passports_interval_s))
    if settings.poll.prices_interval_s > 0 and settings.tariff_contexts:
        pollers.append((PricePoller(upstreams.pricing, settings, detector, shared=shared),
                        settings.poll.prices_interval_s))
    tasks = []
    for poller, interval_s in pollers:
        if cluster is None:
            work = poller.run_forever(interval_s)
        else:  # one replica per poller at a time (pollers.run_leased)
            work = run_leased(poller, interval_s, cluster, settings.cluster.lease_s)
        tasks.append(asyncio.create_task(work, name=f"poller-{poller.name}"))
    yield
    for task in tasks:
        task.cancel()
    # Bounded: a poller that does not stop must not hold up the outbox drain after it (seen
    # once in CI: a leased price poller kept polling after its cancel; cause not found yet).
    _, stuck = await asyncio.wait(tasks, timeout=5) if tasks else (set(), set())
    for task in stuck:
        log.error("poller_did_not_stop", task=task.get_name())
