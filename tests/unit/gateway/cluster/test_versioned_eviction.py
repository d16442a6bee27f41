"""A change event evicts what holds another version, in both tiers and on every replica, and
leaves what already holds the version it announces (services/gateway/eviction.py).

Two or three replicas' response caches (memory tier + the shared tier on a real Redis), the
eviction policy called as the invalidation consumer calls it. What a user would notice: which
answers come from cache (and which tier) and how many upstream calls are made."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from services.common.events import PASSPORT_TOPIC
from services.common.settings import CachePolicy
from services.gateway.cache import (
    CachedResponse,
    CacheResult,
    ResponseCache,
    make_response,
    shared_name,
)
from services.gateway.changes import ChangeKind, Detection
from services.gateway.cluster import shared_cache as sc
from services.gateway.cluster.errors import ClusterUnavailable
from services.gateway.cluster.shared_cache import SharedCache
from services.gateway.eviction import OWNED_LIST_TAG, evict_change, evict_event, passport_tag
from services.gateway.metrics import GatewayMetrics

POLICY = CachePolicy(ttl_s=60, stale_while_revalidate_s=0, stale_if_error_s=0)
PID = "BP-VERSIONED"
PUBLIC = ("passport", "public", PID)
OWNED = ("passport", "owned", PID)
OWNED_LIST = ("passport", "owned_list")
PUBLIC_TAGS = (passport_tag(PID),)  # the handler's tags of both views
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")


class Upstream:
    """The public passport upstream: answers the current version, with its digest (as the
    handler's ``inspect`` does); counts calls."""

    def __init__(self, body: bytes, digest: str) -> None:
        self.body, self.digest, self.calls = body, digest, 0
        self.detect: Callable[[], None] | None = None  # the detector, inside the fill

    def fetch(self, digest: bool = True) -> Callable[[], Awaitable[CachedResponse]]:
        async def fetch() -> CachedResponse:
            self.calls += 1
            if self.detect is not None:
                self.detect()
            return make_response(200, self.body, "application/json",
                                 digest=self.digest if digest else "")
        return fetch


@pytest.fixture
async def replicas(redis_url, make_store, make_channels, namespace
                   ) -> AsyncIterator[Callable[[int], Awaitable[list[ResponseCache]]]]:
    """n replicas' caches (memory tier + shared tier) on one Redis, closed after the test."""
    made: list[ResponseCache] = []

    async def make(n: int) -> list[ResponseCache]:
        for i in range(n):
            store = await make_store(redis_url, namespace=namespace)
            channels = await make_channels(store, sc.channels(store))
            shared = SharedCache(store, channels, replica_id=f"replica-{i}")
            made.append(ResponseCache(1 << 20, GatewayMetrics(CollectorRegistry()),
                                      shared=shared))
        return made[-n:]

    yield make
    for cache in made:
        await cache.close()
        await cache._shared.close()  # cache_ctx closes it after the cache


async def get(cache: ResponseCache, upstream: Upstream, key=PUBLIC, tags=PUBLIC_TAGS,
              digest: bool = True) -> tuple[bytes, CacheResult]:
    response, result = await cache.get_or_fetch(key, upstream.fetch(digest), POLICY,
                                                route="passport_public", tags=tags)
    return response.body, result


async def told(caches: list[ResponseCache], sender: ResponseCache) -> None:
    """Every eviction ``sender`` published so far has been applied by every other replica:
    a marker eviction published after them (one channel: in order) has arrived everywhere."""
    await sender.settled()
    marker = ("marker", str(time.monotonic()))
    up = Upstream(b"marker", "")

    async def lookup(cache: ResponseCache) -> CacheResult:
        return (await cache.get_or_fetch(marker, up.fetch(), POLICY, route="marker",
                                         tags=[marker]))[1]

    for cache in caches:
        await lookup(cache)
    sender.invalidate_tag(marker)
    await sender.settled()
    deadline = time.monotonic() + 5
    for cache in caches:
        while await lookup(cache) is CacheResult.HIT:
            assert time.monotonic() < deadline, "an eviction message never arrived"
            await asyncio.sleep(0.01)


def snapshot(digest: str) -> dict:
    return {"passport_id": PID, "change": ChangeKind.SNAPSHOT.value, "digest": digest,
            "detected_by": Detection.READ.value}


async def test_the_event_of_the_version_held_evicts_it_nowhere(replicas):
    a, b, c = caches = await replicas(3)
    upstream = Upstream(b'{"v": 1}', D1)
    # A's first read: the detector announces a SNAPSHOT of D1 and evicts at once, here
    upstream.detect = lambda: evict_change(a, "passport", "", PID, ChangeKind.SNAPSHOT.value,
                                           "event-1", D1, Detection.READ.value)
    assert (await get(a, upstream))[1] is CacheResult.MISS
    upstream.detect = None
    owned = Upstream(b'{"id": "owned"}', "")
    await get(b, owned, key=OWNED, digest=False)  # an owned view: no digest, evicted as today
    await get(b, owned, key=OWNED_LIST, tags=(OWNED_LIST_TAG,), digest=False)
    # A's own event comes back to A (skipped: EvictedHere) and to B and C: they evict as
    # the invalidation consumer does
    for cache in (b, c):
        evict_event(cache, PASSPORT_TOPIC, PID, snapshot(D1))
        await told(caches, cache)
    # A's memory tier kept it, Redis kept it: B and C are answered from there
    assert [await get(x, upstream) for x in caches] == [
        (b'{"v": 1}', CacheResult.HIT), (b'{"v": 1}', CacheResult.SHARED_HIT),
        (b'{"v": 1}', CacheResult.SHARED_HIT)]
    assert [(await get(x, upstream))[1] for x in caches] == [CacheResult.HIT] * 3
    assert upstream.calls == 1
    # what knows no digest went, on every replica and in Redis: one refill each, shared
    assert (await get(c, owned, key=OWNED, digest=False))[1] is CacheResult.MISS
    assert (await get(b, owned, key=OWNED, digest=False))[1] is CacheResult.SHARED_HIT
    assert (await get(a, owned, key=OWNED_LIST, tags=(OWNED_LIST_TAG,), digest=False))[1] \
        is CacheResult.MISS


async def test_a_replica_holding_the_old_version_drops_it_and_the_shared_new_one_stays(
        replicas):
    """B holds v1 (D1) in memory; the shared tier already holds v2 (D2), filled by A, whose
    eviction message B has not applied yet; the event for D2 arrives at B: B's v1 goes at
    once, the shared v2 stays and is B's next answer (no upstream call)."""
    a, b = caches = await replicas(2)
    upstream = Upstream(b'{"v": 1}', D1)
    await get(b, upstream)  # B: memory v1, Redis v1
    upstream.body, upstream.digest = b'{"v": 2}', D2
    # A filled v2 into Redis (its eviction for the change not applied on B yet)
    shared_a = a._shared
    assert shared_a is not None
    assert await shared_a.put(shared_name(PUBLIC), sc.SharedEntry.of(
        200, b'{"v": 2}', "application/json", '"e2"', time.time(), ttl_s=60, digest=D2),
        tags=[shared_name(passport_tag(PID))])
    assert (await get(b, upstream)) == (b'{"v": 1}', CacheResult.HIT)  # the race: B is behind
    evict_event(b, PASSPORT_TOPIC, PID, {"passport_id": PID, "digest": D2,
                                         "change": ChangeKind.UPDATED.value,
                                         "detected_by": Detection.POLL.value})
    await told(caches, b)
    assert await get(b, upstream) == (b'{"v": 2}', CacheResult.SHARED_HIT)
    assert await get(a, upstream) == (b'{"v": 2}', CacheResult.SHARED_HIT)
    assert upstream.calls == 1  # B's first fill only


async def test_another_version_or_no_digest_evicts_everywhere_at_once(replicas):
    a, b = caches = await replicas(2)
    upstream = Upstream(b'{"v": 1}', D1)
    for cache in caches:
        await get(cache, upstream)
    assert upstream.calls == 1
    # a change found on A (say, a poll) to D3: A evicts at once, the shared tier and B follow
    upstream.body, upstream.digest = b'{"v": 3}', D3
    evict_change(a, "passport", "", PID, ChangeKind.UPDATED.value, "event-3", D3,
                 Detection.POLL.value)
    await told(caches, a)
    assert await get(b, upstream) == (b'{"v": 3}', CacheResult.MISS)
    assert await get(a, upstream) == (b'{"v": 3}', CacheResult.SHARED_HIT)
    assert upstream.calls == 2
    # a write's digest is of what was sent, not what the upstream serves now: even the
    # digest held evicts (the upstream may have stored something else)
    evict_event(b, PASSPORT_TOPIC, PID, {"passport_id": PID, "digest": D3,
                                         "change": ChangeKind.UPDATED.value,
                                         "detected_by": Detection.WRITE.value})
    await told(caches, b)
    assert (await get(a, upstream))[1] is CacheResult.MISS
    assert upstream.calls == 3
    # a deletion carries no digest: everything goes
    evict_event(b, PASSPORT_TOPIC, PID, {"passport_id": PID,
                                         "change": ChangeKind.DELETED.value})
    await told(caches, b)
    assert (await get(a, upstream))[1] is CacheResult.MISS
    assert upstream.calls == 4


async def test_an_eviction_redis_missed_is_replayed_keeping_the_version(replicas):
    """A burst of SNAPSHOTs can time out on B's Redis pool: B replays the evictions when its
    store is up again, and they keep what they would have kept (the first fills); two missed
    evictions of one tag that keep different versions keep none."""
    a, b = caches = await replicas(2)
    upstream, owned = Upstream(b'{"v": 1}', D1), Upstream(b'{"id": "owned"}', "")
    await get(a, upstream)  # public D1: A's memory, Redis
    await get(a, owned, key=OWNED, digest=False)  # owned view: no digest
    shared_b = b._shared
    assert shared_b is not None
    real_evict = shared_b.evict

    async def timed_out(*args, **kwargs):
        raise ClusterUnavailable("cache.evict", "TimeoutError")

    shared_b.evict = timed_out  # type: ignore[method-assign]
    evict_event(b, PASSPORT_TOPIC, PID, snapshot(D1))
    await b.settled()
    shared_b.evict = real_evict  # type: ignore[method-assign]
    assert await get(b, owned, key=OWNED, digest=False) == (b'{"id": "owned"}',
                                                           CacheResult.SHARED_HIT)  # missed
    b.store_state(True)  # Redis answers again: the replay
    await told(caches, b)
    assert await get(a, upstream) == (b'{"v": 1}', CacheResult.HIT)
    assert await get(b, upstream) == (b'{"v": 1}', CacheResult.SHARED_HIT)
    assert (await get(a, owned, key=OWNED, digest=False))[1] is CacheResult.MISS
    assert upstream.calls == 1

    shared_b.evict = timed_out  # type: ignore[method-assign]
    evict_event(b, PASSPORT_TOPIC, PID, snapshot(D1))
    evict_event(b, PASSPORT_TOPIC, PID, {**snapshot(D2), "change": "CHANGE_KIND_UPDATED"})
    await b.settled()
    shared_b.evict = real_evict  # type: ignore[method-assign]
    b.store_state(True)
    await told(caches, b)
    assert (await get(a, upstream))[1] is CacheResult.MISS
    assert upstream.calls == 2


async def test_an_eviction_that_timed_out_while_redis_stayed_up_is_retried(
        private_redis, make_store, make_channels, namespace):
    """One eviction call times out (Redis hung for a moment) but the store never goes down,
    so no down→up replays it: the retry does, and the old version leaves the shared tier."""
    caches = []
    for i in range(2):
        store = await make_store(private_redis.url, namespace=namespace, timeout_s=0.1,
                                 health_interval_s=30, down_after_timeouts=3)
        channels = await make_channels(store, sc.channels(store))
        caches.append(ResponseCache(1 << 20, GatewayMetrics(CollectorRegistry()),
                                    shared=SharedCache(store, channels, replica_id=f"r{i}")))
    a, b = caches
    try:
        upstream = Upstream(b'{"v": 1}', D1)
        await get(a, upstream)  # v1 in A's memory and in Redis
        private_redis.pause()
        try:
            evict_event(b, PASSPORT_TOPIC, PID, {**snapshot(D2), "change": "CHANGE_KIND_UPDATED"})
            await b.settled()  # its one call timed out: deferred
        finally:
            private_redis.resume()
        assert b._shared.store_up  # one timeout: not down, nothing will replay it
        upstream.body, upstream.digest = b'{"v": 2}', D2
        deadline = time.monotonic() + 5
        # until the retry, B reads v1 from Redis (and keeps it in memory): both must go
        while (await get(b, upstream))[0] != b'{"v": 2}':
            assert time.monotonic() < deadline, "the missed eviction was never retried"
            await asyncio.sleep(0.1)
        assert (await get(a, upstream))[0] == b'{"v": 2}'  # A was told too
    finally:
        for cache in caches:
            await cache.close()
            await cache._shared.close()
