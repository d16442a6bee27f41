"""Shared digests: one announcement per transition cluster-wide, crash replay, joins,
a flushed Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from services.gateway.cluster.digests import Claim, SharedDigests, Transition
from services.gateway.cluster.errors import ClusterUnavailable


def _eid() -> str:
    return str(uuid.uuid4())


async def _replicas(n, url, make_store):
    return [SharedDigests(await make_store(url)) for _ in range(n)]


async def test_concurrent_claims_by_three_replicas_one_wins(redis_url, make_store):
    replicas = await _replicas(3, redis_url, make_store)
    await replicas[0].seed("price:ctx:E-1", "sha256:old")
    for round_ in range(20):  # many rounds: a race would show
        new = f"sha256:new{round_}"
        previous = "sha256:old" if round_ == 0 else f"sha256:new{round_ - 1}"
        results = await asyncio.gather(*(
            r.compare_and_set("price:ctx:E-1", previous, new, _eid())
            for r in replicas for _ in range(3)))
        claims = [x.claim for x in results]
        assert claims.count(Claim.WON) == 1, claims
        assert all(x.current == new for x in results)


async def test_replay_after_a_crash_is_already_won_even_if_the_digest_moved_on(
        redis_url, make_store):
    a, b = await _replicas(2, redis_url, make_store)
    row = Transition("passport:P-1", None, "sha256:v1", _eid())  # the unclaimed outbox row
    assert (await a.compare_and_set(row.entity, row.previous, row.new, row.event_id)).claim \
        is Claim.WON
    # ...replica a crashes before marking the row publishable; b sees the next version
    assert (await b.compare_and_set("passport:P-1", "sha256:v1", "sha256:v2", _eid())).claim \
        is Claim.WON
    # a restarts and re-runs the script for its unclaimed row
    replay = await a.compare_and_set(row.entity, row.previous, row.new, row.event_id)
    assert replay.claim is Claim.ALREADY_WON and replay.publish
    assert replay.current == "sha256:v2"


async def test_lost_tells_the_current_digest(redis_url, make_store):
    (d,) = await _replicas(1, redis_url, make_store)
    await d.compare_and_set("e", None, "sha256:b", _eid())
    # a replica that still believes "a": the cluster is at "b"; "b -> c" is unannounced
    lost = await d.compare_and_set("e", "sha256:a", "sha256:c", _eid())
    assert lost.claim is Claim.LOST and lost.current == "sha256:b" and not lost.publish
    retry = await d.compare_and_set("e", lost.current, "sha256:c", _eid())
    assert retry.claim is Claim.WON
    # a tombstone ("" = deleted) is a digest like any other, not "absent"
    assert (await d.compare_and_set("e", "sha256:c", "", _eid())).claim is Claim.WON
    assert (await d.compare_and_set("e", None, "sha256:d", _eid())).claim is Claim.LOST
    assert await d.current("e") == ""


async def test_joining_replica_announces_nothing_already_known(redis_url, make_store):
    old, joining = await _replicas(2, redis_url, make_store)
    known = [Transition(f"price:ctx:E-{i}", None, f"sha256:{i}", _eid()) for i in range(300)]
    assert all(r.claim is Claim.WON for r in await old.compare_and_set_many(known))
    # the new replica has no local digests: every sighting is a snapshot candidate
    seen = [Transition(t.entity, None, t.new, _eid()) for t in known]
    results = await joining.compare_and_set_many(seen)
    assert [r.claim for r in results] == [Claim.LOST] * 300
    assert all(r.current == t.new for r, t in zip(results, seen, strict=True))
    # seeding never overwrites what the cluster knows
    assert not await joining.seed("price:ctx:E-0", "sha256:other")
    assert await joining.current("price:ctx:E-0") == "sha256:0"


async def test_flushed_redis_one_announcement_per_entity(private_redis, make_store):
    replicas = await _replicas(3, private_redis.url, make_store)
    await replicas[0].compare_and_set("passport:P-1", None, "sha256:v1", _eid())
    private_redis.restart()  # back empty
    for r in replicas:
        await asyncio.wait_for(r._store.wait_up(), 3)
    # every replica still believes v1 locally and now sees v2
    results = await asyncio.gather(*(
        r.compare_and_set("passport:P-1", "sha256:v1", "sha256:v2", _eid())
        for r in replicas))
    assert [x.claim for x in results].count(Claim.WON) == 1
    # unchanged entities: pollers seed what they saw, announcing nothing
    assert await replicas[1].seed_many([("passport:P-2", "sha256:x")]) == 1
    assert (await replicas[2].compare_and_set("passport:P-2", None, "sha256:x", _eid())
            ).claim is Claim.LOST


async def test_redis_down_raises_cluster_unavailable(private_redis, make_store):
    (d,) = await _replicas(1, private_redis.url, make_store)
    private_redis.kill()
    with pytest.raises(ClusterUnavailable):
        await d.compare_and_set("e", None, "sha256:a", _eid())
    with pytest.raises(ClusterUnavailable):
        await d.compare_and_set_many([Transition("e", None, "sha256:a", _eid())])
