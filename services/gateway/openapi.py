"""OpenAPI 3.1, generated from the route table, the validation models and the response
models (one source): every route, every status it can answer, its headers and bodies."""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from services.common.settings import SCOPES
from services.gateway import schemas
from services.gateway.docs import ASSETS
from services.gateway.routes import ROUTES, Route

REF = "#/components/schemas/{model}"
PROBLEM_JSON = "application/problem+json"
STATUS_TEXT = {
    400: "Invalid parameter or body (errors[] names it), or the upstream rejected the request",
    401: "Missing or unknown API key",
    403: "The API key lacks the route's scope",
    404: "Not found (here or upstream)",
    409: "The upstream already has it",
    413: "Body larger than AMPGATE_HTTP__MAX_BODY_BYTES",
    415: "Body is not application/json",
    502: "The upstream failed (unreachable, an error status, or a body that is not its JSON)",
    503: "Upstream circuit open or upstream token unavailable (Retry-After), or the history "
         "service is not configured",
    504: "The upstream did not answer in time",
}

HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": {"description": "The caller's X-Request-ID, or a generated one; forwarded "
                                    "upstream with traceparent", "required": True,
                     "schema": {"type": "string"}},
    "X-Cache": {"description": "How the answer was served: HIT, MISS, STALE (upstream failing, "
                               "previous answer served) or BYPASS (not cached)", "required": True,
                "schema": {"type": "string", "enum": ["HIT", "MISS", "STALE", "BYPASS"]}},
    "Age": {"description": "Seconds since the cached answer was fetched", "required": True,
            "schema": {"type": "integer", "minimum": 0}},
    "ETag": {"description": "Entity tag of the answer; send it back as If-None-Match for a 304",
             "required": True, "schema": {"type": "string"}},
    "Retry-After": {"description": "Seconds until the gateway calls the upstream again "
                                   "(open circuit, token endpoint failing)",
                    "schema": {"type": "integer", "minimum": 1}},
}


# Rules across parameters, which OpenAPI cannot state; a request breaking one is a 400 whose
# errors[] names the parameter.
MEDIUM_RULE = ("Give exactly one authentication medium: tag_id, emaid or authenticationUuid "
               "(authendicationUuid, the upstream's spelling, is accepted too, deprecated).")
RULES = {
    "prices": MEDIUM_RULE + " duration and duration_in_minutes exclude each other. Without "
              "consumption and duration no calculation is done: costTotal, costTime, costPower "
              "and every stepCosts are null.",
    "prices_batch": MEDIUM_RULE + " duration and duration_in_minutes exclude each other. "
                    "EVSEs without a tariff are left out of the map.",
    "prices_all": MEDIUM_RULE + " Start with cursor=start and follow pagination.nextCursorId "
                  "until pagination.isLastPage.",
    "passport_history": "Give `at` alone, or `from` with `to`, or neither (the version list).",
    "price_history": "Give `at` alone, or `from` with `to`, or neither (the version list).",
}


def _header_refs(*names: str) -> dict[str, Any]:
    return {n: {"$ref": f"#/components/headers/{n}"} for n in names}


def _model_schema(model: type[BaseModel], components: dict[str, Any],
                  mode: str = "serialization") -> dict[str, Any]:
    """The model's schema, its definitions moved into components; a $ref to it."""
    schema = model.model_json_schema(by_alias=True, ref_template=REF, mode=mode)
    components.update(schema.pop("$defs", {}))
    name = _name(model)
    schema["title"] = name  # generated clients name their classes after it
    components[name] = schema
    return {"$ref": REF.format(model=name)}


def _name(model: type[BaseModel]) -> str:
    names = {schemas.OwnedPassports: "OwnedPassports", schemas.PriceBatch: "PriceBatch",
             schemas.JsonPatch: "JsonPatch", schemas.PassportHistory: "PassportHistory",
             schemas.PriceHistory: "PriceHistory"}
    return names.get(model, model.__name__)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent or a value, never null: drop pydantic's null branch."""
    branches = schema.get("anyOf")
    if branches and any(b == {"type": "null"} for b in branches):
        rest = [b for b in branches if b != {"type": "null"}]
        schema = {**{k: v for k, v in schema.items() if k != "anyOf"},
                  **(rest[0] if len(rest) == 1 else {"anyOf": rest})}
    if schema.get("default", ...) is None:
        schema.pop("default")
    return schema


def _query_parameters(route: Route, components: dict[str, Any]) -> list[dict[str, Any]]:
    schema = route.query.model_json_schema(by_alias=True, ref_template=REF)
    components.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        description = prop.pop("description", None)
        deprecated = prop.pop("deprecated", False)
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": _not_null(prop)}
        if description:
            param["description"] = description
        if deprecated:
            param["deprecated"] = True
        if "[" in name:
            param["style"] = "form"
            param["explode"] = True
        params.append(param)
    return params


def _examples(route: Route) -> dict[str, Any]:
    return {name: {"summary": "from the vendor docs", "value": VENDOR_EXAMPLES[name]}
            for name in route.examples}


def _problem(status: int, extra_headers: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"description": STATUS_TEXT.get(status, "Error"),
            "headers": _header_refs("X-Request-ID", *extra_headers),
            "content": {PROBLEM_JSON: {"schema": {"$ref": REF.format(model="Problem")}}}}


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": n, "in": "path", "required": True, "description": d, "schema": dict(schema),
         "example": example}
        for n, d, schema, example in route.path_params]
    params += _query_parameters(route, components)
    if route.cached:
        headers = _header_refs("X-Request-ID", "X-Cache", "Age", "ETag")
    else:  # writes, history, purge: answered as they come, never from the cache
        headers = _header_refs("X-Request-ID") if route.upstream is None else \
            _header_refs("X-Request-ID", "X-Cache")
    success: dict[str, Any] = {"description": route.summary, "headers": headers}
    if route.response is not None:
        content: dict[str, Any] = {"application/json": {"schema": _model_schema(route.response,
                                                                                components)}}
        if route.examples:
            content["application/json"]["examples"] = _examples(route)
        for media_type, model in route.media:
            content[media_type] = {"schema": _model_schema(model, components)}
        success["content"] = content
    responses: dict[str, Any] = {str(route.success): success}
    if route.cached:
        responses["304"] = {"description": "Not modified (If-None-Match matched the ETag); "
                                           "no body", "headers": headers}
    statuses = {400, 401, 403, *route.extra_statuses}
    if route.body is not None:
        statuses |= {413, 415}
    if route.upstream:
        statuses |= {502, 503, 504}
    for status in sorted(statuses):
        responses[str(status)] = _problem(status, ("Retry-After",) if status == 503 else ())
    op: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        **({"description": RULES[route.name]} if route.name in RULES else {}),
        "tags": [route.tag],
        "security": [{"apiKey": [route.scope]}, {"bearer": [route.scope]}],
        "x-required-scope": route.scope,
        "parameters": params,
        "responses": responses,
    }
    if route.body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": _model_schema(route.body, components, "validation")}}}
    return op


def _ops_operation(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "tags": ["ops"], "security": [],
            "responses": responses}


def _ok(description: str, media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "headers": _header_refs("X-Request-ID"),
            "content": {media_type: {"schema": schema}}}


def _ops_paths(components: dict[str, Any]) -> dict[str, Any]:
    health = _model_schema(schemas.Health, components)
    ready = _model_schema(schemas.Readiness, components)
    return {
        "/healthz": {"get": _ops_operation("healthz", "Liveness", {
            "200": _ok("Alive", "application/json", health)})},
        "/readyz": {"get": _ops_operation("readyz", "Readiness (Kafka down is degraded, not "
                                                    "unready: events wait in the outbox)", {
            "200": _ok("Ready", "application/json", ready),
            "503": _ok("Not ready", "application/json", ready)})},
        "/metrics": {"get": _ops_operation("metrics", "Prometheus metrics", {
            "200": _ok("Prometheus text exposition", "text/plain", {"type": "string"})})},
        "/openapi.json": {"get": _ops_operation("openapi", "This document", {
            "200": _ok("OpenAPI 3.1", "application/json", {"type": "object"})})},
        "/asyncapi.yaml": {"get": _ops_operation("asyncapi", "The event contract (AsyncAPI 3: "
                                                             "topics, CloudEvents envelope)", {
            "200": _ok("AsyncAPI 3.0 document", "application/yaml", {"type": "object"})})},
        "/docs": {"get": _ops_operation("docs", "This API's reference page (Swagger UI, "
                                                "served by the gateway itself)", {
            "200": _ok("The reference page", "text/html", {"type": "string"})})},
        "/docs/{asset}": {"get": {**_ops_operation("docs_asset", "Assets of the reference page", {
            "200": {"description": "The asset", "headers": _header_refs("X-Request-ID"),
                    "content": {t: {"schema": {"type": "string"}}
                                for t in dict.fromkeys(ASSETS.values())}},
            "404": _problem(404)}),
            "parameters": [{"name": "asset", "in": "path", "required": True,
                            "schema": {"type": "string"}, "example": "swagger-ui.css"}]}},
    }


def _vendor_examples() -> dict[str, Any]:
    raw = resources.files("services.gateway").joinpath("vendor_examples.json").read_bytes()
    return orjson.loads(raw)


VENDOR_EXAMPLES = _vendor_examples()


@cache
def openapi_document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    _model_schema(schemas.Problem, components)
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    paths.update(_ops_paths(components))
    scopes = {s: s for s in SCOPES}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ampgate",
            "version": "1.0.0",
            "description": "One endpoint over the Battery Passport, CPO and Pricing APIs. "
                           "Bodies are the vendors' documents, passed through (CPO links point "
                           "at this gateway). Errors are RFC 9457 problem+json. Scopes are per "
                           "API key. Change events: /asyncapi.yaml.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "headers": copy.deepcopy(HEADERS),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": f"API key as a bearer token. Scopes: {', '.join(scopes)}"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }


@cache
def build_openapi() -> bytes:
    return orjson.dumps(openapi_document())


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=build_openapi(), content_type="application/json")
