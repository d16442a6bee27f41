"""The fused cache-hit path: a fresh memory-tier hit answered with prebuilt bytes.

``front_handler`` is what the gateway's HTTP server calls for every request
(``services.common.runner.FRONT_HANDLER_KEY``), in front of ``Application._handle``. For a
request it can answer it does exactly what a hit must: its own match of the path to a hit
route (``HitRoutes``), the API key (hash lookup), the route's scope, the fresh entry,
If-None-Match (→ 304), one write of the entry's prebuilt header block and body with the only
per-request headers (``Age``, ``X-Request-ID``; ``Date`` once a second), one
``ampgate_http_requests_total`` increment, one duration observation (plus the cache's own
``cache_lookups_total{result="hit"}``), and the access line when info is on. Every other
request goes on to the general handler unchanged: aiohttp's router, ``request_middleware``,
the route's endpoint, ``cached_get``, exactly as before.

What it skips, and why that is safe:
- aiohttp's router, middleware chain and its innermost ``_fix_request_current_app``: nothing
  on this path reads ``request.match_info``, ``request.app`` or ``current_app`` (the route
  and its path parameter come from ``HitRoutes``, the app from the closure).
- ``web.Response`` (a CIMultiDict per request, header serialisation): the bytes are those
  aiohttp writes for the same answer (tests/unit/gateway/test_hot_path.py compares them).
- A traceparent: a hit calls nothing downstream; one is made only for the access line.
- The query model: only routes whose answer depends on the path alone (``Route.hit_key``)
  and requests without a query string come here.
Anything else — a path ``HitRoutes`` does not match exactly (percent-encoded, a bad id,
another route), no or unknown key, missing scope (401/403 problem+json), a miss, a stale
entry, ``Cache-Control`` or ``Expect`` from the client, HEAD, HTTP/1.0 or
``Connection: close`` — falls through to the general path, which answers it as it always
has. Cluster mode: a memory hit makes no Redis call here either.

One more case is answered here: a request for a key with nothing stored while its fill
is in flight (a cold burst's waiters) joins that fill as ``cached_get`` would, and is
answered with the fill's bytes as it completes (``_join``); a failed fill's waiters go
on to the general path with the fill's outcome, so they get the answer they always got.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from email.utils import formatdate

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11

from services.common import logging as logsetup
from services.common.errors import Problem
from services.common.http import HTTP_METRICS_KEY, log, request_id_of, traceparent_of
from services.common.metrics import HttpMetrics
from services.gateway.auth import Authenticator
from services.gateway.cache import CachedResponse, CachePolicy, CacheResult, ResponseCache
from services.gateway.keys import AUTH_KEY, CACHE_KEY, HIT_ROUTES_KEY, POLICIES_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


X_CACHE = {
    CacheResult.HIT: "HIT",
    CacheResult.MISS: "MISS",
    CacheResult.COALESCED: "MISS",
    CacheResult.STALE: "STALE",
    CacheResult.BYPASS: "BYPASS",
    CacheResult.SHARED_HIT: "HIT",  # cluster mode: from the shared tier, no upstream call
}


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


class EarlyAnswer:
    """``on_fill`` for a waiter of a fill: its answer is written the moment the fill
    completes, for every waiter in one go, instead of when the loop reaches each waiter in
    turn (a cold burst's 200 waiters would otherwise see the last answer some 10 ms after
    the first). The same bytes ``wire_response`` makes for it; the waiter, once resumed,
    returns ``sent``, which writes nothing more. Requests it cannot answer (``sendable``)
    are left to the waiter."""

    __slots__ = ("request", "request_id", "sent", "x_cache")

    def __init__(self, request: web.BaseRequest, request_id: str) -> None:
        self.request, self.request_id = request, request_id
        self.sent: WireResponse | None = None
        self.x_cache = ""

    def __call__(self, entry: CachedResponse, result: CacheResult) -> None:
        request = self.request
        if not sendable(request, entry):
            return
        x_cache = X_CACHE[result]
        response = wire_response(entry, x_cache, self.request_id,
                                 request.headers.get("If-None-Match"))
        if response.send_now(request):
            self.sent, self.x_cache = response, x_cache


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


class HitRoute:
    """A route whose fresh hits the front handler answers (``Route.hit_key`` set, TTL > 0)."""

    __slots__ = ("key_of", "name", "param", "path", "prefix", "scope", "suffix")

    def __init__(self, name: str, path: str, scope: str,
                 key_of: Callable[[Mapping[str, str]], Hashable]) -> None:
        self.name, self.path, self.scope, self.key_of = name, path, scope, key_of
        # "/v1/passports/{passport_id}/owned" -> prefix, param, suffix; no "{": param ""
        head, brace, rest = path.partition("{")
        param, _, suffix = rest.partition("}")
        if "{" in suffix or (brace and not param):
            raise ValueError(f"a hit route has at most one path parameter: {path}")
        self.prefix, self.param, self.suffix = head, param, suffix


class HitRoutes:
    """The request path -> (hit route, cache key), matched without aiohttp's router: the
    same answer as the router for every path it accepts (tests/unit/gateway/test_hot_path.py
    checks that against the app's router), None for anything it is not sure of — a query
    string, a percent-encoded character (the router matches the decoded path), a parameter
    with a '/', a bad id (the general path answers its 400) — which then goes to the router.
    Valid paths are remembered (bounded: only paths of valid ids enter, 4,096 at most)."""

    _RECENT_MAX = 4096

    def __init__(self, routes: Iterable[HitRoute]) -> None:
        self._exact: dict[str, HitRoute] = {}
        self._templated: list[HitRoute] = []
        for route in routes:
            if route.param:
                self._templated.append(route)
            else:
                self._exact[route.path] = route
        self._recent: dict[str, tuple[HitRoute, Hashable]] = {}

    def match(self, raw_path: str) -> tuple[HitRoute, Hashable] | None:
        found = self._recent.get(raw_path)
        if found is None:
            found = self._resolve(raw_path)
            if found is not None and len(self._recent) < self._RECENT_MAX:
                self._recent[raw_path] = found
        return found

    def _resolve(self, raw_path: str) -> tuple[HitRoute, Hashable] | None:
        if "?" in raw_path or "%" in raw_path:
            return None
        route = self._exact.get(raw_path)
        params: dict[str, str] = {}
        if route is None:
            for candidate in self._templated:
                prefix, suffix = candidate.prefix, candidate.suffix
                if (len(raw_path) > len(prefix) + len(suffix) and raw_path.startswith(prefix)
                        and raw_path.endswith(suffix)):
                    value = raw_path[len(prefix):len(raw_path) - len(suffix)]
                    if "/" not in value:
                        route, params = candidate, {candidate.param: value}
                        break
            if route is None:
                return None
        try:
            return route, route.key_of(params)
        except Problem:
            return None


def front_handler(app: web.Application, general: Handler) -> Handler:
    """The handler the gateway's server calls for each request: a fresh hit answered here,
    a request for a key whose fill is in flight joins that fill here (``_join``),
    everything else goes to ``general`` (``Application._handle``). Built once the app has
    started (its cache exists)."""
    routes, auth, cache = app[HIT_ROUTES_KEY], app[AUTH_KEY], app[CACHE_KEY]
    metrics, policies = app[HTTP_METRICS_KEY], app[POLICIES_KEY]

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        response = _hit(request, routes, auth, cache, metrics)
        if response is None:
            return await general(request)  # type: ignore[arg-type]
        if isinstance(response, _Join):
            return await _join(request, response, general, cache, policies[response.route.name],
                               metrics)
        return response

    return handle


class _Join:
    """A request ``_hit`` found no entry for while a fill of its key is in flight."""

    __slots__ = ("client", "key", "route", "started")

    def __init__(self, route: HitRoute, key: Hashable, client: str, started: float) -> None:
        self.route, self.key, self.client, self.started = route, key, client, started


def _hit(request: web.BaseRequest, routes: HitRoutes, auth: Authenticator,
         cache: ResponseCache, metrics: HttpMetrics) -> WireResponse | _Join | None:
    started = time.perf_counter()
    if (request.method != "GET" or request.version != HttpVersion11
            or not request.keep_alive):
        return None
    matched = routes.match(request.raw_path)
    if matched is None:
        return None
    headers = request.headers
    if "Cache-Control" in headers or "Expect" in headers:
        return None
    route, key = matched
    client = auth.client_for(request)  # type: ignore[arg-type]
    if client is None or route.scope not in client.scopes:
        return None
    name = route.name
    entry = cache.fresh(key, name)
    if entry is None:
        return _Join(route, key, client.name, started) if cache.joinable(key) else None

    request_id = request_id_of(headers)
    response = wire_response(entry, "HIT", request_id, headers.get("If-None-Match"))
    status = response.status
    elapsed = time.perf_counter() - started
    metrics.observe(name, "GET", str(status), client.name, elapsed)
    if logsetup.INFO_ENABLED:
        logsetup.REQUEST_CONTEXT.set((request_id, traceparent_of(headers)))
        log.info("request", method="GET", route=route.path, status=status,
                 client=client.name, duration_ms=round(elapsed * 1000, 2), cache="HIT")
    return response


# A request that joined a fill here and is answered by the general path after all (the
# fill failed, or its answer is not a 200): what the fill gave it, for ``cached_get``.
JOINED_KEY: web.RequestKey[tuple[CachedResponse, CacheResult] | BaseException] = (
    web.RequestKey("joined_fill"))


async def _join(request: web.BaseRequest, join: _Join, general: Handler, cache: ResponseCache,
                policy: CachePolicy, metrics: HttpMetrics) -> web.StreamResponse:
    """Wait for the fill in flight like a coalesced caller of ``cached_get`` (the same
    ``get_or_fetch`` call, counted the same), answered with the fill's prebuilt bytes the
    moment it completes. Why here: a cold burst's waiters each cost the router, middleware
    and endpoint before they wait, and the fill's upstream call is sent only after all of
    them (200 waiters: ~10 ms before the leader's request leaves). A failed fill, or one
    whose answer is not a 200, is answered by the general path from what the fill gave
    (``JOINED_KEY``): the same problem+json, headers, metrics and log line as ever, and no
    second upstream call."""
    headers = request.headers
    request_id = request_id_of(headers)
    early = EarlyAnswer(request, request_id)
    name = join.route.name
    try:
        outcome: tuple[CachedResponse, CacheResult] | BaseException = await cache.get_or_fetch(
            join.key, _joined_only, policy, route=name, on_fill=early)
    except Exception as exc:  # noqa: BLE001 — rendered by the general path, below
        outcome = exc
    response, x_cache = early.sent, early.x_cache
    if response is None:
        request[JOINED_KEY] = outcome
        return await general(request)  # type: ignore[arg-type]
    status = response.status
    elapsed = time.perf_counter() - join.started
    metrics.observe(name, "GET", str(status), join.client, elapsed)
    if logsetup.INFO_ENABLED:
        logsetup.REQUEST_CONTEXT.set((request_id, traceparent_of(headers)))
        log.info("request", method="GET", route=join.route.path, status=status,
                 client=join.client, duration_ms=round(elapsed * 1000, 2), cache=x_cache)
    return response


async def _joined_only() -> CachedResponse:
    # ``cache.joinable(key)`` was true in the same step: get_or_fetch coalesces, never fetches
    raise RuntimeError("a joined request started a fill")
