"""Change detection (DESIGN.md §7, §11): is what we just saw different from what we saw last?

The detector keeps, per entity, the digest and the document it saw last, in the SAME
SQLite file as the outbox. Remembering the new state and adding the event happen in
one ``outbox.transaction()``, so a crash can neither lose an event nor announce a
change twice, and a restart does not re-announce what was already seen.

Entities are passports (key: passport id) and prices (key: tariff context name + EVSE
id). A deleted entity keeps a tombstone row (empty digest, no document): if it comes
back, that is CREATED, not a SNAPSHOT.

Kinds: a write announces what its method says (POST created, PUT updated, DELETE
deleted), always. A read or poll announces only a differing digest: UPDATED, DELETED
(document gone), or for an entity not currently known SNAPSHOT (first sighting) /
CREATED (seen deleted before, or the caller says so: a poll after its first complete
pass). Pollers also keep here which keys their last pass saw ("members") and whether
a pass ever completed, so vanished entities are those a complete pass no longer
finds, never entities that only a read has seen.

Whatever found it, an announced change is handed to ``on_change(entity, context, key,
kind, event_id, digest, detected_by)`` (``digest``: the new version's, ``""`` once deleted;
``detected_by``: the Detection value) before the call returns: the gateway evicts there
(services.gateway.eviction), so the replica that found a change answers the new version at
once, without waiting for its own event to come back from Kafka.

Calls are synchronous and cheap on the common path: last digests are held in memory
(loaded once), so an unchanged entity costs one canonical dump and one hash; the last
documents of recently changed entities too (bytes), so a change reads no row.

Group commit (the gateway starts the outbox's writer thread, services.common.outbox.writer):
a change's transaction is queued, not run, and many share one COMMIT off the loop. Memory
follows at once (the next detection compares with this one); ``await settled()`` returns
once everything detected so far is committed, and a write (or a cache fill that found a
change) answers only after it, so its event is in the outbox before the client is
answered. A poll does not wait: a crash before its commit loses the event and the
remembered digest together (one transaction), so the next sighting announces it again.
Nor does a read that only saw entities for the first time (SNAPSHOT, single-replica
mode; ``awaited``): a first sighting is no change a client could act on — nothing here
held another version, and a crash takes the memory tier with it — so the same holds as
for a poll (the next sighting records it again). A read may even have it recorded a
moment later (``passport(later=...)``: a cache fill, once its waiters are answered); until
then any other call records it first, so detections keep their order. In cluster mode a
local first sighting may be a change cluster-wide (another replica or Redis holds an older
version): those reads wait, like any change. Should a commit fail, memory is
put back to what the file holds, for the same reason; evictions already done stay done
(evicting early is harmless). Without the writer thread each call commits before it
returns, as it always did.

Cluster mode (DESIGN.md §12, ``claims`` given): the same transaction writes the event
UNCLAIMED, with the transition it announces (``shared_entity``, previous, new, event
id); services.gateway.claims then decides it against the cluster's shared digests, so
each transition is announced once cluster-wide. A write's row is published whatever
the claim says (a write always announces). What a poll pass saw unchanged is handed
to ``claims.seed`` (a flushed Redis refills without announcing anything). Single-replica
mode writes rows publishable, exactly as before.
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, MutableMapping, MutableSequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import jsonpatch
import orjson
import structlog

from services.common import logging as logsetup
from services.common.events import (
    PASSPORT,
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    PRICE,
    PRICE_CE_TYPE,
    PRICE_TOPIC,
    ChangeKind,
    Detection,
    EventRecord,
    build_event,
    digest_of,
    rfc3339,
)
from services.common.events.envelope import new_event_id
from services.common.outbox import ClaimSpec, Outbox
from services.gateway.metrics import GatewayMetrics

log = structlog.get_logger(__name__)

# --- tariffs -------------------------------------------------------------------------------

# Per price-structure element, amounts computed for the request's consumption/duration.
_REQUEST_DEPENDENT_ELEMENT_FIELDS = frozenset({"stepCosts"})


def passport_of(document: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A passport as compared and announced: the document minus a top-level ``id``.

    The owned views carry one and the public view (the vendor sample) does not; the id is the
    entity key (``passport_id``), not content, so the same passport seen through either view
    digests alike instead of flipping ``/id`` on every read after a write."""
    if document is None or "id" not in document:
        return document
    return {k: v for k, v in document.items() if k != "id"}


def passport_digest(document: Mapping[str, Any]) -> str:
    """The digest a passport event carries for this document (public or owned view alike):
    what a cached public passport records, so that an event announcing the version it
    holds does not evict it (services.gateway.eviction)."""
    return digest_of(passport_of(document))


def tariff_of(pricing_entry: Mapping[str, Any]) -> dict[str, Any]:
    """The tariff-defining part of a pricing answer, as the proto3 JSON of ``Tariff``.

    Kept: rate name, cost id, currency, the price structure (with its tax rates) minus the
    per-request ``stepCosts``, the session fee (``costSessionFee`` in single/batch,
    ``sessionFee`` in all_paged), a top-level ``tax`` if the vendor sends one. Field names
    are those of ``ampgate.events.v1.Tariff``. Dropped: ``costTotal``, ``costTime``, ``costPower``,
    ``costTotalLocalCurrency``, ``currencyConversionRate`` — they depend on the request's
    consumption/duration or the day's exchange rate, so a different ``consumption`` is
    not a different tariff. Absent upstream fields are absent here (proto3 JSON omits
    defaults), so ``{}`` and a missing field digest alike.
    """
    tariff: dict[str, Any] = {}
    if (v := pricing_entry.get("rateName")) is not None:
        tariff["rate_name"] = str(v)
    if (v := _integer(pricing_entry.get("costId"))) is not None:
        tariff["cost_id"] = v
    if (v := pricing_entry.get("currency")) is not None:
        tariff["currency"] = str(v)
    structure = pricing_entry.get("priceStructure")
    if isinstance(structure, Mapping):
        tariff["price_structure"] = _strip_request_dependent(structure)
    fee = pricing_entry.get("costSessionFee")
    if fee is None:
        fee = pricing_entry.get("sessionFee")
    if isinstance(fee, int | float) and not isinstance(fee, bool):
        tariff["session_fee"] = float(fee)  # a double in the proto: 1 and 1.0 are one fee
    if (v := pricing_entry.get("tax")) is not None:
        tariff["tax"] = v
    return tariff


# Request parameters that change the tariff's FORM, not the tariff: another currency
# converts every amount, include_tax adds tax rates. A read with them is not comparable
# with what the poller (and plain reads) see, and would flip the digest back and forth.
_FORM_CHANGING_PARAMS = frozenset({"currency", "include_tax"})


def tariff_comparable(params: Mapping[str, Any]) -> bool:
    """May a pricing answer to these (upstream) query parameters feed the detector?
    ``consumption``/``duration`` are fine: ``tariff_of`` drops what they change."""
    return not (_FORM_CHANGING_PARAMS & set(params))


def _integer(value: Any) -> int | None:
    """``Tariff.cost_id`` is an int64: upstream sends a number (a numeric string is taken)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def evse_key(evse_id: str) -> str:
    """eMI3 EVSE ids are case-insensitive; the gateway's validation upper-cases them too."""
    return evse_id.upper()


def _strip_request_dependent(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_request_dependent(v) for k, v in value.items()
                if k not in _REQUEST_DEPENDENT_ELEMENT_FIELDS}
    if isinstance(value, list):
        return [_strip_request_dependent(v) for v in value]
    return value


def shared_entity(entity: str, context: str, key: str) -> str:
    """The entity's name in the cluster's shared digests: ``passport:<id>``,
    ``price:<context>:<evse>``."""
    return f"{entity}:{key}" if entity == PASSPORT else f"{entity}:{context}:{key}"


def reannounce(record: EventRecord, current: str, new: str) -> tuple[EventRecord, str]:
    """The event for the transition ``current → new`` nobody has announced yet (the
    claim of ``record`` was lost to a replica that moved the digest to ``current``).
    The document behind ``current`` is another replica's: what changed is the whole
    entity. Returns the new record and its (new) event id."""
    data = orjson.loads(record.value)
    if new == "":
        kind = ChangeKind.DELETED
    elif current == "":
        kind = ChangeKind.CREATED
    else:
        kind = ChangeKind.UPDATED
    data["change"] = kind.value
    data.pop("previous", None)
    data.pop("previous_digest", None)
    if current:
        data["previous_digest"] = current
    data["changed_paths"] = [""]
    ce_type = (record.header("ce_type") or b"").decode()
    rebuilt = build_event(record.topic, ce_type, record.key.decode(), data, validate=False)
    return rebuilt, (rebuilt.header("ce_id") or b"").decode()


class Claims(Protocol):
    """What the detector needs of the claimer (services.gateway.claims.Claimer)."""

    def seed(self, items: list[tuple[str, str]]) -> None: ...


# --- the detector --------------------------------------------------------------------------

# Recent documents (their members' bytes), bounded by size: ~170 passports of ~6 KB, the hot
# set of a busy writer; older ones are read from their row (a diff against one read from its
# row costs ~60-70 us more on the loop: the row, zlib, the decode). 2 MiB would hold the events
# bench's 200 passports, but put bench/run.sh rss at 376-377 MiB against its 377.8 target.
# (A count bound of 1,024 cost 64 MiB of RSS beside the cache's budget with 64 KiB documents.)
_DOCUMENT_CACHE_BYTES = 1024 * 1024
# Documents detected but not yet committed, beyond which a first sighting waits for the
# commit like any change (``behind``): without it a stream of reads of new entities outruns
# the writer thread (the loop holds the GIL), each waiting row holding its document and its
# event (bench/run.sh rss: 946 MiB for a 256 MiB cache; a 4 MiB bound still 390, 256 KiB
# 370, as when every read waited). ~40 uncommitted passports of ~6 KB: a cold burst's one
# first sighting still answers before its commit.
_UNSETTLED_BYTES_MAX = 256 * 1024
_NOTHING = object()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS change_seen (
    entity   TEXT NOT NULL,             -- passport | price
    context  TEXT NOT NULL DEFAULT '',  -- tariff context name ('' for passports)
    key      TEXT NOT NULL,             -- passport id | EVSE id
    digest   TEXT NOT NULL,             -- '' once deleted (tombstone)
    document BLOB,                      -- zlib(orjson(doc)), NULL once deleted
    seen_at  TEXT NOT NULL,
    PRIMARY KEY (entity, context, key)
);
CREATE TABLE IF NOT EXISTS poll_member (
    scope TEXT NOT NULL,
    key   TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS poll_pass (
    scope        TEXT PRIMARY KEY,
    completed_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Observation:
    """One thing seen: ``document`` None means gone."""

    key: str
    document: Mapping[str, Any] | None


class ChangeDetector:
    """Compares what the gateway sees with what it saw last; announces differences.

    The outbox must be open: the detector's tables live in its file.
    """

    def __init__(self, outbox: Outbox, metrics: GatewayMetrics, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_change: Callable[[str, str, str, str, str, str, str], None] | None = None,
                 claims: Claims | None = None) -> None:
        self._outbox = outbox
        self._claims = claims  # None: single-replica mode
        self._metrics = metrics
        self._clock = clock
        self._on_change = on_change
        # (entity, context, key) -> last digest ('' = tombstone). Only this detector writes
        # these rows, so memory and file agree once loaded.
        self._seen: dict[tuple[str, str, str], str] = {}
        # The last document of an entity (None: deleted) as (size of its orjson bytes, its
        # members' orjson bytes, or the whole document's when it is not a plain object):
        # detections not yet committed (group commit), then a bounded cache of recent ones,
        # so the next diff of a busy entity reads no row, inflates nothing and compares the
        # members by their bytes, decoding only those that differ (_stored).
        self._unsettled: dict[tuple[str, str, str], _Stored | None] = {}
        self._unsettled_bytes = 0
        self._documents: OrderedDict[tuple[str, str, str], _Stored | None] = OrderedDict()
        self._documents_bytes = 0
        self._last_commit: asyncio.Future[Any] | None = None
        self._queued = 0  # transactions handed to the outbox so far
        self._awaited = 0  # of those, the ones a read must await (not only first sightings)
        self._counters: dict[tuple[str, Detection], Any] = {}  # labelled children, resolved once
        # A first sighting put off (``passport(later=...)``): (entity, context, observations,
        # detected_by, when). At most one: every other call records it first.
        self._deferred: tuple[str, str, list[Observation], Detection, datetime] | None = None
        with outbox.transaction() as conn:
            _create_schema(conn)
            for entity, context, key, dig in conn.execute(
                    "SELECT entity, context, key, digest FROM change_seen"):
                self._seen[(entity, context, key)] = dig

    # -- public API --------------------------------------------------------------------

    def passport(self, passport_id: str, document: Mapping[str, Any] | None,
                 detected_by: Detection, change: ChangeKind | None = None, *,
                 later: Callable[[Callable[[], None]], None] | None = None) -> bool:
        """Record a passport as seen; True if an event was enqueued. ``None`` = deleted.

        ``later`` (a read: the cache's ``after_answers``): a first sighting that read would
        not await anyway (a SNAPSHOT in single-replica mode, the writer not ``behind``) is
        then recorded by the work handed to ``later`` — digest, event, outbox row, eviction,
        all as now — which must run soon: the cache runs it once the fill's waiters are
        answered, so a cold burst's answers do not wait for the event's build nor share the
        loop with the writer thread it wakes. Until it has run, every other call of this
        detector runs it first: detections (of one key, and of all) stay in their order, and
        the next one compares with it. The SNAPSHOT carries the time it was seen. True: an
        event is (or will be) enqueued."""
        observation = Observation(passport_id, passport_of(document))
        if later is not None and self._may_defer(PASSPORT, "", observation, detected_by, change):
            self._deferred = (PASSPORT, "", [observation], detected_by, self._clock())
            later(self._record_deferred)
            return True
        return self._observe(PASSPORT, "", [observation], detected_by, change) > 0

    def tariff(self, evse_id: str, context: str, tariff: Mapping[str, Any] | None,
               detected_by: Detection, change: ChangeKind | None = None) -> bool:
        """Record an EVSE's tariff (``tariff_of(...)``) under a context NAME; True if announced.
        EVSE ids are case-insensitive: they are keyed (and announced) upper-case."""
        return self._observe(PRICE, context, [Observation(evse_key(evse_id), tariff)],
                             detected_by, change) > 0

    def passports(self, observations: Iterable[Observation], detected_by: Detection,
                  change: ChangeKind | None = None, *, vanished: bool = False) -> int:
        """Several passports in one transaction (pollers); returns how many were announced.
        ``vanished``: deletions of members a complete pass found before (see _observe)."""
        return self._observe(PASSPORT, "", [Observation(o.key, passport_of(o.document))
                                            for o in observations], detected_by, change,
                             vanished=vanished)

    def tariffs(self, context: str, observations: Iterable[Observation],
                detected_by: Detection, change: ChangeKind | None = None, *,
                vanished: bool = False) -> int:
        """A page of tariffs in one transaction (pollers); returns how many were announced."""
        return self._observe(PRICE, context,
                             [Observation(evse_key(o.key), o.document) for o in observations],
                             detected_by, change, vanished=vanished)

    def known_evses(self, context: str) -> set[str]:
        """EVSEs with a live (not deleted) tariff under this context."""
        self._record_deferred()
        return {k for (e, c, k), d in self._seen.items() if e == PRICE and c == context and d}

    def shared_digests(self) -> list[tuple[str, str]]:
        """Every last-seen digest as (shared entity, digest): what this replica can seed
        into an emptied cluster store (cluster mode)."""
        self._record_deferred()
        return [(shared_entity(e, c, k), d) for (e, c, k), d in self._seen.items()]

    def last_digest(self, entity: str, key: str, context: str = "") -> str | None:
        """The digest last seen (None if never seen or deleted)."""
        self._record_deferred()
        return self._seen.get((entity, context, key)) or None

    # -- poll bookkeeping --------------------------------------------------------------

    def pass_completed(self, scope: str) -> bool:
        """Has a poller ever completed a whole pass over ``scope``?"""
        return self._outbox.connection.execute(
            "SELECT 1 FROM poll_pass WHERE scope = ?", (scope,)).fetchone() is not None

    def members(self, scope: str) -> set[str]:
        """Keys the poller's passes over ``scope`` have found (and not yet seen vanish)."""
        return {k for (k,) in self._outbox.connection.execute(
            "SELECT key FROM poll_member WHERE scope = ?", (scope,))}

    def add_members(self, scope: str, keys: Iterable[str]) -> None:
        with self._outbox.transaction() as conn:
            conn.executemany("INSERT OR IGNORE INTO poll_member (scope, key) VALUES (?, ?)",
                             [(scope, k) for k in keys])

    def complete_pass(self, scope: str, keys: Iterable[str]) -> None:
        """A whole pass found exactly ``keys``: they are the members now."""
        keys = set(keys)
        with self._outbox.transaction() as conn:
            gone = {k for (k,) in conn.execute("SELECT key FROM poll_member WHERE scope = ?",
                                               (scope,))} - keys
            conn.executemany("DELETE FROM poll_member WHERE scope = ? AND key = ?",
                             [(scope, k) for k in gone])
            conn.executemany("INSERT OR IGNORE INTO poll_member (scope, key) VALUES (?, ?)",
                             [(scope, k) for k in keys])
            conn.execute("INSERT OR REPLACE INTO poll_pass (scope, completed_at) VALUES (?, ?)",
                         (scope, rfc3339(self._clock())))

    # -- the work ----------------------------------------------------------------------

    def _may_defer(self, entity: str, context: str, obs: Observation, detected_by: Detection,
                   change: ChangeKind | None) -> bool:
        """Would ``obs`` be a first sighting no read awaits (see ``passport``): not even
        for backpressure, its own document counted (``behind`` once it is recorded)?"""
        self._record_deferred()  # the one before first: compare with what it records
        return (self._claims is None and detected_by is Detection.READ and change is None
                and obs.document is not None and (entity, context, obs.key) not in self._seen
                and self._unsettled_bytes + len(orjson.dumps(obs.document))
                <= _UNSETTLED_BYTES_MAX)

    def _record_deferred(self) -> None:
        """Record the first sighting put off (if any) now. A failure is logged: the read
        that saw it has been answered, and a first sighting not recorded is recorded by the
        next one (as after a crash before its commit)."""
        deferred, self._deferred = self._deferred, None
        if deferred is None:
            return
        entity, context, observations, detected_by, when = deferred
        try:
            self._observe(entity, context, observations, detected_by, None, now=when)
        except Exception:
            log.exception("change_detection_failed", entity=entity)

    def _observe(self, entity: str, context: str, observations: list[Observation],
                 detected_by: Detection, change: ChangeKind | None, *,
                 vanished: bool = False, now: datetime | None = None) -> int:
        self._record_deferred()  # in order: the first sighting put off goes first
        # Cheap pass first: most observations are unchanged and cost a dump and a hash.
        pending: list[tuple[Observation, str, EventRecord, ChangeKind, str | None, str,
                            _Stored | None]] = []
        unchanged: list[tuple[str, str]] = []
        seeding = self._claims is not None and detected_by is Detection.POLL
        now = self._clock() if now is None else now
        stamp = rfc3339(now)  # observed_at, ce_time and seen_at: one moment, formatted once
        if len({o.key for o in observations}) != len(observations):
            observations = list({o.key: o for o in observations}.values())  # last one wins
        for obs in observations:
            new = digest_of(obs.document) if obs.document is not None else ""
            last = self._seen.get((entity, context, obs.key))
            # Cluster mode: a member another replica's pass found may have vanished before
            # this replica ever saw it; its deletion is a candidate (the claim decides).
            unseen_deletion = vanished and last is None and self._claims is not None
            if detected_by is not Detection.WRITE and new == (last or "") \
                    and not unseen_deletion:
                if seeding and last is not None:
                    unchanged.append((shared_entity(entity, context, obs.key), new))
                continue  # unchanged (or still gone / never known and absent)
            previous = self._document(entity, context, obs.key) if last else None
            stored = _stored(obs.document) if obs.document is not None else None
            kind = _kind(detected_by, change, obs.document, last)
            event_id = new_event_id()  # the record's ce_id, kept at hand (no header scans)
            try:
                record = _build(entity, context, obs.key, kind, detected_by, last or "", new,
                                previous, obs.document, now, stamp, event_id, stored)
            except ValueError as exc:
                # Not representable in the contract (build_event checks): skip it, and do
                # not remember it either, rather than fail the request that saw it.
                log.error("change_event_invalid", entity=entity, error=str(exc)[:200])
                continue
            pending.append((obs, new, record, kind, last, event_id, stored))
        if unchanged:
            self._claims.seed(unchanged)  # type: ignore[union-attr]
        if not pending:
            return 0
        seen_at = stamp
        rows = []
        for obs, new, record, _, last, event_id, stored in pending:
            claim = None
            if self._claims is not None:
                claim = ClaimSpec(shared_entity(entity, context, obs.key), last, new, event_id,
                                  always=detected_by is Detection.WRITE)
            rows.append(((entity, context, obs.key), new, last, record, claim, stored))
        outbox = self._outbox

        def commit(conn: sqlite3.Connection) -> None:  # the writer thread (or inline)
            for (_, _, key), new, _, record, claim, stored in rows:
                document = _row_bytes(stored) if stored is not None else None
                outbox.add(conn, record, claim)
                conn.execute("INSERT OR REPLACE INTO change_seen "
                             "(entity, context, key, digest, document, seen_at) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (entity, context, key, new,
                              zlib.compress(document, 1) if document is not None else None,
                              seen_at))

        committed = outbox.write(commit)
        self._queued += 1
        if self._claims is not None or any(k is not ChangeKind.SNAPSHOT for _, _, _, k, _, _, _ in pending):
            self._awaited += 1
        # Memory follows now: with group commit the next detection (of the same entity too)
        # must compare with this one. Should the commit fail, _unsettle puts it back.
        for ident, new, _, _, _, document in rows:
            self._seen[ident] = new
            self._unsettle_put(ident, document)
        if committed is None:
            self._settled(rows)
        else:
            self._last_commit = committed
            committed.add_done_callback(lambda f: self._settle(f, rows))
        if self._on_change is not None:
            # Eviction does not wait for the commit: evicting early is harmless, and a
            # failed commit fails the write that waits for it (settled()).
            for obs, new, _, kind, _, event_id, _ in pending:
                try:
                    self._on_change(entity, context, obs.key, kind.value, event_id, new,
                                    detected_by.value)
                except Exception:  # the event is queued; a failed eviction is logged
                    log.exception("change_eviction_failed", entity=entity)
        counter = self._counters.get((entity, detected_by))
        if counter is None:
            counter = self._counters[(entity, detected_by)] = \
                self._metrics.changes_detected.labels(entity=entity, detected_by=detected_by.label)
        counter.inc(len(pending))
        if logsetup.DEBUG_ENABLED:  # a filtered-out call still binds a logger: ~5 % of a change
            log.debug("changes_detected", entity=entity, detected_by=detected_by.label,
                      count=len(pending))
        return len(pending)

    @property
    def queued(self) -> int:
        """How many change transactions this detector has handed to the outbox: a caller
        compares it before and after a call to know whether that call has one to await."""
        return self._queued

    @property
    def awaited(self) -> int:
        """Like ``queued``, counting only the transactions a read that made them answers
        after (``settled()``): all but those that only announce first sightings (SNAPSHOT)
        in single-replica mode (see the module docstring)."""
        return self._awaited

    @property
    def behind(self) -> bool:
        """More detected than committed than a read should run ahead of: then a read awaits
        ``settled()`` even for first sightings (backpressure on the writer thread)."""
        return self._unsettled_bytes > _UNSETTLED_BYTES_MAX

    async def settled(self) -> None:
        """Returns once every change detected so far is committed to the outbox (raises
        if the last commit failed). A write answers only after this (DESIGN.md §7: its
        event is in the outbox before the client is answered). Without group commit
        (``Outbox.start_writer``) detections are committed when they return."""
        self._record_deferred()
        commit = self._last_commit
        if commit is not None:
            await asyncio.shield(commit)

    def _settle(self, commit: asyncio.Future[Any], rows: list) -> None:
        if self._last_commit is commit:
            self._last_commit = None
        if commit.cancelled() or commit.exception() is None:
            self._settled(rows)
            return
        # Not in the file: forget it here too, so the next sighting announces it again.
        log.error("change_commit_failed", error=repr(commit.exception())[:300], count=len(rows))
        for ident, new, last, _, _, document in rows:
            if self._seen.get(ident) == new:
                if last is None:
                    self._seen.pop(ident, None)
                else:
                    self._seen[ident] = last
            self._unsettle_drop(ident, document)
            self._forget_document(ident)

    def _settled(self, rows: list) -> None:
        """Committed: the documents move from the unsettled map to the bounded cache."""
        for ident, _, _, _, _, document in rows:
            if self._unsettle_drop(ident, document):
                self._forget_document(ident)
                self._documents[ident] = document
                self._documents_bytes += document[0] if document else 0
        while self._documents_bytes > _DOCUMENT_CACHE_BYTES:
            _, dropped = self._documents.popitem(last=False)
            self._documents_bytes -= dropped[0] if dropped else 0

    def _unsettle_put(self, ident: tuple[str, str, str], document: _Stored | None) -> None:
        previous = self._unsettled.get(ident)
        self._unsettled_bytes += (document[0] if document else 0) - \
            (previous[0] if previous else 0)
        self._unsettled[ident] = document

    def _unsettle_drop(self, ident: tuple[str, str, str], document: _Stored | None) -> bool:
        """Drop ``ident``'s unsettled document if it is still ``document``; True if it was."""
        if self._unsettled.get(ident, _NOTHING) is not document:
            return False
        del self._unsettled[ident]
        self._unsettled_bytes -= document[0] if document else 0
        return True

    def _forget_document(self, ident: tuple[str, str, str]) -> None:
        dropped = self._documents.pop(ident, None)
        self._documents_bytes -= dropped[0] if dropped else 0

    def _document(self, entity: str, context: str, key: str) -> _Stored | Any | None:
        """The document last seen: from memory (not yet committed, or recently seen) as
        stored there (a _Stored), else decoded from the file (committed: the reader
        connection sees it)."""
        ident = (entity, context, key)
        stored = self._unsettled.get(ident, _NOTHING)
        if stored is _NOTHING:
            stored = self._documents.get(ident, _NOTHING)
        if stored is not _NOTHING:
            return stored
        row = self._outbox.reader.execute(
            "SELECT document FROM change_seen WHERE entity = ? AND context = ? AND key = ?",
            (entity, context, key)).fetchone()
        return orjson.loads(zlib.decompress(row[0])) if row is not None and row[0] is not None \
            else None


class _Stored(tuple):
    """A document as the detector keeps it in memory: (size of its orjson bytes, keys
    counted in characters; payload).
    The payload of a plain object with string keys is ``{member: orjson bytes of its
    value}`` in member order (the diff compares unchanged members by these bytes and
    decodes only the members that differ); of anything else, the document's orjson bytes."""

    __slots__ = ()


def _stored(document: Any) -> _Stored:
    if type(document) is dict:
        members: dict[str, bytes] = {}
        size = 1  # braces, quotes, colons, commas: 1 + (4 + key + value) a member
        dumps = orjson.dumps
        for key, value in document.items():
            if type(key) is not str:
                break
            members[key] = raw = dumps(value)
            size += len(raw) + len(key) + 4
        else:
            return _Stored((max(size, 2), members))
    raw = orjson.dumps(document)
    return _Stored((len(raw), raw))


def _row_bytes(stored: _Stored) -> bytes:
    """The document's orjson bytes: what ``orjson.dumps(document)`` gives."""
    payload = stored[1]
    if type(payload) is bytes:
        return payload
    dumps = orjson.dumps
    return b"{" + b",".join([dumps(k) + b":" + v for k, v in payload.items()]) + b"}"


def _decoded(previous: Any) -> Any:
    """A document as _document answers it, decoded."""
    if type(previous) is not _Stored:
        return previous
    payload = previous[1]
    if type(payload) is bytes:
        return orjson.loads(payload)
    return {k: orjson.loads(v) for k, v in payload.items()}


def _create_schema(conn: sqlite3.Connection) -> None:
    # executescript() would COMMIT the outbox's open transaction; run statement by statement
    # (no ";" inside the statements' comments).
    for stmt in _SCHEMA.split(";"):
        if stmt.strip():
            conn.execute(stmt)


def _kind(detected_by: Detection, change: ChangeKind | None,
          document: Mapping[str, Any] | None, last: str | None) -> ChangeKind:
    if detected_by is Detection.WRITE:
        if change is not None:
            return change
        if document is None:
            return ChangeKind.DELETED
        return ChangeKind.UPDATED if last else ChangeKind.CREATED
    if document is None:
        return ChangeKind.DELETED
    if last:  # known and live: its digest differs
        return ChangeKind.UPDATED
    if change is not None:  # not currently known: the caller may say "created" (polls)
        return change
    return ChangeKind.CREATED if last == "" else ChangeKind.SNAPSHOT


def _canonical(value: Any) -> bytes:
    """jsonpatch compares values by their serialisation; orjson is ~10x json.dumps."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _changed_paths(kind: ChangeKind, previous: Any | None, current: Any | None) -> list[str]:
    """RFC 6901 pointers of what changed. Whole-entity changes are the root pointer ``""``;
    a snapshot changed nothing we know of."""
    if kind is ChangeKind.SNAPSHOT:
        return []
    if previous is None or current is None:
        return [""]
    if type(previous) is dict and type(current) is dict:
        replaced: list[str] = []
        if _replaced_paths("", previous, current, replaced):
            return replaced  # the common case, without jsonpatch's copies (~4x cheaper)
        # jsonpatch walks every node of both documents; hand it only the top-level
        # members that differ (by canonical bytes, so 1 vs true vs 1.0 still count).
        differing = [k for k in previous.keys() | current.keys()
                     if k not in previous or k not in current
                     or _canonical(previous[k]) != _canonical(current[k])]
        previous = {k: previous[k] for k in differing if k in previous}
        current = {k: current[k] for k in differing if k in current}
    paths: list[str] = []
    for op in jsonpatch.JsonPatch.from_diff(previous, current, dumps=_canonical):
        for p in (op.get("from"), op["path"]):  # a move changes both ends
            if p is not None and p not in paths:
                paths.append(p)
    return paths


def _changed_members(previous: dict[str, bytes], current: dict, current_bytes: dict[str, bytes],
                     ) -> list[str] | None:
    """``_replaced_paths("", decoded previous, current)`` for a previous document kept as
    its members' bytes (_Stored), decoding only members whose bytes differ: equal orjson
    bytes are equal canonical bytes, and unequal ones are compared canonically, decoded, as
    there. None where that answers False (jsonpatch decides, given the whole document)."""
    if len(previous) != len(current):
        return None
    out: list[str] = []
    for key, old_bytes in previous.items():
        if key not in current:
            return None
        if old_bytes == current_bytes[key]:
            continue
        old, new = orjson.loads(old_bytes), current[key]
        if _canonical(old) != _canonical(new) and not _replaced_member("", key, old, new, out):
            return None
    return out


def _replaced_paths(prefix: str, previous: dict, current: dict, out: list[str]) -> bool:
    """The pointers jsonpatch's diff names when ``current`` differs from ``previous`` only
    by values replaced under objects with the same members (replace operations, in
    member order), appended to ``out``. False when a member was added or removed or an
    array differs: items may have moved, and jsonpatch matches them up."""
    if len(previous) != len(current):
        return False
    for key, old in previous.items():
        if type(key) is not str or key not in current:
            return False
        new = current[key]
        if old is new or _canonical(old) == _canonical(new):
            continue
        if not _replaced_member(prefix, key, old, new, out):
            return False
    return True


def _replaced_member(prefix: str, key: str, old: Any, new: Any, out: list[str]) -> bool:
    """One member whose values differ: its pointer (or those under it, objects on both
    sides) appended to ``out``; False for arrays (or mappings that are not dicts): items
    may have moved, and jsonpatch matches them up."""
    pointer = prefix + "/" + key.replace("~", "~0").replace("/", "~1")
    if type(old) is dict and type(new) is dict:
        return _replaced_paths(pointer, old, new, out)
    if (isinstance(old, MutableSequence) and isinstance(new, MutableSequence)) or \
            (isinstance(old, MutableMapping) and isinstance(new, MutableMapping)):
        return False
    out.append(pointer)
    return True


def _build(entity: str, context: str, key: str, kind: ChangeKind, detected_by: Detection,
           previous_digest: str, new_digest: str, previous: Any | None,
           current: Mapping[str, Any] | None, now: datetime, stamp: str,
           event_id: str, stored: _Stored | None = None) -> EventRecord:
    """The event, in proto3 JSON: defaults (empty strings, empty lists) omitted.
    ``previous``: as _document answers it; ``stored``: ``_stored(current)``."""
    if type(previous) is _Stored and stored is not None and kind is not ChangeKind.SNAPSHOT \
            and type(previous[1]) is dict and type(stored[1]) is dict:
        paths = _changed_members(previous[1], current, stored[1])
        if paths is None:
            previous = _decoded(previous)
            paths = _changed_paths(kind, previous, current)
    else:
        previous = _decoded(previous)
        paths = _changed_paths(kind, previous, current)
    data: dict[str, Any] = {
        "passport_id" if entity == PASSPORT else "evse_id": key,
    }
    if entity == PRICE:
        data["tariff_context"] = context
    data["change"] = kind.value
    data["detected_by"] = detected_by.value
    if previous_digest:
        data["previous_digest"] = previous_digest
    if new_digest:
        data["digest"] = new_digest
    if paths:
        data["changed_paths"] = paths
    if entity == PASSPORT:
        if current is not None:
            data["passport"] = current
        topic, ce_type = PASSPORT_TOPIC, PASSPORT_CE_TYPE
    else:
        if previous is not None:
            data["previous"] = _decoded(previous)
        if current is not None:
            data["current"] = current
        topic, ce_type = PRICE_TOPIC, PRICE_CE_TYPE
    data["observed_at"] = stamp  # rfc3339(now)
    # A passport is any JSON object inside a Struct, and the rest are our own strings:
    # nothing to catch there, at a third of the event's cost. Tariffs carry typed fields
    # taken from upstream, so they are still checked.
    return build_event(topic, ce_type, key, data, event_id=event_id, time=now, time_text=stamp,
                       validate=entity == PRICE)


__all__ = ["PASSPORT", "PRICE", "ChangeDetector", "ChangeKind", "Claims", "Detection",
           "Observation", "evse_key", "passport_digest", "passport_of", "reannounce",
           "shared_entity",
           "tariff_comparable", "tariff_of"]
