"""The two token endpoints: SiemensID (JSON body) and AWS Cognito (query/form/Basic)."""

from __future__ import annotations

import base64
import binascii
import hmac
from urllib.parse import parse_qs

from aiohttp import web

from services.sandbox._http import endpoint, json_object, json_response
from services.sandbox.keys import COGNITO_KEY, CONFIG_KEY, SIEMENSID_KEY


def _same(given: object, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())


def _lifetime(seconds: float) -> int | float:
    return int(seconds) if float(seconds).is_integer() else seconds


@endpoint("siemensid.token")
async def siemensid_token(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    if request.content_type != "application/json":
        return json_response({"error": "invalid_request",
                              "error_description": "content-type must be application/json"}, 400)
    body = await json_object(request)
    if body is None or body.get("grant_type") != "client_credentials":
        return json_response({"error": "invalid_request",
                              "error_description": "grant_type must be client_credentials"}, 400)
    if not (_same(body.get("client_id"), config.passport_client_id)
            and _same(body.get("client_secret"), config.passport_client_secret)):
        return json_response({"error": "invalid_client",
                              "error_description": "Unknown client or wrong secret"}, 401)
    if body.get("audience") != config.passport_audience:
        return json_response({"error": "access_denied",
                              "error_description": "Client is not authorized for this audience"}, 403)
    token, lifetime = request.app[SIEMENSID_KEY].issue(config.passport_client_id)
    return json_response(
        {"access_token": token, "token_type": "Bearer", "expires_in": _lifetime(lifetime)},
        headers={"Cache-Control": "no-store"},
    )


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


@endpoint("cognito.token")
async def cognito_token(request: web.Request) -> web.Response:
    config = request.app[CONFIG_KEY]
    if request.content_type != "application/x-www-form-urlencoded":
        return json_response({"error": "invalid_request"}, 400)
    form = {k: v[0] for k, v in parse_qs((await request.read()).decode(errors="replace")).items()}
    params = {**form, **request.query}  # the documented way: everything in the query string
    if params.get("grant_type") != "client_credentials":
        return json_response({"error": "unsupported_grant_type"}, 400)
    client_id, client_secret = params.get("client_id"), params.get("client_secret")
    if basic := _basic(request.headers.get("Authorization", "")):
        client_id, client_secret = basic
    if not (_same(client_id, config.cpo_client_id) and _same(client_secret, config.cpo_client_secret)):
        return json_response({"error": "invalid_client"}, 400)
    token, lifetime = request.app[COGNITO_KEY].issue(config.cpo_client_id)
    return json_response(
        {"access_token": token, "expires_in": _lifetime(lifetime), "token_type": "Bearer"}
    )
