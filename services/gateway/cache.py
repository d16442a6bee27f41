"""The response cache (DESIGN.md §5): ready-to-send bytes, single-flight fills,
stale-while-revalidate, stale-if-error, an LRU bounded by bytes, tag invalidation.

- A hit returns the stored object as it is: no await, no JSON work, no copy.
- A miss starts ONE fill task per key. The fill belongs to no caller: a caller that
  is cancelled or gives up (its own ``wait_timeout_s``) leaves the fill running for
  the others, and every waiter is released the moment it completes (they await the
  same task; nobody polls, unlike nginx's 500 ms lock).
- Invalidation (writes, change events, purge) detaches in-flight fills of the
  invalidated keys: their callers still get the answer, but it is not stored, and
  new callers start a fresh fill. The one exception is the fill that evicts: its own
  answer revealed the change, so it is the new version.
- Stale-if-error is for an unavailable upstream only (``UpstreamError.unavailable``);
  an upstream 4xx is the answer and drops the entry (DESIGN.md §5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from services.common.metrics import Children
from services.common.settings import CachePolicy
from services.gateway.errors import UpstreamError, UpstreamTimeout
from services.gateway.metrics import GatewayMetrics

log = structlog.get_logger(__name__)

ENTRY_OVERHEAD_BYTES = 256  # key, headers, bookkeeping: keeps many tiny entries bounded too


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    body: bytes
    content_type: str
    etag: str
    stored_at: float  # wall clock, for the Age header
    headers: tuple[tuple[str, str], ...] = ()


def make_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def make_response(status: int, body: bytes, content_type: str,
                  headers: tuple[tuple[str, str], ...] = ()) -> CachedResponse:
    """Build the cacheable form once: the strong ETag is computed here, never on a hit."""
    return CachedResponse(status, body, content_type, make_etag(body), time.time(), headers)


class CacheResult(StrEnum):
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"
    COALESCED = "coalesced"
    BYPASS = "bypass"


@dataclass(slots=True)
class _Entry:
    response: CachedResponse
    size: int
    fresh_until: float  # monotonic
    swr_until: float  # served stale (and refreshed behind) until then
    error_until: float  # served stale instead of an upstream error until then
    tags: tuple[Hashable, ...]


@dataclass(slots=True)
class _Fill:
    task: asyncio.Task[tuple[CachedResponse, bool]]
    tags: tuple[Hashable, ...]
    outdated: bool = False  # invalidated while in flight: do not store


class ResponseCache:
    def __init__(self, max_bytes: int, metrics: GatewayMetrics, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self._metrics = metrics
        self._lookups = Children(metrics.cache_lookups)
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # LRU first
        self._by_tag: dict[Hashable, set[Hashable]] = {}
        self._fills: dict[Hashable, _Fill] = {}
        self._all_fills: set[asyncio.Task[tuple[CachedResponse, bool]]] = set()
        self._bytes = 0
        self._publish()

    @property
    def entries(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    async def get_or_fetch(
        self,
        key: Hashable,
        fetch: Callable[[], Awaitable[CachedResponse]],
        policy: CachePolicy,
        *,
        route: str,
        revalidate: bool = False,
        tags: Collection[Hashable] = (),
        wait_timeout_s: float | None = None,
    ) -> tuple[CachedResponse, CacheResult]:
        """The cached response for ``key``, or the one ``fetch`` produces (once for all
        concurrent callers). Raises what ``fetch`` raised when there is nothing stale
        to serve instead, or UpstreamTimeout when this caller's wait runs out."""
        if policy.ttl_s <= 0:
            self._count(route, CacheResult.BYPASS)
            return await fetch(), CacheResult.BYPASS

        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and not revalidate:
            if now < entry.fresh_until:
                self._entries.move_to_end(key)
                self._count(route, CacheResult.HIT)
                return entry.response, CacheResult.HIT
            if now < entry.swr_until:
                self._entries.move_to_end(key)
                if key not in self._fills:
                    self._start_fill(key, fetch, policy, tags)  # refresh behind the caller
                self._count(route, CacheResult.STALE)
                return entry.response, CacheResult.STALE
            if now >= entry.error_until:
                self._remove(key, "expired")
                self._publish()

        fill = self._fills.get(key)
        result = CacheResult.COALESCED
        if fill is None:
            fill = self._start_fill(key, fetch, policy, tags)
            result = CacheResult.MISS
        elif revalidate:
            result = CacheResult.MISS  # the client asked for a fresh answer: this is one

        try:
            # shield: this caller's cancellation or deadline must not cancel the fill
            if wait_timeout_s is None:
                response, stale = await asyncio.shield(fill.task)
            else:
                response, stale = await asyncio.wait_for(asyncio.shield(fill.task),
                                                         wait_timeout_s)
        except TimeoutError:
            if stale_entry := self._stale_for_error(key):
                self._count(route, CacheResult.STALE)
                return stale_entry.response, CacheResult.STALE
            self._count(route, result)
            raise UpstreamTimeout(route, wait_timeout_s or 0.0) from None
        except Exception:
            self._count(route, result)  # the lookup happened, even if the fill failed
            raise
        if stale:
            result = CacheResult.STALE
        self._count(route, result)
        return response, result

    def invalidate_tag(self, tag: Hashable) -> int:
        """Evict every entry tagged ``tag``; fills in flight for it will not be stored,
        except the fill that is evicting (a read whose answer revealed the change: its
        answer IS the new version, and storing it is what makes the next request see it)."""
        try:
            evicting = asyncio.current_task()
        except RuntimeError:  # no running loop: no fill can be the caller
            evicting = None
        for fill_key, fill in list(self._fills.items()):
            if tag in fill.tags and fill.task is not evicting:
                fill.outdated = True
                del self._fills[fill_key]
        keys = list(self._by_tag.get(tag, ()))
        for key in keys:
            self._remove(key, "invalidated")
        self._publish()
        return len(keys)

    def clear(self) -> int:
        """Evict everything (admin purge); fills in flight will not be stored."""
        for fill in self._fills.values():
            fill.outdated = True
        self._fills.clear()
        count = len(self._entries)
        if count:
            self._metrics.cache_evictions.labels("purged").inc(count)
        self._entries.clear()
        self._by_tag.clear()
        self._bytes = 0
        self._publish()
        return count

    async def close(self) -> None:
        """Cancel fills (background refreshes included) at shutdown."""
        tasks = list(self._all_fills)
        self._fills.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- fills ---------------------------------------------------------------------

    def _start_fill(self, key: Hashable, fetch: Callable[[], Awaitable[CachedResponse]],
                    policy: CachePolicy, tags: Collection[Hashable]) -> _Fill:
        tags = tuple(tags)
        fill: _Fill
        task = asyncio.create_task(self._run_fill(key, fetch, policy, tags, lambda: fill))
        fill = _Fill(task, tags)
        self._fills[key] = fill
        self._all_fills.add(task)
        task.add_done_callback(lambda t: self._fill_done(key, fill, t))
        return fill

    def _fill_done(self, key: Hashable, fill: _Fill,
                   task: asyncio.Task[tuple[CachedResponse, bool]]) -> None:
        self._all_fills.discard(task)
        if self._fills.get(key) is fill:
            del self._fills[key]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # retrieved here: a background refresh has nobody else to look at it
            log.info("cache_fill_failed", error=type(exc).__name__)

    async def _run_fill(self, key: Hashable, fetch: Callable[[], Awaitable[CachedResponse]],
                        policy: CachePolicy, tags: tuple[Hashable, ...],
                        this: Callable[[], _Fill]) -> tuple[CachedResponse, bool]:
        """Fetch, store if allowed; returns (response, served_stale).

        ``fetch`` returns the upstream's 2xx answer or raises an UpstreamError (what the
        upstream client does). Stale-if-error stands in only for an upstream that is
        unavailable; an upstream 4xx about the resource (404 deleted, 410, 403) is the
        answer: the entry goes, the error reaches the caller."""
        try:
            response = await fetch()
        except UpstreamError as exc:
            if exc.unavailable:
                if stale_entry := self._stale_for_error(key):
                    log.info("cache_stale_if_error", reason=type(exc).__name__,
                             status=exc.status)
                    return stale_entry.response, True
            elif key in self._entries:
                self._remove(key, "invalidated")  # the old 200 must not outlive the answer
                self._publish()
            raise
        if this().outdated:
            return response, False  # invalidated meanwhile: answer, but do not store
        if response.status == 200:
            self._store(key, response, policy, tags)
        elif key in self._entries:
            self._remove(key, "invalidated")
            self._publish()
        return response, False

    def _stale_for_error(self, key: Hashable) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock() < entry.error_until:
            return entry
        return None

    # -- storage -------------------------------------------------------------------

    def _store(self, key: Hashable, response: CachedResponse, policy: CachePolicy,
               tags: tuple[Hashable, ...]) -> None:
        size = len(response.body) + ENTRY_OVERHEAD_BYTES + sum(
            len(k) + len(v) for k, v in response.headers)
        if key in self._entries:
            self._remove(key, None)
        if size > self.max_bytes // 4:
            log.info("cache_entry_too_large", size=size)
            self._publish()
            return
        now = self._clock()
        fresh_until = now + policy.ttl_s
        self._entries[key] = _Entry(
            response, size, fresh_until,
            swr_until=fresh_until + policy.stale_while_revalidate_s,
            error_until=fresh_until + policy.stale_if_error_s,
            tags=tags,
        )
        self._bytes += size
        for tag in tags:
            self._by_tag.setdefault(tag, set()).add(key)
        while self._bytes > self.max_bytes and self._entries:
            self._remove(next(iter(self._entries)), "lru")
        self._publish()

    def _remove(self, key: Hashable, reason: str | None) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._bytes -= entry.size
        for tag in entry.tags:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]
        if reason:
            self._metrics.cache_evictions.labels(reason).inc()

    def _publish(self) -> None:
        self._metrics.cache_entries.set(len(self._entries))
        self._metrics.cache_bytes.set(self._bytes)

    def _count(self, route: str, result: CacheResult) -> None:
        self._lookups(route, result.value).inc()
