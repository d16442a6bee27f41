"""The response cache (DESIGN.md §5): ready-to-send bytes, single-flight fills,
stale-while-revalidate, stale-if-error, an LRU bounded by bytes, tag invalidation.

- A hit returns the stored object as it is: no await, no JSON work, no copy.
- A miss starts ONE fill task per key. The fill belongs to no caller: a caller that
  is cancelled or gives up (its own ``wait_timeout_s``) leaves the fill running for
  the others, and every waiter is released the moment it completes (they await the
  same task; nobody polls, unlike nginx's 500 ms lock). A fill callers wait for starts
  eagerly (services.common.eager): its upstream call leaves in the first caller's turn.
  A caller may pass ``on_fill``: it is called with the answer the moment the fill
  completes, before any waiter is resumed, so a caller with ready-to-send bytes answers
  there instead of in its turn on the loop (services.gateway.hot_path.EarlyAnswer: a
  cold burst's 200 waiters). What a fill need not do before that, it hands to
  ``after_answers``: run right after those answers (a first sighting's change event).
- Invalidation (writes, change events, purge) detaches in-flight fills of the
  invalidated keys: their callers still get the answer, but it is not stored, and
  new callers start a fresh fill. The one exception is the fill that evicts: its own
  answer revealed the change, so it is the new version.
- An entry may know its content digest (``CachedResponse.digest``, the digest change
  events carry; only the public passport sets it). A change event announcing digest
  ``d`` evicts with ``keep_digest=d``: entries that hold ``d`` stay — they already are
  that version (a first read's SNAPSHOT coming back from Kafka must not throw out the
  answer that announced it). Entries without a digest, or another one, go as before.
- Stale-if-error is for an unavailable upstream only (``UpstreamError.unavailable``);
  an upstream 4xx is the answer and drops the entry (DESIGN.md §5).

Cluster mode (DESIGN.md §12; ``shared`` given): this memory tier stays first and a hit
is exactly the code above — no Redis call. Only the fill task changes: it goes through
``SharedCache.fill`` (one upstream call cluster-wide for a key cold everywhere; an entry
another replica filled is stored here with the windows it has left, counted
``shared_hit``), and falls back to a plain fetch when Redis cannot be used. Every eviction
is applied here at once and then in Redis and, by its message, on every other replica
(``on_evict``); evictions that could not reach Redis are retried when it is back. Keys
and tags are named in Redis by ``shared_name`` (JSON, reversible by ``local_name``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass, field
from enum import StrEnum

import orjson
import structlog

from services.common.eager import eager_task
from services.common.metrics import Children
from services.common.settings import CachePolicy
from services.gateway.cluster import ClusterUnavailable, FillResult, SharedCache, SharedEntry
from services.gateway.cluster.shared_cache import Eviction
from services.gateway.errors import UpstreamError, UpstreamTimeout
from services.gateway.metrics import GatewayMetrics

log = structlog.get_logger(__name__)

ENTRY_OVERHEAD_BYTES = 256  # key, headers, bookkeeping: keeps many tiny entries bounded too
_MAX_PENDING_EVICTIONS = 10_000  # tags kept for a Redis that is down; beyond: evict all
_RETRY_MIN_S, _RETRY_MAX_S = 0.2, 5.0  # missed evictions retried while the store stays up

# The fill whose task (or a task it started, e.g. the shared tier's detached fetch) is
# running: ``invalidate_tag`` spares it (its answer is the new version).
_CURRENT_FILL: contextvars.ContextVar[_Fill | None] = contextvars.ContextVar(
    "ampgate_cache_fill", default=None)


def shared_name(key: Hashable) -> str:
    """The one spelling of a memory-tier key or tag in the shared tier (reversible)."""
    return orjson.dumps(list(key) if isinstance(key, tuple) else key).decode()


def local_name(name: str) -> Hashable:
    value = orjson.loads(name)
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    body: bytes
    content_type: str
    etag: str
    stored_at: float  # wall clock, for the Age header
    headers: tuple[tuple[str, str], ...] = ()
    digest: str = ""  # the content's digest as change events carry it; "" when unknown
    # The header blocks a hit sends, built on its first hit (hot_path.py): once per entry.
    wire: list[bytes] = field(default_factory=list, init=False, repr=False, compare=False)


def make_etag(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def make_response(status: int, body: bytes, content_type: str,
                  headers: tuple[tuple[str, str], ...] = (), *,
                  digest: str = "") -> CachedResponse:
    """Build the cacheable form once: the strong ETag is computed here, never on a hit."""
    return CachedResponse(status, body, content_type, make_etag(body), time.time(), headers,
                          digest)


class CacheResult(StrEnum):
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"
    COALESCED = "coalesced"
    BYPASS = "bypass"
    SHARED_HIT = "shared_hit"  # a miss here, answered by the cluster's shared tier


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
    tags: tuple[Hashable, ...]
    task: asyncio.Task[tuple[CachedResponse, CacheResult | None]] = None  # type: ignore[assignment]
    outdated: bool = False  # invalidated while in flight: do not store
    # cluster mode: the shared evictions this fill's own answer caused (a change it found)
    own_evictions: list[asyncio.Future[object]] = field(default_factory=list)
    # the callers' ``on_fill`` and their own result (MISS or COALESCED), called as it completes
    listeners: list[tuple[Callable[[CachedResponse, CacheResult], None], CacheResult]] = field(
        default_factory=list)
    # work the fill put off until its waiters are answered (``after_answers``)
    after: list[Callable[[], None]] = field(default_factory=list)
    done: bool = False


def _final(result: CacheResult, source: CacheResult | None) -> CacheResult:
    """What a caller that waited for a fill (``result``: MISS or COALESCED) reports, given
    where the fill's answer came from (``source``)."""
    if source is CacheResult.STALE or (source is CacheResult.SHARED_HIT
                                       and result is CacheResult.MISS):
        return source
    return result


class ResponseCache:
    def __init__(self, max_bytes: int, metrics: GatewayMetrics, *,
                 clock: Callable[[], float] = time.monotonic,
                 shared: SharedCache | None = None, fill_lock_ttl_s: float = 11.0) -> None:
        self.max_bytes = max_bytes
        self._shared = shared
        self._fill_lock_ttl_s = fill_lock_ttl_s
        self._evictions: set[asyncio.Task[object]] = set()
        # evictions Redis missed, retried when it is up: tag -> the digest they keep ("": none)
        self._pending_tags: dict[str, str] = {}
        self._pending_all = False
        self._retrying: asyncio.Task[None] | None = None
        self._metrics = metrics
        self._lookups = Children(metrics.cache_lookups)
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()  # LRU first
        self._by_tag: dict[Hashable, set[Hashable]] = {}
        self._fills: dict[Hashable, _Fill] = {}
        self._all_fills: set[asyncio.Task[tuple[CachedResponse, CacheResult | None]]] = set()
        self._bytes = 0
        self._publish()
        if shared is not None:
            shared.on_evict(self._on_shared_evict)

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
        on_fill: Callable[[CachedResponse, CacheResult], None] | None = None,
    ) -> tuple[CachedResponse, CacheResult]:
        """The cached response for ``key``, or the one ``fetch`` produces (once for all
        concurrent callers). Raises what ``fetch`` raised when there is nothing stale
        to serve instead, or UpstreamTimeout when this caller's wait runs out.

        ``on_fill``: when this call waits for a fill, called with the response and the
        result this call returns the moment the fill succeeds, before this caller (or
        any other waiter) is resumed; not called when this call gives up first."""
        if policy.ttl_s <= 0:
            self._count(route, CacheResult.BYPASS)
            return await fetch(), CacheResult.BYPASS

        if not revalidate and (response := self.fresh(key, route)) is not None:
            return response, CacheResult.HIT
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and not revalidate:
            if now < entry.swr_until:
                self._entries.move_to_end(key)
                if key not in self._fills:  # refresh behind the caller
                    self._start_fill(key, fetch, policy, tags, eager=False)
                self._count(route, CacheResult.STALE)
                return entry.response, CacheResult.STALE
            if now >= entry.error_until:
                self._remove(key, "expired")
                self._publish()

        fill = self._fills.get(key)
        result = CacheResult.COALESCED
        if fill is None:
            fill = self._start_fill(key, fetch, policy, tags, revalidate=revalidate)
            result = CacheResult.MISS
        elif revalidate:
            result = CacheResult.MISS  # the client asked for a fresh answer: this is one

        listener = None
        if on_fill is not None:
            listener = (on_fill, result)
            fill.listeners.append(listener)
        try:
            # shield: this caller's cancellation or deadline must not cancel the fill
            if wait_timeout_s is None:
                response, source = await asyncio.shield(fill.task)
            else:
                response, source = await asyncio.wait_for(asyncio.shield(fill.task),
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
        finally:
            if listener is not None and not fill.task.done():
                fill.listeners.remove(listener)  # gave up: it must not answer later
        result = _final(result, source)
        self._count(route, result)
        return response, result

    def after_answers(self, work: Callable[[], None]) -> None:
        """Run ``work`` once the fill this is called from has answered its waiters: in its
        completion, right after every ``on_fill`` (a cold burst's answers are written by
        then), whatever the fill's outcome (failed or cancelled too). Called outside a fill,
        or once it is done, ``work`` runs at once. For what a fill need not do before its
        answer is out (a first sighting's change event: ChangeDetector.passport ``later``)."""
        fill = _CURRENT_FILL.get()
        if fill is None or fill.done:
            work()
        else:
            fill.after.append(work)

    def joinable(self, key: Hashable) -> bool:
        """Would a plain lookup of ``key`` wait for a fill in flight (COALESCED)? True when
        one is in flight and nothing at all is stored for the key (a stale or error entry
        is ``get_or_fetch``'s to weigh). Lets the front handler join it (hot_path.py)."""
        return key in self._fills and key not in self._entries

    def fresh(self, key: Hashable, route: str) -> CachedResponse | None:
        """The fresh entry for ``key`` (a hit, counted as one), else None and nothing
        counted: the caller goes on to ``get_or_fetch``."""
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry.fresh_until:
            return None
        self._entries.move_to_end(key)
        self._count(route, CacheResult.HIT)
        return entry.response

    def invalidate_tag(self, tag: Hashable, *, keep_digest: str = "") -> int:
        """Evict every entry tagged ``tag``; fills in flight for it will not be stored,
        except the fill that is evicting (a read whose answer revealed the change: its
        answer IS the new version, and storing it is what makes the next request see it).
        ``keep_digest`` (the version a change event announces): entries holding that
        digest stay. In cluster mode the shared tier and every replica follow
        (``settled()`` awaits that)."""
        removed = self._invalidate_local(tag, keep_digest)
        if self._shared is not None:
            task = self._spawn_eviction(self._evict_shared([shared_name(tag)], keep_digest))
            if (evicting := _CURRENT_FILL.get()) is not None:
                evicting.own_evictions.append(task)  # its answer is stored after it
        return removed

    def clear(self) -> int:
        """Evict everything here (fills in flight will not be stored); in cluster mode
        the shared tier and every replica follow (``purge`` awaits that)."""
        count = self._clear_local()
        if self._shared is not None:
            self._spawn_eviction(self._evict_shared_all())
        return count

    async def purge(self) -> int:
        """Admin purge: evict everything here and, in cluster mode, in the shared tier and
        on every replica before returning. Returns the entries removed here."""
        count = self._clear_local()
        if self._shared is not None:
            await self._evict_shared_all()
        return count

    async def settled(self, timeout_s: float = 1.0) -> None:
        """Wait (bounded) until the evictions started so far reached the shared tier: a
        write answers after every replica was told."""
        if self._evictions:
            await asyncio.wait(set(self._evictions), timeout=timeout_s)

    # -- evictions (memory tier; shared tier in cluster mode) -------------------------

    def _invalidate_local(self, tag: Hashable, keep_digest: str = "") -> int:
        evicting = _CURRENT_FILL.get()
        for fill_key, fill in list(self._fills.items()):
            # a fill in flight may bring any version: not stored, whatever keep_digest says
            if tag in fill.tags and fill is not evicting:
                fill.outdated = True
                del self._fills[fill_key]
        keys = [k for k in self._by_tag.get(tag, ())
                if not self._holds(k, keep_digest)]
        for key in keys:
            self._remove(key, "invalidated")
        self._publish()
        return len(keys)

    def _holds(self, key: Hashable, digest: str) -> bool:
        """Is the entry of ``key`` the version with this (known) digest?"""
        entry = self._entries.get(key)
        return bool(digest) and entry is not None and entry.response.digest == digest

    def _evict_key_local(self, key: Hashable, keep_digest: str = "") -> None:
        fill = self._fills.pop(key, None)
        if fill is not None:
            fill.outdated = True
        if key in self._entries and not self._holds(key, keep_digest):
            self._remove(key, "invalidated")
            self._publish()

    def _clear_local(self) -> int:
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

    def _spawn_eviction(self, coro: Awaitable[object]) -> asyncio.Future[object]:
        task = asyncio.ensure_future(coro)
        self._evictions.add(task)
        task.add_done_callback(self._evictions.discard)
        return task

    async def _evict_shared(self, tags: list[str], keep_digest: str = "") -> bool:
        assert self._shared is not None
        try:
            await self._shared.evict(tags=tags, keep_digest=keep_digest)
            return True
        except ClusterUnavailable:
            self._missed(tags, keep_digest)
            return False

    async def _evict_shared_all(self) -> bool:
        assert self._shared is not None
        try:
            await self._shared.evict_all()
            return True
        except ClusterUnavailable:
            self._missed(None)
            return False

    def _missed(self, tags: list[str] | None, keep_digest: str = "") -> None:
        """Redis did not take an eviction: keep it for when Redis answers again (an entry
        in Redis must not outlive the change that evicted it here). It keeps what it would
        have kept (an entry holding the announced version: replaying it later spares the
        first fills a burst of SNAPSHOTs timed out on); two missed evictions of one tag
        that keep different versions keep none."""
        if tags is None or len(self._pending_tags) + len(tags) > _MAX_PENDING_EVICTIONS:
            self._pending_all = True
            self._pending_tags.clear()
        elif not self._pending_all:
            for tag in tags:
                kept = self._pending_tags.setdefault(tag, keep_digest)
                if kept != keep_digest:
                    self._pending_tags[tag] = ""
        log.info("cache_shared_eviction_deferred", everything=self._pending_all,
                 tags=len(self._pending_tags))
        if self._retrying is None:
            self._retrying = asyncio.ensure_future(self._retry_missed())

    async def _retry_missed(self) -> None:
        """A call that timed out while the store stayed up (a burst on the pool, a slow
        moment) gets no down→up to replay it: retry, backing off, while any is pending.
        While the store is down, its coming back up replays them (``store_state``)."""
        assert self._shared is not None
        delay = _RETRY_MIN_S
        try:
            while self._pending_all or self._pending_tags:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
                if self._shared.store_up:
                    self.store_state(True)
        finally:
            self._retrying = None

    def store_state(self, up: bool) -> None:
        """The cluster store's up/down listener: replay the evictions it missed."""
        if up and (self._pending_all or self._pending_tags):
            everything, pending = self._pending_all, self._pending_tags
            self._pending_all, self._pending_tags = False, {}
            self._spawn_eviction(self._replay_all() if everything else self._replay(pending))

    async def _replay(self, pending: dict[str, str]) -> None:
        """One call per digest kept, one after the other (not a burst on a Redis that has
        just come back); what fails again stays pending. Once Redis took one, this replica
        evicts again too: while the old version stayed in Redis its memory tier may have
        filled from it, and its own eviction message is not applied here."""
        by_digest: dict[str, list[str]] = {}
        for tag, digest in sorted(pending.items()):
            by_digest.setdefault(digest, []).append(tag)
        for digest, tags in by_digest.items():
            if await self._evict_shared(tags, digest):
                for name in tags:
                    self._invalidate_local(local_name(name), digest)

    async def _replay_all(self) -> None:
        if await self._evict_shared_all():
            self._clear_local()

    def _on_shared_evict(self, ev: Eviction) -> None:
        """An eviction anywhere in the cluster (or a resubscription: ``everything``)."""
        if self._shared is not None and ev.origin == self._shared.replica_id:
            return  # applied here already, before it was sent
        if ev.everything:
            self._clear_local()
            return
        for name in ev.tags:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                self._invalidate_local(local_name(name), ev.keep_digest)
        for name in ev.keys:
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                self._evict_key_local(local_name(name), ev.keep_digest)

    async def close(self) -> None:
        """Cancel fills (background refreshes included) at shutdown."""
        if self._retrying is not None:
            self._retrying.cancel()
        if self._evictions:
            await asyncio.wait(set(self._evictions), timeout=1.0)
        tasks = list(self._all_fills)
        self._fills.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- fills ---------------------------------------------------------------------

    def _start_fill(self, key: Hashable, fetch: Callable[[], Awaitable[CachedResponse]],
                    policy: CachePolicy, tags: Collection[Hashable], *,
                    revalidate: bool = False, eager: bool = True) -> _Fill:
        """Eager when callers wait for it: its upstream call leaves in this turn, not
        after every request already taken in (a cold burst's other waiters)."""
        fill = _Fill(tuple(tags))
        self._fills[key] = fill
        run = self._run_fill(key, fetch, policy, fill, revalidate)
        fill.task = task = eager_task(run) if eager else asyncio.create_task(run)
        self._all_fills.add(task)
        task.add_done_callback(lambda t: self._fill_done(key, fill, t))
        return fill

    def _fill_done(self, key: Hashable, fill: _Fill,
                   task: asyncio.Task[tuple[CachedResponse, CacheResult | None]]) -> None:
        self._all_fills.discard(task)
        if self._fills.get(key) is fill:
            del self._fills[key]
        try:
            if task.cancelled():
                return
            if (exc := task.exception()) is not None:
                # retrieved here: a background refresh has nobody else to look at it
                log.info("cache_fill_failed", error=type(exc).__name__)
                return
            # The task's first done callback: the waiters themselves resume after it. Its
            # listeners were answered in the task's last step (``_run_fill``); these joined
            # in the loop turn between.
            self._answer(fill, *task.result())
        finally:
            fill.done = True
            fill.listeners = []  # a failed or cancelled fill answers nobody
            after, fill.after = fill.after, []
            for work in after:
                try:
                    work()
                except Exception:
                    log.exception("cache_fill_after_failed")

    @staticmethod
    def _answer(fill: _Fill, response: CachedResponse, source: CacheResult | None) -> None:
        """Call the fill's listeners (``on_fill``) with its answer, once each."""
        listeners, fill.listeners = fill.listeners, []
        # No collection while the answers go out: a cold burst's 200 writes allocate
        # enough for one every time (a young one ~0.2 ms, one in ~7 an older one,
        # 3-5 ms, before the last answer). It runs right after instead.
        collecting = gc.isenabled() and len(listeners) > 1
        if collecting:
            gc.disable()
        try:
            for on_fill, result in listeners:
                try:
                    on_fill(response, _final(result, source))
                except Exception:  # that caller still answers when it resumes
                    log.exception("cache_fill_listener_failed")
        finally:
            if collecting:
                gc.enable()

    async def _run_fill(self, key: Hashable, fetch: Callable[[], Awaitable[CachedResponse]],
                        policy: CachePolicy, this: _Fill, revalidate: bool = False,
                        ) -> tuple[CachedResponse, CacheResult | None]:
        """``_fill``, its listeners answered in the same step: a task's done callbacks run
        a loop turn after its last step (~0.2 ms more for every waiter of a cold burst)."""
        response, source = await self._fill(key, fetch, policy, this, revalidate)
        self._answer(this, response, source)
        return response, source

    async def _fill(self, key: Hashable, fetch: Callable[[], Awaitable[CachedResponse]],
                    policy: CachePolicy, this: _Fill, revalidate: bool = False,
                    ) -> tuple[CachedResponse, CacheResult | None]:
        """Fetch, store if allowed; returns (response, STALE | SHARED_HIT | None).

        ``fetch`` returns the upstream's 2xx answer or raises an UpstreamError (what the
        upstream client does). Stale-if-error stands in only for an upstream that is
        unavailable; an upstream 4xx about the resource (404 deleted, 410, 403) is the
        answer: the entry goes, the error reaches the caller."""
        _CURRENT_FILL.set(this)  # this task's context (and the tasks it starts) only
        tags = this.tags
        windows: tuple[float, float, float] | None = None
        try:
            if self._shared is None:
                response = await fetch()
            else:
                response, windows = await self._fill_shared(key, fetch, policy, tags,
                                                            revalidate)
        except UpstreamError as exc:
            if exc.unavailable:
                if stale_entry := self._stale_for_error(key):
                    log.info("cache_stale_if_error", reason=type(exc).__name__,
                             status=exc.status)
                    return stale_entry.response, CacheResult.STALE
                if (shared_stale := await self._shared_stale_for_error(key)) is not None:
                    log.info("cache_stale_if_error", reason=type(exc).__name__,
                             status=exc.status, tier="shared")
                    return shared_stale, CacheResult.STALE
            elif key in self._entries:
                self._remove(key, "invalidated")  # the old 200 must not outlive the answer
                self._publish()
            raise
        source = CacheResult.SHARED_HIT if windows is not None else None
        if this.outdated:
            return response, source  # invalidated meanwhile: answer, but do not store
        if response.status == 200:
            self._store(key, response, policy, tags, windows)
        elif key in self._entries:
            self._remove(key, "invalidated")
            self._publish()
        return response, source

    async def _fill_shared(self, key: Hashable, fetch: Callable[[], Awaitable[CachedResponse]],
                           policy: CachePolicy, tags: tuple[Hashable, ...], revalidate: bool,
                           ) -> tuple[CachedResponse, tuple[float, float, float] | None]:
        """The fill through the shared tier: (response, its remaining windows when it came
        from the shared tier, None when this replica fetched it)."""
        shared = self._shared
        assert shared is not None
        name, tag_names = shared_name(key), [shared_name(t) for t in tags]

        async def fetch_and_encode() -> tuple[CachedResponse, SharedEntry | None]:
            response = await fetch()
            if response.status != 200:
                return response, None
            entry = SharedEntry.of(
                response.status, response.body, response.content_type, response.etag,
                response.stored_at, response.headers, ttl_s=policy.ttl_s,
                swr_s=policy.stale_while_revalidate_s,
                stale_if_error_s=policy.stale_if_error_s, digest=response.digest)
            this = _CURRENT_FILL.get()
            if this is not None and this.own_evictions:
                # This answer revealed a change and evicted its tags everywhere: it IS the
                # new version. Store it after those evictions (still holding the fill lock,
                # so the waiters find it), not with the epochs read before them.
                await asyncio.wait(this.own_evictions, timeout=1.0)
                with contextlib.suppress(ClusterUnavailable):
                    await shared.put(name, entry, tag_names)
                return response, None
            return response, entry

        if revalidate:  # the client asked for a fresh answer: no shared hit, but share it
            return await self._refetch_shared(name, tag_names, fetch_and_encode), None
        try:
            fill = await shared.fill(name, fetch_and_encode, tags=tag_names,
                                     lock_ttl_s=self._fill_lock_ttl_s,
                                     wait_s=self._fill_lock_ttl_s)
        except ClusterUnavailable:
            return await fetch(), None  # Redis unusable: as in single-replica mode
        if fill.result in (FillResult.SHARED_HIT, FillResult.WAITED) and fill.entry is not None:
            e = fill.entry
            response = CachedResponse(e.status, e.body, e.content_type, e.etag, e.stored_at,
                                      e.headers, e.digest)
            return response, e.remaining(time.time())
        assert fill.value is not None
        return fill.value, None

    async def _refetch_shared(self, name: str, tag_names: list[str],
                              fetch_and_encode: Callable[[], Awaitable[
                                  tuple[CachedResponse, SharedEntry | None]]],
                              ) -> CachedResponse:
        shared = self._shared
        assert shared is not None
        epochs = None
        with contextlib.suppress(ClusterUnavailable):
            epochs = await shared.epochs(name, tag_names)
        response, entry = await fetch_and_encode()
        if entry is not None and epochs is not None:
            with contextlib.suppress(ClusterUnavailable):
                await shared.put(name, entry, tag_names, epochs=epochs)
        return response

    async def _shared_stale_for_error(self, key: Hashable) -> CachedResponse | None:
        if self._shared is None:
            return None
        try:
            e = await self._shared.get(shared_name(key))
        except ClusterUnavailable:
            return None
        if e is None or time.time() >= e.stale_until:
            return None
        return CachedResponse(e.status, e.body, e.content_type, e.etag, e.stored_at, e.headers,
                              e.digest)

    def _stale_for_error(self, key: Hashable) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and self._clock() < entry.error_until:
            return entry
        return None

    # -- storage -------------------------------------------------------------------

    def _store(self, key: Hashable, response: CachedResponse, policy: CachePolicy,
               tags: tuple[Hashable, ...],
               windows: tuple[float, float, float] | None = None) -> None:
        """``windows``: (fresh, swr, stale-if-error) seconds left, for an entry that comes
        from the shared tier with part of its life spent; else the policy's."""
        size = len(response.body) + ENTRY_OVERHEAD_BYTES + sum(
            len(k) + len(v) for k, v in response.headers)
        if key in self._entries:
            self._remove(key, None)
        if size > self.max_bytes // 4:
            log.info("cache_entry_too_large", size=size)
            self._publish()
            return
        now = self._clock()
        if windows is None:
            fresh_until = now + policy.ttl_s
            swr_until = fresh_until + policy.stale_while_revalidate_s
            error_until = fresh_until + policy.stale_if_error_s
        else:
            fresh_until, swr_until, error_until = (now + w for w in windows)
        self._entries[key] = _Entry(response, size, fresh_until, swr_until=swr_until,
                                    error_until=error_until, tags=tags)
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
