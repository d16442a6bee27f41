"""Operator endpoints."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from services.gateway.keys import CACHE_KEY


async def purge_cache(request: web.Request, query: Any) -> web.Response:
    # every tier on every replica (cluster mode), not only this replica's memory
    removed = await request.app[CACHE_KEY].purge()
    return web.json_response({"purged": removed}, dumps=lambda o: orjson.dumps(o).decode())
