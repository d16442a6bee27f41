"""The shared cache tier: binary entries, one fill cluster-wide, takeover, evictions."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as sync_redis

from services.gateway.cluster import shared_cache as sc
from services.gateway.cluster.errors import ClusterUnavailable
from services.gateway.cluster.shared_cache import (
    Eviction,
    FillResult,
    SharedCache,
    SharedEntry,
    decode_entry,
    encode_entry,
)

DIGEST_1 = "sha256:" + "1" * 64
DIGEST_2 = "sha256:" + "2" * 64


def _entry(body: bytes = b'{"id":"P-1"}', ttl_s: float = 30, **kw) -> SharedEntry:
    return SharedEntry.of(200, body, "application/json", '"e1"', time.time(),
                          (("Cache-Control", "max-age=30"),), ttl_s=ttl_s, **kw)


async def _replicas(n, url, make_store, make_channels, **store_options):
    out = []
    for i in range(n):
        store = await make_store(url, **store_options)
        channels = await make_channels(store, sc.channels(store))
        out.append(SharedCache(store, channels, replica_id=f"replica-{i}"))
    return out


class Upstream:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self.started_at: list[float] = []
        self.answered_at: list[float] = []

    async def fetch(self):
        self.calls += 1
        self.started_at.append(time.monotonic())
        await asyncio.sleep(self.delay_s)
        self.answered_at.append(time.monotonic())
        body = b'{"n":%d}' % self.calls
        return body, _entry(body)


def test_entry_roundtrip_is_binary_and_keeps_windows():
    body = bytes(range(256)) * 10  # not JSON, not UTF-8
    entry = SharedEntry.of(203, body, "application/octet-stream", '"x"', 1700000000.5,
                           (("X-A", "1"), ("Vary", "Accept")), ttl_s=10, swr_s=5,
                           stale_if_error_s=60, now=1700000000.0)
    raw = encode_entry(entry)
    assert raw.endswith(body)
    assert decode_entry(raw) == entry
    assert entry.remaining(1700000004.0) == (6.0, 11.0, 66.0)
    assert decode_entry(b"not an entry") is None
    # the content digest travels with the entry, right after the magic (what the eviction
    # script compares); an entry of the format before it (AGC1) is a miss, not garbage
    versioned = SharedEntry.of(200, b"{}", "application/json", '"y"', 1.0, ttl_s=1,
                               digest=DIGEST_1)
    raw = encode_entry(versioned)
    assert raw.startswith(sc.digest_prefix(DIGEST_1))
    assert decode_entry(raw) == versioned and decode_entry(raw).digest == DIGEST_1
    assert decode_entry(b"AGC1" + raw[4:]) is None


async def test_put_and_get_across_replicas_with_px_of_the_longest_window(
        redis_url, make_store, make_channels):
    a, b = await _replicas(2, redis_url, make_store, make_channels)
    entry = _entry(ttl_s=10, swr_s=5, stale_if_error_s=50)
    assert await a.put("passport:P-1", entry, tags=["passport:P-1"])
    assert await b.get("passport:P-1") == entry
    pttl = sync_redis.Redis.from_url(redis_url).pttl(a._entry_key("passport:P-1"))
    assert 59_000 < pttl <= 60_000


async def test_cold_key_on_three_replicas_makes_one_upstream_call(redis_url, make_store,
                                                                  make_channels):
    # 60 calls at once open each pool's connections: on a busy CI box that may take longer
    # than the 0.5 s default bound, and what is tested here is single-flight, not the bound
    replicas = await _replicas(3, redis_url, make_store, make_channels, timeout_s=2.0)
    upstream = Upstream(delay_s=0.3)
    finished: list[float] = []

    async def get(cache):
        fill = await cache.fill("tariff:E-1", upstream.fetch, wait_s=2)
        finished.append(time.monotonic())
        return fill

    fills = await asyncio.gather(*(get(replicas[i % 3]) for i in range(60)))
    assert upstream.calls == 1
    results = [f.result for f in fills]
    assert results.count(FillResult.FILLED) == 1
    assert results.count(FillResult.WAITED) == 59
    assert {f.entry.body for f in fills} == {b'{"n":1}'}
    # every waiter is released by the publish right after the fill lands (no poll step)
    lag = max(finished) - upstream.answered_at[0]
    # a missed publish would release them at wait_s (~1.7 s after); 1 s leaves a busy CI box
    # room (0.44 s was seen once)
    assert lag < 1.0, f"released {lag:.3f}s after the fill landed"
    # now warm: a shared hit, no call
    hit = await replicas[1].fill("tariff:E-1", upstream.fetch)
    assert hit.result is FillResult.SHARED_HIT and upstream.calls == 1


async def test_a_dead_fillers_lock_expires_and_a_waiter_takes_over(redis_url, make_store,
                                                                   make_channels):
    (cache,) = await _replicas(1, redis_url, make_store, make_channels)
    # a replica took the fill lock and was SIGKILLed: nobody will release or publish
    raw = sync_redis.Redis.from_url(redis_url)
    raw.set(cache._store.key("cache-fill", "k"), "dead-filler", px=300)
    upstream = Upstream(delay_s=0.01)
    started = time.monotonic()
    fill = await cache.fill("k", upstream.fetch, lock_ttl_s=1, wait_s=2)
    elapsed = time.monotonic() - started
    assert fill.result is FillResult.FILLED and upstream.calls == 1
    assert 0.25 < elapsed < 1  # after the dead lock's 300 ms, well before wait_s


async def test_a_cancelled_caller_does_not_cancel_the_fill(redis_url, make_store,
                                                           make_channels):
    a, b = await _replicas(2, redis_url, make_store, make_channels)
    upstream = Upstream(delay_s=0.2)
    caller = asyncio.create_task(a.fill("k", upstream.fetch))
    await asyncio.sleep(0.05)
    waiter = asyncio.create_task(b.fill("k", upstream.fetch))
    await asyncio.sleep(0.02)
    caller.cancel()
    fill = await asyncio.wait_for(waiter, 1)
    assert fill.result is FillResult.WAITED and fill.entry.body == b'{"n":1}'
    assert upstream.calls == 1


async def test_eviction_reaches_other_replicas_and_beats_an_inflight_fill(
        redis_url, make_store, make_channels):
    a, b, c = await _replicas(3, redis_url, make_store, make_channels)
    seen: dict[str, list[Eviction]] = {"a": [], "c": []}
    a.on_evict(seen["a"].append)
    c.on_evict(seen["c"].append)
    await a.put("passport:P-1", _entry(), tags=["passport:P-1"])
    await a.put("passport:P-1:history", _entry(), tags=["passport:P-1"])
    assert await b.evict(tags=["passport:P-1"]) == 2
    assert await a.get("passport:P-1") is None
    for name in ("a", "c"):
        for _ in range(100):
            if seen[name]:
                break
            await asyncio.sleep(0.005)
        assert seen[name] == [Eviction(tags=("passport:P-1",), origin="replica-1")]

    # a fill in flight when the eviction lands answers its caller but does not store
    upstream = Upstream(delay_s=0.15)
    inflight = asyncio.create_task(a.fill("passport:P-1", upstream.fetch,
                                          tags=["passport:P-1"]))
    await asyncio.sleep(0.05)
    await c.evict(keys=["passport:P-1"])
    fill = await inflight
    assert fill.result is FillResult.FILLED and fill.value == b'{"n":1}'
    assert fill.entry is None and await b.get("passport:P-1") is None


async def test_an_eviction_that_keeps_a_digest_spares_exactly_the_entries_holding_it(
        redis_url, make_store, make_channels):
    """A change event announcing version D: entries holding D stay in Redis (and in their
    tag's set, so a later eviction still finds them); entries of another version or
    without a digest go; every replica is told which digest to keep."""
    a, b = await _replicas(2, redis_url, make_store, make_channels)
    seen: list[Eviction] = []
    a.on_evict(seen.append)
    await a.put("public:P-1", _entry(b"v1", digest=DIGEST_1), tags=["passport:P-1"])
    await a.put("owned:P-1", _entry(b"owned"), tags=["passport:P-1"])  # no digest
    await a.put("public:P-2", _entry(b"v2", digest=DIGEST_2), tags=["passport:P-1"])
    assert await b.evict(tags=["passport:P-1"], keep_digest=DIGEST_1) == 2
    assert (await a.get("public:P-1")).body == b"v1"
    assert await a.get("owned:P-1") is None and await a.get("public:P-2") is None
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.005)
    assert seen == [Eviction(tags=("passport:P-1",), origin="replica-1", keep_digest=DIGEST_1)]
    # the version after D: the entry holding D goes now
    assert await b.evict(tags=["passport:P-1"], keep_digest=DIGEST_2) == 1
    assert await a.get("public:P-1") is None
    # an unknown digest keeps nothing that has none: "" never matches
    await a.put("owned:P-1", _entry(b"owned"), tags=["passport:P-1"])
    assert await b.evict(tags=["passport:P-1"], keep_digest="x" * 300) == 1
    # keys, too; and a fill in flight does not store even when the entry was spared
    await a.put("public:P-1", _entry(b"v1", digest=DIGEST_1), tags=["passport:P-1"])
    upstream = Upstream(delay_s=0.15)
    inflight = asyncio.create_task(a.fill("public:P-3", upstream.fetch, tags=["passport:P-1"]))
    await asyncio.sleep(0.05)
    assert await b.evict(keys=["public:P-1"], tags=["passport:P-1"], keep_digest=DIGEST_1) == 0
    assert (await a.get("public:P-1")).body == b"v1"
    fill = await inflight
    assert fill.result is FillResult.FILLED and fill.entry is None
    assert await a.get("public:P-3") is None


async def test_evict_all_drops_every_entry_everywhere(redis_url, make_store, make_channels):
    a, b = await _replicas(2, redis_url, make_store, make_channels)
    seen: list[Eviction] = []
    b.on_evict(seen.append)
    for i in range(5):
        await a.put(f"k{i}", _entry(), tags=["t"])
    assert await a.evict_all() >= 5
    assert all([await b.get(f"k{i}") is None for i in range(5)])
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.005)
    assert seen and seen[0].everything


async def test_redis_down_raises_before_any_fetch_and_resyncs_after(
        private_redis, make_store, make_channels):
    (cache,) = await _replicas(1, private_redis.url, make_store, make_channels)
    seen: list[Eviction] = []
    cache.on_evict(seen.append)
    upstream = Upstream(delay_s=0.01)
    private_redis.kill()
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable):
        await cache.fill("k", upstream.fetch)
    assert time.monotonic() - started < 0.5 and upstream.calls == 0
    private_redis.start()
    # evictions published while we were cut off are lost: the resubscription says
    # "drop everything" to the memory tier
    for _ in range(300):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen == [Eviction(everything=True)]
    assert (await cache.fill("k", upstream.fetch)).result is FillResult.FILLED
