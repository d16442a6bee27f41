"""Turning upstream answers and cache entries into client responses."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Hashable

from aiohttp import web

from services.common.http import REQUEST_ID_KEY, TRACEPARENT_KEY
from services.gateway.cache import CachedResponse, make_response
from services.gateway.hot_path import (
    JOINED_KEY,
    X_CACHE,
    EarlyAnswer,
    etag_matches,
    sendable,
    wire_response,
)
from services.gateway.keys import CACHE_KEY, DETECTOR_KEY, POLICIES_KEY, SETTINGS_KEY, UPSTREAMS_KEY
from services.gateway.upstream_client import UpstreamClient, UpstreamResponse


def trace(request: web.Request) -> dict[str, str]:
    return {"request_id": request[REQUEST_ID_KEY], "traceparent": request[TRACEPARENT_KEY]}


def send(request: web.Request, entry: CachedResponse, x_cache: str) -> web.StreamResponse:
    if sendable(request, entry):  # the entry's prebuilt bytes; the same on the wire
        return wire_response(entry, x_cache, request[REQUEST_ID_KEY],
                             request.headers.get("If-None-Match"))
    headers = {"X-Cache": x_cache, "ETag": entry.etag,
               "Age": str(max(0, int(time.time() - entry.stored_at)))}
    headers.update(entry.headers)
    inm = request.headers.get("If-None-Match")
    if inm and entry.status == 200 and etag_matches(inm, entry.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=entry.body, status=entry.status, headers=headers,
                        content_type=entry.content_type)


async def cached_get(
    request: web.Request,
    route: str,
    key: Hashable,
    fetch: Callable[[], Awaitable[CachedResponse]],
    tags: Collection[Hashable] = (),
    outbound: Callable[[CachedResponse], CachedResponse] | None = None,
) -> web.StreamResponse:
    """The cached answer for ``key`` (filled by ``fetch``); ``outbound`` adapts it to this
    request on the way out (for what must not enter the key, e.g. the caller's Host)."""
    app = request.app
    joined = request.get(JOINED_KEY)
    if joined is not None:  # this request already waited for a fill (hot_path._join)
        if isinstance(joined, BaseException):
            raise joined
        entry, result = joined
        return send(request, outbound(entry) if outbound is not None else entry,
                    X_CACHE[result])
    policy = app[POLICIES_KEY].get(route) or app[SETTINGS_KEY].cache.policy(route)
    cache_control = request.headers.get("Cache-Control")
    revalidate = bool(cache_control) and ("no-cache" in cache_control.lower()
                                          or "max-age=0" in cache_control)
    cache = app[CACHE_KEY]
    # answered as the fill completes (counted and logged as before when it returns)
    early = EarlyAnswer(request, request[REQUEST_ID_KEY]) if outbound is None else None
    try:
        entry, result = await cache.get_or_fetch(key, fetch, policy, route=route,
                                                 revalidate=revalidate, tags=tags,
                                                 on_fill=early)
    except Exception:
        if early is not None and early.sent is not None:
            return early.sent  # answered as the fill completed (it gave up only after)
        raise
    if early is not None and early.sent is not None:
        return early.sent
    if outbound is not None:
        entry = outbound(entry)
    return send(request, entry, X_CACHE[result])


def fetcher(request: web.Request, client: UpstreamClient, operation: str, path: str,
            params: dict[str, str] | None = None, *,
            inspect: Callable[[UpstreamResponse], str | None] | None = None,
            rewrite: Callable[[UpstreamResponse], bytes] | None = None,
            ) -> Callable[[], Awaitable[CachedResponse]]:
    """A fill function for the cache: one upstream GET, passed on as it is. It returns
    the upstream's 2xx answer or raises what the client raised (UpstreamStatus for an
    error status, UpstreamBadBody for a body that is not JSON): the cache tells an outage
    (stale-if-error) from an answer (the entry is dropped) by that exception.

    ``inspect`` sees the answer first (change detection; it may raise UpstreamBadBody;
    a change it announces is committed to the outbox before the fill returns, a first
    sighting need not be: ``ChangeDetector.awaited``) and
    may return the content digest of the answer (the digest its change events carry),
    stored with the entry (services.gateway.eviction); ``rewrite`` answers the JSON body
    to store instead of the upstream's."""
    ids = trace(request)

    async def fetch() -> CachedResponse:
        resp = await client.request(operation, "GET", path, params=params, **ids)
        digest = ""
        if inspect is not None:
            detector = request.app.get(DETECTOR_KEY)
            awaited = detector.awaited if detector is not None else 0
            digest = inspect(resp) or ""
            if detector is not None and (detector.awaited != awaited or detector.behind):
                # A change this fill found is committed before anyone is answered with it
                # (and any read waits while the writer thread is behind: backpressure).
                await detector.settled()
        if rewrite is not None:  # the body stored is not the upstream's: no digest
            return make_response(resp.status, rewrite(resp), "application/json")
        return make_response(resp.status, resp.body, resp.content_type or "application/json",
                             digest=digest)

    return fetch


def passthrough(resp: UpstreamResponse, x_cache: str = "BYPASS") -> web.Response:
    if resp.status == 204 or not resp.body:
        return web.Response(status=resp.status, headers={"X-Cache": x_cache})
    return web.Response(body=resp.body, status=resp.status, headers={"X-Cache": x_cache},
                        content_type=(resp.content_type or "application/json"))


def upstreams(request: web.Request):
    return request.app[UPSTREAMS_KEY]
