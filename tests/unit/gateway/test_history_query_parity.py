"""The gateway and the history service apply ONE history query rule: the same query string
gets the same status from both (the history service is reachable directly with a key)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from yarl import URL

from services.common.settings import Settings
from services.history.app import create_app as create_history_app
from tests.fixtures.gateway import CLIENTS, auth

D = "sha256:" + "a" * 64
QUERIES = [
    # (raw, already-encoded query string, the status both answer on an empty history)
    ("at=2026-11-01T11:15:00Z", 404),
    ("at=2026-11-01t11:15:00z", 404),
    ("at=2026-11-01%2011:15:00.123456789%2B01:00", 404),
    ("at=2026-11-01T11:15:00%2B01:00", 404),
    ("at=2026-11-01T11:15:00+01:00", 400),  # an unencoded '+' arrives as a space: rejected
    ("at=2026-11-01T11:15:00", 400),  # no offset
    ("at=2026-13-01T00:00:00Z", 400),
    ("at=yesterday", 400),
    ("at=", 400),
    ("at=2026-11-01T11:15:00Z&at=2026-11-01T11:15:00Z", 400),
    (f"from={D}&to={D}", 404),
    (f"from={D}", 400),
    ("from=abc&to=def", 400),
    (f"at=2026-11-01T11:15:00Z&from={D}&to={D}", 400),
    ("colour=red", 400),
]


@pytest.fixture
async def history_url(aiohttp_server, tmp_path) -> str:
    settings = Settings(history={"database_url": f"sqlite:///{tmp_path}/history.sqlite3"},
                        clients=CLIENTS)
    server = await aiohttp_server(create_history_app(settings, CollectorRegistry(), consume=False))
    return str(server.make_url(""))


@pytest.mark.parametrize(("query", "status"), QUERIES)
async def test_gateway_and_history_answer_the_same_status(make_gateway, history_url, aiohttp_client,
                                                           query, status) -> None:
    gateway = await make_gateway(history={"url": history_url})
    for path in ("/v1/passports/p1/history", "/v1/prices/DE*EEE*E000001/history"):
        q = query + ("&context=demo" if "prices" in path else "")
        via_gateway = await gateway.get(URL(f"{path}?{q}", encoded=True), headers=auth())
        async with gateway.session.get(URL(f"{history_url.rstrip('/')}{path}?{q}", encoded=True),
                                       headers=auth()) as direct:
            assert (via_gateway.status, direct.status) == (status, status), (path, q)
            if status == 400:
                names = {e["parameter"] for e in (await direct.json())["errors"]}
                assert names == {e["parameter"] for e in (await via_gateway.json())["errors"]}
