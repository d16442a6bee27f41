"""The cache as a client sees it: single-flight, staleness, eviction by writes, ETags."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.fixtures.gateway import WRITER_KEY, auth

PID_PATH = "/v1/passports/{}"


async def some_passport(gateway) -> str:
    return (await (await gateway.get("/v1/passports", headers=auth())).json())[0]["id"]


@pytest.mark.slow
async def test_1000_concurrent_cold_requests_make_one_upstream_call(gateway, sandbox):
    pid = await some_passport(gateway)
    await sandbox.fault("passport.public", "latency", latency_ms=100)
    await sandbox.reset_counts() if hasattr(sandbox, "reset_counts") else None
    before = (await sandbox.calls())["passport.public"]
    started = time.perf_counter()
    responses = await asyncio.gather(*(gateway.get(PID_PATH.format(pid), headers=auth())
                                       for _ in range(1000)))
    elapsed = time.perf_counter() - started
    bodies = {await r.read() for r in responses}
    assert [r.status for r in responses] == [200] * 1000
    assert len(bodies) == 1 and b"general_information" in next(iter(bodies))
    assert (await sandbox.calls())["passport.public"] - before == 1
    assert elapsed < 30


async def test_writes_evict_the_cached_passport(gateway, sandbox):
    pid = await some_passport(gateway)
    first = await (await gateway.get(PID_PATH.format(pid), headers=auth())).json()
    hit = await gateway.get(PID_PATH.format(pid), headers=auth())
    assert hit.headers["X-Cache"] == "HIT"
    changed = {**first, "status": {"state": "recalled"}}
    put = await gateway.put(PID_PATH.format(pid), json=changed, headers=auth(WRITER_KEY))
    assert put.status == 200, await put.text()
    after = await gateway.get(PID_PATH.format(pid), headers=auth())
    assert after.headers["X-Cache"] == "MISS"
    assert (await after.json())["status"]["state"] == "recalled"


async def test_no_cache_revalidates(gateway, sandbox):
    pid = await some_passport(gateway)
    await gateway.get(PID_PATH.format(pid), headers=auth())
    await sandbox.put_passport(pid, {"id": pid, "status": {"state": "changed-upstream"},
                                     "general_information": {"identification": {"uid": pid}}})
    cached = await gateway.get(PID_PATH.format(pid), headers=auth())
    assert cached.headers["X-Cache"] == "HIT"
    assert (await cached.json())["status"]["state"] != "changed-upstream"
    fresh = await gateway.get(PID_PATH.format(pid), headers={**auth(), "Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "MISS"
    assert (await fresh.json())["status"]["state"] == "changed-upstream"
    assert (await gateway.get(PID_PATH.format(pid), headers=auth())).headers["X-Cache"] == "HIT"


async def test_if_none_match_gives_304(gateway):
    pid = await some_passport(gateway)
    resp = await gateway.get(PID_PATH.format(pid), headers=auth())
    etag = resp.headers["ETag"]
    again = await gateway.get(PID_PATH.format(pid), headers={**auth(), "If-None-Match": etag})
    assert again.status == 304
    assert again.headers["ETag"] == etag
    assert await again.read() == b""
    other = await gateway.get(PID_PATH.format(pid), headers={**auth(), "If-None-Match": '"nope"'})
    assert other.status == 200


async def test_upstream_down_serves_stale_then_breaker_opens_and_recovers(make_gateway, sandbox):
    gw = await make_gateway(
        cache={"default_ttl_s": 0.2, "stale_while_revalidate_s": 0, "stale_if_error_s": 60},
        passport={"retries": 0, "breaker_failures": 3, "breaker_reset_s": 0.5, "timeout_s": 2},
    )
    pid = await some_passport(gw)
    ok = await gw.get(PID_PATH.format(pid), headers=auth())
    assert ok.status == 200
    await asyncio.sleep(0.3)  # expired, inside stale-if-error
    await sandbox.fault("passport", "status", status=503)
    stale = await gw.get(PID_PATH.format(pid), headers=auth())
    assert stale.status == 200 and stale.headers["X-Cache"] == "STALE"
    # an uncached key fails with 502
    uncached = await gw.get(PID_PATH.format("BP-NOT-CACHED"), headers=auth())
    assert uncached.status == 502
    assert uncached.headers["Content-Type"].startswith("application/problem+json")
    for _ in range(3):
        await gw.get(PID_PATH.format("BP-NOT-CACHED"), headers=auth())
    opened = await gw.get(PID_PATH.format("BP-NOT-CACHED"), headers=auth())
    assert opened.status == 503 and int(opened.headers["Retry-After"]) >= 1
    calls_while_open = (await sandbox.calls())["passport.public"]
    await gw.get(PID_PATH.format("BP-NOT-CACHED"), headers=auth())
    assert (await sandbox.calls())["passport.public"] == calls_while_open  # breaker holds calls back
    await sandbox.clear_faults()
    await asyncio.sleep(0.6)
    recovered = await gw.get(PID_PATH.format(pid), headers={**auth(), "Cache-Control": "no-cache"})
    assert recovered.status == 200 and recovered.headers["X-Cache"] == "MISS"


async def test_upstream_timeout_is_504(make_gateway, sandbox):
    gw = await make_gateway(passport={"retries": 0, "timeout_s": 0.3})
    await sandbox.fault("passport.public", "timeout")
    resp = await gw.get(PID_PATH.format("BP-0001"), headers=auth())
    assert resp.status == 504
    assert (await resp.json(content_type=None))["title"]


async def test_connection_reset_is_retried_for_reads(make_gateway, sandbox):
    gw = await make_gateway(passport={"retries": 2})
    pid = await some_passport(gw)
    await sandbox.fault("passport.public", "reset", times=1)
    resp = await gw.get(PID_PATH.format(pid), headers=auth())
    assert resp.status == 200


async def test_cache_stays_within_byte_budget(make_gateway, sandbox):
    budget = 64 * 1024
    gw = await make_gateway(cache={"max_bytes": budget})
    docs = await (await gw.get("/v1/passports", headers=auth())).json()
    written = 0
    for doc in docs:
        resp = await gw.get(PID_PATH.format(doc["id"]), headers=auth())
        written += len(await resp.read())
        if written > 10 * budget:
            break
    assert written > 10 * budget
    metrics = await (await gw.get("/metrics")).text()
    line = next(l for l in metrics.splitlines() if l.startswith("ampgate_cache_bytes "))
    assert 0 < float(line.split()[1]) <= budget
