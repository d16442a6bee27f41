"""Battery Passport API: public passports, owned passports, user management.

Owned and user calls need a live SiemensID token; a public passport needs none,
but a token that is sent must be valid (DESIGN.md §11).

A public passport is the document of the getting-started guide: no top-level ``id``
(it is identified by ``general_information.identification.uid``). Owned views carry
the top-level ``id`` as well; the owned list's shape is set by ``owned_list``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.sandbox._http import endpoint, json_object, json_response
from services.sandbox.keys import DATA_KEY, OWNED_LIST_KEY, SIEMENSID_KEY
from services.sandbox.owned_list import BadPage, render
from services.sandbox.tokens import bearer

_UNAUTHORIZED = {"error": "unauthorized", "message": "Missing, invalid or expired access token"}


def _authorized(request: web.Request, *, required: bool) -> bool:
    header = request.headers.get("Authorization")
    if header is None:
        return not required
    token = bearer(header)
    return token is not None and request.app[SIEMENSID_KEY].valid(token)


def _unauthorized() -> web.Response:
    return json_response(_UNAUTHORIZED, 401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def _not_found(what: str, ident: str) -> web.Response:
    return json_response({"error": "not_found", "message": f"{what} {ident} not found"}, 404)


def _bad_body() -> web.Response:
    return json_response({"error": "invalid_request", "message": "body must be a JSON object"}, 400)


@endpoint("passport.public")
async def public_passport(request: web.Request) -> web.Response:
    if not _authorized(request, required=False):
        return _unauthorized()
    pid = request.match_info["id"]
    doc = request.app[DATA_KEY].passports.get(pid)
    if doc is None:
        return _not_found("passport", pid)
    return json_response({k: v for k, v in doc.items() if k != "id"})


@endpoint("passport.owned_list")
async def owned_list(request: web.Request) -> web.Response:
    if not _authorized(request, required=True):
        return _unauthorized()
    docs = list(request.app[DATA_KEY].passports.values())
    try:
        return json_response(render(request, docs, request.app[OWNED_LIST_KEY]))
    except BadPage as exc:
        return json_response({"error": "invalid_request", "message": str(exc)}, 400)


@endpoint("passport.owned_get")
async def owned_get(request: web.Request) -> web.Response:
    if not _authorized(request, required=True):
        return _unauthorized()
    pid = request.match_info["id"]
    doc = request.app[DATA_KEY].passports.get(pid)
    return json_response(doc) if doc is not None else _not_found("passport", pid)


@endpoint("passport.create")
async def create(request: web.Request) -> web.Response:
    if not _authorized(request, required=True):
        return _unauthorized()
    body = await json_object(request)
    if body is None:
        return _bad_body()
    data = request.app[DATA_KEY]
    pid = body.get("id")
    if pid is None:
        pid = data.new_passport_id()
    elif not isinstance(pid, str) or not pid:
        return json_response({"error": "invalid_request", "message": "id must be a string"}, 400)
    elif pid in data.passports:
        return json_response({"error": "conflict", "message": f"passport {pid} exists"}, 409)
    return json_response(data.put_passport(pid, body), 201)


@endpoint("passport.update")
async def update(request: web.Request) -> web.Response:
    if not _authorized(request, required=True):
        return _unauthorized()
    pid = request.match_info["id"]
    data = request.app[DATA_KEY]
    if pid not in data.passports:
        return _not_found("passport", pid)
    body = await json_object(request)
    if body is None:
        return _bad_body()
    return json_response(data.put_passport(pid, body))


@endpoint("passport.delete")
async def delete(request: web.Request) -> web.Response:
    if not _authorized(request, required=True):
        return _unauthorized()
    pid = request.match_info["id"]
    if request.app[DATA_KEY].passports.pop(pid, None) is None:
        return _not_found("passport", pid)
    return web.Response(status=204)


@endpoint("users.me")
async def users_me(request: web.Request) -> web.Response:
    if not _authorized(request, required=True):
        return _unauthorized()
    return json_response(request.app[DATA_KEY].user)


@endpoint("users.update")
async def users_update(request: web.Request) -> web.Response:
    if not _authorized(request, required=True):
        return _unauthorized()
    body = await json_object(request)
    if body is None:
        return _bad_body()
    data = request.app[DATA_KEY]
    data.user.update({k: v for k, v in body.items() if k != "id"})
    return json_response(data.user)


@endpoint("users.create")
async def users_create(request: web.Request) -> web.Response:
    if not _authorized(request, required=True):
        return _unauthorized()
    body = await json_object(request)
    if body is None:
        return _bad_body()
    if not isinstance(body.get("email"), str) or "@" not in body["email"]:
        return json_response({"error": "invalid_request", "message": "email is required"}, 400)
    data = request.app[DATA_KEY]
    if any(u.get("email") == body["email"] for u in data.users.values()):
        return json_response({"error": "conflict", "message": "a user with this email exists"}, 409)
    user: dict[str, Any] = {"id": data.new_user_id(), **{k: v for k, v in body.items() if k != "id"}}
    data.users[user["id"]] = user
    return json_response(user, 201)
