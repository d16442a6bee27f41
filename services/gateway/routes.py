"""The route table: one source for registration, scopes, validation and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from services.common.query import HistoryQuery, PriceHistoryQuery, Query, parse_query
from services.common.settings import CachePolicy
from services.gateway import schemas
from services.gateway.handlers import admin, history, passports, prices, stations, users
from services.gateway.hot_path import HitRoute, HitRoutes
from services.gateway.keys import AUTH_KEY
from services.gateway.validation import (
    EVSE_ID_SCHEMA,
    PASSPORT_ID_SCHEMA,
    NewUser,
    NoQuery,
    Passport,
    PriceAllQuery,
    PriceBatchQuery,
    PriceQuery,
    StationsQuery,
    User,
)

Handler = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]

PASSPORT_ID = ("passport_id", "battery passport id: letters, digits, `._:~-`, at most 128",
               PASSPORT_ID_SCHEMA, "BP-0001")
EVSE_ID = ("evse_id", "eMI3 EVSE id, e.g. DE*EEE*E000001", EVSE_ID_SCHEMA, "DE*EEE*E000001")


@dataclass(frozen=True)
class Route:
    name: str
    method: str
    path: str
    handler: Handler
    scope: str
    summary: str
    tag: str
    query: type[Query] = NoQuery
    body: type[BaseModel] | None = None
    path_params: tuple[tuple[str, str, dict[str, Any], str], ...] = ()
    cached: bool = False
    success: int = 200
    upstream: str | None = None
    extra_statuses: tuple[int, ...] = field(default=())
    # The success answer's body (None: no body), and other media types it may come in.
    response: type[BaseModel] | None = None
    media: tuple[tuple[str, type[BaseModel]], ...] = ()
    # Keys into vendor_examples.json: the vendor docs' samples of the success answer.
    examples: tuple[str, ...] = ()
    # A cached GET whose key depends on the path alone: the key from the path's parameters
    # (raises Problem for a bad path id). Its fresh hits take the fused path (hot_path.py).
    hit_key: Callable[[Mapping[str, str]], Hashable] | None = None


ROUTES: tuple[Route, ...] = (
    Route("passport_public", "GET", "/v1/passports/{passport_id}", passports.get_public,
          "passports:read", "Public battery passport", "passports", path_params=(PASSPORT_ID,),
          cached=True, upstream="passport", extra_statuses=(404,),
          response=schemas.PassportDocument, examples=("passport",), hit_key=passports.public_key),
    Route("passport_owned_list", "GET", "/v1/passports", passports.list_owned, "passports:read",
          "Passports owned by our upstream identity", "passports", cached=True, upstream="passport",
          response=schemas.OwnedPassports, hit_key=passports.owned_list_key),
    Route("passport_owned", "GET", "/v1/passports/{passport_id}/owned", passports.get_owned,
          "passports:read", "An owned passport", "passports", path_params=(PASSPORT_ID,),
          cached=True, upstream="passport", extra_statuses=(404,),
          response=schemas.PassportDocument, examples=("passport",), hit_key=passports.owned_key),
    Route("passport_create", "POST", "/v1/passports", passports.create, "passports:write",
          "Create a passport (announced as CHANGE_KIND_CREATED)", "passports", body=Passport,
          success=201, upstream="passport", extra_statuses=(409,),
          response=schemas.PassportDocument),
    Route("passport_update", "PUT", "/v1/passports/{passport_id}", passports.update,
          "passports:write", "Update an owned passport (evicts the cache, announces the change)",
          "passports", body=Passport, path_params=(PASSPORT_ID,), upstream="passport",
          extra_statuses=(404,), response=schemas.PassportDocument),
    Route("passport_delete", "DELETE", "/v1/passports/{passport_id}", passports.delete,
          "passports:write", "Delete an owned passport", "passports", path_params=(PASSPORT_ID,),
          success=204, upstream="passport", extra_statuses=(404,)),
    Route("users_me", "GET", "/v1/users/me", users.get_me, "users:read",
          "The upstream user ampgate acts as", "users", cached=True, upstream="passport",
          response=schemas.UserDocument, hit_key=users.me_key),
    Route("users_update", "PUT", "/v1/users/me", users.update_me, "users:write",
          "Update the upstream user", "users", body=User, upstream="passport",
          response=schemas.UserDocument),
    Route("users_create", "POST", "/v1/users", users.create_user, "users:write",
          "Create an upstream user", "users", body=NewUser, success=201, upstream="passport",
          extra_statuses=(409,), response=schemas.UserDocument),
    Route("charging_stations", "GET", "/v1/charging-stations", stations.list_stations,
          "stations:read", "Charging stations (JSON:API; links point at this gateway)", "stations",
          query=StationsQuery, cached=True, upstream="cpo", response=schemas.StationsPage,
          examples=("stations",)),
    Route("prices", "GET", "/v1/prices", prices.single, "prices:read",
          "Price of one EVSE for one authentication medium", "prices", query=PriceQuery,
          cached=True, upstream="pricing", extra_statuses=(404,), response=schemas.Price,
          examples=("price", "price_currency", "price_tax")),
    Route("prices_batch", "GET", "/v1/prices/batch", prices.batch, "prices:read",
          "Prices of several EVSEs, keyed by EVSE id", "prices", query=PriceBatchQuery,
          cached=True, upstream="pricing", extra_statuses=(404,), response=schemas.PriceBatch,
          examples=("price_batch",)),
    Route("prices_all", "GET", "/v1/prices/all", prices.all_paged, "prices:read",
          "Every EVSE's tariff, cursor-paged", "prices", query=PriceAllQuery, cached=True,
          upstream="pricing", response=schemas.PricePage, examples=("price_page",)),
    Route("passport_history", "GET", "/v1/passports/{passport_id}/history",
          history.passport_history, "history:read",
          "Versions of a passport; `at` = version in force; `from`/`to` = RFC 6902 patch",
          "history", query=HistoryQuery, path_params=(PASSPORT_ID,), upstream="history",
          extra_statuses=(404,), response=schemas.PassportHistory,
          media=(("application/json-patch+json", schemas.JsonPatch),)),
    Route("price_history", "GET", "/v1/prices/{evse_id}/history", history.price_history,
          "history:read", "Versions of an EVSE's tariff in one tariff context", "history",
          query=PriceHistoryQuery, path_params=(EVSE_ID,), upstream="history",
          extra_statuses=(404,), response=schemas.PriceHistory,
          media=(("application/json-patch+json", schemas.JsonPatch),)),
    Route("cache_purge", "POST", "/admin/cache/purge", admin.purge_cache, "admin",
          "Drop every cached response", "admin", response=schemas.Purged),
)


def _endpoint(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    no_query = route.query is NoQuery
    empty = NoQuery()

    async def endpoint(request: web.Request) -> web.StreamResponse:
        request.app[AUTH_KEY].authorize(request, route.scope)  # before the cache, always
        if no_query and not request.query_string:
            query = empty
        else:
            query = parse_query(route.query, request.query)
        return await route.handler(request, query)

    endpoint.__name__ = route.name
    return endpoint


def hit_routes(policies: Mapping[str, CachePolicy]) -> HitRoutes:
    """What the fused hit path may answer: the routes with a ``hit_key`` whose policy
    caches at all (TTL > 0)."""
    return HitRoutes(HitRoute(r.name, r.path, r.scope, r.hit_key) for r in ROUTES
                     if r.hit_key is not None and policies[r.name].ttl_s > 0)


def register(app: web.Application) -> None:
    # Static paths before templated ones: /v1/prices/batch must not match /v1/prices/{evse_id}/...
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _endpoint(route), name=route.name)
