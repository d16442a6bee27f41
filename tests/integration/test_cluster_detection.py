"""Cluster mode, detection half (DESIGN.md §12): N replicas poll and announce as ONE gateway.

Real Redis, the real broker, the sandbox. Replicas are gateway apps in this process
(each with its own state dir and registry) or, where a SIGKILL is the point, child
processes. What a user sees: events on the price-changed topic, upstream ``all_paged``
calls counted by the sandbox.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from services.common.events import PRICE_TOPIC
from services.gateway.app import create_app
from services.gateway.claims import CLAIM_FAULT_KEY
from services.sandbox.app import create_app as create_sandbox
from services.sandbox.config import SandboxConfig
from tests.fixtures.gateway import CLIENTS, READER_KEY, auth
from tests.fixtures.processes import settings_env, start_service
from tests.fixtures.redis import private_redis, redis_server, redis_url  # noqa: F401
from tests.fixtures.sandbox import SandboxHandle, free_port
from tests.integration.test_gateway_events import TopicReader

pytestmark = pytest.mark.integration

TAG = "CLUSTER-TAG-0451"
EVSES = 60
LEASE_S = 1.0
INTERVAL_S = 0.5
ALL_PAGED = "pricing.all_paged"


@pytest.fixture
async def small_sandbox() -> AsyncIterator[SandboxHandle]:
    """The sandbox with a small catalogue (one all_paged page per walk)."""
    config = SandboxConfig(host="127.0.0.1", port=0, evses=EVSES, stations=30, passports=5)
    runner = web.AppRunner(create_sandbox(config), access_log=None, shutdown_timeout=2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    async with aiohttp.ClientSession() as session:
        yield SandboxHandle(f"http://127.0.0.1:{runner.addresses[0][1]}", config, session)
    await runner.cleanup()


class Cluster:
    """In-process replicas sharing one Redis, one broker, one sandbox."""

    def __init__(self, sandbox: SandboxHandle, kafka: Any, redis: str, tmp_path: Any) -> None:
        self.sandbox, self.kafka, self.redis, self.tmp = sandbox, kafka, redis, tmp_path
        self.context = f"fleet-{uuid.uuid4().hex[:8]}"  # this test's events only
        self.replicas: list[TestClient] = []

    def settings(self, name: str, **overrides: Any) -> dict[str, Any]:
        values: dict[str, Any] = {
            **self.sandbox.upstream_settings(),
            "clients": CLIENTS,
            "state_dir": str(self.tmp / name),
            "kafka": {"bootstrap_servers": self.kafka.bootstrap,
                      "enable_idempotence": self.kafka.enable_idempotence},
            "shutdown": {"grace_s": 1},
            "tariff_contexts": [{"name": self.context, "tag_id": TAG}],
            "poll": {"prices_interval_s": INTERVAL_S, "passports_interval_s": 0,
                     "page_size": 500},
            "cluster": {"redis_url": self.redis, "lease_s": LEASE_S},
            "log": {"format": "json", "level": "warning"},
        }
        values.update(overrides)
        return values

    async def start(self, name: str, *, fault: Callable[[], Any] | None = None,
                    **overrides: Any) -> TestClient:
        from services.common.settings import Settings

        registry = CollectorRegistry()
        app = create_app(Settings(**self.settings(name, **overrides)), registry=registry)
        if fault is not None:
            app[CLAIM_FAULT_KEY] = fault
        client = TestClient(TestServer(app))
        await client.start_server()
        client.registry = registry  # type: ignore[attr-defined]
        self.replicas.append(client)
        return client

    async def stop(self, client: TestClient) -> None:
        self.replicas.remove(client)
        await client.close()

    async def close(self) -> None:
        for client in list(self.replicas):
            await self.stop(client)


@pytest.fixture
async def cluster(small_sandbox, kafka, redis_url, tmp_path) -> AsyncIterator[Cluster]:  # noqa: F811
    c = Cluster(small_sandbox, kafka, redis_url, tmp_path)
    try:
        yield c
    finally:
        await c.close()


def price_events(reader: TopicReader, context: str) -> list[dict[str, Any]]:
    out = []
    for r in reader.records:
        if r.topic != PRICE_TOPIC:
            continue
        data = orjson.loads(r.value)
        if data.get("tariff_context") == context:
            out.append(data)
    return out


def kinds(reader: TopicReader, context: str, evse: str | None = None) -> Counter:
    return Counter(d["change"] for d in price_events(reader, context)
                   if evse is None or d["evse_id"] == evse)


async def walks(sandbox: SandboxHandle) -> int:
    return (await sandbox.calls()).get(ALL_PAGED, 0)


async def settle(reader: TopicReader, seconds: float) -> None:
    """Read the topics for ``seconds`` more (events that should NOT come get their chance)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch = await reader.consumer.getmany(timeout_ms=100)
        for tp in batch:
            reader.records.extend(r for r in batch[tp] if r.timestamp >= reader.since_ms)


async def snapshot(reader: TopicReader, context: str) -> list[str]:
    """Wait for the first pass's snapshot of every EVSE; returns the EVSE ids."""
    await reader.until(lambda _: kinds(reader, context)["CHANGE_KIND_SNAPSHOT"] >= EVSES, 20)
    return sorted(d["evse_id"] for d in price_events(reader, context))


async def test_three_replicas_poll_and_announce_as_one(cluster: Cluster) -> None:
    sandbox = cluster.sandbox
    async with TopicReader(cluster.kafka.bootstrap) as reader:
        for n in range(3):
            await cluster.start(f"r{n}")
        await snapshot(reader, cluster.context)
        await settle(reader, 1.0)
        # Every EVSE announced once, by whichever replica saw it first.
        evses = sorted(d["evse_id"] for d in price_events(reader, cluster.context))
        assert evses == sorted(set(evses)) and len(evses) == EVSES

        # Upstream load as with one replica: one walk per period (±20 % jitter), not three.
        before, t0 = await walks(sandbox), time.monotonic()
        await asyncio.sleep(3.0)
        period_walks = (await walks(sandbox) - before) / ((time.monotonic() - t0) / INTERVAL_S)
        assert 0.5 <= period_walks <= 1.4, period_walks

        # One tariff change: one event, whoever polls and whoever reads it.
        evse = evses[7]
        await sandbox.put_tariff(evse, {"rateName": "Changed once"})
        for client in cluster.replicas:  # every replica also reads it
            resp = await client.get("/v1/prices", params={"evseId": evse, "tag_id": TAG},
                                    headers=auth(READER_KEY))
            assert resp.status == 200
        await reader.until(lambda _: kinds(reader, cluster.context, evse)["CHANGE_KIND_UPDATED"])
        await settle(reader, 4 * INTERVAL_S)
        assert kinds(reader, cluster.context, evse) == {"CHANGE_KIND_SNAPSHOT": 1,
                                                        "CHANGE_KIND_UPDATED": 1}

        # A 4th replica joins (empty state) and becomes the poller: it walks everything
        # from scratch, and announces nothing the cluster already knows.
        announced = len(price_events(reader, cluster.context))
        fourth = await cluster.start("r3")
        for client in list(cluster.replicas):
            if client is not fourth:
                await cluster.stop(client)  # releases the lease: the 4th takes over at once
        before = await walks(sandbox)
        await settle(reader, 3.0)
        assert await walks(sandbox) - before >= 2  # it did poll
        assert len(price_events(reader, cluster.context)) == announced


async def test_killed_between_claim_and_outbox_mark_publishes_after_restart(
        cluster: Cluster) -> None:
    sandbox = cluster.sandbox
    armed, claimed = asyncio.Event(), asyncio.Event()

    async def hang_after_claim() -> None:  # the replica "dies" here: it never goes on
        if armed.is_set():
            claimed.set()
            await asyncio.Event().wait()

    async with TopicReader(cluster.kafka.bootstrap) as reader:
        replica = await cluster.start("r0", fault=hang_after_claim)
        evses = await snapshot(reader, cluster.context)
        armed.set()
        evse = evses[3]
        await sandbox.put_tariff(evse, {"rateName": "Claimed, then killed"})
        await asyncio.wait_for(claimed.wait(), 10)
        await cluster.stop(replica)  # thrown away between the claim and the outbox mark
        await settle(reader, 0.5)
        assert kinds(reader, cluster.context, evse)["CHANGE_KIND_UPDATED"] == 0

        await cluster.start("r0")  # same state dir: the restarted replica
        await reader.until(lambda _: kinds(reader, cluster.context, evse)["CHANGE_KIND_UPDATED"])
        await settle(reader, 4 * INTERVAL_S)
        updated = [d for d in price_events(reader, cluster.context)
                   if d["evse_id"] == evse and d["change"] == "CHANGE_KIND_UPDATED"]
        assert len(updated) == 1
        assert updated[0]["current"]["rate_name"] == "Claimed, then killed"


async def test_redis_down_pollers_pause_reads_announce_then_resume(
        small_sandbox, kafka, private_redis, tmp_path) -> None:  # noqa: F811
    cluster = Cluster(small_sandbox, kafka, private_redis.url, tmp_path)
    sandbox = cluster.sandbox
    try:
        async with TopicReader(kafka.bootstrap) as reader:
            a = await cluster.start("a")
            b = await cluster.start("b")
            evses = await snapshot(reader, cluster.context)

            private_redis.stop()
            await asyncio.sleep(LEASE_S * 1.5)  # the holder's lease lapses locally
            for client in (a, b):
                assert client.registry.get_sample_value("ampgate_cluster_store_up") == 0
            before = await walks(sandbox)
            await asyncio.sleep(4 * INTERVAL_S)
            assert await walks(sandbox) == before  # pollers paused

            # Reads still announce while Redis is down.
            evse = evses[5]
            await sandbox.put_tariff(evse, {"rateName": "Seen while Redis was down"})
            resp = await b.get("/v1/prices", params={"evseId": evse, "tag_id": TAG},
                               headers=auth(READER_KEY))
            assert resp.status == 200
            await reader.until(lambda _: [d for d in price_events(reader, cluster.context)
                                          if d.get("current", {}).get("rate_name")
                                          == "Seen while Redis was down"], 10)
            assert await walks(sandbox) == before

            # Redis back, EMPTY: pollers resume; at most one more announcement per entity.
            private_redis.start()
            await asyncio.sleep(2 * LEASE_S)
            assert await walks(sandbox) > before
            await settle(reader, 2.0)
            per_evse = Counter(d["evse_id"] for d in price_events(reader, cluster.context))
            assert per_evse[evse] <= 3  # snapshot, the read's update, at most one more
            assert all(n <= 2 for e, n in per_evse.items() if e != evse)  # no storm
            again = sum(n - 1 for e, n in per_evse.items() if e != evse)
            assert again == 0, f"{again} entities announced again after the flush"
    finally:
        await cluster.close()


def _holder_pid(raw: bytes | None) -> int | None:
    """``<fence>:<hostname>-<pid>-<hex>/<random>`` → pid."""
    if raw is None:
        return None
    holder = raw.decode().split(":", 1)[1].rsplit("/", 1)[0]
    return int(holder.rsplit("-", 2)[1])


async def test_sigkill_of_the_lease_holder_hands_polling_over(
        small_sandbox, kafka, redis_url, tmp_path) -> None:  # noqa: F811
    sandbox = small_sandbox
    cluster = Cluster(sandbox, kafka, redis_url, tmp_path)
    lease_s = 2.0
    procs = []
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with TopicReader(kafka.bootstrap) as reader:
            for n in range(3):
                values = cluster.settings(f"p{n}", cluster={"redis_url": redis_url,
                                                            "lease_s": lease_s})
                values.pop("state_dir")
                env = {**settings_env(values), "AMPGATE_STATE_DIR": str(tmp_path / f"p{n}")}
                procs.append(await asyncio.to_thread(start_service, "gateway", free_port(), env))
            evses = await snapshot(reader, cluster.context)

            # A change announced by the holder just before it dies...
            first, second = evses[11], evses[12]
            await sandbox.put_tariff(first, {"rateName": "Before the kill"})
            await reader.until(
                lambda _: kinds(reader, cluster.context, first)["CHANGE_KIND_UPDATED"], 10)
            pid = _holder_pid(await r.get("ampgate:lease:poller:prices"))
            holder = next(p for p in procs if p.proc.pid == pid)
            holder.kill()
            killed_at = time.monotonic()
            # ...and a change and a deletion made while nobody polls.
            await sandbox.put_tariff(second, {"rateName": "After the kill"})
            gone = evses[13]
            await sandbox.remove_evse(gone)
            before = await walks(sandbox)
            while await walks(sandbox) == before:
                assert time.monotonic() - killed_at < 2 * lease_s, "no takeover"
                await asyncio.sleep(0.05)
            new_pid = _holder_pid(await r.get("ampgate:lease:poller:prices"))
            assert new_pid != pid and new_pid in {p.proc.pid for p in procs}
            await reader.until(
                lambda _: kinds(reader, cluster.context, second)["CHANGE_KIND_UPDATED"]
                and kinds(reader, cluster.context, gone)["CHANGE_KIND_DELETED"], 10)
            await settle(reader, 3 * INTERVAL_S)
            # Nothing lost, nothing doubled: the new holder's first pass (empty local
            # state) re-announces nothing, and sees the deletion the old holder missed.
            per_evse = Counter(d["evse_id"] for d in price_events(reader, cluster.context))
            assert per_evse[first] == 2 and per_evse[second] == 2
            assert kinds(reader, cluster.context, gone) == {"CHANGE_KIND_SNAPSHOT": 1,
                                                            "CHANGE_KIND_DELETED": 1}
            assert all(n == 1 for e, n in per_evse.items() if e not in (first, second, gone))
    finally:
        await r.aclose()
        for p in procs:
            p.kill()


