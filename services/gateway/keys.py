"""Typed application keys: all gateway state lives on the app under these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from services.common.settings import Settings
from services.gateway.auth import Authenticator
from services.gateway.metrics import GatewayMetrics

if TYPE_CHECKING:
    from services.gateway.upstreams import Upstreams

SETTINGS_KEY = web.AppKey("settings", Settings)
METRICS_KEY = web.AppKey("gateway_metrics", GatewayMetrics)
AUTH_KEY = web.AppKey("authenticator", Authenticator)
SESSION_KEY = web.AppKey("client_session", aiohttp.ClientSession)
UPSTREAMS_KEY: web.AppKey[Upstreams] = web.AppKey("upstreams")
CACHE_KEY: web.AppKey[Any] = web.AppKey("cache")
OUTBOX_KEY: web.AppKey[Any] = web.AppKey("outbox")
DETECTOR_KEY: web.AppKey[Any] = web.AppKey("change_detector")
PUBLISHER_KEY: web.AppKey[Any] = web.AppKey("outbox_publisher")
# (param, value) of an authentication medium -> tariff context name, for naming price events.
CONTEXTS_KEY = web.AppKey("tariff_contexts_by_medium", dict)
# route name -> CachePolicy, resolved once at start-up (a hit must not build models).
POLICIES_KEY = web.AppKey("cache_policies", dict)
