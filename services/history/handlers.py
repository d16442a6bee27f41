"""The history API (DESIGN.md §11): version list, the version in force at an instant, and
an RFC 6902 diff between two versions. The gateway proxies these paths as they are."""

from __future__ import annotations

from typing import Any

import jsonpatch
import orjson
from aiohttp import web

from services.common.errors import Problem
from services.common.events import PASSPORT, PRICE
from services.common.ids import evse_path_id, path_id
from services.common.query import HistoryQuery, PriceHistoryQuery, parse_query
from services.common.timestamps import rfc3339
from services.history.keys import AUTH_KEY, STORE_KEY
from services.history.versions import EntityKey, Version

JSON_PATCH = "application/json-patch+json"
# The gateway's scope for these routes: nobody reads history around the gateway's auth.
SCOPE = "history:read"


def _json(body: Any, status: int = 200, content_type: str = "application/json") -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=content_type)


async def passport_history(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].authorize(request, SCOPE)  # before anything else, as at the gateway
    pid = path_id(request, "passport_id")
    query = parse_query(HistoryQuery, request.query)
    key = EntityKey(PASSPORT, pid)
    return await _answer(request, key, query, {"passport_id": pid}, "passport")


async def price_history(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].authorize(request, SCOPE)
    eid = evse_path_id(request)
    query = parse_query(PriceHistoryQuery, request.query)
    assert isinstance(query, PriceHistoryQuery)
    key = EntityKey(PRICE, eid, query.context)
    return await _answer(request, key, query, {"evse_id": eid, "tariff_context": query.context},
                         "tariff")


async def _answer(request: web.Request, key: EntityKey, query: HistoryQuery,
                  ident: dict[str, str], document_field: str) -> web.Response:
    store = request.app[STORE_KEY]
    what = f"{key.entity} {key.entity_id}" + (f" (context {key.context})" if key.context else "")
    if (at := query.instant) is not None:
        version = await store.version_at(key, at)
        if version is None:
            raise Problem(404, "Not found", f"no version of {what} was observed by "
                          f"{rfc3339(at)}")
        if version.deleted:
            raise Problem(404, "Not found", f"{what} was deleted at "
                          f"{rfc3339(version.observed_at)}: no version in force")
        return _json({**ident, **version.summary(), document_field: _document(version)})
    if query.from_ is not None and query.to is not None:
        old = await _by_digest(store, key, query.from_, "from", what)
        new = await _by_digest(store, key, query.to, "to", what)
        patch = jsonpatch.make_patch(_document(old), _document(new))
        return _json(patch.patch, content_type=JSON_PATCH)
    versions = await store.versions(key)
    if not versions:
        raise Problem(404, "Not found", f"no history for {what}")
    return _json({**ident, "versions": [v.summary() for v in versions]})


async def _by_digest(store: Any, key: EntityKey, digest: str, parameter: str,
                     what: str) -> Version:
    version = await store.version_by_digest(key, digest)
    if version is None or version.document is None:
        raise Problem(404, "Not found", f"{parameter}: no version of {what} has digest {digest}",
                      errors=[{"parameter": parameter, "message": "unknown digest"}])
    return version


def _document(version: Version) -> Any:
    return orjson.loads(version.document) if version.document is not None else None
