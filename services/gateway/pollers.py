"""Pollers (DESIGN.md §8, issue 3): find changes nobody read or wrote through the gateway.

* ``PassportPoller``: the owned-passports list, then each public document.
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
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import structlog

from services.common.settings import Settings, TariffContext
from services.gateway.changes import (
    ChangeDetector,
    ChangeKind,
    Detection,
    Observation,
    evse_key,
    tariff_of,
)
from services.gateway.errors import UpstreamError
from services.gateway.upstream import UpstreamClient
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


async def run_forever(poller: Poller, interval_s: float) -> None:
    """Poll every ``interval_s`` (±20 % jitter, so replicas drift apart); never crash."""
    if interval_s <= 0:
        return
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


class _Runner:
    name = "poller"

    async def poll_once(self) -> PollResult:  # pragma: no cover — overridden
        raise NotImplementedError

    async def run_forever(self, interval_s: float) -> None:
        await run_forever(self, interval_s)


def owned_ids(doc: Any) -> list[str]:
    """Ids in the owned-passports answer: a JSON array, or an object with it under
    ``data``; each item's ``id``, else ``general_information.identification.uid``."""
    items = doc.get("data") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise _Pass("owned list is neither an array nor an object with a data array")
    ids: list[str] = []
    for item in items:
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


class PassportPoller(_Runner):
    name = "passports"

    def __init__(self, client: UpstreamClient, settings: Settings, detector: ChangeDetector,
                 *, concurrency: int = 8) -> None:
        assert settings.passport is not None
        self._client = client
        self._paths = settings.passport.paths
        self._detector = detector
        self._concurrency = concurrency

    async def poll_once(self) -> PollResult:
        detector = self._detector
        first = not detector.pass_completed(PASSPORT_SCOPE)
        try:
            resp = await self._client.request("owned_list", "GET", self._paths.owned_list)
            ids = owned_ids(resp.json())
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
            vanished = detector.members(PASSPORT_SCOPE) - set(ids)
            changed += detector.passports([Observation(pid, None) for pid in sorted(vanished)],
                                          Detection.POLL)
            detector.complete_pass(PASSPORT_SCOPE, ids)
        else:
            detector.add_members(PASSPORT_SCOPE, (o.key for o in observations))
        return PollResult(len(observations), changed, complete)


class PricePoller(_Runner):
    name = "prices"

    def __init__(self, client: UpstreamClient, settings: Settings,
                 detector: ChangeDetector) -> None:
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
        change = None if not detector.pass_completed(scope) else ChangeKind.CREATED
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
            vanished = detector.members(scope) - seen
            changed += detector.tariffs(context.name,
                                        [Observation(e, None) for e in sorted(vanished)],
                                        Detection.POLL)
            detector.complete_pass(scope, seen)
        else:
            detector.add_members(scope, seen)
        return PollResult(len(seen), changed, complete)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UpstreamError):  # its detail names the upstream and status, no URL
        return f"{type(exc).__name__}: {exc.detail}"
    if isinstance(exc, _Pass):
        return str(exc)
    return type(exc).__name__
