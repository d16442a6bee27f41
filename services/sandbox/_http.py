"""What the simulated endpoints share: JSON answers and the counting/fault decorator."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

import orjson
from aiohttp import web

from services.sandbox.faults import ENDPOINTS
from services.sandbox.keys import FAULTS_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def endpoint(name: str) -> Callable[[Handler], Handler]:
    """Count every call that reaches the handler (rejected or not), then act out
    injected faults before the handler runs."""
    if name not in ENDPOINTS:
        raise ValueError(f"unknown endpoint name {name!r}")

    def wrap(handler: Handler) -> Handler:
        @wraps(handler)
        async def counted(request: web.Request) -> web.StreamResponse:
            faults = request.app[FAULTS_KEY]
            faults.counts[name] += 1
            injected = await faults.apply(name, request)
            if injected is not None:
                return injected
            return await handler(request)

        return counted

    return wrap


async def json_object(request: web.Request) -> dict[str, Any] | None:
    """The request body if it is a JSON object, else None."""
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None
