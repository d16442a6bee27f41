"""CPO API: Cognito bearer token, JSON:API paging, silent clamping, absolute links."""

from __future__ import annotations

from typing import Any

from tests.fixtures.sandbox import SandboxHandle

PATH = "/api/cpoapi/v1/charging_stations/"


async def token(sandbox: SandboxHandle) -> str:
    c = sandbox.config
    async with sandbox.session.post(sandbox.url + "/cognito/token", params={
        "grant_type": "client_credentials", "client_id": c.cpo_client_id,
        "client_secret": c.cpo_client_secret,
    }, headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        return (await resp.json())["access_token"]


async def stations(sandbox: SandboxHandle, auth: str | None, query: str = "") -> tuple[int, Any]:
    headers = {"Authorization": auth} if auth else {}
    async with sandbox.session.get(sandbox.url + PATH + query, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_needs_a_cognito_token(sandbox: SandboxHandle) -> None:
    assert (await stations(sandbox, None))[0] == 401
    assert (await stations(sandbox, "Bearer nope"))[0] == 401
    siemens_like = "Bearer " + (await token(sandbox))[:-4] + "AAAA"
    assert (await stations(sandbox, siemens_like))[0] == 401
    tok = await token(sandbox)
    assert (await stations(sandbox, f"Bearer {tok}"))[0] == 200
    assert (await stations(sandbox, tok))[0] == 200  # the quickstart omits "Bearer"
    assert (await sandbox.calls())["cpo.stations"] == 5


async def test_defaults_items_and_links(sandbox: SandboxHandle) -> None:
    tok = await token(sandbox)
    status, body = await stations(sandbox, f"Bearer {tok}")
    assert status == 200
    assert body["meta"]["pagination"] == {"total": 1200, "offset": 0, "limit": 50,
                                          "lastPage": False}
    item = body["data"][0]
    assert item["type"] == "charging_stations" and item["id"]
    attrs = item["attributes"]
    assert {"label", "chargeBoxIdentity", "iccid", "imsi", "serialnumber",
            "firmwareVersion"} <= set(attrs)
    assert set(attrs) - {"label", "chargeBoxIdentity", "iccid", "imsi", "serialnumber",
                         "firmwareVersion"}  # vendors add fields
    assert body["links"]["current"] == f"{sandbox.url}{PATH}?page%5Blimit%5D=50&page%5Boffset%5D=0"
    assert body["links"]["next"] == f"{sandbox.url}{PATH}?page%5Blimit%5D=50&page%5Boffset%5D=50"
    assert body["links"]["prev"] is None


async def test_clamps_limit_and_walks_to_the_end(sandbox: SandboxHandle) -> None:
    tok = f"Bearer {await token(sandbox)}"
    ids: list[str] = []
    status, body = await stations(sandbox, tok, "?page[limit]=1000&page[offset]=0")
    assert status == 200 and body["meta"]["pagination"]["limit"] == 500
    while True:
        ids.extend(i["id"] for i in body["data"])
        if body["meta"]["pagination"]["lastPage"]:
            assert body["links"]["next"] is None
            break
        async with sandbox.session.get(body["links"]["next"], headers={"Authorization": tok}) as r:
            body = await r.json()
    assert len(ids) == len(set(ids)) == 1200
    assert body["meta"]["pagination"]["offset"] == 1000 and len(body["data"]) == 200
    assert body["links"]["prev"].endswith("page%5Blimit%5D=500&page%5Boffset%5D=500")


async def test_bad_paging_parameters(sandbox: SandboxHandle) -> None:
    tok = f"Bearer {await token(sandbox)}"
    for query in ("?page[limit]=abc", "?page[limit]=0", "?page[offset]=-1"):
        status, body = await stations(sandbox, tok, query)
        assert status == 400 and body["errors"][0]["status"] == "400", query
    status, body = await stations(sandbox, tok, "?page[offset]=5000")
    assert status == 200 and body["data"] == [] and body["meta"]["pagination"]["lastPage"]
