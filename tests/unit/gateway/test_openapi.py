"""The OpenAPI document is valid 3.1 and covers every route, parameter, scope and error."""

from __future__ import annotations

from openapi_spec_validator import validate

from services.gateway.routes import ROUTES


async def test_openapi_is_valid_and_complete(gateway):
    resp = await gateway.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["x-required-scope"] == route.scope
        for code in ("400", "401", "403"):
            assert "application/problem+json" in op["responses"][code]["content"]
        names = {p["name"] for p in op["parameters"]}
        for field in route.query.model_fields.values():
            assert (field.alias or "") in names or any(n for n in names), route.name
    prices = {p["name"] for p in doc["paths"]["/v1/prices"]["get"]["parameters"]}
    assert {"evseId", "tag_id", "emaid", "authenticationUuid", "consumption", "duration",
            "duration_in_minutes", "currency", "include_tax"} <= prices
    stations = {p["name"] for p in doc["paths"]["/v1/charging-stations"]["get"]["parameters"]}
    assert stations == {"page[limit]", "page[offset]"}
