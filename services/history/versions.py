"""A version of an entity, how it is read from an event, and the rule that makes the
history idempotent in effect.

THE RULE: an event is recorded unless
  * its event id (``ce_id``) was recorded already (a resend, a replay after a crash), or
  * the entity's latest stored version has the same ``digest`` AND the same
    ``previous_digest`` (the same transition reported by another gateway replica).
So A→B delivered twice is one version, while A→B→A→B is four.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from services.common.errors import AmpgateError
from services.common.events import (
    CHANGE_KIND_UNSPECIFIED,
    DETECTION_UNSPECIFIED,
    PASSPORT,
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    PRICE,
    PRICE_CE_TYPE,
    PRICE_TOPIC,
    ChangeKind,
    ConsumedEvent,
)
from services.common.timestamps import parse_rfc3339, rfc3339


class BadEventData(AmpgateError):
    """A well-formed event whose data we cannot record (missing id, bad time...). Not
    transient: the consumer runtime dead-letters it."""


@dataclass(frozen=True)
class EntityKey:
    entity: str  # passport | price
    entity_id: str  # passport id, or EVSE id in upper case
    context: str = ""  # tariff context name for prices


@dataclass(frozen=True)
class Version:
    key: EntityKey
    event_id: str
    observed_at: datetime  # aware, UTC
    change: str
    detected_by: str
    digest: str
    previous_digest: str
    changed_paths: tuple[str, ...]
    document: str | None  # JSON text, None when deleted

    @property
    def deleted(self) -> bool:
        return self.change == ChangeKind.DELETED

    def summary(self) -> dict[str, object]:
        """The version list entry (DESIGN.md §11)."""
        return {
            "digest": self.digest,
            "observed_at": rfc3339(self.observed_at),
            "change": self.change,
            "detected_by": self.detected_by,
            "changed_paths": list(self.changed_paths),
        }


def is_same_transition(new: Version, latest: Version | None) -> bool:
    return (latest is not None and latest.digest == new.digest
            and latest.previous_digest == new.previous_digest)


def versions_to_record(batch: Sequence[Version], known_ids: Iterable[str],
                       latest: Mapping[EntityKey, Version]) -> list[Version]:
    """THE RULE over a batch, in order: those of ``batch`` to store. ``known_ids``: the
    batch's event ids already stored; ``latest``: the latest stored version of the batch's
    entities (those that have one). The batch's own versions count as stored as soon as
    they are, so a duplicate within the batch is skipped too."""
    seen = set(known_ids)
    newest = dict(latest)
    stored: list[Version] = []
    for v in batch:
        if v.event_id in seen:
            continue
        current = newest.get(v.key)
        if is_same_transition(v, current):
            continue
        seen.add(v.event_id)
        # Newest first is (observed_at, seq): a later insert wins a tie.
        if current is None or v.observed_at >= current.observed_at:
            newest[v.key] = v
        stored.append(v)
    return stored


def version_from_event(event: ConsumedEvent) -> Version:
    data = event.data
    if event.type == PASSPORT_CE_TYPE or (event.type != PRICE_CE_TYPE and event.topic == PASSPORT_TOPIC):
        entity_id = _text(data, "passport_id") or event.subject
        key = EntityKey(PASSPORT, entity_id)
        document = data.get("passport")
    elif event.type == PRICE_CE_TYPE or event.topic == PRICE_TOPIC:
        entity_id = (_text(data, "evse_id") or event.subject).upper()
        key = EntityKey(PRICE, entity_id, _text(data, "tariff_context"))
        document = data.get("current")
    else:
        raise BadEventData(f"unexpected event type {event.type!r} on {event.topic}")
    if not key.entity_id:
        raise BadEventData("event names no entity")
    change = _text(data, "change") or CHANGE_KIND_UNSPECIFIED
    raw_time = data.get("observed_at")
    try:
        observed_at = parse_rfc3339(raw_time) if raw_time else event.time.astimezone(UTC)
    except ValueError:
        raise BadEventData(f"observed_at is not a timestamp: {raw_time!r}") from None
    paths = data.get("changed_paths") or []
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise BadEventData("changed_paths is not a list of strings")
    if document is not None and not isinstance(document, dict):
        raise BadEventData("the document is not a JSON object")
    return Version(
        key=key,
        event_id=event.id,
        observed_at=observed_at,
        change=change,
        detected_by=_text(data, "detected_by") or DETECTION_UNSPECIFIED,
        digest=_text(data, "digest"),
        previous_digest=_text(data, "previous_digest"),
        changed_paths=tuple(paths),
        document=None if document is None or change == ChangeKind.DELETED else orjson.dumps(document).decode(),
    )


def _text(data: dict, name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise BadEventData(f"{name} is not a string")
    return value
