"""History queries, proxied path for path to the history service with the caller's own key:
the history service checks it and the scope again (DESIGN.md §11)."""

from __future__ import annotations

from aiohttp import web

from services.common.errors import Problem
from services.common.ids import evse_path_id, path_id
from services.common.query import HistoryQuery, PriceHistoryQuery
from services.gateway.auth import forwarding_caller_key
from services.gateway.handlers.respond import passthrough, trace, upstreams


async def _proxy(request: web.Request, operation: str, path: str, params: dict[str, str]):
    client = upstreams(request).history
    if client is None:
        raise Problem(503, "History unavailable", "AMPGATE_HISTORY__URL is not configured")
    with forwarding_caller_key(request):
        resp = await client.request(operation, "GET", path, params=params,
                                    accept_statuses=(404,), **trace(request))
    return passthrough(resp)


async def passport_history(request: web.Request, query: HistoryQuery) -> web.Response:
    pid = path_id(request, "passport_id")
    return await _proxy(request, "passport_history", f"/v1/passports/{pid}/history", query.params())


async def price_history(request: web.Request, query: PriceHistoryQuery) -> web.Response:
    evse = evse_path_id(request)
    return await _proxy(request, "price_history", f"/v1/prices/{evse}/history", query.params())
