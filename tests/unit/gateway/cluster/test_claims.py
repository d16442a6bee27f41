"""The claimer: detectors of several replicas (each with its own outbox) against one real
Redis. What counts is what the relay would send: the rows ``next_batch`` returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from services.common.outbox import Outbox
from services.gateway.changes import ChangeDetector, Detection, Observation
from services.gateway.claims import Claimer
from services.gateway.cluster import SharedDigests
from services.gateway.metrics import GatewayMetrics

TARIFF_A = {"rate_name": "A", "currency": "EUR"}
TARIFF_B = {"rate_name": "B", "currency": "EUR"}


class Replica:
    def __init__(self, path: Path, store: Any) -> None:
        self.outbox = Outbox(path / "gateway.sqlite3")
        self.outbox.open()
        self.claimer = Claimer(self.outbox, SharedDigests(store))
        self.detector = ChangeDetector(self.outbox, GatewayMetrics(CollectorRegistry()),
                                       claims=self.claimer)
        self.sent = 0  # the relay's read cursor

    def publishable(self) -> list[dict[str, Any]]:
        """What the relay would send now (and then forget, as after Kafka's ack)."""
        rows = self.outbox.next_batch(100, after_id=self.sent)
        if rows:
            self.sent = rows[-1][0]
        return [orjson.loads(r.value) for _, r in rows]


async def test_one_transition_seen_by_three_replicas_is_published_once(
        redis_url, make_store, tmp_path):
    store = await make_store(redis_url)
    replicas = [Replica(tmp_path / f"r{n}", store) for n in range(3)]
    for r in replicas:
        r.detector.tariff("E1", "fleet", TARIFF_A, Detection.POLL)
        await r.claimer.run_once()
    assert [len(r.publishable()) for r in replicas] == [1, 0, 0]  # the first one's snapshot
    for r in replicas:
        r.detector.tariff("E1", "fleet", TARIFF_B, Detection.READ)
    for r in replicas:
        await r.claimer.run_once()
    events = [e for r in replicas for e in r.publishable()]
    assert [(e["change"], e["current"]["rate_name"]) for e in events] == [
        ("CHANGE_KIND_UPDATED", "B")]
    assert all(r.outbox.unclaimed_count() == 0 for r in replicas)


async def test_unclaimed_rows_are_never_sent_and_promotion_passes_the_relay_cursor(
        redis_url, make_store, tmp_path):
    store = await make_store(redis_url)
    r = Replica(tmp_path, store)
    r.detector.tariff("E1", "fleet", TARIFF_A, Detection.WRITE)
    assert r.publishable() == [] and r.outbox.pending() == 1
    # A publishable row committed after it (e.g. an internal cache event): the relay
    # sends it and reads on past its id.
    other = Outbox(tmp_path / "other.sqlite3")
    other.open()
    ChangeDetector(other, GatewayMetrics(CollectorRegistry())).tariff(
        "E9", "fleet", TARIFF_A, Detection.WRITE)
    ((_, record),) = other.next_batch(1)
    other.close()
    with r.outbox.transaction() as conn:
        r.outbox.add(conn, record)
    assert [e["evse_id"] for e in r.publishable()] == ["E9"]
    await r.claimer.run_once()
    # promoted under a new, higher id: the relay's cursor still reaches it
    assert [(e["evse_id"], e["change"]) for e in r.publishable()] == [
        ("E1", "CHANGE_KIND_CREATED")]


async def test_a_lost_claim_to_another_digest_is_reannounced_from_there(
        redis_url, make_store, tmp_path):
    store = await make_store(redis_url)
    a, b = Replica(tmp_path / "a", store), Replica(tmp_path / "b", store)
    a.detector.tariff("E1", "fleet", TARIFF_A, Detection.POLL)
    await a.claimer.run_once()
    a.publishable()
    # b never saw A; it sees B: the cluster knows A, so B is an update from A, once.
    b.detector.tariff("E1", "fleet", TARIFF_B, Detection.READ)
    await b.claimer.run_once()
    (event,) = b.publishable()
    assert event["change"] == "CHANGE_KIND_UPDATED"
    assert event["previous_digest"] == a.detector.last_digest("price", "E1", "fleet")
    assert event["changed_paths"] == [""]


async def test_redis_down_publishes_anyway(private_redis, make_store, tmp_path):
    store = await make_store(private_redis.url)
    r = Replica(tmp_path, store)
    private_redis.stop()
    r.detector.tariff("E1", "fleet", TARIFF_A, Detection.READ)
    await r.claimer.run_once()
    assert [e["change"] for e in r.publishable()] == ["CHANGE_KIND_SNAPSHOT"]


async def test_single_replica_mode_writes_publishable_rows(tmp_path):
    outbox = Outbox(tmp_path / "gateway.sqlite3")
    outbox.open()
    detector = ChangeDetector(outbox, GatewayMetrics(CollectorRegistry()))
    detector.tariff("E1", "fleet", TARIFF_A, Detection.POLL)
    assert len(outbox.next_batch(10)) == 1 and outbox.unclaimed_count() == 0
    outbox.close()


async def test_a_flushed_store_seeded_from_local_state_announces_nothing_again(
        redis_url, make_store, tmp_path):
    import redis.asyncio as aioredis

    store = await make_store(redis_url)
    a, b = Replica(tmp_path / "a", store), Replica(tmp_path / "b", store)
    a.detector.tariffs("fleet", [Observation(f"E{n}", TARIFF_A) for n in range(5)],
                       Detection.POLL)
    await a.claimer.run_once()
    assert len(a.publishable()) == 5
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    await client.aclose()
    await a.claimer.seed_now(a.detector.shared_digests())  # what the app does on "up"
    b.detector.tariffs("fleet", [Observation(f"E{n}", TARIFF_A) for n in range(5)],
                       Detection.POLL)  # b's first pass, empty local state
    await b.claimer.run_once()
    assert b.publishable() == []
