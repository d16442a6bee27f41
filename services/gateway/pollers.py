"""Pollers (DESIGN.md §8, issue 3): find changes nobody read or wrote through the gateway.

* ``PassportPoller``: the owned-passports list (every page of it, see ``OwnedPages``),
  then each public document.
* ``PricePoller``: for every configured tariff context, the whole pricing ``all_paged``
  walk (``cursor=start`` → ``pagination.nextCursorId`` until ``isLastPage``).

What a pass finds goes to the ChangeDetector with ``Detection.POLL``. The first complete
pass over a scope announces what is new as SNAPSHOT, later passes as CREATED. "Vanished"
means: found by the last complete pass (the scope's members), not by this one — and it
is announced as DELETED only when THIS pass is complete too. A pass cut off by an
upstream failure still announces the changes it did see (they are true observations;
holding them back would only delay them until the next complete pass), but never a
deletion: it cannot tell "gone" from "not reached".

``run_forever(interval_s)`` polls at a jittered interval, logs ``poll_failed`` on an
unexpected error and tries again next time; 0 means off.

Cluster mode (DESIGN.md §12): ``run_leased`` runs a poller only on the replica holding
the lease ``poller:<name>`` (a ``LeaseKeeper``, ttl ``AMPGATE_CLUSTER__LEASE_S``): the
holder polls; the moment it cannot renew (lost, timed out, Redis down) the poll is
cancelled — pollers pause while Redis is down — and whoever acquires it next starts a
pass at once. A dead holder's lease is taken within two lease periods; a stopping
replica releases it, so another takes over at once. Upstream poll load does not grow
with the replica count. What the last complete pass of ANY replica found is kept in
Redis too (``SharedMembers``), so a new holder announces a deletion that happened
around the takeover, and announces new entities as CREATED, not as a first snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import structlog
from yarl import URL

from services.common.settings import Settings, TariffContext
from services.gateway.changes import (
    ChangeDetector,
    ChangeKind,
    Detection,
    Observation,
    evse_key,
    tariff_of,
)
from services.gateway.cluster import ClusterUnavailable, Lease, LeaseKeeper
from services.gateway.errors import UpstreamError
from services.gateway.upstream_client import UpstreamClient
from services.gateway.validation import PASSPORT_ID_RE

log = structlog.get_logger(__name__)

PASSPORT_SCOPE = "passport:owned"
ALL_PAGED_PATH = "/api/pricing/all_paged"
MAX_PAGES = 100_000  # a cursor loop upstream must not keep us walking forever


def price_scope(context: str) -> str:
    return f"price:{context}"


@dataclass(frozen=True)
class PollResult:
    seen: int      # entities found by this pass
    changed: int   # events announced (changes + deletions)
    complete: bool  # every page / document was fetched

    def __add__(self, other: PollResult) -> PollResult:
        return PollResult(self.seen + other.seen, self.changed + other.changed,
                          self.complete and other.complete)


class _Pass(Exception):
    """This pass cannot go on; the reason is safe to log (no ids, no URLs)."""


class Poller(Protocol):
    name: str

    async def poll_once(self) -> PollResult: ...


async def run_forever(poller: Poller, interval_s: float, *, first_now: bool = False) -> None:
    """Poll every ``interval_s`` (±20 % jitter, so replicas drift apart); never crash."""
    if interval_s <= 0:
        return
    if not first_now:
        # A first pass soon after start-up, but not every replica at the same instant.
        await asyncio.sleep(random.uniform(0, min(interval_s, 5.0)))
    while True:
        started = time.monotonic()
        try:
            result = await poller.poll_once()
            log.info("poll_done", poller=poller.name, seen=result.seen, changed=result.changed,
                     complete=result.complete,
                     duration_s=round(time.monotonic() - started, 3))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a poller must outlive any one failure
            log.exception("poll_failed", poller=poller.name, error=type(exc).__name__)
        await asyncio.sleep(interval_s * random.uniform(0.8, 1.2))


class SharedMembers:
    """The keys the cluster's last complete pass over a scope found (cluster mode): a Redis
    set per scope, replaced after each complete pass. Best effort: ``get`` answers None
    when unknown or unreachable, and the poller then uses its own members."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def get(self, scope: str) -> set[str] | None:
        key = self._store.key("members", scope)
        try:
            raw = await self._store.call("members.get", lambda: self._store.redis.smembers(key),
                                         timeout_s=2.0)
        except ClusterUnavailable:
            return None
        return {m.decode() for m in raw} if raw else None

    async def replace(self, scope: str, keys: set[str]) -> None:
        key = self._store.key("members", scope)

        async def run() -> Any:
            pipe = self._store.redis.pipeline(transaction=True)
            pipe.delete(key)
            if keys:
                pipe.sadd(key, *sorted(keys))
            else:  # "a complete pass found nothing" is knowledge too
                pipe.sadd(key, "")
            return await pipe.execute()

        with contextlib.suppress(ClusterUnavailable):
            await self._store.call("members.replace", run, timeout_s=2.0)


async def _known(detector: ChangeDetector, shared: SharedMembers | None,
                 scope: str) -> tuple[bool, set[str]]:
    """(has a complete pass ever been made, the members it found): this replica's, plus
    the cluster's in cluster mode."""
    completed, members = detector.pass_completed(scope), detector.members(scope)
    if shared is not None and (cluster := await shared.get(scope)) is not None:
        completed = True
        members |= cluster - {""}
    return completed, members


async def run_leased(poller: Poller, interval_s: float, cluster: Any, lease_s: float) -> None:
    """``run_forever`` under the poller's lease (see the module docstring). ``cluster`` is
    the app's ``Cluster`` bundle (store, replica id, metrics)."""
    keeper = LeaseKeeper(Lease(cluster.store, f"poller:{poller.name}", cluster.replica_id,
                               ttl_s=lease_s), on_change=cluster.metrics.lease_state)
    cluster.metrics.lease_state(keeper.lease.name, False)  # the series exists from the start
    try:
        await keeper.run(lambda: run_forever(poller, interval_s, first_now=True))
    finally:
        await keeper.stop()  # releases the lease: another replica takes over at once


class _Runner:
    name = "poller"

    async def poll_once(self) -> PollResult:  # pragma: no cover — overridden
        raise NotImplementedError

    async def run_forever(self, interval_s: float) -> None:
        await run_forever(self, interval_s)


def _owned_items(doc: Any) -> list[Any]:
    items = doc.get("data") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise _Pass("owned list is neither an array nor an object with a data array")
    return items


def owned_ids(doc: Any) -> list[str]:
    """Ids in one owned-passports answer: a JSON array, or an object with it under
    ``data``; each item's ``id``, else ``general_information.identification.uid``."""
    ids: list[str] = []
    for item in _owned_items(doc):
        if not isinstance(item, Mapping):
            continue
        pid = item.get("id")
        if pid is None:
            ident = (item.get("general_information") or {}).get("identification") or {}
            pid = ident.get("uid") if isinstance(ident, Mapping) else None
        if pid is None:
            continue
        pid = str(pid)
        if not PASSPORT_ID_RE.fullmatch(pid):  # it goes into an upstream path
            log.warning("poll_passport_id_rejected", length=len(pid))
            continue
        if pid not in ids:
            ids.append(pid)
    return ids


# Paging metadata as vendors spell it, looked up in the answer, its ``meta``, its
# ``pagination`` and ``meta.pagination``.
_TOTAL_KEYS = ("total", "total_count", "totalCount", "total_items", "totalItems", "count")
_PAGE_KEYS = ("page", "current_page", "currentPage", "page_number", "pageNumber")
_PAGES_KEYS = ("total_pages", "totalPages", "last_page", "lastPage", "page_count", "pageCount")
_LAST_KEYS = ("isLastPage", "is_last_page", "lastPage", "last")
_MORE_KEYS = ("hasMore", "has_more", "hasNext", "has_next")


def _paging_blocks(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    blocks = [doc]
    for name in ("meta", "pagination", "paging", "page_info"):
        if isinstance(block := doc.get(name), Mapping):
            blocks.append(block)
            if isinstance(inner := block.get("pagination"), Mapping):
                blocks.append(inner)
    return blocks


def _first_int(blocks: list[Mapping[str, Any]], keys: tuple[str, ...]) -> int | None:
    for block in blocks:
        for key in keys:
            value = block.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _next_link(doc: Any) -> str | None:
    """``links.next`` (a URL, or ``{"href": URL}``), or a top-level ``next`` URL."""
    if not isinstance(doc, Mapping):
        return None
    links = doc.get("links")
    candidates = [links.get("next") if isinstance(links, Mapping) else None, doc.get("next")]
    for link in candidates:
        if isinstance(link, Mapping):
            link = link.get("href")
        if isinstance(link, str) and link:
            return link
    return None


def _says_more(doc: Any, items_so_far: int) -> bool:
    """Does this answer's paging metadata say there is more than we have fetched?"""
    if not isinstance(doc, Mapping):
        return False
    blocks = _paging_blocks(doc)
    for block in blocks:
        for key in _LAST_KEYS:
            if block.get(key) is False:
                return True
        for key in _MORE_KEYS:
            if block.get(key) is True:
                return True
    page, pages = _first_int(blocks, _PAGE_KEYS), _first_int(blocks, _PAGES_KEYS)
    if page is not None and pages is not None and page < pages:
        return True
    total = _first_int(blocks, _TOTAL_KEYS)
    return total is not None and total > items_so_far


class OwnedPages:
    """The whole owned-passports list, page after page.

    Undocumented upstream (DESIGN.md §11): a JSON array is the whole list; so is an object
    with the array under ``data`` and no paging. An object that pages is followed by its
    ``links.next`` (or a top-level ``next``) until there is none. A walk is complete only
    if it could reach everything: an answer of another shape, a next link that leaves
    the upstream, a link that repeats, paging metadata that promises more than the walk
    found (a total, ``page < total_pages``, ``isLastPage: false``, ...) or a total that
    changes between pages (items shifted under the walk) all end it as INCOMPLETE, so
    the poller announces no deletion from it.
    """

    def __init__(self, client: UpstreamClient, path: str) -> None:
        self._client = client
        self._path = path

    async def ids(self) -> list[str]:
        """Every owned passport id; raises _Pass (incomplete), UpstreamError, JSON errors."""
        ids: dict[str, None] = {}
        path, params = self._path, None
        asked: set[str] = set()
        items = 0
        total: int | None = None
        for _ in range(MAX_PAGES):
            url = self._client.url(path).with_query(params)
            asked.add(str(url))
            resp = await self._client.request("owned_list", "GET", path, params=params)
            doc = resp.json()
            items += len(_owned_items(doc))
            ids.update(dict.fromkeys(owned_ids(doc)))
            if isinstance(doc, Mapping):
                page_total = _first_int(_paging_blocks(doc), _TOTAL_KEYS)
                if total is not None and page_total is not None and page_total != total:
                    raise _Pass("owned list changed while paging through it")
                total = page_total if page_total is not None else total
            link = _next_link(doc)
            if link is None:
                if _says_more(doc, items):
                    raise _Pass("owned list promises more pages than it links to")
                return list(ids)
            path, params = self._follow(url, link)
            if str(self._client.url(path).with_query(params)) in asked:
                raise _Pass("owned list next link repeats")
        raise _Pass("owned list did not end")

    def _follow(self, current: URL, link: str) -> tuple[str, list[tuple[str, str]]]:
        """The upstream path and query of a next link (absolute or relative). A link
        to another origin is taken only as the query of our own list path: our token
        goes to the configured upstream, nowhere else."""
        target = current.join(URL(link))
        base = URL(str(self._client.settings.base_url))
        prefix = base.path.rstrip("/")
        query = list(target.query.items())
        if target.origin() == base.origin() and target.path.startswith(prefix + "/"):
            return target.path[len(prefix):], query
        if target.path.rstrip("/").endswith(self._path.rstrip("/")):
            return self._path, query
        raise _Pass("owned list next link leaves the upstream")


class PassportPoller(_Runner):
    name = "passports"

    def __init__(self, client: UpstreamClient, settings: Settings, detector: ChangeDetector,
                 *, concurrency: int = 8, shared: SharedMembers | None = None) -> None:
        assert settings.passport is not None
        self._shared = shared
        self._client = client
        self._paths = settings.passport.paths
        self._owned = OwnedPages(client, self._paths.owned_list)
        self._detector = detector
        self._concurrency = concurrency

    async def poll_once(self) -> PollResult:
        detector = self._detector
        completed, members = await _known(detector, self._shared, PASSPORT_SCOPE)
        first = not completed
        try:
            ids = await self._owned.ids()
        except (UpstreamError, orjson.JSONDecodeError, _Pass) as exc:
            log.warning("poll_incomplete", poller=self.name, stage="owned_list",
                        error=_reason(exc))
            return PollResult(0, 0, False)

        semaphore = asyncio.Semaphore(self._concurrency)

        async def fetch(pid: str) -> Observation | None:
            async with semaphore:
                r = await self._client.request("public_get", "GET",
                                               self._paths.public.format(id=pid),
                                               accept_statuses=(404,))
            if r.status == 404:
                return None  # owned but not public (yet): nothing to announce, not a failure
            doc = r.json()
            if not isinstance(doc, dict):
                raise _Pass("public passport is not a JSON object")
            return Observation(pid, doc)

        results = await asyncio.gather(*(fetch(pid) for pid in ids), return_exceptions=True)
        observations: list[Observation] = []
        complete = True
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, (UpstreamError, orjson.JSONDecodeError, _Pass)):
                    raise result
                if complete:  # one line per pass, not per document
                    log.warning("poll_incomplete", poller=self.name, stage="public_get",
                                error=_reason(result))
                complete = False
            elif result is not None:
                observations.append(result)

        change = None if first else ChangeKind.CREATED
        changed = detector.passports(observations, Detection.POLL, change)
        if complete:
            vanished = members - set(ids)
            changed += detector.passports([Observation(pid, None) for pid in sorted(vanished)],
                                          Detection.POLL, vanished=True)
            detector.complete_pass(PASSPORT_SCOPE, ids)
            if self._shared is not None:
                await self._shared.replace(PASSPORT_SCOPE, set(ids))
        else:
            detector.add_members(PASSPORT_SCOPE, (o.key for o in observations))
        return PollResult(len(observations), changed, complete)


class PricePoller(_Runner):
    name = "prices"

    def __init__(self, client: UpstreamClient, settings: Settings,
                 detector: ChangeDetector, *, shared: SharedMembers | None = None) -> None:
        self._shared = shared
        self._client = client
        self._contexts = settings.tariff_contexts
        self._page_size = min(settings.poll.page_size, 500)  # the upstream's maximum
        self._detector = detector

    async def poll_once(self) -> PollResult:
        total = PollResult(0, 0, True)
        for context in self._contexts:  # one at a time: no burst on the pricing API
            total = total + await self._walk(context)
        return total

    async def _walk(self, context: TariffContext) -> PollResult:
        detector = self._detector
        scope = price_scope(context.name)
        completed, members = await _known(detector, self._shared, scope)
        change = None if not completed else ChangeKind.CREATED
        medium = context.upstream_params()  # secret: never logged
        seen: set[str] = set()
        changed = 0
        cursor = "start"
        cursors = {cursor}
        complete = False
        try:
            for _ in range(MAX_PAGES):
                resp = await self._client.request(
                    "all_paged", "GET", ALL_PAGED_PATH,
                    params={"cursor": cursor, "limit": str(self._page_size), **medium})
                doc = resp.json()
                if not isinstance(doc, Mapping):
                    raise _Pass("all_paged answer is not a JSON object")
                data = doc.get("data") or {}
                if not isinstance(data, Mapping):
                    raise _Pass("all_paged data is not an object")
                page = [Observation(evse_key(str(evse)), tariff_of(entry)) for evse, entry in data.items()
                        if isinstance(entry, Mapping)]
                changed += detector.tariffs(context.name, page, Detection.POLL, change)
                seen.update(o.key for o in page)
                pagination = doc.get("pagination") or {}
                if pagination.get("isLastPage") is True:
                    complete = True
                    break
                cursor = pagination.get("nextCursorId")
                if not cursor or not isinstance(cursor, str):
                    raise _Pass("all_paged page without nextCursorId before the last page")
                if cursor in cursors:
                    raise _Pass("all_paged cursor repeats")
                cursors.add(cursor)
            else:
                raise _Pass("all_paged did not end")
        except (UpstreamError, orjson.JSONDecodeError, _Pass) as exc:
            log.warning("poll_incomplete", poller=self.name, context=context.name,
                        pages_seen=len(cursors), error=_reason(exc))

        if complete:
            vanished = members - seen
            changed += detector.tariffs(context.name,
                                        [Observation(e, None) for e in sorted(vanished)],
                                        Detection.POLL, vanished=True)
            detector.complete_pass(scope, seen)
            if self._shared is not None:
                await self._shared.replace(scope, seen)
        else:
            detector.add_members(scope, seen)
        return PollResult(len(seen), changed, complete)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):  # its detail names the upstream and status, no URL
        return f"{type(exc).__name__}: {exc.detail}"
    if isinstance(exc, _Pass):
        return str(exc)
    return type(exc).__name__
