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
from services.gateway.keys import AUTH_KEY, CACHE_KEY, HIT_KEYS_KEY, POLICIES_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WireResponse:
    """What aiohttp's request handler needs of a response (``prepare``, ``write_eof``,
    ``keep_alive``, ``status``, ``body_length``), for bytes that are ready to send.
    ``headers``: the per-request headers the bytes carry (for the access line); final."""

    __slots__ = ("_data", "body_length", "headers", "keep_alive", "prepared", "status")

    def __init__(self, status: int, data: bytes, body_length: int,
                 headers: dict[str, str]) -> None:
        self.status = status
        self._data = data
        self.body_length = body_length
        self.headers = headers
        self.keep_alive = True
        self.prepared = False

    async def prepare(self, request: web.BaseRequest) -> None:
        self.prepared = True
        # one transport write; raises ConnectionResetError on a closed connection
        await request.writer.write_eof(self._data)

    async def write_eof(self, data: bytes = b"") -> None:
        return None

    def send_now(self, request: web.BaseRequest) -> bool:
        """Write the bytes at once, ahead of aiohttp's turn for this request (a waiter
        answered as its fill completes: respond.py); ``prepare`` then writes nothing.
        False (nothing written) when the connection is going away."""
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        transport.write(self._data)
        self._data = b""
        return True


def etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == etag for t in header.split(","))


def sendable(request: web.BaseRequest, entry: CachedResponse) -> bool:
    """Can ``wire_response`` answer this request? A 200 entry, to an HTTP/1.1 keep-alive GET
    (what aiohttp adds for HTTP/1.0, ``Connection: close`` or HEAD is left to it)."""
    return (entry.status == 200 and request.method == "GET"
            and request.version == HttpVersion11 and request.keep_alive)


def wire_response(entry: CachedResponse, x_cache: str, request_id: str,
                  if_none_match: str | None) -> WireResponse:
    """The bytes aiohttp writes for ``send()``'s answer (respond.py), headers in its order:
    X-Cache, ETag, Age, the entry's own, Content-Type, X-Request-ID, Content-Length, Date,
    Server; a 304 (If-None-Match matched) without Content-Type, Content-Length and body."""
    now = time.time()
    etag_age, typed, untyped = _wire(entry)
    age = str(max(0, int(now - entry.stored_at))).encode()
    headers = {"X-Cache": x_cache, "X-Request-ID": request_id}
    if if_none_match and etag_matches(if_none_match, entry.etag):
        data = b"".join((b"HTTP/1.1 304 Not Modified\r\nX-Cache: ", x_cache.encode(), etag_age,
                         age, untyped, request_id.encode(), _tail(now)))
        return WireResponse(304, data, 0, headers)
    body = entry.body
    data = b"".join((b"HTTP/1.1 200 OK\r\nX-Cache: ", x_cache.encode(), etag_age, age, typed,
                     request_id.encode(), b"\r\nContent-Length: %d" % len(body), _tail(now),
                     body))
    return WireResponse(200, data, len(body), headers)


def _wire(entry: CachedResponse) -> list[bytes]:
    """The entry's header blocks, built on its first send: [from ETag up to ``Age: ``,
    from there up to ``X-Request-ID: `` with Content-Type, the same for a 304 without]."""
    wire = entry.wire
    if not wire:
        extra = "".join(f"{k}: {v}\r\n" for k, v in entry.headers)
        wire.extend((
            f"\r\nETag: {entry.etag}\r\nAge: ".encode(),
            f"\r\n{extra}Content-Type: {entry.content_type}\r\nX-Request-ID: ".encode(),
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
    if entry is None:
        return await handler(request)

    request_id = request_id_of(headers)
    response = wire_response(entry, "HIT", request_id, headers.get("If-None-Match"))
    status = response.status
    elapsed = time.perf_counter() - started
    metrics = app[HTTP_METRICS_KEY]
    metrics.requests_child(name, "GET", str(status), client.name).inc()
    metrics.duration_child(name, "GET").observe(elapsed)
    if logsetup.INFO_ENABLED:
        logsetup.REQUEST_CONTEXT.set((request_id, traceparent_of(headers)))
        log.info("request", method="GET", route=route.resource.canonical, status=status,
                 client=client.name, duration_ms=round(elapsed * 1000, 2), cache="HIT")
    return response
