"""The OpenAPI document is valid 3.1 and covers every route, parameter, scope, status, header
and body; /docs and /asyncapi.yaml are served from what the package ships."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import yaml
from openapi_spec_validator import validate

from services.gateway.openapi import VENDOR_EXAMPLES
from services.gateway.routes import ROUTES

REPO = Path(__file__).resolve().parents[3]
# Every route of DESIGN.md §4 beyond the route table, the document itself included.
OPS = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
       ("GET", "/asyncapi.yaml"), ("GET", "/docs"), ("GET", "/docs/{asset}")}


async def _doc(gateway) -> dict:
    resp = await gateway.get("/openapi.json")
    assert resp.status == 200
    return await resp.json()


def _schema_validator(doc: dict, ref: dict) -> jsonschema.Draft202012Validator:
    """A validator for one schema of the document, its $refs resolved in the document."""
    return jsonschema.Draft202012Validator({**ref, "components": doc["components"]})


async def test_openapi_is_valid_and_complete(gateway):
    doc = await _doc(gateway)
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["x-required-scope"] == route.scope
        for code in ("400", "401", "403"):
            assert "application/problem+json" in op["responses"][code]["content"]
        names = {p["name"] for p in op["parameters"] if p["in"] == "query"}
        wanted = {field.alias or name for name, field in route.query.model_fields.items()}
        assert names == wanted, route.name
        path_names = {p["name"] for p in op["parameters"] if p["in"] == "path"}
        assert path_names == set(re.findall(r"{(\w+)}", route.path)), route.name
    prices = {p["name"] for p in doc["paths"]["/v1/prices"]["get"]["parameters"]}
    assert {"evseId", "tag_id", "emaid", "authenticationUuid", "consumption", "duration",
            "duration_in_minutes", "currency", "include_tax"} <= prices
    stations = {p["name"] for p in doc["paths"]["/v1/charging-stations"]["get"]["parameters"]}
    assert stations == {"page[limit]", "page[offset]"}


async def test_every_served_route_is_documented(gateway):
    doc = await _doc(gateway)
    served = set()
    for resource in gateway.app.router.resources():
        info = resource.get_info()
        path = info.get("formatter") or info.get("path")
        for route in resource:
            if route.method != "HEAD":
                served.add((route.method, path))
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops
                  if m != "parameters"}
    assert served == documented
    assert OPS <= documented


async def test_every_status_has_its_body_and_headers(gateway):
    doc = await _doc(gateway)
    headers = doc["components"]["headers"]
    assert {"X-Request-ID", "X-Cache", "Age", "ETag", "Retry-After"} <= set(headers)
    for route in ROUTES:
        responses = doc["paths"][route.path][route.method.lower()]["responses"]
        success = responses[str(route.success)]
        if route.success == 204:
            assert "content" not in success
        else:  # a typed body, never the "anything" schema
            schema = success["content"]["application/json"]["schema"]
            assert schema.get("$ref", "").startswith("#/components/schemas/"), route.name
        assert "X-Request-ID" in success["headers"]
        if route.cached:
            assert {"X-Cache", "Age", "ETag"} <= set(success["headers"]), route.name
            assert "content" not in responses["304"], route.name
            assert "ETag" in responses["304"]["headers"]
        expected = {400, 401, 403, *route.extra_statuses}
        if route.body is not None:
            expected |= {413, 415}
        if route.upstream:
            expected |= {502, 503, 504}
        errors = {int(s) for s in responses if int(s) >= 400}
        assert errors == expected, route.name
        for status in errors:
            assert responses[str(status)]["content"]["application/problem+json"]["schema"] == {
                "$ref": "#/components/schemas/Problem"}
            assert "X-Request-ID" in responses[str(status)]["headers"]
        if route.upstream:
            assert "Retry-After" in responses["503"]["headers"], route.name
    history = doc["paths"]["/v1/passports/{passport_id}/history"]["get"]["responses"]["200"]
    assert set(history["content"]) == {"application/json", "application/json-patch+json"}


async def test_upstream_misspelling_is_accepted_but_deprecated(gateway):
    doc = await _doc(gateway)
    for path in ("/v1/prices", "/v1/prices/batch", "/v1/prices/all"):
        params = {p["name"]: p for p in doc["paths"][path]["get"]["parameters"]}
        assert params["authendicationUuid"].get("deprecated") is True, path
        assert not params["authenticationUuid"].get("deprecated"), path


async def test_vendor_samples_are_the_documented_examples_and_fit_the_schemas(gateway):
    doc = await _doc(gateway)
    checked = 0
    for route in ROUTES:
        content = doc["paths"][route.path][route.method.lower()]["responses"][
            str(route.success)].get("content", {}).get("application/json", {})
        for name, example in content.get("examples", {}).items():
            assert example["value"] == VENDOR_EXAMPLES[name]
            _schema_validator(doc, content["schema"]).validate(example["value"])
            checked += 1
    assert checked >= 7
    # The schemas are not "anything": a price without its structure, a wrong type is refused.
    price = _schema_validator(doc, {"$ref": "#/components/schemas/Price"})
    broken = {k: v for k, v in VENDOR_EXAMPLES["price"].items() if k != "priceStructure"}
    assert not price.is_valid(broken)
    assert not price.is_valid({**VENDOR_EXAMPLES["price"], "costTotal": "36"})
    # Vendors add fields: unknown ones are allowed, and documented nulls are nulls.
    assert price.is_valid({**VENDOR_EXAMPLES["price_batch"]["CH*AAA*E00001"], "newField": 1})


async def test_docs_page_and_assets_come_from_the_gateway(gateway):
    page = await gateway.get("/docs")
    assert page.status == 200
    assert page.content_type == "text/html"
    html = await page.text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and not [r for r in refs if "//" in r], refs  # nothing from another host
    for ref in refs:
        asset = await gateway.get("/" + ref)
        assert asset.status == 200, ref
        assert len(await asset.read()) > 100, ref
    bundle = await gateway.get("/docs/swagger-ui-bundle.js")
    assert bundle.content_type == "text/javascript"
    missing = await gateway.get("/docs/../../etc/passwd")
    assert missing.status == 404
    unknown = await gateway.get("/docs/index.j2")
    assert unknown.status == 404
    assert unknown.content_type == "application/problem+json"


async def test_asyncapi_is_served_beside_openapi(gateway):
    resp = await gateway.get("/asyncapi.yaml")
    assert resp.status == 200
    assert resp.content_type == "application/yaml"
    body = await resp.read()
    assert body == (REPO / "proto-schemas" / "asyncapi.yaml").read_bytes()
    assert yaml.safe_load(body)["asyncapi"].startswith("3.")
