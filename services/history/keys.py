"""Typed application keys of the history service (no string keys: STYLE.md)."""

from __future__ import annotations

from aiohttp import web

from services.common.auth import Authenticator
from services.common.settings import Settings
from services.history.metrics import HistoryMetrics
from services.history.store import HistoryStore

SETTINGS_KEY = web.AppKey("settings", Settings)
STORE_KEY = web.AppKey("store", HistoryStore)
METRICS_KEY = web.AppKey("metrics", HistoryMetrics)
AUTH_KEY = web.AppKey("authenticator", Authenticator)
