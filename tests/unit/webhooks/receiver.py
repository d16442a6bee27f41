"""A real HTTP webhook receiver on 127.0.0.1 for tests: records every request and
answers from a script."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

# Given the request number (0-based) and the body, answer (status, headers) — or a web.Response.
Script = Callable[[int, dict], Awaitable[tuple[int, dict[str, str]]] | tuple[int, dict[str, str]]]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    @property
    def json(self) -> dict:
        import orjson

        return orjson.loads(self.body)


@dataclass
class Receiver:
    script: Script
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        n = len(self.requests)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        import orjson

        answer = self.script(n, orjson.loads(body))
        if asyncio.iscoroutine(answer):
            answer = await answer
        status, headers = answer  # type: ignore[misc]
        self.requests.append(Received(dict(request.headers), body, time.monotonic(), status))
        return web.Response(status=status, headers=headers, text="ok" if status < 300 else "no")

    @property
    def successes(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]


def always(status: int, headers: dict[str, str] | None = None) -> Script:
    return lambda n, body: (status, headers or {})


def sequence(*statuses: int | tuple[int, dict[str, str]]) -> Script:
    """Answer the given statuses in order, then 200 for ever."""
    def script(n: int, body: dict) -> tuple[int, dict[str, str]]:
        if n >= len(statuses):
            return 200, {}
        s = statuses[n]
        return (s, {}) if isinstance(s, int) else s
    return script


async def eventually(check: Callable[[], bool], timeout: float = 5.0, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)
