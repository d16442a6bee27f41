"""UpstreamClient against real aiohttp servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.common.settings import PassportSettings, UpstreamSettings
from services.gateway.errors import (
    CircuitOpen,
    UpstreamBadBody,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
)
from services.gateway.tokens import StaticToken, TokenManager, siemensid_fetcher
from services.gateway.upstream_client import UpstreamClient
from tests.fixtures.clock import FakeClock


class Upstream:
    """A scriptable upstream: ``script`` is a list of (status, body, headers) answered in
    order (the last one repeats); it also issues and checks bearer tokens."""

    def __init__(self) -> None:
        self.calls: list[web.Request] = []
        self.peers: list[tuple[str, int]] = []  # the client's address of each call
        self.bodies: list[bytes] = []
        self.script: list[tuple[int, bytes, dict[str, str]]] = [(200, b'{"ok": true}', {})]
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.valid_tokens: set[str] = set()
        self.check_tokens = False
        self.token_calls = 0
        self._n = itertools.count(1)

    async def token(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        await asyncio.sleep(0.02)
        token = f"tok-{next(self._n)}"
        self.valid_tokens = {token}  # a new token revokes the old ones
        return web.json_response({"access_token": token, "expires_in": 3600})

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append(request)
        self.peers.append(request.transport.get_extra_info("peername"))
        self.bodies.append(await request.read())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.check_tokens:
                auth = request.headers.get("Authorization", "")
                if auth.removeprefix("Bearer ") not in self.valid_tokens:
                    return web.json_response({"message": "Unauthorized"}, status=401)
            i = min(len(self.calls) - 1, len(self.script) - 1)
            status, body, headers = self.script[i]
            return web.Response(status=status, body=body, headers=headers,
                                content_type="application/json")
        finally:
            self.in_flight -= 1


@pytest.fixture
async def upstream(aiohttp_server):
    up = Upstream()
    app = web.Application()
    app.router.add_post("/oauth/token", up.token)
    app.router.add_route("*", "/{tail:.*}", up.handle)
    server = await aiohttp_server(app)
    up.url = str(server.make_url("/"))  # type: ignore[attr-defined]
    return up


def settings(base_url: str, **kw) -> UpstreamSettings:
    return UpstreamSettings(base_url=base_url, **kw)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_url_prefix_params_and_forwarded_headers(upstream, session, metrics, registry):
    client = UpstreamClient("pricing", settings(upstream.url + "prefix"), StaticToken("x-api-token", SecretStr("pt")), metrics)
    resp = await client.request(
        "single", "GET", "/api/pricing/",
        params={"evseId": "DE*EEE*E000001", "page[limit]": "5", "q": "a b&c"},
        request_id="req-1", traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    assert resp.status == 200 and resp.json() == {"ok": True}
    assert resp.content_type == "application/json"
    req = upstream.calls[0]
    assert req.path == "/prefix/api/pricing/"
    assert dict(req.query) == {"evseId": "DE*EEE*E000001", "page[limit]": "5", "q": "a b&c"}
    assert req.headers["x-api-token"] == "pt"
    assert req.headers["X-Request-ID"] == "req-1"
    assert req.headers["traceparent"].startswith("00-0af76519")
    assert sample(registry, "ampgate_upstream_requests_total",
                  upstream="pricing", operation="single", status="200") == 1
    assert sample(registry, "ampgate_upstream_request_duration_seconds_count",
                  upstream="pricing", operation="single") == 1


async def test_base_url_with_trailing_slash_and_sequence_params(upstream, session, metrics):
    client = UpstreamClient("cpo", settings(upstream.url + "cpo/"), None, metrics)
    await client.request("stations", "GET", "api/cpoapi/v1/charging_stations/",
                         params=[("page[limit]", "500"), ("page[offset]", "0")])
    req = upstream.calls[0]
    assert req.path == "/cpo/api/cpoapi/v1/charging_stations/"
    assert list(req.query.items()) == [("page[limit]", "500"), ("page[offset]", "0")]


async def test_write_sends_body_and_content_type(upstream, session, metrics):
    client = UpstreamClient("passport", settings(upstream.url), None, metrics)
    await client.request("create", "POST", "/v1/passports", body=b'{"id":"p1"}',
                         content_type="application/json")
    assert upstream.calls[0].method == "POST"
    assert upstream.bodies[0] == b'{"id":"p1"}'
    assert upstream.calls[0].headers["Content-Type"] == "application/json"


async def test_timeout_is_a_504_within_the_budget(upstream, session, metrics, registry):
    upstream.delay = 2.0
    client = UpstreamClient("cpo", settings(upstream.url, timeout_s=0.3), None, metrics)
    started = time.perf_counter()
    with pytest.raises(UpstreamTimeout) as err:
        await client.request("stations", "GET", "/x")
    assert time.perf_counter() - started < 0.8
    assert err.value.status == 504
    assert sample(registry, "ampgate_upstream_requests_total",
                  upstream="cpo", operation="stations", status="timeout") == 1


async def test_get_is_retried_on_503_then_succeeds(upstream, session, metrics, registry):
    upstream.script = [(503, b"", {}), (502, b"", {}), (200, b"{}", {})]
    client = UpstreamClient("cpo", settings(upstream.url, retries=2), None, metrics)
    resp = await client.request("stations", "GET", "/x")
    assert resp.status == 200 and len(upstream.calls) == 3
    assert sample(registry, "ampgate_upstream_requests_total",
                  upstream="cpo", operation="stations", status="503") == 1


async def test_5xx_after_retries_is_a_502(upstream, session, metrics):
    upstream.script = [(503, b'{"status":"error","message":"down"}', {})]
    client = UpstreamClient("cpo", settings(upstream.url, retries=1), None, metrics)
    with pytest.raises(UpstreamStatus) as err:
        await client.request("stations", "GET", "/x")
    assert err.value.status == 502 and err.value.upstream_status == 503
    assert "down" in err.value.extra["upstream_excerpt"]
    assert len(upstream.calls) == 2


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_writes_are_never_retried(upstream, session, metrics, method):
    upstream.script = [(503, b"", {}), (200, b"{}", {})]
    client = UpstreamClient("passport", settings(upstream.url, retries=3), None, metrics)
    with pytest.raises(UpstreamStatus):
        await client.request("write", method, "/v1/passports/p1")
    assert len(upstream.calls) == 1


async def test_small_retry_after_is_honoured_large_one_is_not_waited_for(upstream, session,
                                                                          metrics):
    upstream.script = [(429, b"", {"Retry-After": "0"}), (200, b"{}", {})]
    client = UpstreamClient("pricing", settings(upstream.url), None, metrics)
    assert (await client.request("single", "GET", "/x")).status == 200
    assert len(upstream.calls) == 2

    upstream.calls.clear()
    upstream.script = [(429, b"slow down", {"Retry-After": "120"})]
    started = time.perf_counter()
    with pytest.raises(UpstreamStatus) as err:
        await client.request("single", "GET", "/x")
    assert err.value.upstream_status == 429 and len(upstream.calls) == 1
    assert time.perf_counter() - started < 0.5


async def test_connection_refused_is_retried_then_a_502(session, metrics, registry,
                                                        unused_tcp_port):
    client = UpstreamClient("cpo", settings(f"http://127.0.0.1:{unused_tcp_port}", retries=2),
                            None, metrics)
    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamError) as err:
        await client.request("stations", "GET", "/x")
    assert type(err.value) is UpstreamError and err.value.status == 502
    assert sample(registry, "ampgate_upstream_requests_total",
                  upstream="cpo", operation="stations", status="error") == 3
    assert [e["attempt"] for e in logs if e["event"] == "upstream_retry"] == [1, 2]


async def test_4xx_keeps_status_with_a_safe_excerpt(upstream, session, metrics):
    upstream.script = [(404, b'{"message":"no\x00such\x1b[31m passport' + b"x" * 500 + b'"}', {})]
    client = UpstreamClient("passport", settings(upstream.url), None, metrics)
    with pytest.raises(UpstreamStatus) as err:
        await client.request("public", "GET", "/v1/passports/public/p1")
    assert err.value.status == 404
    excerpt = err.value.extra["upstream_excerpt"]
    assert len(excerpt) <= 200 and "\x00" not in excerpt and "\x1b" not in excerpt
    assert excerpt.startswith('{"message":"no such')
    assert len(upstream.calls) == 1  # 4xx is not retried

    resp = await client.request("public", "GET", "/v1/passports/public/p1", accept_statuses={404})
    assert resp.status == 404


def token_manager(upstream, session, metrics) -> TokenManager:
    ps = PassportSettings(base_url=upstream.url, token_url=upstream.url + "oauth/token",
                          client_id="c", client_secret="s")
    return TokenManager("passport", siemensid_fetcher(ps), session, metrics)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_401_drops_the_token_refreshes_once_and_replays(upstream, session, metrics, method):
    upstream.check_tokens = True
    tm = token_manager(upstream, session, metrics)
    client = UpstreamClient("passport", settings(upstream.url), tm, metrics)
    old = await tm.token()
    upstream.valid_tokens = set()  # revoked before it expired
    resp = await client.request("op", method, "/v1/passports", body=b"{}" if method == "POST" else None)
    assert resp.status == 200
    assert upstream.token_calls == 2
    assert len(upstream.calls) == 2
    assert upstream.calls[1].headers["Authorization"] != f"Bearer {old}"


async def test_second_401_is_an_error_not_a_loop(upstream, session, metrics):
    upstream.script = [(401, b'{"message":"Unauthorized"}', {})]
    tm = token_manager(upstream, session, metrics)
    client = UpstreamClient("passport", settings(upstream.url), tm, metrics)
    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamStatus) as err:
        await client.request("op", "GET", "/v1/passports")
    assert err.value.upstream_status == 401 and err.value.status == 502
    assert len(upstream.calls) == 2 and upstream.token_calls == 2
    assert "tok-" not in repr(logs)  # tokens never logged


async def test_static_token_401_is_not_replayed(upstream, session, metrics):
    upstream.script = [(401, b"{}", {})]
    client = UpstreamClient("pricing", settings(upstream.url), StaticToken("x-api-token", SecretStr("pt")), metrics)
    with pytest.raises(UpstreamStatus):
        await client.request("single", "GET", "/api/pricing/")
    assert len(upstream.calls) == 1


async def test_burst_of_401s_makes_one_token_refresh(upstream, session, metrics):
    upstream.check_tokens = True
    tm = token_manager(upstream, session, metrics)
    client = UpstreamClient("passport", settings(upstream.url), tm, metrics)
    await tm.token()
    upstream.valid_tokens = set()
    results = await asyncio.gather(*(client.request("op", "GET", "/v1/x") for _ in range(200)))
    assert all(r.status == 200 for r in results)
    assert upstream.token_calls == 2


async def test_circuit_opens_fails_fast_and_closes_after_a_probe(upstream, session, metrics,
                                                                 registry):
    upstream.script = [(500, b"", {})]
    clock = FakeClock()
    client = UpstreamClient("cpo", settings(upstream.url, retries=0, breaker_failures=3,
                                            breaker_reset_s=10), None, metrics,
                            clock=clock)
    for _ in range(3):
        with pytest.raises(UpstreamStatus):
            await client.request("stations", "GET", "/x")
    assert client.breaker.state == "open"
    assert sample(registry, "ampgate_upstream_circuit_state", upstream="cpo") == 2
    with pytest.raises(CircuitOpen) as err:
        await client.request("stations", "GET", "/x")
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "10"
    assert len(upstream.calls) == 3  # not called while open
    assert sample(registry, "ampgate_upstream_requests_total",
                  upstream="cpo", operation="stations", status="circuit_open") == 1

    clock.now += 10
    assert client.breaker.state == "half_open"
    upstream.script = [(200, b"{}", {})]
    upstream.calls.clear()
    upstream.delay = 0.1
    probe = asyncio.create_task(client.request("stations", "GET", "/x"))
    await asyncio.sleep(0.03)
    with pytest.raises(CircuitOpen):  # only one probe at a time
        await client.request("stations", "GET", "/x")
    assert (await probe).status == 200
    assert client.breaker.state == "closed"
    assert sample(registry, "ampgate_upstream_circuit_state", upstream="cpo") == 0
    assert len(upstream.calls) == 1


async def test_failed_probe_reopens(upstream, session, metrics):
    upstream.script = [(502, b"", {})]
    clock = FakeClock()
    client = UpstreamClient("cpo", settings(upstream.url, retries=0, breaker_failures=1,
                                            breaker_reset_s=5), None, metrics,
                            clock=clock)
    with pytest.raises(UpstreamStatus):
        await client.request("stations", "GET", "/x")
    clock.now += 5
    with pytest.raises(UpstreamStatus):
        await client.request("stations", "GET", "/x")  # the probe fails
    assert client.breaker.state == "open"
    with pytest.raises(CircuitOpen):
        await client.request("stations", "GET", "/x")


async def test_4xx_do_not_trip_the_breaker(upstream, session, metrics):
    upstream.script = [(404, b"", {})]
    client = UpstreamClient("cpo", settings(upstream.url, breaker_failures=2), None,
                            metrics)
    for _ in range(5):
        with pytest.raises(UpstreamStatus):
            await client.request("stations", "GET", "/x")
    assert client.breaker.state == "closed"


async def test_concurrency_is_bounded(upstream, session, metrics):
    upstream.delay = 0.05
    client = UpstreamClient("cpo", settings(upstream.url, max_concurrency=3), None,
                            metrics)
    await asyncio.gather(*(client.request("stations", "GET", "/x") for _ in range(20)))
    assert len(upstream.calls) == 20
    assert upstream.max_in_flight == 3


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b'"a string"', b"42", b"",
                                  b'{"truncated": '])
async def test_a_get_whose_2xx_is_not_a_json_document_is_a_502(upstream, session, metrics,
                                                               registry, body):
    upstream.script = [(200, body, {})]
    client = UpstreamClient("passport", settings(upstream.url), None, metrics)
    with pytest.raises(UpstreamBadBody) as err:
        await client.request("public_get", "GET", "/v1/passports/public/p1")
    assert err.value.status == 502 and err.value.unavailable
    assert err.value.extra["upstream_status"] == 200
    assert len(upstream.calls) == 1  # the same answer again would not help: no retry
    assert client.breaker.state == "closed"


async def test_the_body_is_decoded_once_by_the_client(upstream, session, metrics):
    upstream.script = [(200, b'{"data": [1, 2]}', {})]
    client = UpstreamClient("cpo", settings(upstream.url), None, metrics)
    resp = await client.request("stations", "GET", "/s")
    assert resp.data == {"data": [1, 2]} and resp.json() is resp.data


async def test_a_write_answer_that_is_not_json_passes_on(upstream, session, metrics):
    upstream.script = [(200, b"OK", {})]
    client = UpstreamClient("passport", settings(upstream.url), None, metrics)
    resp = await client.request("update", "PUT", "/v1/passports/p1", body=b"{}")
    assert resp.status == 200 and resp.body == b"OK" and resp.data is None


@pytest.fixture
async def big_upstream(aiohttp_server):
    """Answers /known (Content-Length), /chunked (no length) and /gzip (small on the
    wire, large once decompressed), each a JSON body of ``n`` bytes."""
    import gzip

    def body(request: web.Request) -> bytes:
        n = int(request.query["n"])
        return b'{"pad":"' + b"x" * (n - 10) + b'"}'

    async def known(request: web.Request) -> web.Response:
        return web.Response(body=body(request), content_type="application/json")

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        data = body(request)
        for i in range(0, len(data), 10_000):
            await resp.write(data[i:i + 10_000])
        await resp.write_eof()
        return resp

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(body(request)), content_type="application/json",
                            headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/known", known)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/gzip", gzipped)
    return await aiohttp_server(app)


@pytest.mark.parametrize("path", ["/known", "/chunked", "/gzip"])
async def test_a_body_over_the_cap_is_a_502(big_upstream, session, metrics, path):
    cap = 100_000
    client = UpstreamClient("cpo", settings(str(big_upstream.make_url("/"))), None,
                            metrics, max_body_bytes=cap)
    resp = await client.request("stations", "GET", path, params={"n": str(cap)})
    assert len(resp.body) == cap and resp.data["pad"]  # at the cap: fine
    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamBadBody) as err:
        await client.request("stations", "GET", path, params={"n": str(cap + 1)})
    assert err.value.status == 502 and f"over {cap} bytes" in err.value.detail
    assert [e["reason"] for e in logs if e["event"] == "upstream_body_invalid"] == ["too_large"]


@pytest.mark.parametrize(("status", "client_status", "unavailable"), [
    (404, 404, False), (410, 410, False), (403, 403, False), (409, 409, False),
    (429, 502, True), (401, 502, True), (408, 502, True), (500, 502, True), (503, 502, True),
])
async def test_which_statuses_are_an_answer_and_which_an_outage(upstream, session, metrics,
                                                                status, client_status,
                                                                unavailable):
    upstream.script = [(status, b'{"message": "x"}', {})]
    client = UpstreamClient("passport", settings(upstream.url, retries=0), None,
                            metrics)
    with pytest.raises(UpstreamStatus) as err:
        await client.request("public_get", "GET", "/v1/passports/public/p1")
    assert (err.value.status, err.value.unavailable) == (client_status, unavailable)
    assert err.value.upstream_status == status


async def test_the_retrier_is_built_only_for_a_retry(upstream, session, metrics, monkeypatch):
    # The first attempt runs bare (it is most of a write's client CPU otherwise): only a
    # retryable failure of an idempotent request builds the tenacity retrier.
    from services.gateway import upstream_client

    built = []
    real = upstream_client.AsyncRetrying

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(upstream_client, "AsyncRetrying", counting)
    client = UpstreamClient("passport", settings(upstream.url, retries=2), None, metrics)
    assert (await client.request("get", "GET", "/x")).status == 200
    assert (await client.request("update", "PUT", "/x", body=b"{}")).status == 200
    upstream.script = [(503, b"", {})]
    with pytest.raises(UpstreamStatus):
        await client.request("update", "PUT", "/x", body=b"{}")  # a write: never retried
    assert built == [] and len(upstream.calls) == 3

    upstream.calls.clear()
    upstream.script = [(503, b"", {}), (200, b"{}", {})]
    assert (await client.request("get", "GET", "/x")).status == 200
    assert built == [1] and len(upstream.calls) == 2


async def test_the_first_failure_counts_as_the_retriers_attempt_one(upstream, session, metrics):
    # Its Retry-After hint sets the first wait, and the attempts are numbered as before.
    upstream.script = [(429, b"", {"Retry-After": "0.05"}), (503, b"", {"Retry-After": "0.01"}),
                       (200, b"{}", {})]
    client = UpstreamClient("pricing", settings(upstream.url, retries=2), None, metrics)
    with structlog.testing.capture_logs() as logs:
        assert (await client.request("single", "GET", "/x")).status == 200
    retries = [(e["attempt"], e["reason"], e["wait_s"]) for e in logs
               if e["event"] == "upstream_retry"]
    assert retries == [(1, 429, 0.05), (2, 503, 0.01)]
    assert len(upstream.calls) == 3

    upstream.calls.clear()
    upstream.script = [(503, b"", {})]
    with pytest.raises(UpstreamStatus):
        await client.request("single", "GET", "/x")
    assert len(upstream.calls) == 3  # 1 + retries, not one more


async def test_calls_reuse_one_kept_connection(upstream, metrics):
    client = UpstreamClient("cpo", settings(upstream.url), None, metrics)
    for method in ("GET", "PUT", "GET", "DELETE", "POST"):
        await client.request("op", method, "/x", body=b"{}" if method in ("PUT", "POST") else None)
    assert len(upstream.calls) == 5 and len(set(upstream.peers)) == 1
    await client.close()


async def test_an_idle_connection_is_kept_for_keepalive_s(upstream, metrics):
    client = UpstreamClient("cpo", settings(upstream.url), None, metrics, keepalive_s=0.2)
    for pause in (0.05, 0.3):  # reused after 0.05 s idle, a new connection after 0.3 s
        await client.request("op", "GET", "/x")
        await asyncio.sleep(pause)
    await client.request("op", "GET", "/x")
    assert upstream.peers[0] == upstream.peers[1] != upstream.peers[2]
    await client.close()


class HangUpEverySecond:
    """A raw HTTP/1.1 server: it answers a request, then hangs up on the next one of the
    same connection before any byte (what a keep-alive upstream closing at idle looks like
    to the client that just sent on it)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for n in itertools.count():
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                self.requests.append(head.split(b"\r\n")[0] + await reader.readexactly(length))
                if n % 2:
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\n\r\n{}")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


async def test_a_kept_connection_closed_by_the_upstream_replays_idempotent_calls_only(metrics):
    raw = HangUpEverySecond()
    async with raw as url:
        client = UpstreamClient("passport", settings(url, retries=0), None, metrics)
        assert (await client.request("update", "PUT", "/p/1", body=b"{}")).status == 200
        # the kept connection hangs up on this PUT: sent again on a fresh one
        assert (await client.request("update", "PUT", "/p/1", body=b"{}")).status == 200
        assert [r[:12] for r in raw.requests] == [b"PUT /p/1 HTT"] * 3
        # ... and on this POST: the upstream may have acted on it, so it is not sent again
        with pytest.raises(UpstreamError) as err:
            await client.request("create", "POST", "/p", body=b"{}")
        assert err.value.status == 502 and "ServerDisconnectedError" in err.value.detail
        assert [r[:8] for r in raw.requests[3:]] == [b"POST /p "]
        await client.close()


@pytest.mark.parametrize(("encoding", "encode"), [
    ("gzip", lambda b: __import__("gzip").compress(b)),
    ("deflate", lambda b: __import__("zlib").compress(b)),  # zlib-wrapped, as RFC 9110 says
    ("deflate", lambda b: __import__("zlib").compress(b, wbits=-15)),  # raw, as some send it
])
async def test_compressed_answers_are_decoded(upstream, metrics, encoding, encode):
    upstream.script = [(200, encode(b'{"a": 1}'), {"Content-Encoding": encoding})]
    client = UpstreamClient("cpo", settings(upstream.url), None, metrics)
    resp = await client.request("stations", "GET", "/s")
    assert resp.body == b'{"a": 1}' and resp.data == {"a": 1}
    assert upstream.calls[0].headers["Accept-Encoding"] == "gzip, deflate"
    await client.close()


@pytest.mark.parametrize(("encoding", "body"), [("br", b"\x1b\x07"), ("gzip", b"not gzip")])
async def test_an_answer_that_does_not_decode_is_a_502(upstream, metrics, encoding, body):
    upstream.script = [(200, body, {"Content-Encoding": encoding})]
    client = UpstreamClient("cpo", settings(upstream.url, retries=0), None, metrics)
    with structlog.testing.capture_logs() as logs, pytest.raises(UpstreamBadBody) as err:
        await client.request("stations", "GET", "/s")
    assert err.value.status == 502 and "does not decode" in err.value.detail
    assert [e["reason"] for e in logs if e["event"] == "upstream_body_invalid"] == ["encoding"]
    await client.close()
