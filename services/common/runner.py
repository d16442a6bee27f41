"""Running a service's aiohttp app (``serve``) or a command's coroutine (``run``): the one
place that picks the event loop. Every ``ampgate`` service starts through ``serve``."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

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


T = TypeVar("T")


def serve(app: web.Application, http: HttpSettings, *, shutdown_timeout: float = 10) -> None:
    """Serve ``app`` on ``http.host:http.port`` until SIGTERM/SIGINT; then the app's
    cleanup runs, with ``shutdown_timeout`` for requests in flight."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(app, host=http.host, port=http.port, print=None, access_log=None,
                handle_signals=True, shutdown_timeout=shutdown_timeout, loop=loop)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion on the same kind of loop as ``serve``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
