"""Pricing: single, batch and all_paged, cached; tariffs seen on a fill feed change detection."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from services.common.events import Detection
from services.gateway.eviction import ALL_PRICES_TAG, price_context_tag, price_tag
from services.gateway.handlers.respond import cached_get, fetcher, upstreams
from services.gateway.keys import CONTEXTS_KEY, DETECTOR_KEY
from services.gateway.upstream_client import UpstreamResponse
from services.gateway.validation import PriceAllQuery, PriceBatchQuery, PriceQuery

log = structlog.get_logger("ampgate.gateway")


def _context(request: web.Request, medium: dict[str, str]) -> str | None:
    """Only media configured as a tariff context are tracked: events carry the context's
    name, never the raw tag id / EMAID / UUID."""
    ((param, value),) = medium.items()
    return request.app[CONTEXTS_KEY].get((param, value))


def _detect(request: web.Request, context: str | None, tariffs: dict[str, Any]) -> None:
    detector = request.app.get(DETECTOR_KEY)
    if detector is None or context is None:
        return
    from services.gateway.changes import tariff_of

    for evse_id, entry in tariffs.items():
        if isinstance(entry, dict):
            detector.tariff(evse_id, context, tariff_of(entry), Detection.READ)


async def _priced(request: web.Request, route: str, operation: str, path: str,
                  params: dict[str, str], evses: list[str] | None, medium: dict[str, str],
                  pick) -> web.StreamResponse:
    """``evses``: the EVSEs the answer names (None: unknown before the fill, all_paged)."""
    from services.gateway.changes import tariff_comparable

    client = upstreams(request).pricing
    named = _context(request, medium)
    # A currency or tax view of a tariff is not the tariff: compare only plain reads.
    context = named if tariff_comparable(params) else None
    if evses is None:
        tags: list = [ALL_PRICES_TAG]
    else:
        tags = [price_tag(e) for e in evses]
        if named is not None:
            tags += [price_context_tag(named, e) for e in evses]

    def inspect(resp: UpstreamResponse) -> None:
        if resp.status == 200 and context is not None:
            try:  # decoded (and checked to be JSON) by the client; the shape is ours to check
                _detect(request, context, pick(resp.data))
            except (AttributeError, TypeError):
                log.warning("pricing_unparsable", operation=operation)

    fetch = fetcher(request, client, operation, path, params, inspect=inspect)
    key = ("pricing", operation, tuple(sorted(params.items())))
    return await cached_get(request, route, key, fetch, tags=tags)


async def single(request: web.Request, query: PriceQuery) -> web.StreamResponse:
    params = query.upstream_params()
    return await _priced(request, "prices", "single", "/api/pricing/", params,
                         [query.evseId], query.medium_params(),
                         lambda doc: {query.evseId: doc})


async def batch(request: web.Request, query: PriceBatchQuery) -> web.StreamResponse:
    params = query.upstream_params()
    return await _priced(request, "prices_batch", "batch", "/api/pricing/batch", params,
                         list(query.evseIds), query.medium_params(),
                         lambda doc: doc)


async def all_paged(request: web.Request, query: PriceAllQuery) -> web.StreamResponse:
    params = query.upstream_params()
    # A page's content is unknown before the fill: tag it so any price change evicts it.
    return await _priced(request, "prices_all", "all_paged", "/api/pricing/all_paged", params,
                         None, query.medium_params(),
                         lambda doc: doc.get("data") or {})
