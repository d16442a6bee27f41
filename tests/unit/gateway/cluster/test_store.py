"""ClusterStore: bounded calls, one error type, up/down tracking, recovery in place."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from services.gateway.cluster.errors import ClusterUnavailable
from services.gateway.cluster.metrics import ClusterMetrics
from services.gateway.cluster.store import ClusterStore


async def _until(predicate, timeout_s: float = 3.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def test_rejects_unknown_scheme():
    with pytest.raises(ValueError):
        ClusterStore("http://127.0.0.1:6379")


def test_repr_hides_the_password():
    store = ClusterStore("redis://ampgate:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(store)


async def test_calls_and_scripts_work(redis_url, make_store):
    store = await make_store(redis_url)
    assert store.is_up
    await store.call("t.set", lambda: store.redis.set(store.key("a"), b"1"))
    echo = store.script("t.echo", "return {KEYS[1], ARGV[1]}")
    assert await echo(keys=[store.key("a")], args=["x"]) == [store.key("a").encode(), b"x"]


async def test_killed_redis_fails_fast_then_recovers_in_place(private_redis, make_store):
    registry = CollectorRegistry()
    metrics = ClusterMetrics(registry)
    store = await make_store(private_redis.url, on_state=metrics.store_state,
                             on_call=metrics.observe_call)
    script = store.script("t.incr", "return redis.call('INCR', KEYS[1])")
    assert await script(keys=[store.key("n")]) == 1
    assert registry.get_sample_value("ampgate_cluster_store_up") == 1

    private_redis.kill()
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable):
        await script(keys=[store.key("n")])
    assert time.monotonic() - started < 0.5
    assert not store.is_up
    assert registry.get_sample_value("ampgate_cluster_store_up") == 0
    # while down: refused at once, no network
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable):
        await store.call("t.get", lambda: store.redis.get(store.key("n")))
    assert time.monotonic() - started < 0.05

    private_redis.start()  # same port, empty, no scripts loaded
    await _until(lambda: store.is_up)
    assert registry.get_sample_value("ampgate_cluster_store_up") == 1
    assert await script(keys=[store.key("n")]) == 1  # same objects; script reloaded
    assert registry.get_sample_value(
        "ampgate_cluster_redis_call_duration_seconds_count",
        {"operation": "t.incr", "outcome": "ok"}) == 2


async def test_hanging_redis_is_bounded_by_the_timeout(private_redis, make_store):
    store = await make_store(private_redis.url, timeout_s=0.1, health_interval_s=5)
    private_redis.pause()
    try:
        for _ in range(3):  # each call gives up at its bound; a run of them = down
            started = time.monotonic()
            with pytest.raises(ClusterUnavailable):
                await store.call("t.get", lambda: store.redis.get("x"))
            elapsed = time.monotonic() - started
            assert 0.05 < elapsed < 0.5
        assert not store.is_up
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable):
            await store.call("t.get", lambda: store.redis.get("x"))
        assert time.monotonic() - started < 0.01  # down: refused at once
    finally:
        private_redis.resume()
    await _until(lambda: store.is_up)
    assert await store.call("t.get", lambda: store.redis.get("x")) is None


async def test_idle_store_notices_an_outage(private_redis, make_store):
    store = await make_store(private_redis.url, health_interval_s=0.1)
    private_redis.kill()
    await _until(lambda: not store.is_up, timeout_s=1.0)


async def test_store_down_at_start_comes_up_by_itself(private_redis, make_store):
    url = private_redis.url
    private_redis.kill()
    store = await make_store(url, up=False)
    assert not store.is_up
    private_redis.start()
    await _until(lambda: store.is_up)
