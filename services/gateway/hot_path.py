"""The fused cache-hit path: a fresh memory-tier hit answered with prebuilt bytes.

``hot_path`` is the gateway's outermost middleware. For a request it can answer it does
exactly what a hit must: the API key (hash lookup), the route's scope, the cache key, the
fresh entry, If-None-Match (→ 304), one write of the entry's prebuilt header block and body
with the only per-request headers (``Age``, ``X-Request-ID``; ``Date`` once a second), one
``ampgate_http_requests_total`` increment, one duration observation (plus the cache's own
``cache_lookups_total{result="hit"}``), and the access line when info is on. Every other
request goes on to ``handler``: the general chain (``request_middleware``, the route's
endpoint, ``cached_get``) exactly as before.

What it skips, and why that is safe:
- aiohttp's middleware chain and its innermost ``_fix_request_current_app`` (aiohttp adds
  it to every app that has a middleware): nothing on this path reads ``current_app``.
- ``web.Response`` (a CIMultiDict per request, header serialisation): the bytes are those
  aiohttp writes for the same answer (tests/unit/gateway/test_hot_path.py compares them).
- A traceparent: a hit calls nothing downstream; one is made only for the access line.
- The query model: only routes whose answer depends on the path alone (``Route.hit_key``)
  and requests without a query string come here.
Anything else — no or unknown key, missing scope (401/403 problem+json), a bad path id
(400), a miss, a stale entry, ``Cache-Control`` from the client, a query string, HEAD,
HTTP/1.0 or ``Connection: close`` — falls through to the general path, which answers it
as it always has. Cluster mode: a memory hit makes no Redis call here either.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

from services.common import logging as logsetup
from services.common.errors import Problem
from services.common.http import HTTP_METRICS_KEY, log, request_id_of, traceparent_of
from services.gateway.cache import CachedResponse
from services.gateway.handlers.respond import etag_matches
from services.gateway.keys import AUTH_KEY, CACHE_KEY, HIT_KEYS_KEY, POLICIES_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WireResponse:
    """What aiohttp's request handler needs of a response (``prepare``, ``write_eof``,
    ``keep_alive``, ``status``, ``body_length``), for bytes that are ready to send."""

    __slots__ = ("_data", "body_length", "keep_alive", "prepared", "status")

    def __init__(self, status: int, data: bytes, body_length: int) -> None:
        self.status = status
        self._data = data
        self.body_length = body_length
        self.keep_alive = True
        self.prepared = False

    async def prepare(self, request: web.BaseRequest) -> None:
        self.prepared = True
        # one transport write; raises ConnectionResetError on a closed connection
        await request.writer.write_eof(self._data)

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def _wire(entry: CachedResponse) -> list[bytes]:
    """The entry's header blocks around Age and X-Request-ID, built on its first hit, in
    aiohttp's order: [200 up to ``Age: ``, 200 up to ``X-Request-ID: ``, the same two
    of the 304 (no Content-Type, no Content-Length)]."""
    wire = entry.wire
    if not wire:
        extra = "".join(f"{k}: {v}\r\n" for k, v in entry.headers)
        after_status = f"\r\nX-Cache: HIT\r\nETag: {entry.etag}\r\nAge: "
        wire.extend((
            f"HTTP/1.1 200 OK{after_status}".encode(),
            f"\r\n{extra}Content-Type: {entry.content_type}\r\nX-Request-ID: ".encode(),
            f"HTTP/1.1 304 Not Modified{after_status}".encode(),
            f"\r\n{extra}X-Request-ID: ".encode(),
        ))
    return wire


_date_second = -1
_date_tail = b""


def _tail(now: float) -> bytes:
    """``Date`` (changes once a second) and ``Server``, as aiohttp sends them."""
    global _date_second, _date_tail
    second = int(now)
    if second != _date_second:
        _date_tail = (f"\r\nDate: {formatdate(second, usegmt=True)}\r\n"
                      f"Server: {SERVER_SOFTWARE}\r\n\r\n").encode()
        _date_second = second
    return _date_tail


@web.middleware
async def hot_path(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route
    hit = request.app[HIT_KEYS_KEY].get(route.name)
    if (hit is None or request.method != "GET" or request.query_string
            or request.version != HttpVersion11 or not request.keep_alive):
        return await handler(request)
    headers = request.headers
    if "Cache-Control" in headers:
        return await handler(request)
    app = request.app
    scope, key_of = hit
    client = app[AUTH_KEY].client_for(request)
    if client is None or scope not in client.scopes:
        return await handler(request)
    name = route.name
    if app[POLICIES_KEY][name].ttl_s <= 0:
        return await handler(request)
    try:
        key = key_of(request)
    except Problem:
        return await handler(request)
    entry = app[CACHE_KEY].fresh(key, name)
    if entry is None or entry.status != 200:
        return await handler(request)

    request_id = request_id_of(headers)
    now = time.time()
    age = str(max(0, int(now - entry.stored_at))).encode()
    wire = _wire(entry)
    inm = headers.get("If-None-Match")
    if inm and etag_matches(inm, entry.etag):
        status, body_length = 304, 0
        data = b"".join((wire[2], age, wire[3], request_id.encode(), _tail(now)))
    else:
        status, body = 200, entry.body
        body_length = len(body)
        data = b"".join((wire[0], age, wire[1], request_id.encode(),
                         b"\r\nContent-Length: %d" % body_length, _tail(now), body))
    response = WireResponse(status, data, body_length)

    elapsed = time.perf_counter() - started
    metrics = app[HTTP_METRICS_KEY]
    metrics.requests_child(name, "GET", str(status), client.name).inc()
    metrics.duration_child(name, "GET").observe(elapsed)
    if logsetup.INFO_ENABLED:
        logsetup.REQUEST_CONTEXT.set((request_id, traceparent_of(headers)))
        log.info("request", method="GET", route=route.resource.canonical, status=status,
                 client=client.name, duration_ms=round(elapsed * 1000, 2), cache="HIT")
    return response
