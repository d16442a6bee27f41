"""User management, passed through to the Battery Passport API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from services.gateway.eviction import ME_TAG, evict_everywhere
from services.gateway.handlers.respond import cached_get, fetcher, passthrough, trace, upstreams
from services.gateway.keys import CACHE_KEY, OUTBOX_KEY, SETTINGS_KEY
from services.gateway.validation import NewUser, User, read_json_body


def me_key(params: Mapping[str, str]) -> tuple[str, ...]:
    return ("users", "me")


async def get_me(request: web.Request, query: Any) -> web.StreamResponse:
    fetch = fetcher(request, upstreams(request).passport, "users_me",
                    request.app[SETTINGS_KEY].passport.paths.users_me)
    return await cached_get(request, "users_me", me_key(request.match_info), fetch, tags=[ME_TAG])


async def update_me(request: web.Request, query: Any) -> web.StreamResponse:
    body = await read_json_body(request, User)
    resp = await upstreams(request).passport.request(
        "users_update", "PUT", request.app[SETTINGS_KEY].passport.paths.users_me, body=body,
        content_type="application/json", **trace(request))
    # No change event speaks for users: every replica is told through the internal topic.
    evict_everywhere(request.app[CACHE_KEY], request.app.get(OUTBOX_KEY), "users/me", [ME_TAG])
    return passthrough(resp)


async def create_user(request: web.Request, query: Any) -> web.Response:
    body = await read_json_body(request, NewUser)
    resp = await upstreams(request).passport.request(
        "users_create", "POST", request.app[SETTINGS_KEY].passport.paths.users, body=body,
        content_type="application/json", **trace(request))
    return passthrough(resp)
