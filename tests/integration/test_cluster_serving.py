"""Cluster mode, serving half (DESIGN.md §12): three gateway replicas in one process, one
real Redis, the sandbox. What a user notices: upstream token and data calls counted by the
sandbox, answers, ``/readyz`` and ``/metrics`` of each replica."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import orjson
import pytest
import redis
import structlog
from prometheus_client.parser import text_string_to_metric_families

from services.common import logging as gateway_logging
from services.common.logging import configure_logging
from services.common.settings import LogSettings
from services.gateway.keys import CACHE_KEY, INVALIDATION_KEY
from tests.fixtures.gateway import ADMIN_KEY, WRITER_KEY, auth
from tests.integration.test_gateway_events import TopicReader

PID_PATH = "/v1/passports/{}"


async def replicas(make_gateway, tmp_path, url: str, n: int = 3, settings=None, **cluster):
    return [await make_gateway(cluster={"redis_url": url, **cluster},
                               state_dir=tmp_path / f"replica{i}", **(settings or {}))
            for i in range(n)]


async def passport_ids(gw, n: int) -> list[str]:
    resp = await gw.get("/v1/passports", headers=auth())
    assert resp.status == 200, await resp.text()
    ids = [d["id"] for d in await resp.json()]
    assert len(ids) >= n
    return ids[:n]


async def metric(gw, name: str, **labels: str) -> float:
    text = await (await gw.get("/metrics")).text()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def cluster_state(gw) -> str | None:
    resp = await gw.get("/readyz")
    assert resp.status == 200, await resp.text()
    return (await resp.json())["checks"].get("cluster")


async def test_one_token_request_per_credential_cluster_wide(make_gateway, sandbox, redis_url,
                                                             tmp_path):
    # 300 requests at once on 2 shared cores: Redis calls queue for the pool. What is tested is
    # single-flight, not the call bound (past it a replica falls back to its own token).
    gws = await replicas(make_gateway, tmp_path, redis_url, timeout_s=2.0)
    before = await sandbox.calls()

    async def one(i: int):
        gw = gws[i % 3]
        path = "/v1/passports" if i % 2 else f"/v1/charging-stations?page[offset]={i % 5}"
        return await gw.get(path, headers=auth())

    responses = await asyncio.gather(*(one(i) for i in range(300)))
    assert [r.status for r in responses] == [200] * 300
    after = await sandbox.calls()
    assert after["siemensid.token"] - before["siemensid.token"] == 1
    assert after["cognito.token"] - before["cognito.token"] == 1

    # Revoked upstream before it expired: every replica's calls get 401, ONE refresh
    # cluster-wide, each call replayed once, every caller 200.
    ids = await passport_ids(gws[0], 60)
    await sandbox.revoke("siemensid")
    before = await sandbox.calls()
    responses = await asyncio.gather(*(gws[i % 3].get(f"/v1/passports/{pid}/owned",
                                                      headers=auth())
                                       for i, pid in enumerate(ids)))
    assert [r.status for r in responses] == [200] * 60
    after = await sandbox.calls()
    assert after["siemensid.token"] - before["siemensid.token"] == 1
    assert sum([await metric(gw, "ampgate_token_requests_total", upstream="siemensid",
                             outcome="ok") for gw in gws]) == 2


async def test_token_endpoint_down_is_503_without_stampede(make_gateway, sandbox, redis_url,
                                                           tmp_path):
    """No token anywhere and the IdP failing: a 503 problem with Retry-After on every
    replica, and at most one token request per replica (each backs off on its own)."""
    gws = await replicas(make_gateway, tmp_path, redis_url, settings={
        "passport": {"breaker_failures": 1, "breaker_reset_s": 30}})
    await sandbox.fault("siemensid.token", "status", status=503)
    before = (await sandbox.calls())["siemensid.token"]
    results = []
    for _ in range(2):  # a second wave finds every replica backing off: no new request
        results += await asyncio.gather(*(gws[i % 3].get(f"/v1/passports/p{i}", headers=auth())
                                          for i in range(60)))
    assert {r.status for r in results} == {503}
    for r in results[:3]:
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert "Retry-After" in r.headers
    assert 1 <= (await sandbox.calls())["siemensid.token"] - before <= 3


async def test_a_key_cold_everywhere_costs_one_upstream_call(make_gateway, sandbox, redis_url,
                                                           tmp_path):
    gws = await replicas(make_gateway, tmp_path, redis_url)
    pid, other = await passport_ids(gws[0], 2)
    for gw in gws:  # tokens in place: the burst below measures the cache only
        assert (await gw.get("/v1/passports", headers=auth())).status == 200
    await sandbox.fault("passport.public", "latency", latency_ms=300)

    async def timed(gw, key):
        started = time.perf_counter()
        resp = await gw.get(PID_PATH.format(key), headers=auth())
        body = await resp.read()
        return time.perf_counter() - started, resp.status, body

    async def cold_burst(key) -> float:
        before = (await sandbox.calls())["passport.public"]
        results = await asyncio.gather(*(timed(gws[i % 3], key) for i in range(60)))
        assert [status for _, status, _ in results] == [200] * 60
        assert len({body for _, _, body in results}) == 1
        assert (await sandbox.calls())["passport.public"] - before == 1
        return max(seconds for seconds, _, _ in results)

    slowest = [await cold_burst(pid)]
    # the two replicas that did not call upstream were answered by the shared tier
    shared = [await metric(gw, "ampgate_cache_lookups_total", route="passport_public",
                           result="shared_hit") for gw in gws]
    assert sorted(shared) == [0, 1, 1], shared
    slowest.append(await cold_burst(other))
    # waiters released when the one call lands: best of two keys (this machine is shared)
    assert min(slowest) < 0.4, slowest
    before = (await sandbox.calls())["passport.public"]
    # ...and now answer from memory: hits that make no upstream call and no Redis call
    hit = await gws[2].get(PID_PATH.format(pid), headers=auth())
    assert hit.headers["X-Cache"] == "HIT"
    redis_calls = await metric(gws[2], "ampgate_cluster_redis_call_duration_seconds_count")
    hits = await asyncio.gather(*(gws[2].get(PID_PATH.format(pid), headers=auth())
                                  for _ in range(50)))
    assert {r.headers["X-Cache"] for r in hits} == {"HIT"}
    assert await metric(gws[2], "ampgate_cluster_redis_call_duration_seconds_count") == redis_calls
    assert (await sandbox.calls())["passport.public"] - before == 0


async def test_writes_and_purge_reach_every_replica(make_gateway, sandbox, redis_url, tmp_path):
    gws = await replicas(make_gateway, tmp_path, redis_url)
    pid = (await passport_ids(gws[0], 1))[0]
    first = None
    for gw in gws:
        first = await (await gw.get(PID_PATH.format(pid), headers=auth())).json()
        assert (await gw.get(PID_PATH.format(pid), headers=auth())).headers["X-Cache"] == "HIT"
    changed = {**first, "status": {"state": "recalled"}}
    put = await gws[0].put(PID_PATH.format(pid), json=changed, headers=auth(WRITER_KEY))
    assert put.status == 200, await put.text()
    for gw in gws[1:]:
        after = await gw.get(PID_PATH.format(pid), headers=auth())
        assert (await after.json())["status"]["state"] == "recalled"

    # changed upstream behind the gateway's back; a purge on one replica drops every
    # replica's memory tier and the shared tier: the others answer the new version
    for gw in gws:
        await gw.get(PID_PATH.format(pid), headers=auth())
        assert (await gw.get(PID_PATH.format(pid), headers=auth())).headers["X-Cache"] == "HIT"
    await sandbox.put_passport(pid, {**changed, "status": {"state": "purged-upstream"}})
    purged = await gws[0].post("/admin/cache/purge", headers=auth(ADMIN_KEY))
    assert purged.status == 200, await purged.text()
    before = (await sandbox.calls())["passport.public"]
    for gw in gws[1:]:
        again = await gw.get(PID_PATH.format(pid), headers=auth())
        assert (await again.json())["status"]["state"] == "purged-upstream"
    assert (await sandbox.calls())["passport.public"] - before == 1  # one refill, shared


async def test_a_fill_survives_its_cancelled_caller(make_gateway, sandbox, redis_url, tmp_path):
    """The caller that started the one cluster-wide fill gives up; the fill goes on, and the
    other replicas are answered by it: still one upstream call."""
    gws = await replicas(make_gateway, tmp_path, redis_url)
    pid = (await passport_ids(gws[0], 1))[0]
    for gw in gws:
        assert (await gw.get("/v1/passports", headers=auth())).status == 200
    await sandbox.fault("passport.public", "latency", latency_ms=300)
    before = (await sandbox.calls())["passport.public"]
    first = asyncio.create_task(gws[0].get(PID_PATH.format(pid), headers=auth()))
    await asyncio.sleep(0.1)
    first.cancel()  # the client goes away while replica 1 holds the fill
    with pytest.raises(asyncio.CancelledError):
        await first
    others = await asyncio.gather(*(gws[1 + i % 2].get(PID_PATH.format(pid), headers=auth())
                                    for i in range(10)))
    assert [r.status for r in others] == [200] * 10
    assert (await sandbox.calls())["passport.public"] - before == 1


async def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_redis_outage_serves_on_and_recovers(make_gateway, sandbox, private_redis,
                                                   tmp_path):
    gws = await replicas(make_gateway, tmp_path, private_redis.url)
    ids = await passport_ids(gws[0], 40)
    for gw in gws:
        assert await cluster_state(gw) == "ok"
        assert await metric(gw, "ampgate_cluster_store_up") == 1
        text = await (await gw.get("/metrics")).text()
        assert "# TYPE ampgate_cluster_leases_held gauge" in text
        assert "# TYPE ampgate_cluster_redis_call_duration_seconds histogram" in text
    failures: list[tuple[int, str]] = []
    done = 0

    async def load(seconds: float) -> None:
        nonlocal done
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            gw = gws[i % 3]
            pid = ids[i % len(ids)]
            path = PID_PATH.format(pid) if i % 2 else f"/v1/passports/{pid}/owned"
            # every third one revalidates: upstream calls (and tokens) during the outage too
            headers = {**auth(), **({"Cache-Control": "no-cache"} if i % 3 == 0 else {})}
            resp = await gw.get(path, headers=headers)
            if resp.status != 200:
                failures.append((resp.status, await resp.text()))
            await resp.read()
            done += 1
            i += 1

    workers = [asyncio.create_task(load(4.0)) for _ in range(6)]
    await asyncio.sleep(0.5)
    private_redis.kill()
    assert await wait_for(lambda: _all_degraded(gws), 3.0)
    for gw in gws:
        assert await metric(gw, "ampgate_cluster_store_up") == 0
    # a token revoked while Redis is down: each replica's local manager fetches its own
    tokens_before = (await sandbox.calls())["siemensid.token"]
    await sandbox.revoke("siemensid")
    await asyncio.sleep(1.5)
    during = (await sandbox.calls())["siemensid.token"] - tokens_before
    assert 1 <= during <= 3, during  # at most one extra token request per replica
    private_redis.start()  # same port, EMPTY: no token, no entries, no epochs
    await asyncio.gather(*workers)
    assert failures == [], failures[:3]
    assert done > 100
    for gw in gws:
        assert await wait_for(lambda gw=gw: _state_is(gw, "ok"), 6.0)
        assert await metric(gw, "ampgate_cluster_store_up") == 1

    # Correct answers after an empty restart: a write on one replica shows on the others
    # (the memory tiers were dropped on resubscription; the token cell refilled once).
    pid = ids[0]
    first = await (await gws[1].get(PID_PATH.format(pid), headers=auth())).json()
    await gws[2].get(PID_PATH.format(pid), headers=auth())
    changed = {**first, "status": {"state": "after-outage"}}
    put = await gws[0].put(PID_PATH.format(pid), json=changed, headers=auth(WRITER_KEY))
    assert put.status == 200, await put.text()
    for gw in gws[1:]:
        after = await gw.get(PID_PATH.format(pid), headers=auth())
        assert (await after.json())["status"]["state"] == "after-outage"


async def _state_is(gw, state: str) -> bool:
    return await cluster_state(gw) == state


async def _all_degraded(gws) -> bool:
    return all([await _state_is(gw, "degraded") for gw in gws])


async def test_single_replica_mode_reports_no_cluster(make_gateway):
    gw = await make_gateway()
    assert await cluster_state(gw) is None
    assert await metric(gw, "ampgate_cluster_store_up") == 0  # not exported at all
    text = await (await gw.get("/metrics")).text()
    assert "ampgate_cluster_" not in text
    assert 'result="shared_hit"' in text  # starts at 0, in every mode


async def test_an_eviction_redis_missed_reaches_it_when_it_is_back(make_gateway, sandbox,
                                                                  private_redis, tmp_path):
    log_path = tmp_path / "gateway.log"
    saved = structlog.get_config(), logging.root.handlers[:], logging.root.level
    saved_info = gateway_logging.INFO_ENABLED
    with open(log_path, "w+") as stream:  # noqa: ASYNC230 - the logging sink under test
        configure_logging(LogSettings(format="json", level="debug"), stream=stream)
        try:
            await _missed_eviction(make_gateway, sandbox, private_redis, tmp_path)
        finally:
            stream.flush()
            # back to what the other tests see (their capsys reads the default logger)
            structlog.configure(**saved[0])
            logging.root.handlers[:] = saved[1]
            logging.root.setLevel(saved[2])
            gateway_logging.INFO_ENABLED = saved_info
    logs = log_path.read_text()
    assert "cluster_store_down" in logs and "cluster_store_up" in logs
    # the Redis password and the upstream tokens (kept in Redis) never reach a log line
    assert "gw-secret" not in logs
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", logs), "a JWT leaked into logs"


async def _missed_eviction(make_gateway, sandbox, private_redis, tmp_path) -> None:
    """Redis keeps its data but refuses the gateway for a while (its ACL user removed) while
    a write evicts: once Redis takes the gateway again, the eviction reaches the shared tier
    and every replica, so the old version kept in Redis is not served for the rest of its
    TTL. The replicas log in as an ACL user of their own (AMPGATE_CLUSTER__REDIS_USERNAME)."""
    admin = redis.Redis.from_url(private_redis.url, socket_timeout=5)
    grant = ("ACL", "SETUSER", "ampgate", "on", ">gw-secret", "~*", "&*", "+@all")
    admin.execute_command(*grant)
    gws = await replicas(make_gateway, tmp_path, private_redis.url, redis_username="ampgate",
                         redis_password="gw-secret")
    pid = (await passport_ids(gws[0], 1))[0]
    first = None
    for gw in gws:
        first = await (await gw.get(PID_PATH.format(pid), headers=auth())).json()
        assert await cluster_state(gw) == "ok"
    admin.execute_command("ACL", "DELUSER", "ampgate")  # its connections are closed too
    try:
        assert await wait_for(lambda: _all_degraded(gws), 3.0)
        changed = {**first, "status": {"state": "written-while-refused"}}
        put = await gws[0].put(PID_PATH.format(pid), json=changed, headers=auth(WRITER_KEY))
        assert put.status == 200, await put.text()
    finally:
        admin.execute_command(*grant)
        admin.close()
    for gw in gws:
        assert await wait_for(lambda gw=gw: _state_is(gw, "ok"), 6.0)

    async def shows_it(gw) -> bool:
        doc = await (await gw.get(PID_PATH.format(pid), headers=auth())).json()
        return doc["status"]["state"] == "written-while-refused"

    for gw in gws[1:]:
        assert await wait_for(lambda gw=gw: shows_it(gw), 4.0)


async def test_a_first_read_stays_cached_on_every_replica_when_its_snapshot_comes_back(
        make_gateway, sandbox, kafka, redis_url, tmp_path):
    """A passport read for the first time on A is announced (SNAPSHOT, with its digest); the
    other replicas' invalidation consumers read the event and keep the entry that already
    holds that version, in Redis and in every memory tier: one upstream call in all. A real
    change afterwards (another digest) still evicts on every replica at once."""
    gws = await replicas(make_gateway, tmp_path, redis_url, settings={"kafka": {
        "bootstrap_servers": kafka.bootstrap, "enable_idempotence": kafka.enable_idempotence}},
        key_prefix=f"t{uuid.uuid4().hex[:8]}")  # this test's digests: the read is a first
    consumers = [gw.server.app[INVALIDATION_KEY] for gw in gws]
    for consumer in consumers:
        await asyncio.wait_for(consumer.ready.wait(), 20)
    for gw in gws:  # tokens in place: the calls counted below are the passport's
        assert (await gw.get("/v1/passports", headers=auth())).status == 200
    pid = f"BP-FIRST-{uuid.uuid4().hex[:8]}"
    await sandbox.put_passport(pid, {"status": {"state": "active"},
                                     "general_information": {"identification": {"uid": pid}}})
    before = (await sandbox.calls())["passport.public"]
    seen = [c.events_seen for c in consumers]
    async with TopicReader(kafka.bootstrap) as reader:
        first = await gws[0].get(PID_PATH.format(pid), headers=auth())
        assert first.status == 200 and first.headers["X-Cache"] == "MISS"
        body = await first.read()
        await reader.until(lambda rs: reader.for_key(pid))
    (event,) = [orjson.loads(r.value) for r in reader.for_key(pid)]
    assert event["change"] == "CHANGE_KIND_SNAPSHOT" and event["digest"]
    # every replica's consumer has read it (A's skips its own) and its evictions are done
    assert await wait_for(lambda: _all_read(consumers, seen), 15.0)
    for gw in gws:
        await gw.server.app[CACHE_KEY].settled()
    for gw in (gws[1], gws[2], gws[0], gws[1]):
        again = await gw.get(PID_PATH.format(pid), headers=auth())
        assert again.headers["X-Cache"] == "HIT" and await again.read() == body
    assert (await sandbox.calls())["passport.public"] - before == 1
    assert sorted([await metric(gw, "ampgate_cache_lookups_total", route="passport_public",
                                result="shared_hit") for gw in gws]) == [0, 1, 1]

    # a real change, found by a revalidating read on A: the old version goes everywhere
    await sandbox.put_passport(pid, {"status": {"state": "recalled"},
                                     "general_information": {"identification": {"uid": pid}}})
    fresh = await gws[0].get(PID_PATH.format(pid), headers={**auth(),
                                                              "Cache-Control": "no-cache"})
    assert (await fresh.json())["status"]["state"] == "recalled"

    async def shows_it(gw) -> bool:
        doc = await (await gw.get(PID_PATH.format(pid), headers=auth())).json()
        return doc["status"]["state"] == "recalled"

    for gw in gws[1:]:
        assert await wait_for(lambda gw=gw: shows_it(gw), 5.0)
    assert (await sandbox.calls())["passport.public"] - before == 2  # one refill, shared


async def _all_read(consumers, seen: list[int]) -> bool:
    return all(c.events_seen > n for c, n in zip(consumers, seen, strict=True))


async def test_two_deployments_with_their_own_key_prefix_share_one_redis_apart(
        make_gateway, sandbox, redis_url, tmp_path):
    """AMPGATE_CLUSTER__KEY_PREFIX: two gateway deployments on one Redis neither answer from
    nor evict each other's entries (nor share tokens); every key is under its prefix."""
    blue = await replicas(make_gateway, tmp_path / "blue", redis_url, n=2, key_prefix="blue")
    green = await replicas(make_gateway, tmp_path / "green", redis_url, n=2,
                           key_prefix="green")
    pid = (await passport_ids(blue[0], 1))[0]
    assert (await green[0].get("/v1/passports", headers=auth())).status == 200
    before = (await sandbox.calls())["passport.public"]
    for deployment in (blue, green):  # filled once per deployment, shared within it
        assert (await deployment[0].get(PID_PATH.format(pid), headers=auth())
                ).headers["X-Cache"] == "MISS"
        assert (await deployment[1].get(PID_PATH.format(pid), headers=auth())
                ).headers["X-Cache"] == "HIT"
    assert (await sandbox.calls())["passport.public"] - before == 2
    assert [await metric(gw, "ampgate_cache_lookups_total", route="passport_public",
                         result="shared_hit") for gw in (*blue, *green)] == [0, 1, 0, 1]
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        names = {k.decode().split(":", 1)[0] for k in client.scan_iter(count=1000)}
        assert names == {"blue", "green"}, names
        assert client.keys("ampgate:*") == []
    finally:
        client.close()
    # a purge of blue reaches blue's memory tiers and Redis entries, not green's: a green
    # replica that joins now is answered from green's shared tier, no upstream call
    purged = await blue[0].post("/admin/cache/purge", headers=auth(ADMIN_KEY))
    assert purged.status == 200, await purged.text()
    before = (await sandbox.calls())["passport.public"]
    late = await make_gateway(cluster={"redis_url": redis_url, "key_prefix": "green"},
                              state_dir=tmp_path / "green" / "late")
    for gw in (green[0], green[1], late):
        assert (await gw.get(PID_PATH.format(pid), headers=auth())).headers["X-Cache"] == "HIT"
    assert await metric(late, "ampgate_cache_lookups_total", route="passport_public",
                        result="shared_hit") == 1
    assert (await sandbox.calls())["passport.public"] - before == 0
    assert (await blue[1].get(PID_PATH.format(pid), headers=auth())).headers["X-Cache"] == "MISS"
