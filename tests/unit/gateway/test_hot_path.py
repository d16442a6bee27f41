"""The fused cache-hit path (services/gateway/hot_path.py) answers a fresh hit exactly as
the general path does: the same bytes on the wire (Date aside), the same metrics, the same
access line, the same request id and conditional handling."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry

from services.common.http import REGISTRY_KEY
from services.common.logging import configure_logging
from services.common.runner import install_front_handler
from services.common.settings import CachePolicy, LogSettings
from services.gateway.app import create_app
from services.gateway.keys import HIT_ROUTES_KEY
from services.gateway.routes import ROUTES, hit_routes
from tests.fixtures.gateway import NOSCOPE_KEY, READER_KEY

PASSPORT = "/v1/passports/{}"
_DATE = re.compile(rb"\r\nDate: [^\r]*")
_AGE = re.compile(rb"\r\nAge: \d+")


async def raw_get(port: int, path: str, headers: dict[str, str], *, version: str = "1.1",
                  ) -> bytes:
    """One request on a fresh connection; the whole response as it came off the wire."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    body = await reader.readexactly(int(length.group(1))) if length else b""
    writer.close()
    return head + body


async def warm_pid(gateway) -> str:
    pid = (await (await gateway.get("/v1/passports", headers=key())).json())[0]["id"]
    assert (await gateway.get(PASSPORT.format(pid), headers=key())).headers["X-Cache"] == "MISS"
    return pid


def key(api_key: str = READER_KEY, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", **more}


async def aiohttp_reference(aiohttp_server, body: bytes, etag: str) -> int:
    """A bare aiohttp app answering what the gateway answered before the fused path:
    ``web.Response`` with X-Cache, ETag, Age, Content-Type, then X-Request-ID (the
    middleware's). The port of a server whose bytes are the reference."""

    async def answer(request: web.Request) -> web.Response:
        headers = {"X-Cache": request.query["x_cache"], "ETag": etag, "Age": "0"}
        if request.query.get("status") == "304":
            response = web.Response(status=304, headers=headers)
        else:
            response = web.Response(body=body, headers=headers, content_type="application/json")
        response.headers["X-Request-ID"] = request.headers["X-Request-ID"]
        return response

    app = web.Application()
    app.router.add_get("/", answer)
    return (await aiohttp_server(app)).port


def comparable(raw: bytes) -> bytes:
    return _AGE.sub(b"\r\nAge: 0", _DATE.sub(b"", raw))


async def test_the_bytes_on_the_wire_are_those_aiohttp_writes(gateway, aiohttp_server):
    pid = (await (await gateway.get("/v1/passports", headers=key())).json())[0]["id"]
    headers = key(**{"X-Request-ID": "req-42"})
    miss = await raw_get(gateway.server.port, PASSPORT.format(pid), headers)
    hit = await raw_get(gateway.server.port, PASSPORT.format(pid), headers)
    assert b"\r\nX-Cache: MISS\r\n" in miss and b"\r\nX-Cache: HIT\r\n" in hit
    etag = re.search(rb"\r\nETag: ([^\r]*)", hit).group(1).decode()
    body = hit.split(b"\r\n\r\n", 1)[1]
    ref = await aiohttp_reference(aiohttp_server, body, etag)
    for raw, query in ((miss, "x_cache=MISS"), (hit, "x_cache=HIT")):
        assert comparable(raw) == comparable(await raw_get(ref, f"/?{query}", headers))
    conditional = {**headers, "If-None-Match": f'W/"other", {etag}'}
    hit304 = await raw_get(gateway.server.port, PASSPORT.format(pid), conditional)
    miss304 = await raw_get(gateway.server.port, PASSPORT.format(pid),
                            {**conditional, "Cache-Control": "no-cache"})  # the general path
    assert hit304.startswith(b"HTTP/1.1 304 Not Modified\r\n")
    for raw, x_cache in ((hit304, "HIT"), (miss304, "MISS")):
        reference = await raw_get(ref, f"/?x_cache={x_cache}&status=304", conditional)
        assert comparable(raw) == comparable(reference)


async def test_hit_headers_request_id_and_age(gateway):
    pid = await warm_pid(gateway)
    hit = await gateway.get(PASSPORT.format(pid), headers=key(**{"X-Request-ID": "abc.1"}))
    assert hit.status == 200 and hit.headers["X-Cache"] == "HIT"
    assert hit.headers["X-Request-ID"] == "abc.1"
    assert hit.headers["Content-Type"] == "application/json"
    assert b"general_information" in await hit.read()
    bad_id = await gateway.get(PASSPORT.format(pid), headers=key(**{"X-Request-ID": "a b"}))
    assert re.fullmatch(r"[0-9a-f]{32}", bad_id.headers["X-Request-ID"])
    await asyncio.sleep(1.1)  # Age counts whole seconds since the entry was stored
    older = await gateway.get(PASSPORT.format(pid), headers=key())
    assert older.headers["X-Cache"] == "HIT" and int(older.headers["Age"]) >= 1


async def test_if_none_match_on_a_hit_is_304_without_a_body(gateway):
    pid = await warm_pid(gateway)
    etag = (await gateway.get(PASSPORT.format(pid), headers=key())).headers["ETag"]
    again = await gateway.get(PASSPORT.format(pid), headers=key(**{"If-None-Match": etag}))
    assert again.status == 304 and await again.read() == b""
    assert again.headers["ETag"] == etag and again.headers["X-Cache"] == "HIT"
    other = await gateway.get(PASSPORT.format(pid), headers=key(**{"If-None-Match": '"x"'}))
    assert other.status == 200


async def test_hits_are_counted_with_route_name_status_and_client(gateway):
    pid = await warm_pid(gateway)
    etag = (await gateway.get(PASSPORT.format(pid), headers=key())).headers["ETag"]
    await gateway.get(PASSPORT.format(pid), headers=key(**{"If-None-Match": etag}))

    def value(name: str, **labels: str) -> float:
        return gateway.registry.get_sample_value(name, labels) or 0.0

    route = {"route": "passport_public", "method": "GET"}
    assert value("ampgate_http_requests_total", **route, status="200", client="reader") == 2
    assert value("ampgate_http_requests_total", **route, status="304", client="reader") == 1
    assert value("ampgate_http_request_duration_seconds_count", **route) == 3
    assert value("ampgate_cache_lookups_total", route="passport_public", result="hit") == 2
    assert value("ampgate_cache_lookups_total", route="passport_public", result="miss") == 1


async def test_errors_and_odd_requests_still_get_the_general_answers(gateway):
    pid = await warm_pid(gateway)
    path = PASSPORT.format(pid)
    missing = await gateway.get(path)
    assert missing.status == 401 and missing.content_type == "application/problem+json"
    wrong = await gateway.get(path, headers=key("not-a-key"))
    assert wrong.status == 401
    noscope = await gateway.get(path, headers=key(NOSCOPE_KEY))
    assert noscope.status == 403 and (await noscope.json())["required_scope"] == "passports:read"
    bad = await gateway.get(PASSPORT.format("a..b"), headers=key())
    assert bad.status == 400 and bad.content_type == "application/problem+json"
    fresh = await gateway.get(path, headers=key(**{"Cache-Control": "no-cache"}))
    assert fresh.headers["X-Cache"] == "MISS"
    head = await gateway.head(path, headers=key())
    assert head.status == 405  # GET routes answer GET only, fused or not
    old = await raw_get(gateway.server.port, path, key(), version="1.0")
    assert old.startswith(b"HTTP/1.0 200 OK\r\n") and b"\r\nX-Cache: HIT\r\n" in old


async def test_access_line_of_a_hit_with_request_id_and_traceparent(make_gateway, tmp_path):
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    log_path = tmp_path / "gateway.log"
    with open(log_path, "w+") as stream:  # noqa: ASYNC230 - the logging sink under test
        configure_logging(LogSettings(format="json", level="info"), stream=stream)
        try:
            gateway = await make_gateway()
            pid = await warm_pid(gateway)
            hit = await gateway.get(PASSPORT.format(pid), headers=key(
                **{"X-Request-ID": "line-1", "traceparent": traceparent}))
            assert hit.headers["X-Cache"] == "HIT"
            stream.flush()
        finally:
            configure_logging(LogSettings(format="json"))
    lines = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    [line] = [x for x in lines if x.get("event") == "request" and x.get("request_id") == "line-1"]
    assert line["traceparent"] == traceparent
    assert (line["method"], line["route"], line["status"], line["client"], line["cache"]) == (
        "GET", "/v1/passports/{passport_id}", 200, "reader", "HIT")
    assert line["level"] == "info" and isinstance(line["duration_ms"], float)


async def test_no_access_line_when_info_is_off(make_gateway, tmp_path):
    log_path = tmp_path / "gateway.log"
    with open(log_path, "w+") as stream:  # noqa: ASYNC230 - the logging sink under test
        configure_logging(LogSettings(format="json", level="warning"), stream=stream)
        try:
            gateway = await make_gateway()
            pid = await warm_pid(gateway)
            hit = await gateway.get(PASSPORT.format(pid), headers=key())
            assert hit.headers["X-Cache"] == "HIT"
            stream.flush()
        finally:
            configure_logging(LogSettings(format="json"))
    assert '"event":"request"' not in log_path.read_text()


async def test_pages_rewritten_per_host_keep_their_own_etag(gateway):
    """A per-request variant of an entry (CPO links rewritten to the caller's Host) gets
    its own header block, never the one built for another host."""
    etags = {}
    for host in ("a.example", "b.example", "a.example"):
        resp = await gateway.get("/v1/charging-stations", headers=key(Host=host))
        assert resp.status == 200 and host in (await resp.json())["links"]["current"]
        etags.setdefault(host, set()).add(resp.headers["ETag"])
    assert len(etags["a.example"]) == 1 and etags["a.example"] != etags["b.example"]
    [etag_a] = etags["a.example"]
    other = await gateway.get("/v1/charging-stations",
                              headers=key(Host="b.example", **{"If-None-Match": etag_a}))
    assert other.status == 200


async def test_a_hit_never_enters_the_router_or_the_middleware(aiohttp_client, gateway_settings):
    """The fused path runs in front of ``Application._handle`` (FRONT_HANDLER_KEY): a
    middleware that counts calls sees every miss and error, and no hit."""
    seen: list[str] = []

    @web.middleware
    async def counted(request: web.Request, handler):
        seen.append(request.headers.get("X-Request-ID", ""))
        return await handler(request)

    app = create_app(gateway_settings(), registry=CollectorRegistry())
    app.middlewares.insert(0, counted)
    client = await aiohttp_client(app)
    install_front_handler(client.server.runner)
    pid = await warm_pid(client)  # two misses through the general path
    for n in range(5):
        hit = await client.get(PASSPORT.format(pid), headers=key(**{"X-Request-ID": f"h{n}"}))
        assert hit.headers["X-Cache"] == "HIT"
    noscope = await client.get(PASSPORT.format(pid),
                               headers=key(NOSCOPE_KEY, **{"X-Request-ID": "e1"}))
    assert noscope.status == 403
    assert seen == ["", "", "e1"]


def counted_gateway(gateway_settings, seen: list[str], **overrides) -> web.Application:
    """The gateway with a middleware that records the X-Request-ID of every request that
    reaches ``Application._handle``."""
    @web.middleware
    async def counted(request: web.Request, handler):
        seen.append(request.headers.get("X-Request-ID", ""))
        return await handler(request)

    app = create_app(gateway_settings(**overrides), registry=CollectorRegistry())
    app.middlewares.insert(0, counted)
    return app


async def test_waiters_join_a_fill_in_flight_before_the_router(aiohttp_client, gateway_settings,
                                                               sandbox):
    """A cold key: the first request starts the fill through the general path, the others
    wait for it in the front handler (a cold burst's waiters used to cost the router and
    middleware each, before the fill's upstream call left) and get its bytes, with their
    own request ids, counted as before."""
    seen: list[str] = []
    client = await aiohttp_client(counted_gateway(gateway_settings, seen))
    install_front_handler(client.server.runner)
    pid = (await (await client.get("/v1/passports", headers=key())).json())[1]["id"]
    seen.clear()
    before = (await sandbox.calls()).get("passport.public", 0)
    await sandbox.fault("passport.public", "latency", latency_ms=300)
    path = PASSPORT.format(pid)
    leader = asyncio.ensure_future(client.get(path, headers=key(**{"X-Request-ID": "lead"})))
    while not seen:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the leader's fill is in flight
    waiters = await asyncio.gather(*(client.get(path, headers=key(**{"X-Request-ID": f"w{n}"}))
                                     for n in range(10)))
    first = await leader
    await sandbox.clear_faults()
    body = await first.read()
    assert first.status == 200 and first.headers["X-Cache"] == "MISS"
    for n, waiter in enumerate(waiters):
        assert waiter.status == 200 and waiter.headers["X-Cache"] == "MISS"
        assert waiter.headers["X-Request-ID"] == f"w{n}" and await waiter.read() == body
    assert seen == ["lead"]  # the waiters never entered Application._handle
    assert (await sandbox.calls())["passport.public"] - before == 1
    registry = client.app[REGISTRY_KEY]
    assert registry.get_sample_value("ampgate_cache_lookups_total", {
        "route": "passport_public", "result": "coalesced"}) == 10
    assert registry.get_sample_value("ampgate_http_requests_total", {
        "route": "passport_public", "method": "GET", "status": "200", "client": "reader",
    }) == 11


async def test_waiters_of_a_failed_fill_get_the_general_answer_without_a_second_call(
        aiohttp_client, gateway_settings, sandbox):
    """The fill fails (an upstream timeout): the joined waiters are answered by the general
    path from the fill's failure — the same 504 problem+json a lone request gets — and the
    upstream sees one call, not one more for the waiters."""
    seen: list[str] = []
    client = await aiohttp_client(counted_gateway(
        gateway_settings, seen, passport={"retries": 0, "timeout_s": 0.4}))
    install_front_handler(client.server.runner)
    pid = (await (await client.get("/v1/passports", headers=key())).json())[1]["id"]
    seen.clear()
    before = (await sandbox.calls()).get("passport.public", 0)
    await sandbox.fault("passport.public", "timeout")
    path = PASSPORT.format(pid)
    leader = asyncio.ensure_future(client.get(path, headers=key(**{"X-Request-ID": "lead"})))
    while not seen:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    waiters = await asyncio.gather(*(client.get(path, headers=key(**{"X-Request-ID": f"w{n}"}))
                                     for n in range(5)))
    first = await leader
    await sandbox.clear_faults()
    problem = await first.json(content_type=None)
    assert first.status == 504 and first.content_type == "application/problem+json"
    for n, waiter in enumerate(waiters):
        assert waiter.status == 504 and waiter.content_type == "application/problem+json"
        assert waiter.headers["X-Request-ID"] == f"w{n}"
        assert (await waiter.json(content_type=None))["title"] == problem["title"]
    assert sorted(seen) == ["lead", "w0", "w1", "w2", "w3", "w4"]
    assert (await sandbox.calls())["passport.public"] - before == 1


@pytest.mark.parametrize("path", [
    "/v1/passports", "/v1/passports/", "/v1/passports/BP-0001", "/v1/passports/BP-0001/",
    "/v1/passports/BP-0001/owned", "/v1/passports/BP-0001/owned/", "/v1/passports/BP-0001/history",
    "/v1/passports/BP.1:a~b_c-d", "/v1/passports/a..b", "/v1/passports/.", "/v1/passports/..",
    "/v1/passports/-x", "/v1/passports/owned", "/v1/passports/owned/owned",
    "/v1/passports/BP%2D0001", "/v1/passports/BP%2F0001", "/v1/passports/BP-0001?x=1",
    "/v1/passports//BP-0001", "//v1/passports/BP-0001", "/v1/x/../passports/BP-0001",
    "/v1/passports/./BP-0001", "/v1/users/me", "/v1/users/me/", "/v1/users/m",
    "/V1/passports/BP-0001", "/v1/passports/" + "a" * 129, "/v1/passports/BP-0001/owned/x",
    "/v1/charging-stations", "/v1/prices", "/healthz", "/docs/x",
])
async def test_hit_routes_match_as_aiohttp_router_does(gateway, path):
    """Whatever path ``HitRoutes`` accepts, aiohttp's router resolves to the same route and
    the same cache key; what it is not sure of it leaves to the router."""
    app = gateway.server.app
    matched = app[HIT_ROUTES_KEY].match(path)
    if matched is None:
        return
    route, cache_key = matched
    info = await app.router.resolve(make_mocked_request("GET", path, app=app))
    assert info.http_exception is None and info.route.name == route.name
    assert next(r for r in ROUTES if r.name == route.name).hit_key(info) == cache_key


def test_the_usual_paths_are_matched():
    routes = hit_routes({r.name: CachePolicy(ttl_s=60, stale_while_revalidate_s=0, stale_if_error_s=0) for r in ROUTES if r.cached})
    assert routes.match("/v1/passports/BP-0001")[1] == ("passport", "public", "BP-0001")
    assert routes.match("/v1/passports/BP-0001/owned")[1] == ("passport", "owned", "BP-0001")
    assert routes.match("/v1/passports")[1] == ("passport", "owned_list")
    assert routes.match("/v1/users/me")[1] == ("users", "me")
    assert routes.match("/v1/passports/a..b") is None
    uncached = hit_routes({r.name: CachePolicy(ttl_s=0, stale_while_revalidate_s=0, stale_if_error_s=0) for r in ROUTES if r.cached})
    assert uncached.match("/v1/passports/BP-0001") is None  # TTL 0: the general path
