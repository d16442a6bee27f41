"""User management, passed through to the Battery Passport API."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.gateway.cache import make_response
from services.gateway.handlers.respond import cached_get, passthrough, trace, upstreams
from services.gateway.keys import CACHE_KEY, SETTINGS_KEY
from services.gateway.validation import NewUser, User, read_json_body

ME_TAG = ("users", "me")


async def get_me(request: web.Request, query: Any) -> web.Response:
    client = upstreams(request).passport
    path = request.app[SETTINGS_KEY].passport.paths.users_me
    ids = trace(request)

    async def fetch():
        resp = await client.request("users_me", "GET", path, **ids)
        return make_response(resp.status, resp.body, resp.content_type or "application/json")

    return await cached_get(request, "users_me", ("users", "me"), fetch, tags=[ME_TAG])


async def update_me(request: web.Request, query: Any) -> web.Response:
    body = await read_json_body(request, User)
    resp = await upstreams(request).passport.request(
        "users_update", "PUT", request.app[SETTINGS_KEY].passport.paths.users_me, body=body,
        content_type="application/json", **trace(request))
    request.app[CACHE_KEY].invalidate_tag(ME_TAG)
    return passthrough(resp)


async def create_user(request: web.Request, query: Any) -> web.Response:
    body = await read_json_body(request, NewUser)
    resp = await upstreams(request).passport.request(
        "users_create", "POST", request.app[SETTINGS_KEY].passport.paths.users, body=body,
        content_type="application/json", **trace(request))
    return passthrough(resp)
