"""Leases: one holder among many, renewal, takeover, loss noticed at once."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from services.gateway.cluster.lease import Lease, LeaseKeeper, Outcome
from services.gateway.cluster.metrics import ClusterMetrics

REPO = Path(__file__).resolve().parents[4]


async def test_one_holder_among_concurrent_acquirers(redis_url, make_store):
    stores = [await make_store(redis_url) for _ in range(5)]
    leases = [Lease(stores[i % 5], "poller-x", f"r{i}", ttl_s=2) for i in range(20)]
    results = await asyncio.gather(*(lease.acquire() for lease in leases))
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.ACQUIRED) == 1
    assert outcomes.count(Outcome.HELD) == 19
    winner = leases[outcomes.index(Outcome.ACQUIRED)]
    assert winner.held and winner.fence == 1
    assert await leases[0].holder() == winner.holder_id
    assert all(0 < r.held_for_s <= 2 for r in results if r.outcome is Outcome.HELD)


async def test_fence_grows_with_each_holder_and_release_hands_over(redis_url, make_store):
    store = await make_store(redis_url)
    a, b = Lease(store, "l", "a", ttl_s=5), Lease(store, "l", "b", ttl_s=5)
    assert (await a.acquire()).fence == 1
    assert (await b.acquire()).outcome is Outcome.HELD
    await a.release()
    assert (await b.acquire()).fence == 2
    assert not await a.renew()  # not ours any more


async def test_renewal_keeps_the_lease_past_its_ttl(redis_url, make_store):
    store = await make_store(redis_url)
    keeper = LeaseKeeper(Lease(store, "l", "a", ttl_s=0.3))
    other = Lease(store, "l", "b", ttl_s=0.3)
    await keeper.start()
    try:
        await asyncio.wait_for(keeper.acquired.wait(), 1)
        await asyncio.sleep(0.9)  # three ttls
        assert keeper.held
        assert (await other.acquire()).outcome is Outcome.HELD
    finally:
        await keeper.stop()
    assert (await other.acquire()).outcome is Outcome.ACQUIRED  # stop() released it


async def test_takeover_within_two_periods_after_the_holder_dies(redis_url, make_store):
    ttl = 0.4
    s1, s2 = await make_store(redis_url), await make_store(redis_url)
    holder = LeaseKeeper(Lease(s1, "poller", "r1", ttl_s=ttl))
    await holder.start()
    await asyncio.wait_for(holder.acquired.wait(), 1)
    standby = LeaseKeeper(Lease(s2, "poller", "r2", ttl_s=ttl))
    await standby.start()
    try:
        await asyncio.sleep(ttl)
        assert not standby.held
        # the holder's task dies without releasing (a SIGKILLed pod)
        holder._task.cancel()
        died = time.monotonic()
        await asyncio.wait_for(standby.acquired.wait(), 2 * ttl)
        assert time.monotonic() - died < 2 * ttl
        assert standby.fence == 2
    finally:
        await standby.stop()


async def test_holder_stops_work_the_moment_redis_goes_away(private_redis, make_store):
    registry = CollectorRegistry()
    metrics = ClusterMetrics(registry)
    store = await make_store(private_redis.url)
    keeper = LeaseKeeper(Lease(store, "poller", "r1", ttl_s=0.6), on_change=metrics.lease_state)
    running, stopped = asyncio.Event(), asyncio.Event()

    async def work():
        running.set()
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    runner = asyncio.create_task(keeper.run(work))
    try:
        await asyncio.wait_for(running.wait(), 1)
        assert registry.get_sample_value("ampgate_cluster_leases_held", {"lease": "poller"}) == 1
        private_redis.kill()
        killed = time.monotonic()
        await asyncio.wait_for(stopped.wait(), 1)
        # noticed at the next renewal (ttl/3) at the latest, well before the ttl
        assert time.monotonic() - killed < 0.55
        assert not keeper.held
        assert registry.get_sample_value("ampgate_cluster_leases_held", {"lease": "poller"}) == 0
        # Redis back (empty): the same keeper takes the lease again and work restarts
        running.clear()
        private_redis.start()
        await asyncio.wait_for(running.wait(), 3)
        assert keeper.held
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await keeper.stop()


async def test_hung_renewal_flips_held_by_the_local_bound(private_redis, make_store):
    # a store timeout longer than the lease: only the local bound can stop the holder
    store = await make_store(private_redis.url, timeout_s=1.0)
    keeper = LeaseKeeper(Lease(store, "l", "a", ttl_s=0.3))
    await keeper.start()
    try:
        await asyncio.wait_for(keeper.acquired.wait(), 1)
        private_redis.pause()
        paused = time.monotonic()
        await asyncio.wait_for(keeper.lost.wait(), 1)
        assert time.monotonic() - paused < 0.3  # before the key could expire in Redis
    finally:
        private_redis.resume()
        await keeper.stop()


_HOLDER = """
import asyncio, sys
from services.gateway.cluster.lease import Lease, LeaseKeeper
from services.gateway.cluster.store import ClusterStore

async def main():
    store = ClusterStore(sys.argv[1], timeout_s=0.5)
    await store.start()
    keeper = LeaseKeeper(Lease(store, "poller", "child", ttl_s=float(sys.argv[2])))
    await keeper.start()
    await keeper.acquired.wait()
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_takeover_after_the_holder_process_is_sigkilled(redis_url, make_store):
    ttl = 0.5
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, redis_url, str(ttl),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        async def held_line():
            while (line := await proc.stdout.readline()) and line.strip() != b"held":
                pass  # the child's log lines
            return line

        assert (await asyncio.wait_for(held_line(), 15)).strip() == b"held"
        standby = LeaseKeeper(Lease(await make_store(redis_url), "poller", "r2", ttl_s=ttl))
        await standby.start()
        try:
            await asyncio.sleep(ttl / 2)
            assert not standby.held and await standby.lease.holder() == "child"
            proc.kill()  # SIGKILL: no release, no goodbye
            await proc.wait()
            killed = time.monotonic()
            await asyncio.wait_for(standby.acquired.wait(), 2 * ttl)
            assert time.monotonic() - killed < 2 * ttl
        finally:
            await standby.stop()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
