"""Battery Passport API under /passport: public, owned and user calls, token rules."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fixtures.sandbox import SandboxHandle


async def token(sandbox: SandboxHandle) -> str:
    c = sandbox.config
    async with sandbox.session.post(sandbox.url + "/siemensid/oauth/token", json={
        "client_id": c.passport_client_id, "client_secret": c.passport_client_secret,
        "audience": c.passport_audience, "grant_type": "client_credentials"}) as resp:
        return (await resp.json())["access_token"]


async def call(sandbox: SandboxHandle, method: str, path: str, tok: str | None = None,
               body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    kwargs: dict[str, Any] = {"json": body} if raw is None else {
        "data": raw, "headers": {**headers, "Content-Type": "application/json"}}
    kwargs.setdefault("headers", headers)
    async with sandbox.session.request(method, sandbox.url + "/passport" + path, **kwargs) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


SHAPE_KEYS = {"status", "general_information", "compliance", "materials", "carbon_footprint",
              "supply_chain_due_diligence", "circularity", "performance"}


async def test_public_passport_full_shape_without_token(sandbox: SandboxHandle) -> None:
    status, doc = await call(sandbox, "GET", "/v1/passports/public/BP-0001")
    assert status == 200
    assert SHAPE_KEYS <= set(doc)
    assert doc["general_information"]["identification"]["uid"] == "BP-0001"
    perf = doc["performance"]
    assert perf["internal_resistance"]["initial_resistance"]["modules"][0]["cells"][0]["cell_id"]
    assert perf["capacity"]["nominal_voltage"] > 0
    _, other = await call(sandbox, "GET", "/v1/passports/public/BP-0002")
    assert other != doc  # values vary per passport


async def test_public_passport_rejects_bad_token_and_unknown_id(sandbox: SandboxHandle) -> None:
    status, _ = await call(sandbox, "GET", "/v1/passports/public/BP-0001", tok="garbage")
    assert status == 401
    tok = await token(sandbox)
    status, _ = await call(sandbox, "GET", "/v1/passports/public/BP-0001", tok=tok)
    assert status == 200
    await sandbox.revoke("siemensid")
    status, _ = await call(sandbox, "GET", "/v1/passports/public/BP-0001", tok=tok)
    assert status == 401
    status, body = await call(sandbox, "GET", "/v1/passports/public/BP-9999")
    assert status == 404 and body["error"] == "not_found"


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/passports"), ("GET", "/v1/passports/BP-0001"), ("POST", "/v1/passports"),
    ("PUT", "/v1/passports/BP-0001"), ("DELETE", "/v1/passports/BP-0001"),
    ("GET", "/v1/users/me"), ("PUT", "/v1/users/me"), ("POST", "/v1/users"),
])
async def test_owned_and_user_calls_need_a_token(sandbox: SandboxHandle, method: str,
                                                 path: str) -> None:
    status, _ = await call(sandbox, method, path, body={})
    assert status == 401
    status, _ = await call(sandbox, method, path, tok="not.a.jwt", body={})
    assert status == 401


async def test_owned_crud(sandbox: SandboxHandle) -> None:
    tok = await token(sandbox)
    status, items = await call(sandbox, "GET", "/v1/passports", tok)
    assert status == 200 and isinstance(items, list) and len(items) == 300
    assert all(isinstance(i["id"], str) for i in items)

    status, created = await call(sandbox, "POST", "/v1/passports", tok,
                                 body={"status": {"state": "draft"}})
    assert status == 201 and created["id"] == "BP-0301"
    status, got = await call(sandbox, "GET", f"/v1/passports/{created['id']}", tok)
    assert (status, got) == (200, created)

    status, updated = await call(sandbox, "PUT", "/v1/passports/BP-0301", tok,
                                 body={"status": {"state": "active"}})
    assert status == 200 and updated == {"id": "BP-0301", "status": {"state": "active"}}
    status, public = await call(sandbox, "GET", "/v1/passports/public/BP-0301")
    assert public == {"status": {"state": "active"}}  # the public view has no top-level id

    status, _ = await call(sandbox, "PUT", "/v1/passports/BP-0301", tok, body=[1, 2])
    assert status == 400
    status, _ = await call(sandbox, "PUT", "/v1/passports/BP-0301", tok, raw=b"{nope")
    assert status == 400
    status, _ = await call(sandbox, "POST", "/v1/passports", tok, body="string")
    assert status == 400

    status, _ = await call(sandbox, "DELETE", "/v1/passports/BP-0301", tok)
    assert status == 204
    for method in ("GET", "PUT", "DELETE"):
        status, body = await call(sandbox, method, "/v1/passports/BP-0301", tok, body={})
        assert status == 404 and body["error"] == "not_found", method

    counts = await sandbox.calls()
    assert counts["passport.owned_list"] == 1 and counts["passport.create"] == 2
    assert counts["passport.update"] == 4 and counts["passport.delete"] == 2


async def test_users(sandbox: SandboxHandle) -> None:
    tok = await token(sandbox)
    status, me = await call(sandbox, "GET", "/v1/users/me", tok)
    assert status == 200 and me["email"]
    status, me2 = await call(sandbox, "PUT", "/v1/users/me", tok, body={"language": "de"})
    assert status == 200 and me2["language"] == "de" and me2["id"] == me["id"]
    status, new = await call(sandbox, "POST", "/v1/users", tok,
                             body={"email": "new@example.com", "first_name": "N"})
    assert status == 201 and new["id"] != me["id"] and new["email"] == "new@example.com"
    status, _ = await call(sandbox, "POST", "/v1/users", tok, body={"first_name": "no email"})
    assert status == 400
    status, _ = await call(sandbox, "PUT", "/v1/users/me", tok, body=[])
    assert status == 400
