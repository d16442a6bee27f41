"""Every route answers the upstream document through the gateway, with the contract headers."""

from __future__ import annotations

import orjson

from tests.fixtures.gateway import ADMIN_KEY, READER_KEY, WRITER_KEY, auth

EVSE = "DE*EEE*E000001"


async def first_passport_id(gateway) -> str:
    resp = await gateway.get("/v1/passports", headers=auth())
    assert resp.status == 200
    docs = await resp.json()
    assert isinstance(docs, list) and len(docs) >= 250
    return docs[0]["id"]


async def test_public_passport_passes_the_document_through(gateway, sandbox):
    pid = await first_passport_id(gateway)
    resp = await gateway.get(f"/v1/passports/{pid}", headers=auth())
    assert resp.status == 200
    doc = await resp.json()
    assert doc["general_information"]["identification"]["uid"]
    assert doc["performance"]["capacity"]["rated_capacity"] is not None
    assert resp.headers["X-Cache"] == "MISS"
    assert resp.headers["ETag"]
    assert resp.headers["X-Request-ID"]
    again = await gateway.get(f"/v1/passports/{pid}", headers=auth())
    assert again.headers["X-Cache"] == "HIT"
    assert await again.read() == orjson.dumps(doc) or await again.json() == doc
    assert (await sandbox.calls())["passport.public"] == 1


async def test_unknown_passport_is_404_problem(gateway):
    resp = await gateway.get("/v1/passports/NO-SUCH-PASSPORT", headers=auth())
    assert resp.status == 404
    assert resp.headers["Content-Type"].startswith("application/problem+json")


async def test_owned_passport_and_write_cycle(gateway, sandbox):
    w = auth(WRITER_KEY)
    created = await gateway.post("/v1/passports", json={"status": {"state": "draft"}}, headers=w)
    assert created.status == 201, await created.text()
    doc = await created.json()
    pid = doc["id"]
    owned = await gateway.get(f"/v1/passports/{pid}/owned", headers=w)
    assert owned.status == 200 and (await owned.json())["id"] == pid
    updated = await gateway.put(f"/v1/passports/{pid}", json={**doc, "status": {"state": "active"}},
                                headers=w)
    assert updated.status == 200, await updated.text()
    owned = await gateway.get(f"/v1/passports/{pid}/owned", headers=w)
    assert (await owned.json())["status"]["state"] == "active"
    deleted = await gateway.delete(f"/v1/passports/{pid}", headers=w)
    assert deleted.status == 204  # routes.py / OpenAPI: the delete's one success status
    assert await deleted.read() == b"" and "Content-Type" not in deleted.headers
    gone = await gateway.get(f"/v1/passports/{pid}/owned", headers=w)
    assert gone.status == 404


async def test_users(gateway, sandbox):
    me = await gateway.get("/v1/users/me", headers=auth(WRITER_KEY))
    assert me.status == 200
    body = await me.json()
    assert isinstance(body, dict)
    upd = await gateway.put("/v1/users/me", json={"name": "Ada"}, headers=auth(WRITER_KEY))
    assert upd.status == 200, await upd.text()
    me = await gateway.get("/v1/users/me", headers=auth(WRITER_KEY))
    assert (await me.json())["name"] == "Ada"  # the write evicted the cached user
    new = await gateway.post("/v1/users", json={"email": "new@example.com"}, headers=auth(WRITER_KEY))
    assert new.status == 201, await new.text()
    assert (await new.json())["email"] == "new@example.com"


async def test_charging_stations_links_point_at_the_gateway(gateway, sandbox):
    resp = await gateway.get("/v1/charging-stations?page[limit]=100&page[offset]=200",
                             headers=auth())
    assert resp.status == 200
    doc = await resp.json()
    assert len(doc["data"]) == 100
    assert doc["meta"]["pagination"]["offset"] == 200
    base = f"http://{gateway.server.host}:{gateway.server.port}/v1/charging-stations"
    for name in ("current", "next", "prev"):
        assert doc["links"][name].startswith(base), doc["links"]
    # following `next` through the gateway works
    nxt = doc["links"]["next"].removeprefix(f"http://{gateway.server.host}:{gateway.server.port}")
    page2 = await gateway.get(nxt, headers=auth())
    assert page2.status == 200
    assert (await page2.json())["meta"]["pagination"]["offset"] == 300


async def test_station_page_size_is_clamped_by_upstream_and_trusted(gateway):
    resp = await gateway.get("/v1/charging-stations?page[limit]=500", headers=auth())
    doc = await resp.json()
    assert doc["meta"]["pagination"]["limit"] == len(doc["data"]) == 500


async def test_public_url_setting_rewrites_links(make_gateway):
    gw = await make_gateway(http={"public_url": "https://api.example.com/gw"})
    doc = await (await gw.get("/v1/charging-stations?page[limit]=10", headers=auth())).json()
    assert doc["links"]["next"].startswith("https://api.example.com/gw/v1/charging-stations?")


async def test_prices_single_batch_all(gateway, sandbox):
    one = await gateway.get(f"/v1/prices?evseId={EVSE}&tag_id=SOMETHING&consumption=90000&duration=1000",
                            headers=auth())
    assert one.status == 200, await one.text()
    doc = await one.json()
    assert doc["costPower"] is not None and "priceStructure" in doc
    bare = await (await gateway.get(f"/v1/prices?evseId={EVSE}&tag_id=SOMETHING", headers=auth())).json()
    assert bare["costTotal"] is None and "tax" not in bare["priceStructure"]["energy"]
    # authenticationUuid is sent upstream in the upstream spelling
    uuid = "6f1c3c1e-9a7e-4c1a-8f00-0d4c2b7a1e11"
    via_uuid = await gateway.get(f"/v1/prices?evseId={EVSE}&authenticationUuid={uuid}", headers=auth())
    assert via_uuid.status == 200, await via_uuid.text()
    batch = await gateway.get("/v1/prices/batch?evseIds=DE*EEE*E000001,AT*HTB*E00008&tag_id=X",
                              headers=auth())
    assert batch.status == 200, await batch.text()
    assert set((await batch.json()).keys()) >= {"DE*EEE*E000001"}
    page = await gateway.get("/v1/prices/all?tag_id=X&limit=50", headers=auth())
    body = await page.json()
    assert len(body["data"]) == 50 and body["pagination"]["isLastPage"] is False


async def test_cache_purge_needs_admin(gateway):
    assert (await gateway.post("/admin/cache/purge", headers=auth(READER_KEY))).status == 403
    resp = await gateway.post("/admin/cache/purge", headers=auth(ADMIN_KEY))
    assert resp.status == 200 and "purged" in await resp.json()


async def test_ops_endpoints(gateway):
    assert (await gateway.get("/healthz")).status == 200
    ready = await gateway.get("/readyz")
    assert ready.status == 200
    metrics = await gateway.get("/metrics")
    assert "ampgate_http_requests_total" in await metrics.text()


async def test_request_id_is_echoed_and_generated(gateway):
    resp = await gateway.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    resp = await gateway.get("/healthz")
    assert len(resp.headers["X-Request-ID"]) >= 16
