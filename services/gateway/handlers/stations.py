"""CPO charging stations: JSON:API pages, with `links` rewritten to the gateway's own URL.

The cache key holds only the validated paging parameters (DESIGN.md §5): the Host header
a caller sends never makes a new entry, nor a new CPO call. The upstream page is cached
once, its links pointing at a placeholder base; the base goes in on the way out:

* ``AMPGATE_HTTP__PUBLIC_URL`` set: at fill time, so a hit sends the stored bytes as they are;
* otherwise: per request, the request's scheme and Host, by a bytes replace of the
  placeholder (JSON-escaped, so a hostile Host header cannot break out of the string) —
  no JSON work on a hit.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
from aiohttp import web

from services.gateway.cache import CachedResponse
from services.gateway.errors import UpstreamBadBody
from services.gateway.handlers.respond import cached_get, fetcher, upstreams
from services.gateway.keys import SETTINGS_KEY
from services.gateway.upstream_client import UpstreamResponse
from services.gateway.validation import StationsQuery

UPSTREAM_PATH = "/api/cpoapi/v1/charging_stations/"
ROUTE_PATH = "/v1/charging-stations"
# Stands in for the gateway's base URL in cached pages: plain ASCII that JSON leaves as it
# is, under the reserved .invalid TLD (RFC 2606) so no real upstream URL is one; the same
# on every replica, so are the ETags.
_PLACEHOLDER = "https://gateway-base.ampgate.invalid"
_PLACEHOLDER_BYTES = _PLACEHOLDER.encode()


def configured_base(request: web.Request) -> str | None:
    configured = request.app[SETTINGS_KEY].http.public_url
    return str(configured).rstrip("/") if configured is not None else None


def public_base(request: web.Request) -> str:
    return configured_base(request) or f"{request.scheme}://{request.host}"


def rewrite_links(doc: object, base: str) -> bytes:
    """The page with links.current/next/prev pointing at the gateway (only the paging
    parameters kept), encoded."""
    links = doc.get("links") if isinstance(doc, dict) else None
    if isinstance(links, dict):
        for name, url in list(links.items()):
            if not isinstance(url, str):
                continue
            page = [(k, v) for k, v in parse_qsl(urlsplit(url).query) if k.startswith("page[")]
            links[name] = f"{base}{ROUTE_PATH}" + (f"?{urlencode(page)}" if page else "")
    return orjson.dumps(doc)


def _with_base(entry: CachedResponse, base: str) -> CachedResponse:
    """The cached page as this caller's host sees it (the placeholder replaced)."""
    if _PLACEHOLDER_BYTES not in entry.body:
        return entry
    escaped = orjson.dumps(base)[1:-1]  # inside a JSON string: quotes, backslashes escaped
    tag = hashlib.blake2b(escaped, digest_size=6).hexdigest()
    return replace(entry, body=entry.body.replace(_PLACEHOLDER_BYTES, escaped),
                   etag=f'{entry.etag[:-1]}-{tag}"')


async def list_stations(request: web.Request, query: StationsQuery) -> web.StreamResponse:
    client = upstreams(request).cpo
    params = {"page[limit]": str(query.page_limit), "page[offset]": str(query.page_offset)}
    fixed_base = configured_base(request)

    def rewrite(resp: UpstreamResponse) -> bytes:
        if not isinstance(resp.data, dict):
            raise UpstreamBadBody(client.name, "a page that is not a JSON object", resp.status)
        return rewrite_links(resp.data, fixed_base or _PLACEHOLDER)

    fetch = fetcher(request, client, "charging_stations", UPSTREAM_PATH, params, rewrite=rewrite)

    key = ("cpo", "stations", query.page_limit, query.page_offset)
    if fixed_base is not None:
        return await cached_get(request, "charging_stations", key, fetch)
    base = public_base(request)
    return await cached_get(request, "charging_stations", key, fetch,
                            outbound=lambda entry: _with_base(entry, base))
