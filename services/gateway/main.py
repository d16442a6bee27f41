"""`ampgate gateway`."""

from __future__ import annotations

from aiohttp import web

from services.common.settings import Settings
from services.gateway.app import create_app


def run(settings: Settings) -> None:
    app = create_app(settings)
    web.run_app(app, host=settings.http.host, port=settings.http.port, print=None,
                access_log=None, handle_signals=True, shutdown_timeout=10)
