"""``install_front_handler``: an app's front handler answers before aiohttp's router and
middleware, on a real server. This is the one place that relies on aiohttp's server taking
``Server.request_handler`` when a connection opens: if aiohttp changes that, this fails."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest
from aiohttp import web

from services.common.runner import FRONT_HANDLER_KEY, install_front_handler


def counting_app(seen: list[str]) -> web.Application:
    @web.middleware
    async def counted(request: web.Request, handler):
        seen.append(request.path)
        return await handler(request)

    async def general(request: web.Request) -> web.Response:
        return web.Response(text="general")

    def front(app: web.Application, inner):
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            if request.raw_path == "/front":
                return web.Response(text="front")
            return await inner(request)
        return handle

    app = web.Application(middlewares=[counted])
    app.router.add_get("/front", general)
    app.router.add_get("/other", general)
    app[FRONT_HANDLER_KEY] = front
    return app


async def test_the_front_handler_answers_before_the_router_and_middleware():
    seen: list[str] = []
    runner = web.AppRunner(counting_app(seen), access_log=None)
    await runner.setup()
    try:
        install_front_handler(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                async with session.get(base + "/front") as resp:
                    assert await resp.text() == "front"
            async with session.get(base + "/other") as resp:
                assert await resp.text() == "general"
        assert seen == ["/other"]  # the front's answers never entered Application._handle
    finally:
        await runner.cleanup()


async def test_installing_after_a_connection_opened_is_refused(aiohttp_client):
    seen: list[str] = []
    client = await aiohttp_client(counting_app(seen))
    await client.get("/other")  # a keep-alive connection now holds the old handler
    with pytest.raises(RuntimeError, match="before connections"):
        install_front_handler(client.server.runner)


async def test_an_app_without_a_front_handler_is_left_alone(aiohttp_client):
    app = web.Application()
    client = await aiohttp_client(app)
    handler = client.server.runner.server.request_handler
    install_front_handler(client.server.runner)
    assert client.server.runner.server.request_handler is handler


HEAP_APP = """
import gc, sys
from aiohttp import web
from services.common.runner import serve
from services.common.settings import HttpSettings

async def startup(app):
    app["made_at_startup"] = {"a": [1, 2]}

async def heap(request):
    made = request.app["made_at_startup"]
    walked = any(o is made for g in (0, 1, 2) for o in gc.get_objects(g))
    return web.json_response({"frozen": gc.get_freeze_count(), "walked": walked,
                              "tracked": gc.is_tracked(made)})

app = web.Application()
app.on_startup.append(startup)
app.router.add_get("/heap", heap)
serve(app, HttpSettings(host="127.0.0.1", port=int(sys.argv[1])))
"""


def test_serve_moves_the_startup_heap_out_of_the_collectors_reach(unused_tcp_port):
    # What settle_heap promises: a full collection no longer walks what the app made at
    # startup (it is still a tracked object, in the permanent generation).
    proc = subprocess.Popen([sys.executable, "-c", HEAP_APP, str(unused_tcp_port)])
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{unused_tcp_port}/heap",
                                            timeout=5) as r:
                    got = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the app did not answer")
        assert got["tracked"] and not got["walked"]
        assert got["frozen"] > 10_000  # the imports too, not only the app
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
