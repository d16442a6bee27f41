"""Battery passports: public (cached), owned (cached), and writes (evict + announce)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from services.common.events import ChangeKind, Detection
from services.common.ids import checked_path_id, path_id
from services.gateway.changes import passport_digest
from services.gateway.errors import UpstreamBadBody
from services.gateway.eviction import OWNED_LIST_TAG, passport_tag
from services.gateway.handlers.respond import cached_get, fetcher, passthrough, trace, upstreams
from services.gateway.keys import CACHE_KEY, DETECTOR_KEY, SETTINGS_KEY
from services.gateway.upstream_client import UpstreamResponse
from services.gateway.validation import Passport, read_json_body


def _paths(request: web.Request):
    return request.app[SETTINGS_KEY].passport.paths


def _detect(request: web.Request, passport_id: str, doc: Any, how: Detection,
            change: ChangeKind | None = None, *,
            later: Callable[[Callable[[], None]], None] | None = None) -> None:
    detector = request.app.get(DETECTOR_KEY)
    if detector is None:
        return
    detector.passport(passport_id, doc, how, change, later=later)


async def _written(request: web.Request) -> None:
    """A write answers once its event is committed to the outbox (DESIGN.md §7)."""
    detector = request.app.get(DETECTOR_KEY)
    if detector is not None:
        await detector.settled()


# Cache keys from the path's parameters (``request.match_info``, or the hit path's own
# match): a bad id raises Problem (400).
def public_key(params: Mapping[str, str]) -> tuple[str, ...]:
    return ("passport", "public", checked_path_id(params["passport_id"], "passport_id"))


def owned_list_key(params: Mapping[str, str]) -> tuple[str, ...]:
    return ("passport", "owned_list")


def owned_key(params: Mapping[str, str]) -> tuple[str, ...]:
    return ("passport", "owned", checked_path_id(params["passport_id"], "passport_id"))


async def get_public(request: web.Request, query: Any) -> web.StreamResponse:
    key = public_key(request.match_info)
    pid = key[2]

    client = upstreams(request).passport
    cache = request.app[CACHE_KEY]

    def inspect(resp: UpstreamResponse) -> str:
        if not isinstance(resp.data, dict):
            raise UpstreamBadBody(client.name, "a passport that is not a JSON object", resp.status)
        if resp.status != 200:
            return ""
        # a new version evicts the owned views too; this fill stores the new one, with
        # its digest: the event announcing it (back from Kafka) leaves it in place. A
        # first sighting (nothing to await) is recorded once the fill's waiters are answered.
        _detect(request, pid, resp.data, Detection.READ, later=cache.after_answers)
        return passport_digest(resp.data)

    fetch = fetcher(request, client, "public_get", _paths(request).public.format(id=pid),
                    inspect=inspect)
    return await cached_get(request, "passport_public", key, fetch, tags=[passport_tag(pid)])


async def list_owned(request: web.Request, query: Any) -> web.StreamResponse:
    fetch = fetcher(request, upstreams(request).passport, "owned_list", _paths(request).owned_list)
    return await cached_get(request, "passport_owned_list", owned_list_key(request.match_info), fetch,
                            tags=[OWNED_LIST_TAG])


async def get_owned(request: web.Request, query: Any) -> web.StreamResponse:
    key = owned_key(request.match_info)
    pid = key[2]
    fetch = fetcher(request, upstreams(request).passport, "owned_get",
                    _paths(request).owned_item.format(id=pid))
    return await cached_get(request, "passport_owned", key, fetch, tags=[passport_tag(pid)])


def passport_id_of(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("id"), str):
        return doc["id"]
    uid = (((doc.get("general_information") or {}).get("identification") or {}).get("uid"))
    return uid if isinstance(uid, str) else None


def _evict(request: web.Request, passport_id: str | None) -> None:
    cache = request.app[CACHE_KEY]
    cache.invalidate_tag(OWNED_LIST_TAG)
    if passport_id:
        cache.invalidate_tag(passport_tag(passport_id))


def _written_doc(answer: Any, sent: bytes) -> dict | None:
    """The document a write left: the upstream's answer (decoded by the client) if it is
    one, else what we sent (validated JSON)."""
    if isinstance(answer, dict):
        return answer
    try:
        doc = orjson.loads(sent) if sent else None
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


async def create(request: web.Request, query: Any) -> web.Response:
    body = await read_json_body(request, Passport)
    resp = await upstreams(request).passport.request(
        "create", "POST", _paths(request).owned_list, body=body, content_type="application/json",
        **trace(request))
    doc = _written_doc(resp.data, body)
    pid = passport_id_of(doc)
    if pid:
        _detect(request, pid, doc, Detection.WRITE, ChangeKind.CREATED)
    _evict(request, pid)
    await _written(request)
    return passthrough(resp)


async def update(request: web.Request, query: Any) -> web.Response:
    pid = path_id(request, "passport_id")
    body = await read_json_body(request, Passport)
    resp = await upstreams(request).passport.request(
        "update", "PUT", _paths(request).owned_item.format(id=pid), body=body,
        content_type="application/json", **trace(request))
    _detect(request, pid, _written_doc(resp.data, body), Detection.WRITE, ChangeKind.UPDATED)
    _evict(request, pid)
    await _written(request)
    return passthrough(resp)


async def delete(request: web.Request, query: Any) -> web.Response:
    pid = path_id(request, "passport_id")
    resp = await upstreams(request).passport.request(
        "delete", "DELETE", _paths(request).owned_item.format(id=pid), **trace(request))
    _detect(request, pid, None, Detection.WRITE, ChangeKind.DELETED)
    _evict(request, pid)
    await _written(request)
    return passthrough(resp)
