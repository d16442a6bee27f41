"""ResponseCache: single-flight, SWR, stale-if-error, byte budget, invalidation."""

from __future__ import annotations

import asyncio
import gc
import time

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.eager import eager_task
from services.common.settings import CachePolicy, UpstreamSettings
from services.gateway.cache import CachedResponse, CacheResult, ResponseCache, make_response
from services.gateway.errors import UpstreamBadBody, UpstreamStatus, UpstreamTimeout
from services.gateway.upstream_client import UpstreamClient
from tests.fixtures.clock import FakeClock

POLICY = CachePolicy(ttl_s=10, stale_while_revalidate_s=5, stale_if_error_s=100)


class Fetcher:
    """A fetch callable that counts calls; its answer and delay can be changed. Like the
    handlers' fetchers (the upstream client under them), an error status is raised as
    UpstreamStatus, never returned."""

    def __init__(self, body: bytes = b'{"v": 1}', status: int = 200, delay: float = 0.0) -> None:
        self.calls = 0
        self.body = body
        self.status = status
        self.delay = delay
        self.error: Exception | None = None

    async def __call__(self) -> CachedResponse:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if self.status >= 400:
            raise UpstreamStatus("passport", self.status, self.body.decode())
        return make_response(self.status, self.body, "application/json")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cache(metrics, clock):
    c = ResponseCache(1024 * 1024, metrics, clock=clock)
    yield c
    await c.close()


def lookups(registry: CollectorRegistry, route: str, result: str) -> float:
    return registry.get_sample_value("ampgate_cache_lookups_total",
                                     {"route": route, "result": result}) or 0.0


@pytest.fixture
async def slow_upstream(aiohttp_server):
    """A real upstream that answers after 200 ms and counts calls."""
    state = {"calls": 0}

    async def handle(request: web.Request) -> web.Response:
        state["calls"] += 1
        await asyncio.sleep(0.2)
        return web.json_response({"id": "p1", "pad": "x" * 1000})

    app = web.Application()
    app.router.add_get("/p1", handle)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:

        async def fetch() -> CachedResponse:
            async with session.get(server.make_url("/p1")) as resp:
                return make_response(resp.status, await resp.read(), resp.content_type)

        yield fetch, state


async def test_cold_burst_makes_one_upstream_call_and_releases_everyone_at_once(
        slow_upstream, metrics, registry):
    upstream_fetch, state = slow_upstream
    cache = ResponseCache(1024 * 1024, metrics)
    done_at: list[float] = []
    fetched_at: list[float] = []

    async def fetch() -> CachedResponse:
        response = await upstream_fetch()
        fetched_at.append(time.perf_counter())
        return response

    async def caller() -> tuple[CachedResponse, CacheResult]:
        r = await cache.get_or_fetch("k", fetch, POLICY, route="passport")
        done_at.append(time.perf_counter())
        return r

    results = await asyncio.gather(*(caller() for _ in range(1000)))
    assert state["calls"] == 1
    bodies = {id(r.body) for r, _ in results}
    assert len(bodies) == 1 and b'"p1"' in results[0][0].body  # everyone got the same bytes
    assert [res for _, res in results].count(CacheResult.MISS) == 1
    assert [res for _, res in results].count(CacheResult.COALESCED) == 999
    # released when the call returned, not in polling steps (nginx: up to 500 ms later);
    # measured from the upstream's answer, so a slow first connection on a busy machine
    # does not count against the cache
    assert min(done_at) >= fetched_at[0]
    assert max(done_at) - fetched_at[0] < 0.3
    assert lookups(registry, "passport", "coalesced") == 999
    # and now it is a hit
    again, res = await cache.get_or_fetch("k", fetch, POLICY, route="passport")
    assert res is CacheResult.HIT and again is results[0][0]
    await cache.close()


async def test_a_miss_asks_the_upstream_before_requests_queued_behind_it_run(cache):
    """In a cold burst the fill's upstream call must not wait until every other request
    already taken in has been handled: it starts in the first caller's turn."""
    order: list[str] = []

    async def fetch() -> CachedResponse:
        order.append("upstream asked")
        await asyncio.sleep(0.01)
        return make_response(200, b"{}", "application/json")

    async def another_request():
        order.append("next request")

    first = asyncio.create_task(cache.get_or_fetch("k", fetch, POLICY, route="r"))
    queued = asyncio.create_task(another_request())  # ready in the same turn, behind it
    await asyncio.gather(first, queued)
    assert order == ["upstream asked", "next request"]


async def test_hit_returns_the_stored_object_without_fetching(cache, registry):
    fetch = Fetcher()
    first, res1 = await cache.get_or_fetch("k", fetch, POLICY, route="r")
    second, res2 = await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert (res1, res2) == (CacheResult.MISS, CacheResult.HIT)
    assert second is first and fetch.calls == 1
    assert first.etag.startswith('"') and first.etag == make_response(200, b'{"v": 1}', "x").etag
    assert lookups(registry, "r", "hit") == 1 and lookups(registry, "r", "miss") == 1


async def test_cancelled_first_caller_does_not_break_the_fill(cache):
    fetch = Fetcher(delay=0.1)
    first = asyncio.create_task(cache.get_or_fetch("k", fetch, POLICY, route="r"))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(cache.get_or_fetch("k", fetch, POLICY, route="r"))
    await asyncio.sleep(0.01)
    first.cancel()
    resp, res = await second
    assert resp.body == b'{"v": 1}' and res is CacheResult.COALESCED
    assert first.cancelled()
    _, res = await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert res is CacheResult.HIT and fetch.calls == 1


async def test_each_waiter_has_its_own_deadline(cache):
    fetch = Fetcher(delay=1.0)
    patient = asyncio.create_task(cache.get_or_fetch("k", fetch, POLICY, route="r"))
    await asyncio.sleep(0)
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout) as err:
        await cache.get_or_fetch("k", fetch, POLICY, route="r", wait_timeout_s=0.05)
    assert time.perf_counter() - started < 0.5 and err.value.status == 504
    resp, res = await patient  # the fill went on for the others
    assert resp.body == b'{"v": 1}'
    assert res is CacheResult.MISS and fetch.calls == 1
    assert (await cache.get_or_fetch("k", fetch, POLICY, route="r"))[1] is CacheResult.HIT


async def test_stale_while_revalidate_serves_at_once_and_refreshes_once(cache, clock):
    fetch = Fetcher(body=b"old")
    await cache.get_or_fetch("k", fetch, POLICY, route="r")
    clock.now += 11  # expired, within the 5 s SWR window
    fetch.body, fetch.delay = b"new", 0.2
    started = time.perf_counter()
    results = await asyncio.gather(
        *(cache.get_or_fetch("k", fetch, POLICY, route="r") for _ in range(20)))
    assert time.perf_counter() - started < 0.1  # nobody waited for the refresh
    assert {(r.body, res) for r, res in results} == {(b"old", CacheResult.STALE)}
    await asyncio.sleep(0.3)
    assert fetch.calls == 2  # one background refresh for 20 stale reads
    resp, res = await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert (resp.body, res) == (b"new", CacheResult.HIT)


async def test_past_swr_a_reader_waits_for_the_fetch(cache, clock):
    fetch = Fetcher(body=b"old")
    await cache.get_or_fetch("k", fetch, POLICY, route="r")
    clock.now += 16  # past ttl + swr
    fetch.body = b"new"
    resp, res = await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert (resp.body, res) == (b"new", CacheResult.MISS)


async def test_stale_if_error_then_the_error_for_everyone(cache, clock):
    fetch = Fetcher(body=b"old")
    await cache.get_or_fetch("k", fetch, POLICY, route="r")
    clock.now += 50  # past SWR, within ttl + stale_if_error (110 s)
    fetch.error = UpstreamStatus("passport", 503, "down")
    resp, res = await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert (resp.body, res) == (b"old", CacheResult.STALE)

    fetch.error = None
    for unavailable in (500, 429, 401):  # 5xx, rate limited, our credential refused
        fetch.status = unavailable
        resp, res = await cache.get_or_fetch("k", fetch, POLICY, route="r")
        assert (resp.body, res) == (b"old", CacheResult.STALE)
    fetch.error = UpstreamBadBody("passport", "a body that is not a JSON document")
    resp, res = await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert (resp.body, res) == (b"old", CacheResult.STALE)
    fetch.error = None

    clock.now += 100  # past the stale-if-error window: the error reaches every waiter
    fetch.status, fetch.delay = 200, 0.05
    fetch.error = UpstreamStatus("passport", 503, "down")
    calls = fetch.calls
    results = await asyncio.gather(
        *(cache.get_or_fetch("k", fetch, POLICY, route="r") for _ in range(5)),
        return_exceptions=True)
    assert all(isinstance(r, UpstreamStatus) for r in results)
    assert fetch.calls == calls + 1


async def test_an_upstream_4xx_reaches_every_waiter_and_is_not_stored(cache):
    fetch = Fetcher(body=b'{"title":"not found"}', status=404, delay=0.05)
    results = await asyncio.gather(
        *(cache.get_or_fetch("k", fetch, POLICY, route="r") for _ in range(10)),
        return_exceptions=True)
    assert all(isinstance(r, UpstreamStatus) and r.status == 404 for r in results)
    assert fetch.calls == 1 and cache.entries == 0
    with pytest.raises(UpstreamStatus):
        await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert fetch.calls == 2


@pytest.mark.parametrize("status", [404, 410, 403])
async def test_an_upstream_4xx_drops_the_entry_instead_of_serving_stale(
        status, metrics, clock, aiohttp_server, session):
    """Through the real path: the upstream client under a fetch as the handlers build it.
    The passport is deleted (404), gone (410) or made private (403) upstream while the
    old 200 is still inside its stale-if-error window: the answer is the 4xx, and the
    old document is dropped, not kept for the next outage."""
    answer = {"status": 200}

    async def handle(request: web.Request) -> web.Response:
        if answer["status"] != 200:
            return web.json_response({"error": "gone"}, status=answer["status"])
        return web.json_response({"id": "p1", "v": 1})

    app = web.Application()
    app.router.add_get("/p1", handle)
    server = await aiohttp_server(app)
    client = UpstreamClient("passport", UpstreamSettings(base_url=str(server.make_url("/"))),
                            None, metrics)

    async def fetch() -> CachedResponse:  # what handlers.respond.fetcher does
        resp = await client.request("public_get", "GET", "/p1")
        return make_response(resp.status, resp.body, resp.content_type)

    cache = ResponseCache(1024 * 1024, metrics, clock=clock)
    await cache.get_or_fetch("k", fetch, POLICY, route="r")
    clock.now += 16  # past the TTL and SWR, well inside stale-if-error (ttl + 100 s)
    answer["status"] = status
    with pytest.raises(UpstreamStatus) as err:
        await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert err.value.status == status and err.value.upstream_status == status
    assert cache.entries == 0
    answer["status"] = 503  # and a later outage has nothing old to fall back on
    with pytest.raises(UpstreamStatus) as err:
        await cache.get_or_fetch("k", fetch, POLICY, route="r")
    assert err.value.status == 502
    await cache.close()


async def test_revalidate_fetches_even_when_fresh(cache):
    fetch = Fetcher(body=b"v1")
    await cache.get_or_fetch("k", fetch, POLICY, route="r")
    fetch.body = b"v2"
    resp, res = await cache.get_or_fetch("k", fetch, POLICY, route="r", revalidate=True)
    assert (resp.body, res) == (b"v2", CacheResult.MISS)
    assert (await cache.get_or_fetch("k", fetch, POLICY, route="r"))[0].body == b"v2"


async def test_zero_ttl_bypasses(cache, registry):
    fetch = Fetcher()
    policy = CachePolicy(ttl_s=0, stale_while_revalidate_s=0, stale_if_error_s=0)
    for _ in range(3):
        _, res = await cache.get_or_fetch("k", fetch, policy, route="r")
        assert res is CacheResult.BYPASS
    assert fetch.calls == 3 and cache.entries == 0
    assert lookups(registry, "r", "bypass") == 3


async def test_byte_budget_holds_under_ten_times_the_budget(metrics, registry, clock):
    budget = 100_000
    cache = ResponseCache(budget, metrics, clock=clock)
    body = b"x" * 5_000
    for i in range(200):  # 1 MB written
        await cache.get_or_fetch(i, Fetcher(body=body), POLICY, route="r")
        assert cache.bytes <= budget
        # key 0 is read all the time: LRU keeps it
        assert (await cache.get_or_fetch(0, Fetcher(), POLICY, route="r"))[1] is CacheResult.HIT
    assert cache.entries < 20
    assert registry.get_sample_value("ampgate_cache_bytes") == cache.bytes
    assert registry.get_sample_value("ampgate_cache_entries") == cache.entries
    assert registry.get_sample_value("ampgate_cache_evictions_total", {"reason": "lru"}) > 150
    # an entry bigger than a quarter of the budget is served but never stored
    resp, _ = await cache.get_or_fetch("big", Fetcher(body=b"y" * 30_000), POLICY, route="r")
    assert len(resp.body) == 30_000 and (await cache.get_or_fetch(
        "big", Fetcher(body=b"z"), POLICY, route="r"))[0].body == b"z"
    await cache.close()


async def test_invalidate_tag_and_clear(cache, registry):
    await cache.get_or_fetch("a", Fetcher(), POLICY, route="r", tags=[("passport", "p1")])
    await cache.get_or_fetch("b", Fetcher(), POLICY, route="r", tags=[("passport", "p1")])
    await cache.get_or_fetch("c", Fetcher(), POLICY, route="r", tags=[("passport", "p2")])
    assert cache.invalidate_tag(("passport", "p1")) == 2
    assert cache.entries == 1
    assert cache.invalidate_tag(("passport", "nope")) == 0
    assert (await cache.get_or_fetch("a", Fetcher(), POLICY, route="r"))[1] is CacheResult.MISS
    assert cache.clear() == 2 and cache.entries == 0 and cache.bytes == 0
    assert registry.get_sample_value("ampgate_cache_evictions_total",
                                     {"reason": "invalidated"}) == 2
    assert registry.get_sample_value("ampgate_cache_evictions_total", {"reason": "purged"}) == 2


@pytest.mark.parametrize("how", ["tag", "clear"])
async def test_invalidation_during_a_fetch_keeps_the_old_body_out(cache, how):
    tag = ("passport", "p1")
    before_write = Fetcher(body=b"before-write", delay=0.1)
    inflight = asyncio.create_task(
        cache.get_or_fetch("k", before_write, POLICY, route="r", tags=[tag]))
    await asyncio.sleep(0.02)
    cache.invalidate_tag(tag) if how == "tag" else cache.clear()  # a write happened upstream
    after_write = Fetcher(body=b"after-write")
    # a reader arriving after the write does not join the outdated fetch
    resp, res = await cache.get_or_fetch("k", after_write, POLICY, route="r", tags=[tag])
    assert (resp.body, res) == (b"after-write", CacheResult.MISS)
    old, _ = await inflight
    assert old.body == b"before-write"  # its own caller still gets its answer...
    resp, res = await cache.get_or_fetch("k", Fetcher(), POLICY, route="r")
    assert (resp.body, res) == (b"after-write", CacheResult.HIT)  # ...but it was not stored


async def test_close_cancels_background_refreshes(metrics, clock):
    cache = ResponseCache(1024 * 1024, metrics, clock=clock)
    fetch = Fetcher(body=b"old")
    await cache.get_or_fetch("k", fetch, POLICY, route="r")
    clock.now += 11
    fetch.delay = 10
    assert (await cache.get_or_fetch("k", fetch, POLICY, route="r"))[1] is CacheResult.STALE
    await asyncio.sleep(0)
    started = time.perf_counter()
    await cache.close()
    assert time.perf_counter() - started < 1  # the refresh would take 10 s


async def test_on_fill_answers_every_waiter_before_any_is_resumed(cache, registry):
    fetch = Fetcher(delay=0.05)
    events: list[tuple[str, int, CacheResult]] = []

    async def caller(i: int) -> tuple[CachedResponse, CacheResult]:
        r = await cache.get_or_fetch(
            "k", fetch, POLICY, route="r",
            on_fill=lambda response, result: events.append(("on_fill", i, result)))
        events.append(("resumed", i, r[1]))
        return r

    results = await asyncio.gather(*(caller(i) for i in range(50)))
    assert fetch.calls == 1
    # every caller's on_fill first (with the result it then returns), then the callers
    assert [e[0] for e in events] == ["on_fill"] * 50 + ["resumed"] * 50
    assert {i: res for kind, i, res in events if kind == "on_fill"} == \
        {i: res for i, (_, res) in enumerate(results)}
    assert [res for _, res in results].count(CacheResult.MISS) == 1
    assert lookups(registry, "r", "coalesced") == 49  # still counted once, when resumed
    # a hit waits for no fill: nothing to call
    _, res = await cache.get_or_fetch("k", fetch, POLICY, route="r",
                                      on_fill=lambda *_: events.append(("hit", -1, res)))
    assert res is CacheResult.HIT and len(events) == 100


async def test_on_fill_answers_in_the_fills_own_turn_and_a_caller_joining_after_it(cache):
    """The waiters are answered in the step the upstream's answer arrives in, not a loop
    turn later (where a task's done callbacks run); a caller that joins the fill in that
    turn (no fresh entry for it: it asked to revalidate) is answered too, and no second
    upstream call is made."""
    events: list[str] = []
    late: list[asyncio.Future] = []
    calls = 0

    async def fetch() -> CachedResponse:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        asyncio.get_running_loop().call_soon(next_turn)  # the turn right after this step
        return make_response(200, b"filled", "application/json")

    def next_turn() -> None:
        events.append("next turn")
        late.append(eager_task(cache.get_or_fetch(  # joins in this turn
            "k", fetch, POLICY, route="r", revalidate=True,
            on_fill=lambda _, result: events.append(f"late {result.name}"))))

    def on_fill(name: str):
        return lambda _, result: events.append(f"{name} {result.name}")

    first = asyncio.create_task(cache.get_or_fetch("k", fetch, POLICY, route="r",
                                                   on_fill=on_fill("first")))
    await asyncio.sleep(0)
    resp, res = await cache.get_or_fetch("k", fetch, POLICY, route="r",
                                         on_fill=on_fill("second"))
    assert (resp.body, res) == (b"filled", CacheResult.COALESCED)
    assert (await first)[1] is CacheResult.MISS
    late_resp, late_res = await late[0]
    assert (late_resp.body, late_res) == (b"filled", CacheResult.MISS)
    assert events == ["first MISS", "second COALESCED", "next turn", "late MISS"]
    assert calls == 1


async def test_on_fill_is_not_called_for_a_caller_that_gave_up_or_a_failed_fill(cache):
    fetch = Fetcher(delay=0.1)
    called: list[str] = []
    gave_up = asyncio.create_task(cache.get_or_fetch(
        "k", fetch, POLICY, route="r", wait_timeout_s=0.01,
        on_fill=lambda *_: called.append("timed out")))
    cancelled = asyncio.create_task(cache.get_or_fetch(
        "k", fetch, POLICY, route="r", on_fill=lambda *_: called.append("cancelled")))
    stayed = asyncio.create_task(cache.get_or_fetch(
        "k", fetch, POLICY, route="r", on_fill=lambda *_: called.append("stayed")))
    await asyncio.sleep(0.03)
    cancelled.cancel()
    with pytest.raises(UpstreamTimeout):
        await gave_up
    await stayed
    assert cancelled.cancelled() and called == ["stayed"]

    fetch = Fetcher()
    fetch.error = UpstreamBadBody("passport", "not JSON", 200)
    with pytest.raises(UpstreamBadBody):
        await cache.get_or_fetch("other", fetch, POLICY, route="r",
                                 on_fill=lambda *_: called.append("failed"))
    assert called == ["stayed"]


async def test_after_answers_runs_once_every_waiter_is_answered_whatever_the_outcome(cache):
    """Work a fill puts off (``after_answers``, called in the fill) runs right after every
    ``on_fill`` and before any waiter resumes; for a failed fill too; outside a fill at
    once."""
    events: list[str] = []

    async def fetch() -> CachedResponse:
        await asyncio.sleep(0.02)
        cache.after_answers(lambda: events.append("after"))
        return make_response(200, b'{"v": 1}', "application/json")

    async def caller(i: int) -> None:
        await cache.get_or_fetch("k", fetch, POLICY, route="r",
                                 on_fill=lambda *_: events.append("on_fill"))
        events.append("resumed")

    await asyncio.gather(*(caller(i) for i in range(5)))
    assert events == ["on_fill"] * 5 + ["after"] + ["resumed"] * 5

    events.clear()

    async def failing() -> CachedResponse:
        cache.after_answers(lambda: events.append("after"))
        raise UpstreamBadBody("passport", "not JSON", 200)

    with pytest.raises(UpstreamBadBody):
        await cache.get_or_fetch("other", failing, POLICY, route="r")
    assert events == ["after"]

    cache.after_answers(lambda: events.append("at once"))  # no fill here
    assert events == ["after", "at once"]


async def test_no_garbage_collection_while_the_waiters_are_answered(cache):
    """A fill's ``on_fill`` listeners run with the collector paused (a cold burst's answers
    are not held up by a collection); it is on again afterwards, and stays off when it was
    off before."""
    seen: list[bool] = []
    fetch = Fetcher(delay=0.02)

    async def callers(n: int, key: str) -> None:
        await asyncio.gather(*(cache.get_or_fetch(
            key, fetch, POLICY, route="r", on_fill=lambda *_: seen.append(gc.isenabled()))
            for _ in range(n)))

    assert gc.isenabled()
    await callers(3, "k")
    assert seen == [False] * 3 and gc.isenabled()
    gc.disable()
    try:
        await callers(2, "other")
        assert seen[3:] == [False] * 2 and not gc.isenabled()
    finally:
        gc.enable()
