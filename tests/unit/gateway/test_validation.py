"""Bad input gets a 4xx problem+json naming the parameter, and nothing reaches an upstream."""

from __future__ import annotations

import pytest
from yarl import URL

from tests.fixtures.gateway import READER_KEY, WRITER_KEY, auth

EVSE = "DE*EEE*E000001"


async def upstream_data_calls(sandbox) -> int:
    """Calls that carried the client's request upstream (token fetches at start-up aside)."""
    return sum(n for name, n in (await sandbox.calls()).items() if not name.endswith(".token"))
BAD_QUERIES = [
    # (path, parameter named in errors[])
    ("/v1/prices?evseId=DE*EEE-E000001&tag_id=ABC", "evseId"),  # mixed separators
    ("/v1/prices?evseId=D*EEE*E1&tag_id=ABC", "evseId"),
    ("/v1/prices?evseId=DE*EEE*X000001&tag_id=ABC", "evseId"),
    ("/v1/prices?evseId=" + "DE*EEE*E" + "1" * 31 + "&tag_id=ABC", "evseId"),
    ("/v1/prices?tag_id=ABC", "evseId"),
    (f"/v1/prices?evseId={EVSE}", "tag_id"),  # zero auth media
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&emaid=DE-ABC-123456789", "tag_id"),  # two media
    (f"/v1/prices?evseId={EVSE}&emaid=not-an-emaid", "emaid"),
    (f"/v1/prices?evseId={EVSE}&authenticationUuid=xyz", "authenticationUuid"),
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&duration=10&duration_in_minutes=1", "duration_in_minutes"),
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&consumption=-5", "consumption"),
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&consumption=lots", "consumption"),
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&duration=1.5", "duration"),
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&currency=euro", "currency"),
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&currency=eur", "currency"),
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&include_tax=maybe", "include_tax"),
    (f"/v1/prices?evseId={EVSE}&tag_id=ABC&colour=red", "colour"),  # unknown parameter
    (f"/v1/prices?evseId={EVSE}&evseId={EVSE}&tag_id=ABC", "evseId"),  # repeated
    (f"/v1/prices?evseId={EVSE}&tag_id=A%00B", "tag_id"),
    ("/v1/prices/batch?evseIds=DE*EEE*E000001,,AT*HTB*E00008&tag_id=A", "evseIds"),
    ("/v1/prices/batch?evseIds=DE*EEE*E000001,nope&tag_id=A", "evseIds"),
    ("/v1/prices/all?tag_id=A&limit=0", "limit"),
    ("/v1/prices/all?tag_id=A&limit=501", "limit"),
    ("/v1/prices/all?tag_id=A&cursor=../../x", "cursor"),
    ("/v1/charging-stations?page[limit]=0", "page[limit]"),
    ("/v1/charging-stations?page[limit]=abc", "page[limit]"),
    ("/v1/charging-stations?page[offset]=-1", "page[offset]"),
    ("/v1/charging-stations?page[size]=10", "page[size]"),
    ("/v1/passports/BP-0001?x=1", "x"),
    ("/v1/passports/BP-0001/history?at=yesterday", "at"),
    ("/v1/passports/BP-0001/history?at=2026-13-01T00:00:00Z", "at"),
    ("/v1/passports/BP-0001/history?from=sha256:" + "a" * 64, "to"),
    ("/v1/passports/BP-0001/history?from=abc&to=def", "from"),
    ("/v1/passports/BP-0001/history?at=2026-01-01T00:00:00Z&from=sha256:" + "a" * 64
     + "&to=sha256:" + "b" * 64, "at"),
    ("/v1/prices/DE*EEE*E000001/history", "context"),
    ("/v1/prices/DE*EEE*E000001/history?context=a/b", "context"),
]


async def _assert_problem(resp, status: int, parameter: str | None = None) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["status"] == status and body["title"] and body["type"]
    if parameter is not None:
        named = [e.get("parameter") for e in body["errors"]]
        assert parameter in named, body
    return body


@pytest.mark.parametrize(("path", "parameter"), BAD_QUERIES)
async def test_bad_query_is_400_naming_the_parameter(gateway, sandbox, path, parameter):
    resp = await gateway.get(path, headers=auth())
    await _assert_problem(resp, 400, parameter)
    assert await upstream_data_calls(sandbox) == 0


@pytest.mark.parametrize("raw_id", [
    "BP..0001", "..", "BP%2F0001", "BP%2f..%2fx", "BP%000001", "BP%0A01", "a" * 129, "-leading",
    "BP%20001", "%2E%2E",
])
async def test_bad_passport_ids_are_rejected(gateway, sandbox, raw_id):
    # Sent as written (curl --path-as-is): a client library would resolve "..", and the
    # gateway would never see a passport id at all.
    url = URL(str(gateway.make_url("/v1/passports/")) + raw_id, encoded=True)
    resp = await gateway.session.get(url, headers=auth())
    await _assert_problem(resp, 400, "passport_id")  # DESIGN.md §11: rejected path ids → 400
    assert await upstream_data_calls(sandbox) == 0


async def test_bad_evse_path_id(gateway, sandbox):
    resp = await gateway.get("/v1/prices/NOPE/history?context=home", headers=auth())
    await _assert_problem(resp, 400, "evse_id")


@pytest.mark.parametrize(("body", "ctype", "status"), [
    (b"not json", "application/json", 400),
    (b"[1,2,3]", "application/json", 400),
    (b'"a string"', "application/json", 400),
    (b"{}", "text/plain", 415),
    (b"{}", "", 415),
    (b'{"status": "active"}', "application/json", 400),  # status must be an object
    (b'{"id": "../etc"}', "application/json", 400),
])
async def test_bad_write_bodies(gateway, sandbox, body, ctype, status):
    headers = {**auth(WRITER_KEY)}
    if ctype:
        headers["Content-Type"] = ctype
    resp = await gateway.put("/v1/passports/BP-0001", data=body, headers=headers)
    problem = await _assert_problem(resp, status)
    if status == 400:
        assert "pointer" in problem["errors"][0]
    assert await upstream_data_calls(sandbox) == 0


async def test_body_over_the_limit_is_413(make_gateway, sandbox):
    gw = await make_gateway(http={"max_body_bytes": 1024})
    body = b'{"x": "' + b"a" * 2048 + b'"}'
    resp = await gw.post("/v1/passports", data=body,
                         headers={**auth(WRITER_KEY), "Content-Type": "application/json"})
    await _assert_problem(resp, 413)
    assert await upstream_data_calls(sandbox) == 0


async def test_unknown_route_is_404_problem(gateway):
    resp = await gateway.get("/v1/nothing-here", headers=auth())
    await _assert_problem(resp, 404)


async def test_wrong_method_is_405_problem(gateway):
    resp = await gateway.patch("/v1/prices", headers=auth())
    await _assert_problem(resp, 405)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "Basic abc"}, {"X-API-Key": "nope"}])
async def test_missing_or_unknown_key_is_401(gateway, sandbox, headers):
    resp = await gateway.get("/v1/passports/BP-0001", headers=headers)
    await _assert_problem(resp, 401)
    assert await upstream_data_calls(sandbox) == 0


async def test_missing_scope_is_403_even_for_cached_entries(gateway, sandbox):
    ok = await gateway.get("/v1/passports/BP-0001", headers=auth(READER_KEY))
    assert ok.status == 200
    resp = await gateway.get("/v1/passports/BP-0001", headers=auth("test-noscope-key"))
    body = await _assert_problem(resp, 403)
    assert "passports:read" in body["detail"]
    resp = await gateway.put("/v1/passports/BP-0001", json={}, headers=auth(READER_KEY))
    await _assert_problem(resp, 403)


async def test_x_api_key_header_works(gateway):
    resp = await gateway.get("/v1/passports/BP-0001", headers={"X-API-Key": READER_KEY})
    assert resp.status == 200
