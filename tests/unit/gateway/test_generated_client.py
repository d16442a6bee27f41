"""A client team's first day: generate a Python client from the running gateway's
/openapi.json with openapi-python-client, import it, call the gateway through it, and get
typed models back (not dicts), a typed problem on bad input."""

from __future__ import annotations

import importlib
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.unit.gateway.live_stack import (
    ALL_SCOPES_KEY,
    CONTEXT,
    EVSE_ID,
    PASSPORT_ID,
    TAG_ID,
    start_stack,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka, tmp_path_factory):
    gen = start_stack(tmp_path_factory.mktemp("client-stack"), kafka.bootstrap)
    yield next(gen)
    next(gen, None)


@pytest.fixture(scope="module")
def ampgate_client(stack, tmp_path_factory):
    out = tmp_path_factory.mktemp("generated")
    cli = Path(sys.executable).with_name("openapi-python-client")
    proc = subprocess.run(
        [str(cli), "generate", "--url", stack.url + "/openapi.json", "--meta", "none",
         "--output-path", str(out / "ampgate_client")],
        check=False, capture_output=True, text=True, timeout=120, cwd=out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sys.path.insert(0, str(out))
    try:
        pkg = importlib.import_module("ampgate_client")
        yield pkg
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "ampgate_client" or
                     m.startswith("ampgate_client.")]:
            del sys.modules[name]


def _api(name: str):
    return importlib.import_module(f"ampgate_client.api.{name}")


def test_generated_client_gets_typed_models(stack, ampgate_client):
    models = importlib.import_module("ampgate_client.models")
    client = ampgate_client.AuthenticatedClient(base_url=stack.url, token=ALL_SCOPES_KEY)

    passport = _api("passports.passport_public").sync(client=client, passport_id=PASSPORT_ID)
    assert isinstance(passport, models.PassportDocument), passport
    ident = passport.general_information.identification
    assert isinstance(ident, models.Identification)
    assert isinstance(ident.manufacturer_id.address, models.Address)
    assert isinstance(passport.performance.capacity.rated_capacity, float)

    price = _api("prices.prices").sync(client=client, evse_id=EVSE_ID, tag_id=TAG_ID,
                                       consumption=90000, duration=1000)
    assert isinstance(price, models.Price), price
    assert isinstance(price.price_structure, models.PriceStructure)
    element = price.price_structure.energy.elements[0]
    assert isinstance(element, models.PriceElement)
    assert price.cost_total == 36  # the vendor docs' sample: 90 kWh, 1000 s
    plain = _api("prices.prices").sync(client=client, evse_id=EVSE_ID, tag_id=TAG_ID)
    assert plain.cost_total is None  # no consumption/duration: no calculation

    batch = _api("prices.prices_batch").sync(
        client=client, evse_ids=f"{EVSE_ID},CH*CHI*E00193", tag_id=TAG_ID)
    assert isinstance(batch, models.PriceBatch), batch
    assert isinstance(batch[EVSE_ID], models.Price)
    assert batch[EVSE_ID].rate_name == price.rate_name

    page = _api("prices.prices_all").sync(client=client, tag_id=TAG_ID, limit=5)
    assert isinstance(page, models.PricePage), page
    assert isinstance(page.pagination, models.PricePagination)
    assert page.pagination.is_last_page is False
    first = next(iter(page.data.additional_properties.values()))
    assert isinstance(first, models.Price)
    nxt = _api("prices.prices_all").sync(client=client, tag_id=TAG_ID, limit=5,
                                         cursor=page.pagination.next_cursor_id)
    assert isinstance(nxt, models.PricePage)
    assert set(nxt.data.additional_properties).isdisjoint(page.data.additional_properties)

    stations = _api("stations.charging_stations").sync(client=client, pagelimit=2)
    assert isinstance(stations, models.StationsPage), stations
    assert isinstance(stations.data[0], models.Station)
    assert isinstance(stations.data[0].attributes, models.StationAttributes)
    assert stations.meta.pagination.limit == 2
    assert stations.links.next_.startswith(stack.url + "/v1/charging-stations?")

    history = stack.wait_for_history(f"/v1/passports/{PASSPORT_ID}/history")
    versions = _api("history.passport_history").sync(client=client, passport_id=PASSPORT_ID)
    assert isinstance(versions, models.PassportVersions), versions
    assert isinstance(versions.versions[0], models.VersionSummary)
    assert versions.versions[0].digest == history["versions"][0]["digest"]
    at = _api("history.passport_history").sync(client=client, passport_id=PASSPORT_ID,
                                               at=datetime.now(UTC))
    assert isinstance(at, models.PassportVersionAt), at
    assert isinstance(at.passport, models.PassportDocument)

    price_history = stack.wait_for_history(f"/v1/prices/{EVSE_ID}/history?context={CONTEXT}")
    tariffs = _api("history.price_history").sync(client=client, evse_id=EVSE_ID, context=CONTEXT)
    assert isinstance(tariffs, models.PriceVersions), tariffs
    assert tariffs.versions[0].digest == price_history["versions"][0]["digest"]


def test_generated_client_gets_a_typed_problem(stack, ampgate_client):
    models = importlib.import_module("ampgate_client.models")
    client = ampgate_client.AuthenticatedClient(base_url=stack.url, token=ALL_SCOPES_KEY)
    resp = _api("prices.prices").sync_detailed(client=client, evse_id="not-an-evse",
                                               tag_id=TAG_ID)
    assert resp.status_code == 400
    assert resp.headers["content-type"] == "application/problem+json"
    problem = resp.parsed
    assert isinstance(problem, models.Problem), problem
    assert problem.status == 400
    assert isinstance(problem.errors[0], models.ProblemError)
    assert problem.errors[0].parameter == "evseId"
    anonymous = ampgate_client.Client(base_url=stack.url)
    denied = _api("prices.prices").sync(client=anonymous, evse_id=EVSE_ID, tag_id=TAG_ID)
    assert isinstance(denied, models.Problem) and denied.status == 401
