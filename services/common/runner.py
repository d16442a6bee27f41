"""Running a service's aiohttp app: the one place that picks the event loop."""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.common.settings import HttpSettings


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (libuv's loop roughly halves asyncio's share of a cache hit),
    else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def serve(app: web.Application, http: HttpSettings, *, shutdown_timeout: float = 10) -> None:
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(app, host=http.host, port=http.port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=shutdown_timeout, loop=loop)
