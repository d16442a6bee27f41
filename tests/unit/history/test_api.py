"""The history HTTP API (DESIGN.md §11) over the real app factory, SQLite and PostgreSQL."""

from __future__ import annotations

import jsonpatch
import pytest
from prometheus_client import CollectorRegistry

from services.common.events import digest_of
from services.common.settings import Settings
from services.history.app import create_app
from services.history.keys import STORE_KEY
from services.history.versions import version_from_event
from tests.fixtures.gateway import CLIENTS, auth
from tests.unit.history.helpers import (
    consumed,
    flip_flop,
    passport_doc,
    passport_record,
    price_record,
    tariff,
)

EVSE = "DE*EEE*E000001"


@pytest.fixture
async def client(aiohttp_client, database_url: str):
    settings = Settings(history={"database_url": database_url}, clients=CLIENTS)
    app = create_app(settings, CollectorRegistry(), consume=False)
    client = await aiohttp_client(app, headers=auth())  # a key with history:read
    a, b = passport_doc("p1", 60.0), passport_doc("p1", 58.5)
    stream = [*flip_flop("p1"),
              passport_record("gone", a, None, 0), passport_record("gone", None, a, 10),
              price_record(EVSE, "fleet", tariff(0.30), None, 0),
              price_record(EVSE, "fleet", tariff(0.35), tariff(0.30), 10)]
    await app[STORE_KEY].record([version_from_event(consumed(r)) for r in stream])
    client.docs = {"a": a, "b": b}
    return client


async def test_version_list_newest_first(client) -> None:
    resp = await client.get("/v1/passports/p1/history")
    assert resp.status == 200
    body = await resp.json()
    assert body["passport_id"] == "p1"
    assert [v["observed_at"] for v in body["versions"]] == [
        "2026-11-01T10:30:00.000000Z", "2026-11-01T10:20:00.000000Z",
        "2026-11-01T10:10:00.000000Z", "2026-11-01T10:00:00.000000Z"]
    assert set(body["versions"][0]) == {"digest", "observed_at", "change", "detected_by",
                                        "changed_paths"}
    assert body["versions"][0]["digest"] == digest_of(client.docs["b"])
    assert body["versions"][-1]["change"] == "CHANGE_KIND_SNAPSHOT"


async def test_at_answers_the_version_in_force(client) -> None:
    resp = await client.get("/v1/passports/p1/history", params={"at": "2026-11-01T11:15:00+01:00"})
    assert resp.status == 200
    body = await resp.json()
    assert body["observed_at"] == "2026-11-01T10:10:00.000000Z"
    assert body["passport"] == client.docs["b"]
    resp = await client.get("/v1/passports/p1/history?at=2026-11-01T10:25:00Z")
    assert (await resp.json())["passport"] == client.docs["a"]


async def test_at_before_the_first_version_or_after_deletion_is_404(client) -> None:
    for path in ("/v1/passports/p1/history?at=2026-11-01T09:59:59.999Z",
                 "/v1/passports/gone/history?at=2026-11-01T10:11:00Z"):
        resp = await client.get(path)
        assert resp.status == 404
        assert resp.content_type == "application/problem+json"
    resp = await client.get("/v1/passports/gone/history?at=2026-11-01T10:05:00Z")
    assert resp.status == 200


async def test_diff_between_two_versions_is_an_rfc6902_patch(client) -> None:
    a, b = client.docs["a"], client.docs["b"]
    resp = await client.get("/v1/passports/p1/history",
                            params={"from": digest_of(a), "to": digest_of(b)})
    assert resp.status == 200
    assert resp.content_type == "application/json-patch+json"
    patch = await resp.json()
    assert patch == [{"op": "replace", "path": "/performance/rated_capacity_kwh", "value": 58.5}]
    assert jsonpatch.apply_patch(a, patch) == b


async def test_unknown_digest_is_404_naming_it(client) -> None:
    resp = await client.get("/v1/passports/p1/history",
                            params={"from": "sha256:" + "0" * 64, "to": digest_of(client.docs["b"])})
    assert resp.status == 404
    assert (await resp.json())["errors"][0]["parameter"] == "from"


async def test_prices_per_context(client) -> None:
    resp = await client.get(f"/v1/prices/{EVSE.lower()}/history?context=fleet")
    assert resp.status == 200
    body = await resp.json()
    assert body["evse_id"] == EVSE and body["tariff_context"] == "fleet"
    assert len(body["versions"]) == 2
    resp = await client.get(f"/v1/prices/{EVSE}/history?context=fleet&at=2026-11-01T10:05:00Z")
    assert (await resp.json())["tariff"] == tariff(0.30)
    resp = await client.get(f"/v1/prices/{EVSE}/history?context=roaming")
    assert resp.status == 404


@pytest.mark.parametrize(("path", "parameter"), [
    ("/v1/passports/p1/history?at=yesterday", "at"),
    ("/v1/passports/p1/history?at=2026-11-01T10:00:00", "at"),
    ("/v1/passports/p1/history?since=2026-11-01T10:00:00Z", "since"),
    ("/v1/passports/p1/history?from=sha256:abc&to=sha256:abc", "from"),
    ("/v1/passports/p1/history?from=sha256:" + "0" * 64, "to"),
    ("/v1/passports/p1/history?at=2026-11-01T10:00:00Z&at=2026-11-01T10:00:00Z", "at"),
    ("/v1/passports/bad%20id/history", "passport_id"),
    ("/v1/passports/..x/history", "passport_id"),
    ("/v1/prices/NOT-AN-EVSE/history?context=fleet", "evse_id"),
    (f"/v1/prices/{EVSE}/history", "context"),
    (f"/v1/prices/{EVSE}/history?context=a%20b", "context"),
])
async def test_bad_requests_are_400_naming_the_parameter(client, path: str, parameter: str) -> None:
    resp = await client.get(path)
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    body = await resp.json()
    assert body["errors"][0]["parameter"] == parameter


async def test_ops_routes(client) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"]["database"]["status"] == "ok"
    metrics = await (await client.get("/metrics")).text()
    assert "ampgate_http_requests_total" in metrics
