"""The cache as a client sees it: single-flight, staleness, eviction by writes, ETags."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import orjson
import pytest

from services.common.outbox import Outbox
from services.gateway import changes
from services.gateway.hot_path import WireResponse
from services.gateway.keys import OUTBOX_KEY
from tests.fixtures.gateway import WRITER_KEY, auth

PID_PATH = "/v1/passports/{}"


async def some_passport(gateway) -> str:
    return (await (await gateway.get("/v1/passports", headers=auth())).json())[0]["id"]


@pytest.mark.slow
async def test_1000_concurrent_cold_requests_make_one_upstream_call(gateway, sandbox):
    pids = [p["id"] for p in await (await gateway.get("/v1/passports", headers=auth())).json()]
    await sandbox.fault("passport.public", "latency", latency_ms=100)

    async def burst(pid: str, n: int) -> tuple[float, list]:
        started = time.perf_counter()
        responses = await asyncio.gather(*(gateway.get(PID_PATH.format(pid), headers=auth())
                                           for _ in range(n)))
        bodies = [await r.read() for r in responses]
        return time.perf_counter() - started, list(zip(responses, bodies, strict=True))

    before = (await sandbox.calls())["passport.public"]
    _, cold = await burst(pids[0], 1000)
    assert [r.status for r, _ in cold] == [200] * 1000
    assert len({b for _, b in cold}) == 1 and b"general_information" in cold[0][1]
    assert (await sandbox.calls())["passport.public"] - before == 1
    # Waiters are released when the ONE 100 ms call returns: not by polling (nginx's lock:
    # 500 ms steps), not one after another. A burst small enough not to saturate the
    # machine shows it plainly; best of two keys, since this machine is shared and noisy.
    slowest = []
    for pid in pids[1:3]:
        cold_s, cold = await burst(pid, 50)
        assert [r.status for r, _ in cold] == [200] * 50
        assert {r.headers["X-Cache"] for r, _ in cold} == {"MISS"}
        slowest.append(cold_s)
    assert min(slowest) < 0.1 + 0.25, slowest


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


def assert_problem(resp, status: int) -> None:
    assert resp.status == status
    assert resp.headers["Content-Type"].startswith("application/problem+json")


SHORT_TTL = {"default_ttl_s": 0.2, "stale_while_revalidate_s": 0, "stale_if_error_s": 60}


async def test_a_read_that_finds_a_new_passport_evicts_its_owned_views(gateway, sandbox):
    """No broker here: the replica that finds the change evicts by itself (DESIGN.md §5)."""
    pid = "BP-0003"
    public = await (await gateway.get(PID_PATH.format(pid), headers=auth())).json()
    owned = f"/v1/passports/{pid}/owned"
    for path in (owned, "/v1/passports"):
        await gateway.get(path, headers=auth())
        assert (await gateway.get(path, headers=auth())).headers["X-Cache"] == "HIT"
    await sandbox.put_passport(pid, {**public, "status": {"state": "recalled-upstream"}})
    read = await gateway.get(PID_PATH.format(pid), headers={**auth(), "Cache-Control": "no-cache"})
    assert (await read.json())["status"]["state"] == "recalled-upstream"  # a read found it

    after = await gateway.get(owned, headers=auth())
    assert after.headers["X-Cache"] == "MISS"
    assert (await after.json())["status"]["state"] == "recalled-upstream"
    listed = await (await gateway.get("/v1/passports", headers=auth())).json()
    assert next(d for d in listed if d["id"] == pid)["status"]["state"] == "recalled-upstream"
    # the read that found the new version stored it: the next public read is a hit, and new
    again = await gateway.get(PID_PATH.format(pid), headers=auth())
    assert again.headers["X-Cache"] == "HIT"
    assert (await again.json())["status"]["state"] == "recalled-upstream"


@pytest.mark.parametrize("how", ["deleted", 410, 403])
async def test_an_upstream_4xx_is_the_answer_and_drops_the_entry(make_gateway, sandbox, how):
    gw = await make_gateway(cache=SHORT_TTL, passport={"retries": 0})
    pid = f"BP-GONE-{how}"
    await sandbox.put_passport(pid, {"id": pid, "status": {"state": "active"},
                                     "general_information": {"identification": {"uid": pid}}})
    assert (await gw.get(PID_PATH.format(pid), headers=auth())).status == 200
    await asyncio.sleep(0.3)  # expired, well inside stale-if-error
    if how == "deleted":
        await sandbox.delete_passport(pid)
    else:
        await sandbox.fault("passport.public", "status", status=how)
    resp = await gw.get(PID_PATH.format(pid), headers=auth())
    want = 404 if how == "deleted" else how
    assert_problem(resp, want)  # not the old 200 as STALE
    assert (await resp.json())["upstream_status"] == want
    # the old document is gone, not kept for an outage: one now has nothing to serve
    await sandbox.clear_faults()
    await sandbox.fault("passport.public", "status", status=503)
    assert_problem(await gw.get(PID_PATH.format(pid), headers=auth()), 502)


@pytest.mark.parametrize(("path", "endpoint"), [
    (PID_PATH.format("BP-0001"), "passport.public"),
    ("/v1/passports/BP-0001/owned", "passport.owned_get"),
    ("/v1/passports", "passport.owned_list"),
    ("/v1/users/me", "users.me"),
    ("/v1/charging-stations", "cpo.stations"),
    ("/v1/prices?evseId=DE*EEE*E000001&tag_id=DEMO-TAG-0001", "pricing.single"),
])
async def test_a_200_that_is_not_json_is_502_and_stale_may_stand_in(make_gateway, sandbox,
                                                                     path, endpoint):
    gw = await make_gateway(cache=SHORT_TTL)
    await sandbox.fault(endpoint, "non_json", times=1)
    resp = await gw.get(path, headers=auth())
    assert_problem(resp, 502)  # never a 500
    assert (await resp.json())["upstream_status"] == 200
    good = await gw.get(path, headers=auth())
    assert good.status == 200
    await asyncio.sleep(0.3)  # expired, inside stale-if-error
    await sandbox.fault(endpoint, "non_json")
    stale = await gw.get(path, headers=auth())
    assert stale.status == 200 and stale.headers["X-Cache"] == "STALE"
    assert await stale.read() == await good.read()


async def test_a_body_over_the_cap_is_502(make_gateway, sandbox):
    cap = 64 * 1024
    gw = await make_gateway(upstream={"max_body_bytes": cap})
    await sandbox.fault("cpo.stations", "oversized", body_bytes=cap + 1, times=1)
    assert_problem(await gw.get("/v1/charging-stations", headers=auth()), 502)
    await sandbox.fault("cpo.stations", "oversized", body_bytes=cap, times=1)
    at_cap = await gw.get("/v1/charging-stations?page[offset]=50", headers=auth())
    assert at_cap.status == 200 and len(await at_cap.read()) == cap


async def test_the_default_cap_is_16_mib(gateway, sandbox):
    await sandbox.fault("passport.public", "oversized")  # 20 MiB of valid JSON
    resp = await gateway.get(PID_PATH.format("BP-0001"), headers=auth())
    assert_problem(resp, 502)
    assert "16777216 bytes" in (await resp.json())["detail"]


STATIONS = "/v1/charging-stations?page[limit]=10&page[offset]=20"
NEXT = "/v1/charging-stations?page%5Blimit%5D=10&page%5Boffset%5D=30"


async def test_host_headers_share_one_entry_and_links_follow_each_host(gateway, sandbox):
    before = (await sandbox.calls())["cpo.stations"]
    hosts = [f"h{i}.example:{8000 + i}" for i in range(50)] + ['evil"},"x":"y.example']
    etags = set()
    for host in hosts:
        resp = await gateway.get(STATIONS, headers={**auth(), "Host": host})
        assert resp.status == 200
        doc = await resp.json()  # valid JSON whatever the Host header holds
        assert doc["links"]["next"] == f"http://{host}{NEXT}"
        assert set(doc) == {"data", "meta", "links"}
        etags.add(resp.headers["ETag"])
        again = await gateway.get(STATIONS, headers={**auth(), "Host": host,
                                                     "If-None-Match": resp.headers["ETag"]})
        assert again.status == 304
    assert (await sandbox.calls())["cpo.stations"] - before == 1
    assert len(etags) == len(hosts)  # each host's bytes differ, so do their ETags


async def test_a_public_url_fixes_the_links_for_every_host(make_gateway, sandbox):
    gw = await make_gateway(http={"public_url": "https://api.example.com/gw/"})
    before = (await sandbox.calls())["cpo.stations"]
    bodies = set()
    for i in range(20):
        resp = await gw.get(STATIONS, headers={**auth(), "Host": f"h{i}.example"})
        bodies.add(await resp.read())
    assert (await sandbox.calls())["cpo.stations"] - before == 1
    assert len(bodies) == 1
    doc = await (await gw.get(STATIONS, headers=auth())).json()
    assert doc["links"]["next"] == f"https://api.example.com/gw{NEXT}"


async def test_a_read_that_finds_a_new_tariff_evicts_every_view_of_that_evse(make_gateway,
                                                                               sandbox):
    gw = await make_gateway(tariff_contexts=[{"name": "demo", "tag_id": "DEMO-TAG-0001"}])
    evse = "DE*EEE*E000001"
    plain = f"/v1/prices?evseId={evse}&tag_id=DEMO-TAG-0001"
    views = {  # a view -> where it shows the EVSE's rate name (None: not necessarily)
        plain + "&consumption=5000": lambda d: d["rateName"],
        f"/v1/prices?evseId={evse}&tag_id=OTHER-TAG-7": lambda d: d["rateName"],  # no context
        f"/v1/prices/batch?evseIds={evse},CH*CHI*E00193&tag_id=DEMO-TAG-0001":
            lambda d: d[evse]["rateName"],
        "/v1/prices/all?limit=50&tag_id=DEMO-TAG-0001": None,  # a page: unknown before the fill
    }
    await gw.get(plain, headers=auth())
    for view in views:
        assert (await gw.get(view, headers=auth())).status == 200
        assert (await gw.get(view, headers=auth())).headers["X-Cache"] == "HIT"
    await sandbox.put_tariff(evse, {"rateName": "Night tariff"})
    read = await gw.get(plain, headers={**auth(), "Cache-Control": "no-cache"})
    assert (await read.json())["rateName"] == "Night tariff"  # a read found the change
    for view, rate_name in views.items():
        resp = await gw.get(view, headers=auth())
        assert resp.headers["X-Cache"] == "MISS", view
        if rate_name is not None:
            assert rate_name(await resp.json()) == "Night tariff", view


async def test_a_write_is_answered_once_its_event_is_in_the_outbox(gateway, sandbox):
    """Group commit must not answer early: with the outbox's writer thread slowed down,
    each write still answers only once its event is in the file (DESIGN.md §7)."""
    outbox = gateway.server.app[OUTBOX_KEY]
    add = outbox.add

    def slow_add(conn, record, claim=None):  # runs in the writer thread
        time.sleep(0.05)
        add(conn, record, claim)

    outbox.add = slow_add
    pid = await some_passport(gateway)
    doc = await (await gateway.get(PID_PATH.format(pid), headers=auth())).json()

    async def write(n: int) -> bool:
        put = await gateway.put(PID_PATH.format(pid), json={**doc, "n": n},
                                headers=auth(WRITER_KEY))
        assert put.status == 200, await put.text()
        with Outbox(outbox.path) as box:  # as a restarted gateway would read the file
            return any(orjson.loads(r.value)["passport"].get("n") == n
                       for _, r in box.next_batch(1000))

    assert await asyncio.gather(*(write(n) for n in range(10))) == [True] * 10


async def test_a_fill_that_finds_a_change_answers_once_its_event_is_in_the_outbox(
        gateway, sandbox):
    outbox = gateway.server.app[OUTBOX_KEY]
    add = outbox.add

    def slow_add(conn, record, claim=None):  # runs in the writer thread
        time.sleep(0.05)
        add(conn, record, claim)

    outbox.add = slow_add
    pid = await some_passport(gateway)
    await gateway.get(PID_PATH.format(pid), headers=auth())
    await sandbox.put_passport(pid, {"id": pid, "status": {"state": "changed-upstream"},
                                     "general_information": {"identification": {"uid": pid}}})
    fresh = await gateway.get(PID_PATH.format(pid), headers={**auth(), "Cache-Control": "no-cache"})
    assert fresh.headers["X-Cache"] == "MISS"
    with Outbox(outbox.path) as box:
        states = [(orjson.loads(r.value)["passport"].get("status") or {}).get("state")
                  for _, r in box.next_batch(1000)]
    assert "changed-upstream" in states


def hold_writer(outbox: Outbox) -> threading.Event:
    """Hold the outbox's writer thread before its next insert until the event is set."""
    add = outbox.add
    release = threading.Event()

    def held_add(conn, record, claim=None):  # runs in the writer thread
        release.wait(10)
        add(conn, record, claim)

    outbox.add = held_add
    return release


async def test_a_first_read_answers_before_its_snapshot_is_committed(gateway, sandbox):
    """A first sighting is no change a client could act on (changes.py): the fill does not
    wait for the group commit (a crash before it records the snapshot again at the next
    sighting, as for a poll). The event still reaches the outbox."""
    outbox = gateway.server.app[OUTBOX_KEY]
    pids = [p["id"] for p in await (await gateway.get("/v1/passports", headers=auth())).json()]
    release = hold_writer(outbox)
    try:
        first = await asyncio.wait_for(
            gateway.get(PID_PATH.format(pids[2]), headers=auth()), 5)
        assert first.status == 200 and first.headers["X-Cache"] == "MISS"
    finally:
        release.set()
    outbox.writer.idle()
    with Outbox(outbox.path) as box:
        events = [orjson.loads(r.value) for _, r in box.next_batch(1000)]
    assert [(e["passport_id"], e["change"]) for e in events][-1:] == [
        (pids[2], "CHANGE_KIND_SNAPSHOT")]


async def test_first_reads_wait_for_the_commit_once_the_writer_is_behind(gateway, sandbox,
                                                                        monkeypatch):
    """Backpressure: first sightings run ahead of the writer thread only up to a bound of
    uncommitted documents (``changes._UNSETTLED_BYTES_MAX``, 1 byte here); past it a read
    answers after the commit, like any change (without it, bench/run.sh rss found 946 MiB
    for a 256 MiB cache: every uncommitted row held its document and its event)."""
    monkeypatch.setattr(changes, "_UNSETTLED_BYTES_MAX", 1)
    outbox = gateway.server.app[OUTBOX_KEY]
    pids = [p["id"] for p in await (await gateway.get("/v1/passports", headers=auth())).json()]
    release = hold_writer(outbox)
    try:
        # its own document is past the bound: it waits (with the default bound it answers:
        # test_a_first_read_answers_before_its_snapshot_is_committed)
        read = asyncio.ensure_future(gateway.get(PID_PATH.format(pids[2]), headers=auth()))
        done, _ = await asyncio.wait([read], timeout=0.5)
        assert not done, "a read answered while the writer was behind"
    finally:
        release.set()
    assert (await asyncio.wait_for(read, 5)).status == 200


async def _read_response(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    return head + (await reader.readexactly(int(length.group(1))) if length else b"")


def _same_but(raw: bytes) -> bytes:
    """A response with what differs per request blanked: X-Cache, X-Request-ID, Age, Date."""
    return re.sub(rb"\r\n(X-Cache|X-Request-ID|Age|Date): [^\r]*", rb"\r\n\1: -", raw)


async def test_cold_burst_waiters_get_a_hits_bytes_each_with_its_own_request_id(
        gateway, sandbox, monkeypatch):
    """The waiters of a fill are answered as it completes, with the prebuilt bytes a hit
    sends (hot_path.EarlyAnswer): each its own request id, exactly one answer per request
    (the next request on the same connection gets its own), a conditional waiter a 304,
    an HTTP/1.0 waiter aiohttp's general answer, one upstream call."""
    sent_early: list[int] = []
    send_now = WireResponse.send_now

    def counted(self, request):
        sent_early.append(self.status)
        return send_now(self, request)

    monkeypatch.setattr(WireResponse, "send_now", counted)
    pid = (await (await gateway.get("/v1/passports", headers=auth())).json())[1]["id"]
    sent_early.clear()  # that list was a fill too
    path = PID_PATH.format(pid)
    port = gateway.server.port
    await sandbox.fault("passport.public", "latency", latency_ms=200)
    before = (await sandbox.calls())["passport.public"]
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]

    def request(i: int, version: str = "1.1", **headers: str) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in {**auth(), **headers}.items())
        return (f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\nX-Request-ID: burst-{i}\r\n"
                f"{extra}\r\n").encode()

    for i, (_, writer) in enumerate(conns[:18]):
        writer.write(request(i))
    conns[18][1].write(request(18, **{"If-None-Match": "*"}))
    conns[19][1].write(request(19, version="1.0"))
    answers = await asyncio.gather(*(_read_response(r) for r, _ in conns))
    await sandbox.clear_faults()
    assert (await sandbox.calls())["passport.public"] - before == 1
    assert sorted(sent_early) == [200] * 18 + [304]  # all but HTTP/1.0, as the fill completed
    hit = await _read_response_of(port, request(99))
    assert b"\r\nX-Cache: HIT\r\n" in hit
    for i, raw in enumerate(answers[:18]):
        assert b"\r\nX-Cache: MISS\r\n" in raw and f"\r\nX-Request-ID: burst-{i}\r\n".encode() in raw
        assert _same_but(raw) == _same_but(hit)
    assert answers[18].startswith(b"HTTP/1.1 304 Not Modified\r\n")
    assert b"\r\nX-Request-ID: burst-18\r\n" in answers[18]
    assert answers[19].startswith(b"HTTP/1.0 200 OK\r\n") and answers[19].endswith(
        hit.split(b"\r\n\r\n", 1)[1])
    # one answer per request: the next one on each keep-alive connection is its own hit
    for i, (reader, writer) in enumerate(conns[:18]):
        writer.write(request(100 + i))
        again = await _read_response(reader)
        assert b"\r\nX-Cache: HIT\r\n" in again and f"burst-{100 + i}".encode() in again
        writer.close()
    for _, writer in conns[18:]:
        writer.close()

    def value(name: str, **labels: str) -> float:
        return gateway.registry.get_sample_value(name, labels) or 0.0

    # counted as before: one miss, 19 coalesced, a 200 or 304 per request
    assert value("ampgate_cache_lookups_total", route="passport_public", result="miss") == 1
    assert value("ampgate_cache_lookups_total", route="passport_public",
                 result="coalesced") == 19
    assert value("ampgate_http_requests_total", route="passport_public", method="GET",
                 status="304", client="reader") == 1


async def _read_response_of(port: int, raw_request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw_request)
    try:
        return await _read_response(reader)
    finally:
        writer.close()


async def test_a_cold_reads_waiters_are_answered_before_its_snapshot_is_built(
        gateway, sandbox, monkeypatch):
    """A first sighting (the SNAPSHOT no read awaits) is recorded once the fill's waiters
    are answered (ResponseCache.after_answers): its digest, event and outbox row are not
    between the upstream's answer and the waiters' bytes, nor the writer thread it wakes.
    The event still reaches the outbox."""
    order: list[str] = []
    send_now, build = WireResponse.send_now, changes._build

    def sent(self, request):
        order.append("sent")
        return send_now(self, request)

    def built(*args, **kwargs):
        order.append("built")
        return build(*args, **kwargs)

    monkeypatch.setattr(WireResponse, "send_now", sent)
    monkeypatch.setattr(changes, "_build", built)
    outbox = gateway.server.app[OUTBOX_KEY]
    pid = (await (await gateway.get("/v1/passports", headers=auth())).json())[3]["id"]
    await sandbox.fault("passport.public", "latency", latency_ms=100)
    order.clear()
    answers = await asyncio.gather(*(gateway.get(PID_PATH.format(pid), headers=auth())
                                     for _ in range(5)))
    await sandbox.clear_faults()
    assert [a.status for a in answers] == [200] * 5
    assert order == ["sent"] * 5 + ["built"]
    outbox.writer.idle()
    with Outbox(outbox.path) as box:
        events = [orjson.loads(r.value) for _, r in box.next_batch(1000)]
    assert [(e["passport_id"], e["change"]) for e in events][-1:] == [
        (pid, "CHANGE_KIND_SNAPSHOT")]
