"""Typed application keys of the webhooks worker (all of them, in one place)."""

from __future__ import annotations

from aiohttp import web

from services.common.settings import Settings
from services.webhooks.engine import WebhookEngine
from services.webhooks.metrics import WebhookMetrics
from services.webhooks.store import JobStore

SETTINGS_KEY = web.AppKey("settings", Settings)
METRICS_KEY = web.AppKey("webhook_metrics", WebhookMetrics)
STORE_KEY = web.AppKey("webhook_store", JobStore)
ENGINE_KEY = web.AppKey("webhook_engine", WebhookEngine)
