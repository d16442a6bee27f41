"""Running a service's aiohttp app (``serve``) or a command's coroutine (``run``): the one
place that picks the event loop. Every ``ampgate`` service starts through ``serve``."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import suppress
from typing import Any, TypeVar

from aiohttp import web

from services.common.settings import HttpSettings

RequestHandler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# An app's own front handler: given the app and the request handler aiohttp built for it
# (``Application._handle``: router, middleware, endpoint), the handler its server calls for
# every request instead. For work that must end before the router (the gateway's cache
# hits, services/gateway/hot_path.py). Installed by ``install_front_handler``.
FRONT_HANDLER_KEY: web.AppKey[Callable[[web.Application, RequestHandler], RequestHandler]] = (
    web.AppKey("front_handler"))


def install_front_handler(runner: web.AppRunner) -> None:
    """Put the app's ``FRONT_HANDLER_KEY`` (if any) in front of its server's handler: after
    ``runner.setup()`` (the app has started; the server exists), before any connection
    (each connection takes the server's ``request_handler`` when it opens).
    tests/unit/common/test_runner.py fails if aiohttp stops honouring this."""
    front = runner.app.get(FRONT_HANDLER_KEY)
    if front is None:
        return
    server = runner.server
    if server is None or server.connections:
        raise RuntimeError("install_front_handler: after runner.setup(), before connections")
    server.request_handler = front(runner.app, server.request_handler)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (libuv's loop roughly halves asyncio's share of a cache hit),
    else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


T = TypeVar("T")


def settle_heap() -> None:
    """Once the app has started, move what survived its startup (modules, classes, pydantic
    schemas, settings, clients: ~90k objects in the gateway) into the collector's permanent
    generation: a full collection no longer walks it.

    Measured in the gateway at 400-500 PUTs/s (bench/events_bench.py, gc.callbacks): a
    full collection ran every few seconds and held the loop ~250 ms each, i.e. the write
    latency's p99 and ~10 % of a core; after the freeze, 8-20 ms (on a loaded machine).
    The collections found no cyclic garbage there (0 collected), so the young thresholds
    stay CPython's: raising them only made each young pause longer."""
    gc.collect()
    gc.freeze()


def serve(app: web.Application, http: HttpSettings, *, shutdown_timeout: float = 10) -> None:
    """Serve ``app`` on ``http.host:http.port`` until SIGTERM/SIGINT; then the app's
    cleanup runs, with ``shutdown_timeout`` for requests in flight.

    ``web.run_app``'s steps with ``install_front_handler`` between the runner's setup and
    the listening socket (run_app has no such hook): the same runner options, and the same
    teardown order (the serving task's cleanup first, then every task left, async
    generators, the loop)."""
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    main_task = loop.create_task(_serve(app, http, shutdown_timeout))
    try:
        loop.run_until_complete(main_task)
    except (web.GracefulExit, KeyboardInterrupt):  # SIGTERM / SIGINT
        pass
    finally:
        try:
            if not main_task.done():
                main_task.cancel()
                with suppress(asyncio.CancelledError):
                    loop.run_until_complete(main_task)
        finally:
            _cancel_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


async def _serve(app: web.Application, http: HttpSettings, shutdown_timeout: float) -> None:
    # run_app's defaults for what it passes on (keep-alive 75 s, backlog 128)
    runner = web.AppRunner(app, handle_signals=True, access_log=None,
                           shutdown_timeout=shutdown_timeout, keepalive_timeout=75.0)
    await runner.setup()
    try:
        install_front_handler(runner)
        settle_heap()
        await web.TCPSite(runner, http.host, http.port, backlog=128).start()
        await asyncio.Event().wait()  # until a signal (GracefulExit) or a cancel
    finally:
        await runner.cleanup()


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What ``run_app`` (and ``asyncio.run``) does with the tasks still running at exit."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception during shutdown",
                                         "exception": task.exception(), "task": task})


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to completion on the same kind of loop as ``serve``."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
