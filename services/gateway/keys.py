"""Typed application keys: all gateway state lives on the app under these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from services.common.outbox import Outbox
from services.common.settings import CachePolicy, Settings
from services.gateway.auth import Authenticator
from services.gateway.cache import ResponseCache
from services.gateway.changes import ChangeDetector
from services.gateway.eviction import EvictedHere
from services.gateway.invalidation import InvalidationConsumer
from services.gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from services.gateway.cluster import Channels, ClusterMetrics, ClusterStore
    from services.gateway.hot_path import HitRoutes  # it imports these keys
    from services.gateway.upstreams import Upstreams  # it imports these keys


@dataclass(frozen=True, slots=True)
class Cluster:
    """Cluster mode's shared pieces for one replica (DESIGN.md §12), built by ``cluster_ctx``
    in services/gateway/app.py; ``app[CLUSTER_KEY]`` is None in single-replica mode.

    ``channels`` subscribes to a fixed list of channels, chosen in ``cluster_ctx``."""

    store: ClusterStore
    channels: Channels
    replica_id: str
    metrics: ClusterMetrics
    lease_s: float  # settings.cluster.lease_s: the poller leases' ttl

SETTINGS_KEY = web.AppKey("settings", Settings)
METRICS_KEY = web.AppKey("gateway_metrics", GatewayMetrics)
AUTH_KEY = web.AppKey("authenticator", Authenticator)
SESSION_KEY = web.AppKey("client_session", aiohttp.ClientSession)
UPSTREAMS_KEY: web.AppKey[Upstreams] = web.AppKey("upstreams")
CACHE_KEY = web.AppKey("cache", ResponseCache)
EVICTED_HERE_KEY = web.AppKey("evicted_here", EvictedHere)  # events announced + evicted here
OUTBOX_KEY = web.AppKey("outbox", Outbox)
# The consumer that reads every change event and evicts (its ``events_seen``: how far it is).
INVALIDATION_KEY = web.AppKey("invalidation_consumer", InvalidationConsumer)
DETECTOR_KEY = web.AppKey("change_detector", ChangeDetector)
# (param, value) of an authentication medium -> tariff context name, for naming price events.
CONTEXTS_KEY: web.AppKey[dict[tuple[str, str], str]] = web.AppKey("tariff_contexts_by_medium")
# route name -> CachePolicy, resolved once at start-up (a hit must not build models).
POLICIES_KEY: web.AppKey[dict[str, CachePolicy]] = web.AppKey("cache_policies")
# Cluster (above) in cluster mode, None in single-replica mode (settings.cluster.redis_url unset).
CLUSTER_KEY: web.AppKey[Cluster | None] = web.AppKey("cluster")
# The routes whose cached answer depends on the path alone, matched from the raw path:
# what the fused hit path (hot_path.py, in front of aiohttp's router) may answer.
HIT_ROUTES_KEY: web.AppKey[HitRoutes] = web.AppKey("hit_routes")
