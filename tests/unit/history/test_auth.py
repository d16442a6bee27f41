"""The history service checks the callers' keys and scope itself (DESIGN.md §11): nobody
reads history around the gateway's auth. The gateway forwards the caller's key."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.common.settings import Settings
from services.history.app import create_app
from services.history.keys import STORE_KEY
from services.history.versions import version_from_event
from tests.fixtures.gateway import CLIENTS, READER_KEY, WRITER_KEY, auth
from tests.unit.history.helpers import consumed, flip_flop, price_record, tariff

EVSE = "DE*EEE*E000001"
PATHS = ("/v1/passports/p1/history", f"/v1/prices/{EVSE}/history?context=fleet")


@pytest.fixture
async def history(aiohttp_server, tmp_path):
    registry = CollectorRegistry()
    settings = Settings(history={"database_url": str(tmp_path / "history.sqlite3")},
                        clients=CLIENTS)
    app = create_app(settings, registry, consume=False)
    server = await aiohttp_server(app)
    stream = [*flip_flop("p1"), price_record(EVSE, "fleet", tariff(0.30), None, 0)]
    await app[STORE_KEY].record([version_from_event(consumed(r)) for r in stream])
    server.registry = registry
    return server


@pytest.fixture
async def direct(aiohttp_client, history):
    return await aiohttp_client(history)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("headers", "detail"), [
    ({}, "send Authorization: Bearer <api key> or X-API-Key"),
    ({"Authorization": "Bearer not-a-configured-key"}, "unknown API key"),
    ({"X-API-Key": "not-a-configured-key"}, "unknown API key"),
    ({"Authorization": f"Basic {READER_KEY}"}, "send Authorization: Bearer <api key> or X-API-Key"),
])
async def test_a_direct_call_without_a_valid_key_is_401(direct, path, headers, detail):
    resp = await direct.get(path, headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="ampgate"')
    body = await resp.json()
    assert body["status"] == 401 and body["detail"] == detail
    assert "versions" not in body and "tariff" not in body


@pytest.mark.parametrize("path", PATHS)
async def test_a_direct_call_without_the_history_scope_is_403(direct, path):
    resp = await direct.get(path, headers=auth(WRITER_KEY))
    assert resp.status == 403
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["required_scope"] == "history:read"


@pytest.mark.parametrize("path", PATHS)
async def test_a_direct_call_with_the_key_and_scope_is_answered(direct, path):
    for headers in (auth(READER_KEY), {"X-API-Key": READER_KEY}):
        resp = await direct.get(path, headers=headers)
        assert resp.status == 200, await resp.text()
        assert len((await resp.json())["versions"]) >= 1


async def test_operational_routes_stay_open(direct):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await direct.get(path)).status == 200, path
    await direct.get(PATHS[0])
    metrics = await (await direct.get("/metrics")).text()
    assert 'client="anonymous"' in metrics


async def test_through_the_gateway_the_callers_key_is_forwarded(make_gateway, history):
    gateway = await make_gateway(history={"url": str(history.make_url(""))})
    for headers in (auth(READER_KEY), {"X-API-Key": READER_KEY}):
        resp = await gateway.get("/v1/passports/p1/history", headers=headers)
        assert resp.status == 200, await resp.text()
        assert len((await resp.json())["versions"]) == 4
    resp = await gateway.get(f"/v1/prices/{EVSE}/history?context=fleet", headers=auth())
    assert resp.status == 200
    assert (await gateway.get(PATHS[0], headers=auth(WRITER_KEY))).status == 403  # the gateway's
    # The history service itself saw the reader: the key travelled with the call.
    assert history.registry.get_sample_value("ampgate_http_requests_total", {
        "route": "passport_history", "method": "GET", "status": "200",
        "client": "reader"}) == 2
