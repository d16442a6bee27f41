"""/_control/: counters, faults of each kind, token revocation and lifetimes, data edits."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from services.common.settings import Settings
from services.sandbox.config import SandboxConfig
from tests.fixtures.sandbox import SandboxHandle

PRICE = "/api/pricing/?evseId=DE*EEE*E000001&tag_id=T"


async def price(sandbox: SandboxHandle, query: str = PRICE, **kw) -> aiohttp.ClientResponse:
    async with sandbox.session.get(sandbox.url + query, headers={
            "x-api-token": sandbox.config.pricing_api_token}, **kw) as resp:
        await resp.read()
        return resp


async def passport_token(sandbox: SandboxHandle) -> tuple[str, int | float]:
    c = sandbox.config
    async with sandbox.session.post(sandbox.url + "/siemensid/oauth/token", json={
        "client_id": c.passport_client_id, "client_secret": c.passport_client_secret,
        "audience": c.passport_audience, "grant_type": "client_credentials"}) as resp:
        body = await resp.json()
        return body["access_token"], body["expires_in"]


async def owned_status(sandbox: SandboxHandle, tok: str) -> int:
    async with sandbox.session.get(sandbox.url + "/passport/v1/users/me",
                                   headers={"Authorization": f"Bearer {tok}"}) as resp:
        return resp.status


async def test_counters_start_at_zero_and_reset(sandbox: SandboxHandle) -> None:
    counts = await sandbox.calls()
    assert set(counts) == {
        "siemensid.token", "passport.public", "passport.owned_list", "passport.owned_get",
        "passport.create", "passport.update", "passport.delete", "users.me", "users.update",
        "users.create", "cognito.token", "cpo.stations", "pricing.single", "pricing.batch",
        "pricing.all_paged"}
    assert not any(counts.values())
    await price(sandbox)
    await price(sandbox, "/api/pricing/batch?evseIds=DE*EEE*E000001&tag_id=T")
    counts = await sandbox.calls()
    assert counts["pricing.single"] == 1 and counts["pricing.batch"] == 1
    await sandbox.reset()
    assert not any((await sandbox.calls()).values())


async def test_status_fault_times_and_retry_after(sandbox: SandboxHandle) -> None:
    await sandbox.fault("pricing.single", "status", status=503, times=2, retry_after=7)
    for _ in range(2):
        resp = await price(sandbox)
        assert resp.status == 503 and resp.headers["Retry-After"] == "7"
        assert (await resp.json())["status"] == "error"
    assert (await price(sandbox)).status == 200
    assert (await sandbox.calls())["pricing.single"] == 3


async def test_prefix_and_wildcard_faults(sandbox: SandboxHandle) -> None:
    await sandbox.fault("pricing", "status", status=500)
    assert (await price(sandbox)).status == 500
    assert (await price(sandbox, "/api/pricing/batch?evseIds=DE*EEE*E000001&tag_id=T")).status == 500
    _, lifetime = await passport_token(sandbox)  # other families unaffected
    assert lifetime == 86400
    await sandbox.clear_faults()
    assert (await price(sandbox)).status == 200
    await sandbox.fault("*", "status", status=502, times=1)
    async with sandbox.session.post(sandbox.url + "/siemensid/oauth/token", json={}) as resp:
        assert resp.status == 502
    assert (await price(sandbox)).status == 200


async def test_bad_fault_specs_rejected(sandbox: SandboxHandle) -> None:
    for spec in ({"endpoint": "nope", "kind": "status"}, {"endpoint": "*", "kind": "explode"},
                 {"endpoint": "*", "kind": "status", "status": 42},
                 {"endpoint": "*", "kind": "status", "times": 0}):
        async with sandbox.session.post(sandbox.url + "/_control/faults", json=spec) as resp:
            assert resp.status == 400, spec


async def test_latency_fault(sandbox: SandboxHandle) -> None:
    await sandbox.fault("pricing.single", "latency", latency_ms=200, times=1)
    started = time.perf_counter()
    assert (await price(sandbox)).status == 200
    assert time.perf_counter() - started >= 0.19
    started = time.perf_counter()
    await price(sandbox)
    assert time.perf_counter() - started < 0.19


async def test_reset_fault_drops_the_connection(sandbox: SandboxHandle) -> None:
    # aiohttp's client replays an idempotent request once after a dropped connection,
    # so one client GET reaches the endpoint twice: two resets make it fail.
    await sandbox.fault("pricing.single", "reset", times=2)
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await price(sandbox)
    assert (await sandbox.calls())["pricing.single"] == 2
    assert (await price(sandbox)).status == 200


async def test_timeout_fault_holds_until_cleared(sandbox: SandboxHandle) -> None:
    await sandbox.fault("pricing.single", "timeout")
    with pytest.raises(asyncio.TimeoutError):
        await price(sandbox, timeout=aiohttp.ClientTimeout(total=0.3))
    held = asyncio.create_task(price(sandbox))
    await asyncio.sleep(0.2)
    assert not held.done()
    await sandbox.clear_faults()
    assert (await asyncio.wait_for(held, 2)).status == 200


async def test_timeout_fault_with_own_hold(sandbox: SandboxHandle) -> None:
    await sandbox.fault("pricing.single", "timeout", timeout_s=0.2, times=1)
    started = time.perf_counter()
    assert (await price(sandbox)).status == 200
    assert time.perf_counter() - started >= 0.19


async def test_revoke_makes_issued_tokens_fail(sandbox: SandboxHandle) -> None:
    tok, _ = await passport_token(sandbox)
    assert await owned_status(sandbox, tok) == 200
    assert await sandbox.revoke("siemensid") == 1
    assert await owned_status(sandbox, tok) == 401
    fresh, _ = await passport_token(sandbox)
    assert await owned_status(sandbox, fresh) == 200


async def test_token_lifetime_short_tokens_expire(sandbox: SandboxHandle) -> None:
    await sandbox.token_lifetime("siemensid", 0.3)
    tok, lifetime = await passport_token(sandbox)
    assert lifetime == 0.3
    assert await owned_status(sandbox, tok) == 200
    await asyncio.sleep(0.35)
    assert await owned_status(sandbox, tok) == 401
    await sandbox.token_lifetime("siemensid", 2)
    assert (await passport_token(sandbox))[1] == 2
    await sandbox.reset()
    assert (await passport_token(sandbox))[1] == 86400


async def test_passport_controls_and_reseed(sandbox: SandboxHandle) -> None:
    stored = await sandbox.put_passport("BP-NEW-1", {"status": {"state": "active"}})
    assert stored == {"id": "BP-NEW-1", "status": {"state": "active"}}
    async with sandbox.session.get(sandbox.url + "/passport/v1/passports/public/BP-NEW-1") as r:
        assert await r.json() == {"status": {"state": "active"}}  # public: no top-level id
    await sandbox.delete_passport("BP-0001")
    async with sandbox.session.get(sandbox.url + "/passport/v1/passports/public/BP-0001") as r:
        assert r.status == 404
    assert (await sandbox.calls())["passport.public"] == 2
    await sandbox.reset(data=True)
    async with sandbox.session.get(sandbox.url + "/passport/v1/passports/public/BP-0001") as r:
        assert r.status == 200
    async with sandbox.session.get(sandbox.url + "/passport/v1/passports/public/BP-NEW-1") as r:
        assert r.status == 404


async def test_tariff_controls(sandbox: SandboxHandle) -> None:
    # AT*AAA*E00001 and CH*AAA*E00001 share a tariff; changing one leaves the other.
    changed = await sandbox.put_tariff("AT-AAA-E00001", {"rateName": "Neu", "sessionFee": 0.25})
    assert changed["rateName"] == "Neu"
    body = await (await price(sandbox, "/api/pricing/batch?evseIds=AT*AAA*E00001,CH*AAA*E00001"
                                        "&tag_id=T&consumption=1000")).json()
    assert body["AT*AAA*E00001"]["rateName"] == "Neu"
    assert body["AT*AAA*E00001"]["costSessionFee"] == 0.25
    assert body["CH*AAA*E00001"]["rateName"] == "xxx Tariff"
    structure = {"energy": {"unit": "Wh", "elements": [
        {"intervalChange": 1000000, "intervalCosts": 0.5}]}, "time": {"unit": "min", "elements": []}}
    await sandbox.put_tariff("DE*EEE*E000001", {"priceStructure": structure})
    body = await (await price(sandbox, PRICE + "&consumption=10000")).json()
    assert body["costPower"] == 5
    async with sandbox.session.put(sandbox.url + "/_control/tariffs/DE*EEE*E000001",
                                   json={"currency": "XXX"}) as resp:
        assert resp.status == 400
    async with sandbox.session.put(sandbox.url + "/_control/tariffs/DE*ZZZ*E1",
                                   json={"rateName": "x"}) as resp:
        assert resp.status == 404


async def test_evse_controls(sandbox: SandboxHandle) -> None:
    await sandbox.add_evse("NL-NEW-E000777")
    resp = await price(sandbox, "/api/pricing/?evseId=NL*NEW*E000777&tag_id=T")
    assert resp.status == 200
    await sandbox.add_evse("NL*NEW*E000778", {"rateName": "Special", "costId": 9})
    body = await (await price(sandbox, "/api/pricing/?evseId=NL*NEW*E000778&tag_id=T")).json()
    assert (body["rateName"], body["costId"]) == ("Special", 9)
    page = await (await price(sandbox, "/api/pricing/all_paged?tag_id=T&limit=5000&cursor=start")).json()
    assert len(page["data"]) == 2002 and "NL-NEW-E000777" in page["data"]
    await sandbox.remove_evse("NL-NEW-E000777")
    assert (await price(sandbox, "/api/pricing/?evseId=NL*NEW*E000777&tag_id=T")).status == 404


async def test_upstream_settings_build_shared_settings(sandbox: SandboxHandle) -> None:
    settings = Settings(**sandbox.upstream_settings())
    assert str(settings.passport.base_url).rstrip("/") == sandbox.url + "/passport"
    assert SandboxConfig.from_settings(settings).pricing_api_token == \
        sandbox.config.pricing_api_token
    assert SandboxConfig.from_settings(settings).passport_client_secret == \
        sandbox.config.passport_client_secret


async def test_unknown_route_answers_json_404(sandbox: SandboxHandle) -> None:
    async with sandbox.session.get(sandbox.url + "/nothing/here") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]
    async with sandbox.session.get(sandbox.url + "/healthz") as resp:
        assert resp.status == 200


async def test_held_connections_do_not_delay_shutdown() -> None:
    from aiohttp import web

    from services.sandbox.app import create_app

    runner = web.AppRunner(create_app(SandboxConfig(port=0)), shutdown_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/_control/faults",
                                json={"endpoint": "cpo", "kind": "timeout"}) as resp:
            assert resp.status == 200
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(url + "/api/cpoapi/v1/charging_stations/",
                                   timeout=aiohttp.ClientTimeout(total=0.2)):
                pass
    started = time.perf_counter()
    await runner.cleanup()
    assert time.perf_counter() - started < 2


async def test_a_tariff_change_for_one_medium_leaves_every_other_medium(
        sandbox: SandboxHandle) -> None:
    evse = "DE*EEE*E000001"
    before = {t: (await sandbox.tariff_for(evse, tag_id=t))["tariff"] for t in ("T", "X", "a")}
    assert before["X"] == before["a"]  # one group: one tariff ...
    changed = await sandbox.put_tariff(evse, {"rateName": "Fleet special"}, tag_id="X")
    assert changed["rateName"] == "Fleet special" and changed["costId"] == before["X"]["costId"]
    x = await sandbox.tariff_for(evse, tag_id="x")  # tag ids are case-insensitive
    assert x["own"] is True and x["tariff"] == changed
    # ... until one medium gets its own: nobody else's tariff moves.
    assert (await sandbox.tariff_for(evse, tag_id="a"))["tariff"] == before["a"]
    assert (await sandbox.tariff_for(evse, tag_id="T"))["tariff"] == before["T"]
    body = await (await price(sandbox, "/api/pricing/?evseId=DE*EEE*E000001&tag_id=X")).json()
    assert body["rateName"] == "Fleet special"
    assert (await (await price(sandbox)).json())["rateName"] == "Standard-Verkaufstarif eMSP"

    # Without a medium, a change is for every medium (the README's demo), own tariffs too.
    await sandbox.put_tariff(evse, {"rateName": "Night tariff"})
    for tag in ("T", "X", "a", "TAG-1", "DEMO-TAG-0001"):
        got = (await sandbox.tariff_for(evse, tag_id=tag))["tariff"]
        assert got["rateName"] == "Night tariff", tag
    # ... and the groups keep their own prices.
    assert (await sandbox.tariff_for(evse, tag_id="X"))["tariff"]["costId"] == 12206
    for query in ("tag_id=a&emaid=DEABC123456789", ""):
        async with sandbox.session.get(f"{sandbox.url}/_control/tariffs/{evse}?{query}") as resp:
            assert resp.status == 400
    async with sandbox.session.put(f"{sandbox.url}/_control/tariffs/{evse}?tag_id=X",
                                   json={"currency": "XXX"}) as resp:
        assert resp.status == 400


async def test_token_scope_control(sandbox: SandboxHandle) -> None:
    import jwt

    def scope(tok: str) -> object:
        return jwt.decode(tok, options={"verify_signature": False}).get("scope")

    tok, _ = await passport_token(sandbox)
    assert "application.bp_portal.data_viewer" in str(scope(tok)).split()
    await sandbox.token_scope("siemensid", "openid application.bp_portal.data_editor")
    tok, _ = await passport_token(sandbox)
    assert scope(tok) == "openid application.bp_portal.data_editor"
    assert await owned_status(sandbox, tok) == 200  # the sandbox still serves it
    await sandbox.token_scope("siemensid", None)
    assert scope((await passport_token(sandbox))[0]) is None
    await sandbox.reset()
    assert "application.bp_portal.data_viewer" in str(
        scope((await passport_token(sandbox))[0])).split()
    async with sandbox.session.put(sandbox.url + "/_control/token-scope",
                                   json={"issuer": "siemensid", "scope": 3}) as resp:
        assert resp.status == 400


async def owned(sandbox: SandboxHandle, tok: str, query: str = "") -> tuple[int, object]:
    async with sandbox.session.get(sandbox.url + "/passport/v1/passports" + query,
                                   headers={"Authorization": f"Bearer {tok}"}) as resp:
        return resp.status, await resp.json()


async def test_owned_list_shapes(sandbox: SandboxHandle) -> None:
    tok, _ = await passport_token(sandbox)
    _, plain = await owned(sandbox, tok)
    assert isinstance(plain, list) and len(plain) == 300 and all("id" in d for d in plain)

    await sandbox.owned_list(shape="data", ids="uid")
    _, body = await owned(sandbox, tok)
    assert list(body) == ["data"] and len(body["data"]) == 300
    assert not any("id" in d for d in body["data"])
    assert [d["general_information"]["identification"]["uid"] for d in body["data"]] == [
        d["id"] for d in plain]

    await sandbox.owned_list(shape="unknown", ids="mixed")
    _, body = await owned(sandbox, tok)
    assert list(body) == ["passports"]
    assert ["id" in d for d in body["passports"][:4]] == [True, False, True, False]

    await sandbox.owned_list(shape="paged", ids="id", page_size=120)
    seen, url, pages = [], "", 0
    while True:
        status, body = await owned(sandbox, tok, url)
        assert status == 200
        pages += 1
        seen.extend(d["id"] for d in body["data"])
        assert body["meta"]["total"] == 300 and body["meta"]["total_pages"] == 3
        if body["links"]["next"] is None:
            break
        assert body["links"]["next"].startswith(sandbox.url + "/passport/v1/passports?")
        url = "?" + body["links"]["next"].split("?", 1)[1]
    assert pages == 3 and seen == [d["id"] for d in plain]
    _, small = await owned(sandbox, tok, "?page=2&per_page=1000")
    assert small["meta"]["per_page"] == 120 and len(small["data"]) == 120  # clamped
    status, _ = await owned(sandbox, tok, "?page=0")
    assert status == 400

    await sandbox.reset()
    assert (await owned(sandbox, tok))[1] == plain
