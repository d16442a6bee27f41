"""Operator endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.gateway.keys import CACHE_KEY


async def purge_cache(request: web.Request, query: Any) -> web.Response:
    removed = request.app[CACHE_KEY].clear()
    return web.json_response({"purged": removed}, dumps=lambda o: orjson.dumps(o).decode())
