"""The sandbox's answers, asked directly as the gateway asks the vendors, fit the response
schemas of /openapi.json: a vendor-shape change made in the sandbox (to follow the vendor)
fails here, not as a surprise in production. And the schemas are not "anything": the
vendor's documented nulls and spellings pass, a wrong shape does not."""

from __future__ import annotations

from functools import cache

import jsonschema
import pytest

from services.gateway.openapi import VENDOR_EXAMPLES, openapi_document

DOC = openapi_document()


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]})


def check(name: str, body) -> None:
    errors = sorted(validator(name).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(
        f"/{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5])


async def _json(resp) -> object:
    assert resp.status == 200, (resp.url, resp.status, await resp.text())
    return await resp.json(content_type=None)


@pytest.fixture
async def passport_headers(sandbox):
    c = sandbox.config
    async with sandbox.session.post(f"{sandbox.url}/siemensid/oauth/token", json={
            "client_id": c.passport_client_id, "client_secret": c.passport_client_secret,
            "audience": c.passport_audience, "grant_type": "client_credentials"}) as resp:
        token = (await _json(resp))["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_passport_answers_fit_the_schemas(sandbox, passport_headers):
    base, s = sandbox.url + "/passport", sandbox.session
    async with s.get(f"{base}/v1/passports", headers=passport_headers) as resp:
        owned = await _json(resp)
    check("OwnedPassports", owned)
    items = owned if isinstance(owned, list) else owned["data"]
    assert len(items) >= 3
    # The list validated every seeded document; the public and owned single answers of a few.
    for doc in items[:: max(1, len(items) // 4)]:
        pid = doc.get("id") or doc["general_information"]["identification"]["uid"]
        async with s.get(f"{base}/v1/passports/public/{pid}", headers=passport_headers) as resp:
            check("PassportDocument", await _json(resp))
        async with s.get(f"{base}/v1/passports/{pid}", headers=passport_headers) as resp:
            check("PassportDocument", await _json(resp))
    async with s.get(f"{base}/v1/users/me", headers=passport_headers) as resp:
        check("UserDocument", await _json(resp))


async def test_cpo_pages_fit_the_schema(sandbox):
    c, s = sandbox.config, sandbox.session
    async with s.post(f"{sandbox.url}/cognito/token", params={
            "grant_type": "client_credentials", "client_id": c.cpo_client_id,
            "client_secret": c.cpo_client_secret},
            headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
        token = (await _json(resp))["access_token"]
    for offset in (0, 2):
        async with s.get(f"{sandbox.url}/api/cpoapi/v1/charging_stations/",
                         params={"page[limit]": "2", "page[offset]": str(offset)},
                         headers={"Authorization": f"Bearer {token}"}) as resp:
            page = await _json(resp)
        check("StationsPage", page)
        assert page["data"] and page["meta"]["pagination"]["limit"] == 2


async def test_pricing_answers_fit_the_schemas(sandbox):
    s, url = sandbox.session, sandbox.url
    headers = {"x-api-token": sandbox.config.pricing_api_token}

    async def get(path: str, **params: str):
        async with s.get(f"{url}/api/pricing/{path}", params=params, headers=headers) as resp:
            return await _json(resp)

    plain = await get("", evseId="DE*EEE*E000001", tag_id="SOMETHING")
    check("Price", plain)
    assert plain["costTotal"] is None  # documented: no calculation without consumption
    costed = await get("", evseId="DE*EEE*E000001", tag_id="SOMETHING", consumption="90000",
                       duration="1000")
    check("Price", costed)
    taxed = await get("", evseId="CH*CHI*E00193", tag_id="SOMETHING", include_tax="")
    check("Price", taxed)
    check("Price", await get("", evseId="CH*CHI*E00193", tag_id="SOMETHING", currency="CHF",
                             consumption="80000", duration="1"))
    check("PriceBatch", await get("batch", evseIds="CH*AAA*E00001,AT*AAA*E00001",
                                  tag_id="SOMETHING"))
    cursor, pages = "start", 0
    while True:  # every EVSE's tariff, page by page
        page = await get("all_paged", tag_id="SOMETHING", limit="50", cursor=cursor)
        check("PricePage", page)
        pages += 1
        if page["pagination"]["isLastPage"]:
            break
        cursor = page["pagination"]["nextCursorId"]
        assert pages < 100
    assert pages >= 2


def test_the_schemas_are_not_anything():
    assert validator("PricePage").is_valid(VENDOR_EXAMPLES["price_page"])
    page = {**VENDOR_EXAMPLES["price_page"], "pagination": {"isLastPage": "no"}}
    assert not validator("PricePage").is_valid(page)
    assert not validator("StationsPage").is_valid({"data": {}, "meta": {}, "links": {}})
    station = VENDOR_EXAMPLES["stations"]["data"][0]
    assert not validator("Station").is_valid({**station, "attributes": "label"})
    assert not validator("PassportDocument").is_valid({"performance": {"capacity": {
        "rated_capacity": "large"}}})
    # Both session-fee spellings, nullable totals, extra vendor fields: all fine.
    assert validator("Price").is_valid({**VENDOR_EXAMPLES["price"], "costSessionFee": 0.5,
                                        "sessionFee": None, "costTotal": None, "vendorX": [1]})
