"""Token managers against a real token endpoint (an aiohttp server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import itertools
import time

import jwt
import pytest
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.settings import CpoSettings, PassportSettings
from services.gateway.errors import TokenUnavailable
from services.gateway.tokens import (
    StaticToken,
    TokenManager,
    cognito_fetcher,
    siemensid_fetcher,
)
from tests.fixtures.clock import FakeClock

SCOPE = "application.bp_portal.data_viewer"
SECRET = "s3cr3t-client-secret"


class TokenEndpoint:
    """A SiemensID/Cognito-like token endpoint whose behaviour a test can change."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.status = 200
        self.delay = 0.0
        self.expires_in: float | None = 3600
        self.scope = SCOPE
        self._n = itertools.count(1)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append({"query": dict(request.query), "body": body,
                           "content_type": request.headers.get("Content-Type")})
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": "invalid_client"}, status=self.status)
        token = jwt.encode({"scope": self.scope, "n": next(self._n)}, "k" * 32, algorithm="HS256")
        doc: dict = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            doc["expires_in"] = self.expires_in
        return web.json_response(doc)


@pytest.fixture
async def endpoint(aiohttp_server) -> tuple[TokenEndpoint, str]:
    ep = TokenEndpoint()
    app = web.Application()
    app.router.add_post("/oauth/token", ep.handle)
    server = await aiohttp_server(app)
    return ep, str(server.make_url("/oauth/token"))


def passport_settings(token_url: str) -> PassportSettings:
    return PassportSettings(base_url="http://127.0.0.1:1/", token_url=token_url,
                            client_id="bp-client", client_secret=SECRET)


def cpo_settings(token_url: str) -> CpoSettings:
    return CpoSettings(base_url="http://127.0.0.1:1/", token_url=token_url,
                       client_id="cpo-client", client_secret=SECRET)


def requests_total(registry: CollectorRegistry, upstream: str, outcome: str) -> float:
    return registry.get_sample_value(
        "ampgate_token_requests_total", {"upstream": upstream, "outcome": outcome}) or 0.0


async def test_siemensid_posts_json_credentials_and_injects_bearer(endpoint, session, metrics,
                                                                   registry):
    ep, url = endpoint
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics)
    headers, token = await tm.headers()
    assert headers == {"Authorization": f"Bearer {token}"}
    assert len(ep.calls) == 1
    call = ep.calls[0]
    assert call["content_type"] == "application/json"
    import orjson
    assert orjson.loads(call["body"]) == {
        "client_id": "bp-client", "client_secret": SECRET,
        "audience": "https://api.battery-passport.siemens.com",
        "grant_type": "client_credentials"}
    # a second call reuses the token
    assert (await tm.headers())[1] == token
    assert len(ep.calls) == 1
    assert requests_total(registry, "passport", "ok") == 1
    expiry = registry.get_sample_value("ampgate_token_expiry_timestamp_seconds",
                                       {"upstream": "passport"})
    assert abs(expiry - (time.time() + 3600)) < 5


async def test_missing_scope_is_logged_without_the_token(endpoint, session, metrics):
    ep, url = endpoint
    ep.scope = "some.other.scope"
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics)
    with structlog.testing.capture_logs() as logs:
        token = await tm.token()
    assert any(e["event"] == "token_scope_missing" and e["log_level"] == "warning"
               and e["required_scope"] == SCOPE for e in logs)
    assert token not in repr(logs) and SECRET not in repr(logs)


async def test_present_scope_logs_no_warning(endpoint, session, metrics):
    _, url = endpoint
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics)
    with structlog.testing.capture_logs() as logs:
        await tm.token()
    assert not [e for e in logs if e["event"] == "token_scope_missing"]


async def test_cognito_sends_credentials_in_query_and_never_logs_them(endpoint, session, metrics,
                                                                      registry):
    ep, url = endpoint
    tm = TokenManager("cpo", cognito_fetcher(cpo_settings(url)), session, metrics)
    await tm.token()
    call = ep.calls[0]
    assert call["query"] == {"grant_type": "client_credentials", "client_id": "cpo-client",
                             "client_secret": SECRET}
    assert call["content_type"] == "application/x-www-form-urlencoded"

    # invalid_client: a fast, typed error; neither the secret nor the URL query in logs
    ep.status = 400
    await tm.invalidate(await tm.token())
    with structlog.testing.capture_logs() as logs, pytest.raises(TokenUnavailable) as err:
        await tm.token()
    assert err.value.status == 503 and "Retry-After" in err.value.headers
    failed = [e for e in logs if e["event"] == "token_refresh_failed"]
    assert failed and failed[0]["status"] == 400 and "invalid_client" in failed[0]["detail"]
    assert SECRET not in repr(logs) and "client_secret" not in repr(logs)
    assert SECRET not in str(err.value) and SECRET not in repr(err.value.body())
    assert requests_total(registry, "cpo", "error") == 1


async def test_unreachable_endpoint_becomes_token_unavailable(session, metrics, unused_tcp_port):
    url = f"http://127.0.0.1:{unused_tcp_port}/token"
    tm = TokenManager("cpo", cognito_fetcher(cpo_settings(url)), session, metrics)
    with structlog.testing.capture_logs() as logs, pytest.raises(TokenUnavailable):
        await tm.token()
    assert SECRET not in repr(logs) and str(unused_tcp_port) not in repr(logs)


async def test_concurrent_callers_share_one_refresh(endpoint, session, metrics):
    ep, url = endpoint
    ep.delay = 0.2
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics)
    tokens = await asyncio.gather(*(tm.token() for _ in range(100)))
    assert len(set(tokens)) == 1
    assert len(ep.calls) == 1


async def test_a_cancelled_caller_does_not_cancel_the_refresh(endpoint, session, metrics):
    ep, url = endpoint
    ep.delay = 0.1
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics)
    first = asyncio.create_task(tm.token())
    await asyncio.sleep(0.02)
    second = asyncio.create_task(tm.token())
    await asyncio.sleep(0)
    first.cancel()
    assert await second
    assert len(ep.calls) == 1


async def test_burst_of_401s_causes_one_refresh(endpoint, session, metrics):
    ep, url = endpoint
    ep.delay = 0.05
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics)
    old = await tm.token()

    async def upstream_said_401() -> str:
        await tm.invalidate(old)
        return (await tm.headers())[1]

    fresh = await asyncio.gather(*(upstream_said_401() for _ in range(200)))
    assert len(ep.calls) == 2  # the first token + ONE refresh
    assert set(fresh) == {fresh[0]} and fresh[0] != old
    # a late 401 for the old token does not throw the new one away
    await tm.invalidate(old)
    assert await tm.token() == fresh[0]
    assert len(ep.calls) == 2


async def test_failing_endpoint_is_not_stampeded(endpoint, session, metrics):
    ep, url = endpoint
    ep.status = 500
    ep.delay = 0.05
    clock = FakeClock()
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics,
                      clock=clock)
    results = await asyncio.gather(*(tm.token() for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, TokenUnavailable) for r in results)
    assert len(ep.calls) == 1  # one attempt in flight, shared
    # while backing off, callers fail fast without calling the endpoint
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(TokenUnavailable):
            await tm.token()
    assert time.perf_counter() - started < 0.5  # 20 endpoint calls would take >= 1 s
    assert len(ep.calls) == 1
    # the endpoint recovers; after the backoff the next caller gets a token
    ep.status = 200
    clock.now += 1.0  # first backoff is at most 0.5 s
    assert await tm.token()
    assert len(ep.calls) == 2


async def test_breaker_holds_off_the_endpoint_after_repeated_failures(endpoint, session, metrics):
    ep, url = endpoint
    ep.status = 503
    clock = FakeClock()
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics,
                      clock=clock, breaker_failures=3, breaker_reset_s=60.0)
    for _ in range(3):
        with pytest.raises(TokenUnavailable):
            await tm.token()
        clock.now += 5.0  # past the short backoffs (0.5, 1 s)
    assert len(ep.calls) == 3
    # breaker open: no attempt for reset_s after the third failure, Retry-After says so
    with pytest.raises(TokenUnavailable) as err:
        await tm.token()
    assert len(ep.calls) == 3
    assert 50 <= int(err.value.headers["Retry-After"]) <= 60
    ep.status = 200
    clock.now += 56.0
    assert await tm.token()
    assert len(ep.calls) == 4


async def test_keeps_serving_a_valid_token_while_refresh_fails_but_never_an_expired_one(
        endpoint, session, metrics):
    ep, url = endpoint
    ep.expires_in = 100  # usable until 90 s (10 % margin), refresh due at ~75 s
    clock = FakeClock()
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics,
                      clock=clock)
    token = await tm.token()
    ep.status = 500
    clock.now += 80
    assert await tm.token() == token  # past 75 %: a refresh starts behind the caller...
    await asyncio.sleep(0.05)
    assert len(ep.calls) == 2  # ...and fails
    assert await tm.token() == token  # still valid: still served
    clock.now += 10.5  # now past expires_in - 10 %
    with pytest.raises(TokenUnavailable):
        await tm.token()


async def test_short_lived_tokens_and_background_refresh(endpoint, session, metrics):
    ep, url = endpoint
    ep.expires_in = 1.0  # usable for 0.9 s, refreshed at ~0.71-0.75 s
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics)
    await tm.start()
    try:
        await asyncio.sleep(0.1)
        assert len(ep.calls) == 1  # start() fetched the first token in the background
        first = await tm.token()
        await asyncio.sleep(0.85)
        assert len(ep.calls) == 2  # refreshed proactively, nobody waited for it
        second = await tm.token()
        assert second != first
    finally:
        await tm.stop()
    calls = len(ep.calls)
    await asyncio.sleep(0.4)
    assert len(ep.calls) == calls  # stopped means stopped


async def test_start_survives_a_down_endpoint_and_recovers(endpoint, session, metrics):
    ep, url = endpoint
    ep.status = 500
    tm = TokenManager("passport", siemensid_fetcher(passport_settings(url)), session, metrics)
    await tm.start()
    try:
        await asyncio.sleep(0.05)
        assert len(ep.calls) == 1
        ep.status = 200
        await asyncio.sleep(0.8)  # the refresher retries after its backoff (≤ 0.5 s)
        assert len(ep.calls) == 2
        assert tm.usable
    finally:
        await tm.stop()


async def test_missing_expires_in_defaults_to_an_hour(endpoint, session, metrics, registry):
    ep, url = endpoint
    ep.expires_in = None
    tm = TokenManager("cpo", cognito_fetcher(cpo_settings(url)), session, metrics)
    await tm.token()
    expiry = registry.get_sample_value("ampgate_token_expiry_timestamp_seconds",
                                       {"upstream": "cpo"})
    assert abs(expiry - (time.time() + 3600)) < 5


async def test_static_token():
    from pydantic import SecretStr

    cred = StaticToken("x-api-token", SecretStr("pricing-secret"))
    assert await cred.headers() == ({"x-api-token": "pricing-secret"}, "")
    await cred.invalidate("")
    assert "pricing-secret" not in repr(cred)
