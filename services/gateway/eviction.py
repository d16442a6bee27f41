"""What a change evicts, here and on every other replica (DESIGN.md §5).

One policy for every path that finds a new version — a write, a read whose answer
differs from what was seen last, a poll, an event from another replica — so that the
next request on any replica answers the new version:

* the detector (services.gateway.changes) calls ``evict_change`` the moment it announces
  a change, on the replica that found it, whatever found it;
* every replica's invalidation consumer calls ``evict_event`` for each change event on
  the topics, except the events this replica announced itself: those were evicted for
  when announced (``EvictedHere`` remembers their ids), and evicting again when they come
  back would throw out the very answer that showed the change — every first read would
  cost a second upstream call. Anything not remembered (another replica's event, a
  restart, an event the claimer re-announced under a new id) evicts;
* what has no change event of its own (a user update) goes through
  ``evict_everywhere``: evicted here, and announced on the gateway's internal topic
  ``gateway-cache-invalidation`` through the outbox (durable, like any event), which
  every replica's invalidation consumer reads too.

What a change covers (the cache tags):

* passport P: its public and owned documents (``passport_tag(P)``) and the owned list;
* price of EVSE E: every pricing answer that names E (``price_tag(E)``), whatever its
  medium (a tariff change seen for one context may well hold for every tag), and every
  all_paged page (their content is unknown before the fill: ``ALL_PRICES_TAG``). A
  SNAPSHOT of context C (C's tariff seen for the first time: no version of it is known
  to be older) evicts only the views of C (``price_context_tag(C, E)``), so reading a
  second context does not throw out the first one's answers;
* the user: ``ME_TAG``.

Which version a change announces: an event carries the new version's ``digest``, and an
entry may know the digest of what it holds (the public passport: ``passport_digest`` of
its body, in the memory tier and in the shared tier alike). The entity's own tag
(``passport_tag(P)``) is evicted with ``keep_digest`` = the event's digest: an entry that
already holds that version stays — so a passport's first read, announced as a SNAPSHOT,
is not thrown out cluster-wide when the event comes back from Kafka, and a replica that
lost the claim for a transition another replica announced first does not evict the others'
copies of it. An entry holding another version (an older one) goes at once, everywhere;
an event without a digest (a deletion) evicts as before. Entries without a digest (owned
views, the owned list, prices, the user) are evicted by every change, as before: the
digest check is only made where the entry's content IS what the digest was taken of. Only
a version the gateway saw upstream (a read or a poll) is kept: a write's digest is of what
was sent or answered, not necessarily what the upstream serves now (``version_seen``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Protocol

import orjson
import structlog

from services.common.events import PASSPORT_TOPIC, PRICE_TOPIC, EventRecord
from services.common.outbox import Outbox
from services.gateway.changes import ChangeKind, Detection

log = structlog.get_logger(__name__)

# Internal to the gateway (no consumer but its replicas): key = what is evicted, value =
# ``{"tags": [[...], ...]}``. Not a CloudEvents topic; not in the AsyncAPI document.
CACHE_TOPIC = "gateway-cache-invalidation"

OWNED_LIST_TAG = ("passports", "owned")
ALL_PRICES_TAG = ("price", "*")
ME_TAG = ("users", "me")


def passport_tag(passport_id: str) -> tuple[str, str]:
    return ("passport", passport_id)


def price_tag(evse_id: str) -> tuple[str, str]:
    """EVSE ids are case-insensitive; validation and the detector upper-case them."""
    return ("price", evse_id.upper())


def price_context_tag(context: str, evse_id: str) -> tuple[str, str, str]:
    """The answers for one tariff context (by its name) and EVSE."""
    return ("price", context, evse_id.upper())


class EvictedHere:
    """Ids of the change events this replica announced and evicted for at once: their
    copies read back from the topics need no second eviction. Bounded: the oldest ids are
    forgotten first (a forgotten id only costs an eviction, never a stale answer)."""

    def __init__(self, size: int = 65_536) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def add(self, event_id: str) -> None:
        if event_id:
            self._ids[event_id] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids


class Evicts(Protocol):
    def invalidate_tag(self, tag: Hashable, *, keep_digest: str = "") -> int: ...


def tags_of_change(entity: str, key: str, context: str = "",
                   kind: str | None = None) -> list[tuple[str, ...]]:
    """The tags a change of ``entity`` (passport | price) ``key`` evicts; ``kind`` is the
    ChangeKind value, ``context`` the tariff context name (prices)."""
    if entity == "passport":
        return [passport_tag(key), OWNED_LIST_TAG]
    if entity == "price":
        if kind == ChangeKind.SNAPSHOT and context:
            return [price_context_tag(context, key)]
        return [price_tag(key), ALL_PRICES_TAG]
    raise ValueError(f"unknown entity {entity!r}")


def version_seen(digest: str, detected_by: str) -> str:
    """The version a change vouches for, entries holding it may stay: its digest when the
    gateway read or polled it upstream; "" (keep nothing) for a write or an unknown origin."""
    seen = detected_by in (Detection.READ.value, Detection.POLL.value)
    return digest if seen else ""


def evict_change(cache: Evicts, entity: str, context: str, key: str, kind: str,
                 event_id: str = "", digest: str = "", detected_by: str = "",
                 evicted_here: EvictedHere | None = None) -> None:
    """A change to the version ``digest`` was found here (write, read or poll;
    ``detected_by`` is the Detection value): evict what shows another version, and remember
    the event (its copy from the topic then evicts nothing more here)."""
    own = passport_tag(key) if entity == "passport" else None  # entries that know a digest
    keep = version_seen(digest, detected_by)
    for tag in tags_of_change(entity, key, context, kind):
        cache.invalidate_tag(tag, keep_digest=keep if tag == own else "")
    if evicted_here is not None:
        evicted_here.add(event_id)


def evict_event(cache: Evicts, topic: str, key: str, data: Mapping[str, Any]) -> None:
    """A record read by the invalidation consumer (any replica's, ours included)."""
    kind = data.get("change")
    digest, detected_by = data.get("digest"), data.get("detected_by")
    version = {"digest": digest if isinstance(digest, str) else "",
               "detected_by": detected_by if isinstance(detected_by, str) else ""}
    if topic == PASSPORT_TOPIC:
        evict_change(cache, "passport", "", key, kind, **version)
    elif topic == PRICE_TOPIC:
        evict_change(cache, "price", str(data.get("tariff_context") or ""), key, kind,
                     **version)
    elif topic == CACHE_TOPIC:
        for tag in _tags(data):
            cache.invalidate_tag(tag)


def evict_everywhere(cache: Evicts, outbox: Outbox | None, key: str,
                     tags: Iterable[tuple[str, ...]]) -> None:
    """Evict ``tags`` here now, and on every replica once the outbox has published."""
    tags = [tuple(t) for t in tags]
    for tag in tags:
        cache.invalidate_tag(tag)
    if outbox is None:
        return
    record = EventRecord(topic=CACHE_TOPIC, key=key.encode(),
                         headers=(("content-type", b"application/json"),),
                         value=orjson.dumps({"tags": [list(t) for t in tags]}))
    with outbox.transaction() as conn:
        outbox.add(conn, record)


def _tags(data: Mapping[str, Any]) -> list[tuple[str, ...]]:
    tags = data.get("tags")
    if not isinstance(tags, list):
        return []
    return [tuple(t) for t in tags
            if isinstance(t, list) and t and all(isinstance(p, str) for p in t)]


__all__ = ["ALL_PRICES_TAG", "CACHE_TOPIC", "ME_TAG", "OWNED_LIST_TAG", "EvictedHere",
           "evict_change",
           "evict_event", "evict_everywhere", "passport_tag", "price_context_tag", "price_tag",
           "tags_of_change", "version_seen"]
