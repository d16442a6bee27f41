"""The history service's routes (handlers in handlers.py)."""

from __future__ import annotations

from aiohttp import web

from services.history import handlers


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/passports/{passport_id}/history", handlers.passport_history,
                       name="passport_history")
    app.router.add_get("/v1/prices/{evse_id}/history", handlers.price_history,
                       name="price_history")
