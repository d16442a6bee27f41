"""Upstream tokens, as the upstreams and the clients see them."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
import pytest

from services.common.logging import configure_logging
from services.common.settings import LogSettings
from tests.fixtures.gateway import auth

NO_CACHE = {"default_ttl_s": 0, "stale_while_revalidate_s": 0, "stale_if_error_s": 0}


async def passport_ids(gateway) -> list[str]:
    return [d["id"] for d in await (await gateway.get("/v1/passports", headers=auth())).json()]


@pytest.mark.slow
async def test_10000_requests_over_several_token_lifetimes(make_gateway, sandbox):
    lifetime = 2.0
    await sandbox.token_lifetime("siemensid", lifetime)
    await sandbox.token_lifetime("cognito", lifetime)
    gw = await make_gateway(cache=NO_CACHE)
    ids = await passport_ids(gw)
    await sandbox.reset()
    paths = itertools.cycle(
        [f"/v1/passports/{i}" for i in ids[:50]]
        + [f"/v1/charging-stations?page[limit]=5&page[offset]={o}" for o in range(0, 250, 5)])
    statuses: list[int] = []
    started = time.monotonic()

    async def worker(n: int) -> None:
        for _ in range(n):
            resp = await gw.get(next(paths), headers=auth())
            await resp.read()
            statuses.append(resp.status)

    await asyncio.gather(*(worker(50) for _ in range(200)))
    elapsed = time.monotonic() - started
    calls = await sandbox.calls()
    assert len(statuses) == 10_000
    assert statuses.count(200) == 10_000, {s: statuses.count(s) for s in set(statuses)}
    # one token request per refresh period (75% of the lifetime), never a burst of them
    allowed = int(elapsed / (0.75 * lifetime)) + 2
    for issuer in ("siemensid.token", "cognito.token"):
        assert 1 <= calls[issuer] <= allowed, (issuer, calls[issuer], elapsed)
    assert elapsed > 2 * lifetime, "the run must span several token lifetimes"


async def test_revoked_token_refreshes_once_and_replays(gateway, sandbox):
    ids = await passport_ids(gateway)
    before = await sandbox.calls()
    await sandbox.revoke("siemensid")
    resp = await gateway.get(f"/v1/passports/{ids[1]}/owned", headers=auth())
    assert resp.status == 200
    after = await sandbox.calls()
    assert after["siemensid.token"] - before["siemensid.token"] == 1
    assert after["passport.owned_get"] - before["passport.owned_get"] == 2  # 401, then the replay


async def test_second_401_after_refresh_is_returned_not_looped(gateway, sandbox):
    ids = await passport_ids(gateway)
    before = await sandbox.calls()
    await sandbox.fault("passport.owned_get", "status", status=401, times=5)
    resp = await gateway.get(f"/v1/passports/{ids[2]}/owned", headers=auth())
    assert resp.status == 502
    body = await resp.json(content_type=None)
    assert body["upstream_status"] == 401
    after = await sandbox.calls()
    assert after["passport.owned_get"] - before["passport.owned_get"] == 2
    assert after["siemensid.token"] - before["siemensid.token"] == 1


async def test_token_endpoint_down_while_token_valid_fails_nothing(make_gateway, sandbox):
    gw = await make_gateway(cache=NO_CACHE)
    ids = await passport_ids(gw)  # obtains a token
    await sandbox.fault("siemensid.token", "status", status=503)
    results = await asyncio.gather(*(gw.get(f"/v1/passports/{i}", headers=auth()) for i in ids[:100]))
    assert [r.status for r in results] == [200] * 100


async def test_token_expired_and_endpoint_down_is_503_without_stampede(make_gateway, sandbox):
    await sandbox.token_lifetime("siemensid", 1.0)
    gw = await make_gateway(cache=NO_CACHE, passport={"breaker_failures": 2, "breaker_reset_s": 30})
    ids = await passport_ids(gw)
    await sandbox.fault("siemensid.token", "status", status=503)
    await asyncio.sleep(1.1)  # the token is no longer usable
    before = (await sandbox.calls())["siemensid.token"]
    results = await asyncio.gather(*(gw.get(f"/v1/passports/{i}", headers=auth()) for i in ids[:50]))
    assert {r.status for r in results} == {503}
    for r in results[:3]:
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert "Retry-After" in r.headers
    assert (await sandbox.calls())["siemensid.token"] - before <= 3


async def test_cognito_and_static_pricing_token_are_injected(gateway, sandbox):
    stations = await gateway.get("/v1/charging-stations", headers=auth())
    assert stations.status == 200
    price = await gateway.get("/v1/prices?evseId=DE*EEE*E000001&tag_id=X", headers=auth())
    assert price.status == 200


async def test_wrong_pricing_token_is_a_502_problem(make_gateway, sandbox):
    gw = await make_gateway(pricing={"api_token": "wrong"})
    resp = await gw.get("/v1/prices?evseId=DE*EEE*E000001&tag_id=X", headers=auth())
    assert resp.status == 502
    assert (await resp.json(content_type=None))["upstream_status"] == 401


async def _start_up_log_lines(make_gateway, sandbox, path) -> list[dict]:
    """The gateway's JSON log lines from start-up until its first SiemensID token is in,
    with no request made: what an operator sees when the gateway starts."""
    with open(path, "w+") as stream:  # noqa: ASYNC230 - the logging sink under test
        configure_logging(LogSettings(format="json"), stream=stream)
        try:
            await make_gateway()  # the fixture stops it
            for _ in range(200):
                if (await sandbox.calls())["siemensid.token"] >= 1:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the token is checked and logged as it arrives
            stream.flush()
        finally:
            configure_logging(LogSettings(format="json"))
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_a_token_without_the_data_viewer_scope_is_warned_about(make_gateway, sandbox,
                                                                     tmp_path):
    # SiemensID grants the client other scopes, not the one the docs require.
    await sandbox.token_scope("siemensid", "openid application.bp_portal.data_editor")
    lines = await _start_up_log_lines(make_gateway, sandbox, tmp_path / "gateway.log")
    (warning,) = [line for line in lines if line["event"] == "token_scope_missing"]
    assert warning["level"] == "warning"
    assert warning["upstream"] == "passport"
    assert warning["required_scope"] == "application.bp_portal.data_viewer"
    # ... and the gateway goes on with the token (the upstream decides what it may do).
    assert "siemensid" in [line.get("upstream") for line in lines
                           if line["event"] == "token_refreshed"]


async def test_a_token_with_the_data_viewer_scope_is_not_warned_about(make_gateway, sandbox,
                                                                      tmp_path):
    lines = await _start_up_log_lines(make_gateway, sandbox, tmp_path / "gateway.log")
    assert "siemensid" in [line.get("upstream") for line in lines
                           if line["event"] == "token_refreshed"]
    assert not [line for line in lines if line["event"] == "token_scope_missing"]
