"""CPO charging stations: JSON:API pages, with `links` rewritten to the gateway's own URL."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from aiohttp import web

from services.gateway.handlers.respond import cached_get, fetcher, upstreams
from services.gateway.keys import SETTINGS_KEY
from services.gateway.upstream import UpstreamResponse
from services.gateway.validation import StationsQuery

UPSTREAM_PATH = "/api/cpoapi/v1/charging_stations/"
ROUTE_PATH = "/v1/charging-stations"


def public_base(request: web.Request) -> str:
    configured = request.app[SETTINGS_KEY].http.public_url
    if configured is not None:
        return str(configured).rstrip("/")
    return f"{request.scheme}://{request.host}"


def rewrite_links(body: bytes, base: str) -> bytes:
    """Point links.current/next/prev at the gateway, keeping only the paging parameters."""
    doc = orjson.loads(body)
    links = doc.get("links") if isinstance(doc, dict) else None
    if not isinstance(links, dict):
        return body
    for name, url in list(links.items()):
        if not isinstance(url, str):
            continue
        page = [(k, v) for k, v in parse_qsl(urlsplit(url).query) if k.startswith("page[")]
        links[name] = f"{base}{ROUTE_PATH}" + (f"?{urlencode(page)}" if page else "")
    return orjson.dumps(doc)


async def list_stations(request: web.Request, query: StationsQuery) -> web.Response:
    base = public_base(request)
    params = {"page[limit]": str(query.page_limit), "page[offset]": str(query.page_offset)}

    def transform(resp: UpstreamResponse) -> bytes:
        return rewrite_links(resp.body, base) if resp.status == 200 else resp.body

    fetch = fetcher(request, upstreams(request).cpo, "charging_stations", UPSTREAM_PATH,
                    params, transform)
    # The base URL is part of the key: rewritten links differ per public host.
    key = ("cpo", "stations", base, query.page_limit, query.page_offset)
    return await cached_get(request, "charging_stations", key, fetch)
