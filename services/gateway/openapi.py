"""OpenAPI 3.1, generated from the route table and the validation models (one source)."""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from aiohttp import web

from services.common.settings import SCOPES
from services.gateway.routes import ROUTES, Route

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
STATUS_TEXT = {
    400: "Invalid parameter or body (errors[] names it)",
    401: "Missing or unknown API key",
    403: "The API key lacks the route's scope",
    404: "Not found",
    413: "Body larger than AMPGATE_HTTP__MAX_BODY_BYTES",
    415: "Body is not application/json",
    502: "The upstream failed",
    503: "Upstream circuit open or upstream token unavailable (Retry-After)",
    504: "The upstream did not answer in time",
}

PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "parameter": {"type": "string"},
                    "pointer": {"type": "string"},
                    "message": {"type": "string"},
                },
                "required": ["message"],
            },
        },
        "upstream": {"type": "string"},
        "upstream_status": {"type": "integer"},
        "upstream_excerpt": {"type": "string"},
    },
}

RESPONSE_HEADERS = {
    "X-Request-ID": {"description": "Echoed or generated request id", "schema": {"type": "string"}},
}
CACHE_HEADERS = {
    **RESPONSE_HEADERS,
    "X-Cache": {"schema": {"type": "string", "enum": ["HIT", "MISS", "STALE", "BYPASS"]}},
    "Age": {"schema": {"type": "integer", "minimum": 0}},
    "ETag": {"schema": {"type": "string"}},
}


def _query_parameters(route: Route, components: dict[str, Any]) -> list[dict[str, Any]]:
    schema = route.query.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        description = prop.pop("description", None)
        prop.pop("title", None)
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                 "schema": prop}
        if description:
            param["description"] = description
        if "[" in name:
            param["style"] = "form"
            param["explode"] = True
        params.append(param)
    return params


def _operation(route: Route, components: dict[str, Any]) -> dict[str, Any]:
    params = [{"name": n, "in": "path", "required": True, "description": d,
               "schema": {"type": "string", "maxLength": 128,
                          "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:~*-]{0,127}$"}}
              for n, d in route.path_params]
    params += _query_parameters(route, components)
    problem = {"content": {"application/problem+json": {"schema": PROBLEM_REF}}}
    success: dict[str, Any] = {"description": "The upstream document, passed through",
                               "headers": CACHE_HEADERS if route.cached else RESPONSE_HEADERS}
    if route.success != 204:
        success["content"] = {"application/json": {"schema": {}}}
    responses: dict[str, Any] = {str(route.success): success}
    if route.cached:
        responses["304"] = {"description": "Not modified (If-None-Match)"}
    statuses = {400, 401, 403, *route.extra_statuses}
    if route.body is not None:
        statuses |= {413, 415}
    if route.upstream:
        statuses |= {502, 503, 504}
    for status in sorted(statuses):
        responses[str(status)] = {"description": STATUS_TEXT.get(status, "Error"), **problem}
    op: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [route.tag],
        "security": [{"apiKey": [route.scope]}, {"bearer": [route.scope]}],
        "x-required-scope": route.scope,
        "parameters": params,
        "responses": responses,
    }
    if route.body is not None:
        schema = route.body.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[route.body.__name__] = schema
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}}}
    return op


@cache
def build_openapi() -> bytes:
    components: dict[str, Any] = {"Problem": PROBLEM_SCHEMA}
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    for path, summary in (("/healthz", "Liveness"), ("/readyz", "Readiness"),
                          ("/metrics", "Prometheus metrics")):
        paths[path] = {"get": {"operationId": path.strip("/"), "summary": summary,
                               "tags": ["ops"], "security": [],
                               "responses": {"200": {"description": "OK"},
                                             **({"503": {"description": "Not ready"}}
                                                if path == "/readyz" else {})}}}
    scopes = {s: s for s in SCOPES}
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "ampgate",
            "version": "1.0.0",
            "description": "One endpoint over the Battery Passport, CPO and Pricing APIs. "
                           "Errors are RFC 9457 problem+json. Scopes are per API key.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": f"API key as a bearer token. Scopes: {', '.join(scopes)}"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
    }
    return orjson.dumps(doc)


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=build_openapi(), content_type="application/json")
