"""be.ENERGISED CPO API: JSON:API list of charging stations, offset paging.

The page size is clamped silently (the answer's ``meta.pagination.limit`` tells),
and links are absolute URLs on the host the request came to, brackets
percent-encoded as in the quickstart.
"""

from __future__ import annotations

from aiohttp import web

from services.sandbox._http import endpoint, json_response
from services.sandbox.keys import COGNITO_KEY, DATA_KEY
from services.sandbox.tokens import bearer

PATH = "/api/cpoapi/v1/charging_stations/"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def _error(status: int, title: str, detail: str, parameter: str | None = None) -> web.Response:
    err: dict[str, object] = {"status": str(status), "title": title, "detail": detail}
    if parameter:
        err["source"] = {"parameter": parameter}
    return json_response({"errors": [err]}, status)


def _int_param(request: web.Request, name: str, default: int, minimum: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= minimum else None


def _link(request: web.Request, limit: int, offset: int) -> str:
    return f"{request.scheme}://{request.host}{PATH}?page%5Blimit%5D={limit}&page%5Boffset%5D={offset}"


@endpoint("cpo.stations")
async def charging_stations(request: web.Request) -> web.Response:
    token = bearer(request.headers.get("Authorization"), bare_ok=True)
    if token is None or not request.app[COGNITO_KEY].valid(token):
        return _error(401, "Unauthorized", "Missing, invalid or expired access token")
    limit = _int_param(request, "page[limit]", DEFAULT_LIMIT, 1)
    if limit is None:
        return _error(400, "Bad Request", "page[limit] must be a positive integer", "page[limit]")
    offset = _int_param(request, "page[offset]", 0, 0)
    if offset is None:
        return _error(400, "Bad Request", "page[offset] must be a non-negative integer",
                      "page[offset]")
    limit = min(limit, MAX_LIMIT)
    stations = request.app[DATA_KEY].stations
    total = len(stations)
    last = offset + limit >= total
    return json_response({
        "data": stations[offset:offset + limit],
        "meta": {"pagination": {"total": total, "offset": offset, "limit": limit,
                                "lastPage": last}},
        "links": {
            "current": _link(request, limit, offset),
            "next": None if last else _link(request, limit, offset + limit),
            "prev": None if offset == 0 else _link(request, limit, max(0, offset - limit)),
        },
    })
