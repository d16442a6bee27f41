"""Test controls under /_control/: counters, faults, token revocation, lifetimes and
scopes, the owned list's shape, and direct edits of passports, tariffs (for every
medium or one) and EVSEs. Never counted, never faulted."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.sandbox._http import json_object, json_response
from services.sandbox.data import SandboxData
from services.sandbox.faults import ENDPOINTS, KINDS, matches
from services.sandbox.keys import (
    COGNITO_KEY,
    CONFIG_KEY,
    DATA_KEY,
    FAULTS_KEY,
    OWNED_LIST_KEY,
    SIEMENSID_KEY,
)
from services.sandbox.owned_list import IDS, SHAPES
from services.sandbox.seed import Medium, medium_key, tariff_group
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
        issuer.scope = issuer.default_scope
    request.app[OWNED_LIST_KEY].reset()
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
        ("body_bytes", (int,), lambda v: 0 <= v <= 256 * 1024 * 1024),
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


async def token_scope(request: web.Request) -> web.Response:
    """``PUT /_control/token-scope {"issuer", "scope"}``: the scope claim of tokens issued
    from now on (a space-separated string; null: no scope claim). E.g. SiemensID tokens
    without ``application.bp_portal.data_viewer``, which the docs require."""
    body = await json_object(request) or {}
    issuer = _issuer(request.app, body.get("issuer"))
    if issuer is None:
        return _bad("issuer must be siemensid or cognito")
    if "scope" not in body or not (body["scope"] is None or isinstance(body["scope"], str)):
        return _bad("scope must be a string of space-separated scopes, or null")
    issuer.scope = body["scope"]
    return json_response({"issuer": issuer.name, "scope": issuer.scope})


async def owned_list_shape(request: web.Request) -> web.Response:
    """``PUT /_control/owned-list {"shape", "ids", "page_size"}`` (each optional): how the
    owned-passports list answers from now on (see ``owned_list``); reset restores it."""
    body = await json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    current = request.app[OWNED_LIST_KEY]
    shape, ids, size = (body.get("shape", current.shape), body.get("ids", current.ids),
                        body.get("page_size", current.page_size))
    if shape not in SHAPES:
        return _bad(f"shape must be one of {', '.join(SHAPES)}")
    if ids not in IDS:
        return _bad(f"ids must be one of {', '.join(IDS)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        return _bad("page_size must be a positive integer")
    current.shape, current.ids, current.page_size = shape, ids, size
    return json_response({"shape": shape, "ids": ids, "page_size": size})


async def put_passport(request: web.Request) -> web.Response:
    body = await json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    return json_response(request.app[DATA_KEY].put_passport(request.match_info["id"], body))


async def delete_passport(request: web.Request) -> web.Response:
    if request.app[DATA_KEY].passports.pop(request.match_info["id"], None) is None:
        return _bad("no such passport", 404)
    return web.Response(status=204)


# A tariff change may name the one medium it is for, in the Pricing API's spelling
# (``authenticationUuid`` is taken too); without one it is for every medium.
_MEDIUM_PARAMS = {"tag_id": "tag_id", "emaid": "emaid", "authendicationUuid": "authendicationUuid",
                  "authenticationUuid": "authendicationUuid"}


def _control_medium(request: web.Request) -> tuple[bool, Medium | None]:
    """(ok, medium): at most one medium in the query string."""
    given = [(name, v) for name, v in request.query.items() if name in _MEDIUM_PARAMS and v]
    if len(given) > 1:
        return False, None
    if not given:
        return True, None
    name, value = given[0]
    return True, medium_key(_MEDIUM_PARAMS[name], value)


async def put_tariff(request: web.Request) -> web.Response:
    """``PUT /_control/tariffs/{evse}[?tag_id=|emaid=|authendicationUuid=]``: merge the
    body's tariff fields into what that medium is charged there, or (no medium) into
    every medium's tariff there. Answers the changed tariff (no medium: the standard
    group's, the one the docs' sample tags and the dev stack's demo tag see)."""
    data = request.app[DATA_KEY]
    key = canonical_evse_id(request.match_info["evse_id"])
    if key is None or key not in data.evses:
        return _bad("no such EVSE", 404)
    ok, medium = _control_medium(request)
    if not ok:
        return _bad("give at most one of tag_id, emaid, authendicationUuid")
    body = await json_object(request)
    if body is None:
        return _bad("body must be a JSON object")
    fields = normalize_tariff_fields(body)
    evse = data.evses[key]
    touched = ([evse.tariff_for(medium)] if medium is not None
               else [*evse.groups.values(), *evse.media.values()])
    for tariff in touched:
        if problem := validate_tariff({**tariff, **fields}):
            return _bad(problem)
    return json_response(data.put_tariff(key, fields, medium))


async def get_tariff(request: web.Request) -> web.Response:
    """``GET /_control/tariffs/{evse}?tag_id=|emaid=|authendicationUuid=``: what that
    medium is charged there, and its tariff group (tests pick media by group)."""
    data = request.app[DATA_KEY]
    key = canonical_evse_id(request.match_info["evse_id"])
    if key is None or key not in data.evses:
        return _bad("no such EVSE", 404)
    ok, medium = _control_medium(request)
    if not ok or medium is None:
        return _bad("give exactly one of tag_id, emaid, authendicationUuid")
    return json_response({"group": tariff_group(medium), "own": medium in data.evses[key].media,
                          "tariff": data.evses[key].tariff_for(medium)})


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
        "owned_list": vars(app[OWNED_LIST_KEY]),
        "stations": len(data.stations),
        "evses": len(data.evses),
        "tokens": {i.name: {"live": i.live(), "issued": i.issued, "expires_in": i.expires_in,
                            "scope": i.scope}
                   for i in (app[SIEMENSID_KEY], app[COGNITO_KEY])},
    })
