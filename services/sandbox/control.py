"""Test controls under /_control/: counters, faults, token revocation and lifetimes,
and direct edits of passports, tariffs and EVSEs. Never counted, never faulted."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.sandbox._http import json_object, json_response
from services.sandbox.data import SandboxData
from services.sandbox.faults import ENDPOINTS, KINDS, matches
from services.sandbox.keys import COGNITO_KEY, CONFIG_KEY, DATA_KEY, FAULTS_KEY, SIEMENSID_KEY
from services.sandbox.tariffs import canonical_evse_id, normalize_tariff_fields, validate_tariff
from services.sandbox.tokens import TokenIssuer


def _bad(message: str, status: int = 400) -> web.Response:
    return json_response({"error": message}, status)


def _issuer(app: web.Application, name: object) -> TokenIssuer | None:
    return {"siemensid": app[SIEMENSID_KEY], "cognito": app[COGNITO_KEY]}.get(str(name))


async def calls(request: web.Request) -> web.Response:
    return json_response({"counts": request.app[FAULTS_KEY].counts})


async def reset(request: web.Request) -> web.Response:
    body = await json_object(request) if request.can_read_body else None
    faults = request.app[FAULTS_KEY]
    faults.reset_counts()
    faults.clear()
    for issuer in (request.app[SIEMENSID_KEY], request.app[COGNITO_KEY]):
        issuer.expires_in = issuer.default_expires_in
    if body and body.get("data") is True:
        # In place: a started app's state must not be reassigned.
        request.app[DATA_KEY].load(_fresh(request.app))
    return json_response({"reset": True})


def _fresh(app: web.Application) -> SandboxData:
    c = app[CONFIG_KEY]
    return SandboxData.seeded(c.seed, stations=c.stations, evses=c.evses, passports=c.passports)


async def add_fault(request: web.Request) -> web.Response:
    body = await json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    target = body.get("endpoint")
    if not isinstance(target, str) or not any(matches(target, n) for n in ENDPOINTS):
        return _bad(f"endpoint must be '*', one of {', '.join(ENDPOINTS)} or a prefix of them")
    kind = body.get("kind")
    if kind not in KINDS:
        return _bad(f"kind must be one of {', '.join(KINDS)}")
    spec: dict[str, Any] = {"endpoint": target, "kind": kind}
    for name, types, check in (
        ("status", (int,), lambda v: 100 <= v <= 599),
        ("latency_ms", (int, float), lambda v: v >= 0),
        ("times", (int,), lambda v: v >= 1),
        ("retry_after", (int, float), lambda v: v >= 0),
        ("timeout_s", (int, float), lambda v: v >= 0),
    ):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types) or not check(value):
            return _bad(f"{name} is out of range or of the wrong type")
        spec[name] = value
    fault = request.app[FAULTS_KEY].add(**spec)
    return json_response({"id": fault.id})


async def clear_faults(request: web.Request) -> web.Response:
    request.app[FAULTS_KEY].clear()
    return json_response({"cleared": True})


async def revoke(request: web.Request) -> web.Response:
    body = await json_object(request) or {}
    issuer = _issuer(request.app, body.get("issuer"))
    if issuer is None:
        return _bad("issuer must be siemensid or cognito")
    return json_response({"revoked": issuer.revoke_all()})


async def token_lifetime(request: web.Request) -> web.Response:
    body = await json_object(request) or {}
    issuer = _issuer(request.app, body.get("issuer"))
    if issuer is None:
        return _bad("issuer must be siemensid or cognito")
    value = body.get("expires_in")
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return _bad("expires_in must be a positive number of seconds")
    issuer.expires_in = value
    return json_response({"issuer": issuer.name, "expires_in": value})


async def put_passport(request: web.Request) -> web.Response:
    body = await json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    return json_response(request.app[DATA_KEY].put_passport(request.match_info["id"], body))


async def delete_passport(request: web.Request) -> web.Response:
    if request.app[DATA_KEY].passports.pop(request.match_info["id"], None) is None:
        return _bad("no such passport", 404)
    return web.Response(status=204)


async def put_tariff(request: web.Request) -> web.Response:
    data = request.app[DATA_KEY]
    key = canonical_evse_id(request.match_info["evse_id"])
    if key is None or key not in data.evses:
        return _bad("no such EVSE", 404)
    body = await json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    fields = normalize_tariff_fields(body)
    if problem := validate_tariff({**data.evses[key].tariff, **fields}):
        return _bad(problem)
    return json_response(data.put_tariff(key, fields))


async def add_evse(request: web.Request) -> web.Response:
    data = request.app[DATA_KEY]
    body = await json_object(request)
    evse_id = (body or {}).get("evse_id")
    if not isinstance(evse_id, str) or canonical_evse_id(evse_id) is None:
        return _bad("evse_id must be an eMI3 EVSE ID")
    given = body.get("tariff") if body else None
    if given is not None and not isinstance(given, dict):
        return _bad("tariff must be an object")
    tariff = {**data.default_tariff(), **normalize_tariff_fields(given or {})}
    if problem := validate_tariff(tariff):
        return _bad(problem)
    evse = data.add_evse(evse_id, tariff)
    return json_response({"evse_id": evse.evse_id, "tariff": evse.tariff}, 201)


async def remove_evse(request: web.Request) -> web.Response:
    key = canonical_evse_id(request.match_info["evse_id"])
    if key is None or not request.app[DATA_KEY].remove_evse(key):
        return _bad("no such EVSE", 404)
    return web.Response(status=204)


async def state(request: web.Request) -> web.Response:
    app = request.app
    data = app[DATA_KEY]
    return json_response({
        "counts": app[FAULTS_KEY].counts,
        "faults": app[FAULTS_KEY].describe(),
        "passports": len(data.passports),
        "stations": len(data.stations),
        "evses": len(data.evses),
        "tokens": {i.name: {"live": i.live(), "issued": i.issued, "expires_in": i.expires_in}
                   for i in (app[SIEMENSID_KEY], app[COGNITO_KEY])},
    })
