"""Pricing API: the vendor's samples reproduce; auth, validation, batch, all_paged."""

from __future__ import annotations

import pytest

from tests.fixtures.sandbox import SandboxHandle

DOC_SINGLE = {
    "rateName": "Standard-Verkaufstarif eMSP", "costId": 2206, "currency": "EUR",
    "localCurrency": "EUR", "costTotalLocalCurrency": 36, "currencyConversionRate": 1,
    "costTotal": 36, "costTime": 0, "costPower": 36,
    "priceStructure": {
        "energy": {"unit": "Wh", "elements": [
            {"intervalChange": 100, "stepCosts": 0, "intervalCosts": 0},
            {"intervalChange": 101, "stepCosts": 0.0404, "intervalCosts": 40.4},
            {"intervalChange": 102, "stepCosts": 0.0004, "intervalCosts": 0.4},
            {"intervalChange": 100000, "stepCosts": 35.9592, "intervalCosts": 0.4}]},
        "time": {"unit": "min", "elements": []},
    },
}
DOC_CHF = {
    "rateName": "Standard-Verkaufstarif eMSP", "costId": 2020, "currency": "CHF",
    "localCurrency": "EUR", "costTotalLocalCurrency": 48.863, "currencyConversionRate": 1.0642,
    "costTotal": 52, "costTime": 0, "costPower": 52,
    "priceStructure": {
        "energy": {"unit": "Wh", "elements": [
            {"intervalChange": 100, "stepCosts": 0, "intervalCosts": 0},
            {"intervalChange": 101, "stepCosts": 0.06565, "intervalCosts": 65.65},
            {"intervalChange": 102, "stepCosts": 51.93435, "intervalCosts": 0.65}]},
        "time": {"unit": "min", "elements": []},
    },
}
DOC_BATCH_ITEM = {
    "rateName": "xxx Tariff", "costId": 1234, "currency": "EUR", "localCurrency": "EUR",
    "costTotalLocalCurrency": None, "currencyConversionRate": 1, "costTotal": None,
    "costTime": None, "costPower": None,
    "priceStructure": {
        "energy": {"unit": "Wh", "elements": [
            {"intervalChange": 100, "intervalCosts": 0, "stepCosts": None},
            {"intervalChange": 101, "intervalCosts": 60.6, "stepCosts": None},
            {"intervalChange": 102, "intervalCosts": 0.6, "stepCosts": None}]},
        "time": {"unit": "min", "elements": []},
    },
}


async def get(sandbox: SandboxHandle, path: str, token: str | None = "default", **params):
    headers = {"x-api-token": sandbox.config.pricing_api_token if token == "default" else token}
    if token is None:
        headers = {}
    async with sandbox.session.get(sandbox.url + path, params=params, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_single_sample_reproduces_exactly(sandbox: SandboxHandle) -> None:
    status, body = await get(sandbox, "/api/pricing/", evseId="DE*EEE*E000001",
                             tag_id="SOMETHING", consumption="90000", duration="1000")
    assert status == 200
    assert body == DOC_SINGLE
    steps = [e["stepCosts"] for e in body["priceStructure"]["energy"]["elements"]]
    assert round(sum(steps), 6) == body["costPower"] == 36


async def test_currency_sample_reproduces_exactly(sandbox: SandboxHandle) -> None:
    status, body = await get(sandbox, "/api/pricing/", evseId="CH*CHI*E00193",
                             tag_id="SOMETHING", consumption="80000", duration="1", currency="CHF")
    assert status == 200
    assert body == DOC_CHF


async def test_tax_only_with_include_tax_and_nulls_without_consumption(
        sandbox: SandboxHandle) -> None:
    # The docs send a bare "&include_tax".
    async with sandbox.session.get(
            sandbox.url + "/api/pricing/?evseId=CH*CHI*E00193&tag_id=SOMETHING&include_tax",
            headers={"x-api-token": sandbox.config.pricing_api_token}) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["priceStructure"]["energy"]["tax"] == 1.87
    assert body["priceStructure"]["time"]["tax"] == 1.24
    for key in ("costTotal", "costTime", "costPower", "costTotalLocalCurrency"):
        assert body[key] is None
    assert all(e["stepCosts"] is None for e in body["priceStructure"]["energy"]["elements"])

    _, plain = await get(sandbox, "/api/pricing/", evseId="CH*CHI*E00193", tag_id="X")
    assert "tax" not in plain["priceStructure"]["energy"]
    assert "tax" not in plain["priceStructure"]["time"]
    _, off = await get(sandbox, "/api/pricing/", evseId="CH*CHI*E00193", tag_id="X",
                       include_tax="false")
    assert "tax" not in off["priceStructure"]["energy"]


async def test_batch_sample_keyed_by_evse(sandbox: SandboxHandle) -> None:
    status, body = await get(sandbox, "/api/pricing/batch",
                             evseIds="CH*AAA*E00001,AT*AAA*E00001", tag_id="SOMETHING")
    assert status == 200
    assert body == {"CH*AAA*E00001": DOC_BATCH_ITEM, "AT*AAA*E00001": DOC_BATCH_ITEM}


async def test_batch_leaves_out_unknown_and_404_when_none_known(sandbox: SandboxHandle) -> None:
    status, body = await get(sandbox, "/api/pricing/batch",
                             evseIds="CH*AAA*E00001,DE*ZZZ*E999999", emaid="DE-ABC-123456789")
    assert status == 200 and list(body) == ["CH*AAA*E00001"]
    status, body = await get(sandbox, "/api/pricing/batch", evseIds="DE*ZZZ*E999999",
                             tag_id="T")
    assert status == 404 and body["status"] == "error"


async def test_session_fee_names_and_time_bands(sandbox: SandboxHandle) -> None:
    # AC Standard: 0.39/kWh, blocking fee 0.10/min after 240 min, session fee 0.50.
    status, body = await get(sandbox, "/api/pricing/", evseId="BE-BEC-E041503001", tag_id="T",
                             consumption="10000", duration_in_minutes="300")
    assert status == 200
    assert body["costSessionFee"] == 0.5 and "sessionFee" not in body
    assert body["costPower"] == 3.9
    assert [e["stepCosts"] for e in body["priceStructure"]["time"]["elements"]] == [0, 6]
    assert body["costTime"] == 6
    assert body["costTotal"] == 10.4
    # duration in seconds: 18,000 s = 300 min
    _, secs = await get(sandbox, "/api/pricing/", evseId="BE-BEC-E041503001", tag_id="T",
                        consumption="10000", duration="18000")
    assert secs["costTotal"] == 10.4

    status, page = await get(sandbox, "/api/pricing/all_paged", tag_id="T", limit="2000",
                             cursor="start")
    item = page["data"]["BE-BEC-E041503001"]
    assert item["sessionFee"] == 0.5 and "costSessionFee" not in item
    assert item["costTotal"] is None


async def test_currency_conversion(sandbox: SandboxHandle) -> None:
    status, body = await get(sandbox, "/api/pricing/", evseId="DE*EEE*E000001", tag_id="T",
                             consumption="90000", currency="CHF")
    assert status == 200
    assert body["currency"] == "CHF" and body["localCurrency"] == "EUR"
    assert body["currencyConversionRate"] == 1.0642
    energy = body["priceStructure"]["energy"]["elements"]
    assert energy[1]["intervalCosts"] == 42.9937  # 40.4 EUR in CHF
    assert abs(body["costTotalLocalCurrency"] - 36) < 0.01
    status, body = await get(sandbox, "/api/pricing/", evseId="DE*EEE*E000001", tag_id="T",
                             currency="XYZ")
    assert status == 400 and body["status"] == "error"


async def test_evse_id_separators_and_case(sandbox: SandboxHandle) -> None:
    for spelling in ("DE-EEE-E000001", "de*eee*e000001", "DEEEEE000001"):
        status, body = await get(sandbox, "/api/pricing/", evseId=spelling, tag_id="T")
        assert status == 200, spelling
        assert body["costId"] == 2206
    status, _ = await get(sandbox, "/api/pricing/", evseId="BE*BEC*E041503001", tag_id="T")
    assert status == 200
    status, body = await get(sandbox, "/api/pricing/batch", evseIds="BE*BEC*E041503001",
                             tag_id="T")
    assert list(body) == ["BE*BEC*E041503001"]


@pytest.mark.parametrize("params, status", [
    ({"evseId": "DE*EEE*E000001"}, 400),  # no medium
    ({"evseId": "DE*EEE*E000001", "tag_id": "a", "emaid": "b"}, 400),  # two media
    ({"evseId": "DE*EEE*E000001", "authenticationUuid": "u"}, 400),  # not the upstream spelling
    ({"evseId": "DE*EEE*E000001", "authendicationUuid": "u"}, 200),
    ({"evseId": "DE*EEE-E000001", "tag_id": "a"}, 400),  # mixed separators
    ({"evseId": "nonsense", "tag_id": "a"}, 400),
    ({"evseId": "DE*ZZZ*E424242", "tag_id": "a"}, 404),
    ({"evseId": "DE*EEE*E000001", "tag_id": "a", "consumption": "-1"}, 400),
    ({"evseId": "DE*EEE*E000001", "tag_id": "a", "consumption": "NaN"}, 400),
    ({"evseId": "DE*EEE*E000001", "tag_id": "a", "duration": "1", "duration_in_minutes": "1"}, 400),
])
async def test_single_validation(sandbox: SandboxHandle, params: dict, status: int) -> None:
    got, body = await get(sandbox, "/api/pricing/", **params)
    assert got == status
    if status != 200:
        assert body["status"] == "error" and body["message"]


async def test_api_token_required(sandbox: SandboxHandle) -> None:
    for path, params in (("/api/pricing/", {"evseId": "DE*EEE*E000001", "tag_id": "a"}),
                         ("/api/pricing/batch", {"evseIds": "DE*EEE*E000001", "tag_id": "a"}),
                         ("/api/pricing/all_paged", {"cursor": "start", "limit": "5",
                                                     "tag_id": "a"})):
        for token in (None, "wrong"):
            status, body = await get(sandbox, path, token=token, **params)
            assert status == 401 and body["status"] == "error", (path, token)
    counts = await sandbox.calls()
    assert (counts["pricing.single"], counts["pricing.batch"], counts["pricing.all_paged"]) == (2, 2, 2)


async def test_all_paged_walk_covers_every_evse_once(sandbox: SandboxHandle) -> None:
    seen: list[str] = []
    cursor, pages = "start", 0
    while True:
        status, body = await get(sandbox, "/api/pricing/all_paged", tag_id="T", limit="300",
                                 cursor=cursor)
        assert status == 200
        pages += 1
        assert len(body["data"]) <= 300
        seen.extend(body["data"])
        if body["pagination"]["isLastPage"]:
            assert body["pagination"]["nextCursorId"] is None
            break
        cursor = body["pagination"]["nextCursorId"]
    assert pages == 7
    assert len(seen) == len(set(seen)) == 2000
    assert "BE-BEC-E041503001" in seen and "DE*EEE*E000001" in seen
    assert any("-" in e for e in seen) and any("*" in e for e in seen)


async def test_all_paged_validation(sandbox: SandboxHandle) -> None:
    for params in ({"cursor": "start"}, {"limit": "10"}, {"cursor": "start", "limit": "0"},
                   {"cursor": "nope", "limit": "10"}):
        status, body = await get(sandbox, "/api/pricing/all_paged", tag_id="T", **params)
        assert status == 400 and body["status"] == "error", params


async def test_cursor_survives_removal_of_its_evse(sandbox: SandboxHandle) -> None:
    _, first = await get(sandbox, "/api/pricing/all_paged", tag_id="T", limit="1000",
                         cursor="start")
    cursor = first["pagination"]["nextCursorId"]
    _, probe = await get(sandbox, "/api/pricing/all_paged", tag_id="T", limit="1",
                         cursor=cursor)
    (head,) = probe["data"]
    await sandbox.remove_evse(head)
    _, rest = await get(sandbox, "/api/pricing/all_paged", tag_id="T", limit="2000",
                        cursor=cursor)
    assert head not in rest["data"]
    assert len(first["data"]) + len(rest["data"]) == 1999
    assert rest["pagination"]["isLastPage"] is True


# --- tariffs per authentication medium --------------------------------------------------------
# Groups by the sandbox's stable hash: "T" standard, "X" business, "TAG-1" roaming (asserted
# through /_control/tariffs below, so a changed hash fails loudly here, not in other tests).
STANDARD_TAG, BUSINESS_TAG, ROAMING_TAG = "T", "X", "TAG-1"


async def test_media_of_other_tariff_groups_see_their_own_tariff(sandbox: SandboxHandle) -> None:
    for tag, group in ((STANDARD_TAG, "standard"), (BUSINESS_TAG, "business"),
                       (ROAMING_TAG, "roaming"), ("SOMETHING", "standard")):
        assert (await sandbox.tariff_for("DE*EEE*E000001", tag_id=tag))["group"] == group, tag
    answers = {}
    for tag in ("SOMETHING", BUSINESS_TAG, ROAMING_TAG):
        status, answers[tag] = await get(sandbox, "/api/pricing/", evseId="DE*EEE*E000001",
                                         tag_id=tag, consumption="90000", duration="1000")
        assert status == 200
    assert answers["SOMETHING"] == DOC_SINGLE
    business, roaming = answers[BUSINESS_TAG], answers[ROAMING_TAG]
    assert (business["rateName"], business["costId"]) == ("Standard-Verkaufstarif eMSP (Business)",
                                                          12206)
    assert [e["intervalCosts"] for e in business["priceStructure"]["energy"]["elements"]] == [
        0, 34.34, 0.34, 0.34]
    assert business["costPower"] == 30.6 and "costSessionFee" not in business
    assert (roaming["rateName"], roaming["costId"]) == ("Standard-Verkaufstarif eMSP (Roaming)",
                                                        22206)
    assert roaming["costSessionFee"] == 0.5 and roaming["costTotal"] == 43.7  # 43.2 + 0.5
    # The same medium always sees the same tariff, whatever the endpoint or spelling.
    _, again = await get(sandbox, "/api/pricing/", evseId="DE-EEE-E000001",
                         tag_id=BUSINESS_TAG.lower(), consumption="90000", duration="1000")
    assert again == business
    _, batch = await get(sandbox, "/api/pricing/batch", evseIds="DE*EEE*E000001",
                         tag_id=ROAMING_TAG)
    assert batch["DE*EEE*E000001"]["rateName"] == roaming["rateName"]
    _, page = await get(sandbox, "/api/pricing/all_paged", tag_id=BUSINESS_TAG, limit="2000",
                        cursor="start")
    assert page["data"]["DE*EEE*E000001"]["costId"] == 12206


async def test_emaid_and_uuid_media_are_grouped_whatever_their_spelling(
        sandbox: SandboxHandle) -> None:
    dashed = await sandbox.tariff_for("DE*EEE*E000001", emaid="DE-ABC-123456789")
    assert dashed == await sandbox.tariff_for("DE*EEE*E000001", emaid="deabc123456789")
    uuid = "6F1C3C1E-9A7E-4C1A-8F00-0D4C2B7A1E11"
    assert (await sandbox.tariff_for("DE*EEE*E000001", authendicationUuid=uuid)
            == await sandbox.tariff_for("DE*EEE*E000001", authenticationUuid=uuid.lower()))
    _, body = await get(sandbox, "/api/pricing/", evseId="DE*EEE*E000001", emaid="DE-ABC-123456789")
    assert body["rateName"] == dashed["tariff"]["rateName"]
