"""Change detection: what is announced, when, and that a restart announces nothing twice."""

from __future__ import annotations

import copy
import gc
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonpatch
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.common.events import PASSPORT_TOPIC, PRICE_TOPIC, digest_of
from services.common.events.schemas import PassportChanged, PriceChanged, check
from services.common.outbox import Outbox
from services.gateway import changes
from services.gateway.changes import (
    ChangeDetector,
    ChangeKind,
    Detection,
    Observation,
    _build,
    _changed_paths,
    _decoded,
    _replaced_paths,
    _row_bytes,
    _stored,
    tariff_comparable,
    tariff_of,
)
from services.gateway.metrics import GatewayMetrics


@dataclass(frozen=True)
class Sent:
    """An event as it leaves the outbox."""

    topic: str
    key: str
    headers: dict[str, str]
    data: dict[str, Any]


def drain(outbox: Outbox) -> list[Sent]:
    """Everything waiting in the outbox, oldest first (and marked sent)."""
    out: list[Sent] = []
    while batch := outbox.next_batch(1000):
        out += [Sent(r.topic, r.key.decode(), {k: v.decode() for k, v in r.headers},
                     orjson.loads(r.value)) for _, r in batch]
        outbox.mark_sent([i for i, _ in batch])
    return out


def assert_valid_event(event: Sent) -> None:
    """The value parses with the compiled contract (no unknown fields), and the envelope
    names the entity."""
    check(PassportChanged if event.topic == PASSPORT_TOPIC else PriceChanged, event.data)
    assert event.headers["ce_subject"] == event.key
    assert event.headers["ce_type"] in ("ampgate.passport.changed.v1", "ampgate.price.changed.v1")


# The docs' single-EVSE sample, with and without a consumption (stepCosts, totals differ).
PRICED = {
    "rateName": "Standard-Verkaufstarif eMSP", "costId": 2206, "currency": "EUR",
    "localCurrency": "EUR", "costTotalLocalCurrency": 36, "currencyConversionRate": 1,
    "costTotal": 36, "costTime": 0, "costPower": 36,
    "priceStructure": {"energy": {"unit": "Wh", "elements": [
        {"intervalChange": 100, "stepCosts": 0, "intervalCosts": 0},
        {"intervalChange": 101, "stepCosts": 0.0404, "intervalCosts": 40.4},
        {"intervalChange": 102, "stepCosts": 0.0004, "intervalCosts": 0.4},
        {"intervalChange": 100000, "stepCosts": 35.9592, "intervalCosts": 0.4}]},
        "time": {"unit": "min", "elements": []}},
    "costSessionFee": 1,
}
UNPRICED = {
    **PRICED, "costTotalLocalCurrency": None, "costTotal": None, "costTime": None,
    "costPower": None, "currencyConversionRate": 1.0642,
    "priceStructure": {"energy": {"unit": "Wh", "elements": [
        {"intervalChange": 100, "stepCosts": None, "intervalCosts": 0},
        {"intervalChange": 101, "stepCosts": None, "intervalCosts": 40.4},
        {"intervalChange": 102, "stepCosts": None, "intervalCosts": 0.4},
        {"intervalChange": 100000, "stepCosts": None, "intervalCosts": 0.4}]},
        "time": {"unit": "min", "elements": []}},
}
del UNPRICED["costSessionFee"]
UNPRICED["sessionFee"] = 1.0  # all_paged spelling

# As the vendor's public endpoint answers it: no top-level id (the owned views add one).
PASSPORT = {"general_information": {"identification": {"uid": "BP-1"}},
            "battery": {"chemistry": "NMC", "capacity_kwh": 75}, "documents": ["a", "b"]}

T0 = datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "gateway.sqlite3"


@pytest.fixture
def outbox(db: Path):
    box = Outbox(db)
    box.open()
    yield box
    box.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def detector(outbox: Outbox, registry: CollectorRegistry) -> ChangeDetector:
    return ChangeDetector(outbox, GatewayMetrics(registry), clock=lambda: T0)


def counted(registry: CollectorRegistry, entity: str, detected_by: str) -> float:
    return registry.get_sample_value("ampgate_changes_detected_total",
                                     {"entity": entity, "detected_by": detected_by}) or 0.0


# --- tariffs ---------------------------------------------------------------------------------

def test_a_different_consumption_is_the_same_tariff() -> None:
    assert tariff_of(PRICED) == tariff_of(UNPRICED)
    assert digest_of(tariff_of(PRICED)) == digest_of(tariff_of(UNPRICED))


def test_tariff_keeps_only_tariff_defining_fields() -> None:
    t = tariff_of(PRICED)
    assert set(t) == {"rate_name", "cost_id", "currency", "price_structure", "session_fee"}
    assert t["cost_id"] == 2206 and t["session_fee"] == 1.0
    assert "stepCosts" not in orjson.dumps(t).decode()
    assert tariff_of({**PRICED, "rateName": "Night"}) != t
    assert tariff_of({**PRICED, "costSessionFee": 2}) != t
    # tax rates live in the price structure (include_tax) and are tariff-defining
    taxed = copy.deepcopy(PRICED)
    taxed["priceStructure"]["energy"]["tax"] = 19
    assert tariff_of(taxed) != t


def test_digest_is_canonical() -> None:
    assert digest_of({"a": 1, "b": {"c": 2, "d": 3}}) == digest_of({"b": {"d": 3, "c": 2}, "a": 1})
    assert digest_of({"a": 1}).startswith("sha256:") and len(digest_of({"a": 1})) == 7 + 64


def test_a_passport_is_the_same_through_its_public_and_owned_views(detector):
    assert detector.passport("BP-1", PASSPORT, Detection.READ)
    assert not detector.passport("BP-1", {"id": "BP-1", **PASSPORT}, Detection.READ)
    assert not detector.passport("BP-1", PASSPORT, Detection.POLL)


# --- passports -------------------------------------------------------------------------------

def test_first_read_is_a_snapshot_then_only_differences(detector, outbox, registry) -> None:
    assert detector.passport("BP-1", PASSPORT, Detection.READ) is True
    assert detector.passport("BP-1", copy.deepcopy(PASSPORT), Detection.READ) is False
    changed = {**PASSPORT, "battery": {"chemistry": "LFP", "capacity_kwh": 75}}
    assert detector.passport("BP-1", changed, Detection.READ) is True

    (first, second) = drain(outbox)
    assert first.topic == PASSPORT_TOPIC and first.key == "BP-1"
    assert first.data == {
        "passport_id": "BP-1", "change": "CHANGE_KIND_SNAPSHOT", "detected_by": "DETECTION_READ",
        "digest": digest_of(PASSPORT), "passport": PASSPORT,
        "observed_at": "2026-11-21T10:00:00.123456Z"}
    assert second.data["change"] == "CHANGE_KIND_UPDATED"
    assert second.data["previous_digest"] == digest_of(PASSPORT)
    assert second.data["digest"] == digest_of(changed)
    assert second.data["changed_paths"] == ["/battery/chemistry"]
    for event in (first, second):
        assert_valid_event(event)
    assert counted(registry, "passport", "read") == 2


def test_a_flip_back_is_announced_every_time(detector, outbox) -> None:
    a, b = PASSPORT, {**PASSPORT, "documents": ["a"]}
    for doc in (a, b, a):
        detector.passport("BP-1", doc, Detection.POLL)
    kinds = [(e.data["change"], e.data.get("changed_paths")) for e in drain(outbox)]
    assert kinds == [("CHANGE_KIND_SNAPSHOT", None),
                     ("CHANGE_KIND_UPDATED", ["/documents/1"]),
                     ("CHANGE_KIND_UPDATED", ["/documents/1"])]


def test_writes_always_announce_with_the_method_kind(detector, outbox, registry) -> None:
    detector.passport("BP-1", PASSPORT, Detection.WRITE, ChangeKind.CREATED)
    detector.passport("BP-1", PASSPORT, Detection.WRITE, ChangeKind.UPDATED)  # same content
    detector.passport("BP-1", None, Detection.WRITE, ChangeKind.DELETED)
    created, updated, deleted = drain(outbox)
    assert created.data["change"] == "CHANGE_KIND_CREATED"
    assert created.data["changed_paths"] == [""]
    assert updated.data["change"] == "CHANGE_KIND_UPDATED"
    assert updated.data["previous_digest"] == updated.data["digest"]
    assert deleted.data == {"passport_id": "BP-1", "change": "CHANGE_KIND_DELETED",
                            "detected_by": "DETECTION_WRITE",
                            "previous_digest": digest_of(PASSPORT), "changed_paths": [""],
                            "observed_at": "2026-11-21T10:00:00.123456Z"}
    for e in (created, updated, deleted):
        assert_valid_event(e)
    assert counted(registry, "passport", "write") == 3
    # Gone stays gone silently; coming back is a creation, not a first sighting.
    assert detector.passport("BP-1", None, Detection.READ) is False
    assert detector.passport("BP-1", PASSPORT, Detection.READ) is True
    assert [e.data["change"] for e in drain(outbox)] == ["CHANGE_KIND_CREATED"]


def test_unknown_and_absent_is_not_a_change(detector, outbox) -> None:
    assert detector.passport("never-seen", None, Detection.POLL) is False
    assert drain(outbox) == []


def test_restart_announces_nothing_again(db, outbox, registry) -> None:
    first = ChangeDetector(outbox, GatewayMetrics(registry))
    first.passport("BP-1", PASSPORT, Detection.POLL)
    first.tariff("DE*EEE*E000001", "fleet", tariff_of(PRICED), Detection.POLL)
    assert len(drain(outbox)) == 2
    outbox.close()

    reopened = Outbox(db)
    reopened.open()
    try:
        again = ChangeDetector(reopened, GatewayMetrics(CollectorRegistry()))
        assert again.passport("BP-1", copy.deepcopy(PASSPORT), Detection.POLL) is False
        assert again.tariff("DE*EEE*E000001", "fleet", tariff_of(UNPRICED), Detection.READ) is False
        assert again.last_digest("passport", "BP-1") == digest_of(PASSPORT)
        assert again.known_evses("fleet") == {"DE*EEE*E000001"}
        # ... and still knows the previous document, for the diff
        assert again.passport("BP-1", {**PASSPORT, "id": "BP-1", "x": 1}, Detection.POLL)
        (event,) = drain(reopened)
        assert event.data["change"] == "CHANGE_KIND_UPDATED"
        assert event.data["changed_paths"] == ["/x"]
    finally:
        reopened.close()


def test_event_and_memory_are_one_transaction(db, outbox, registry) -> None:
    """Whatever the detector remembered is in the file together with its event."""
    detector = ChangeDetector(outbox, GatewayMetrics(registry))
    detector.passport("BP-1", PASSPORT, Detection.READ)
    with outbox.transaction() as conn:
        (seen,) = conn.execute("SELECT digest FROM change_seen WHERE key = 'BP-1'").fetchone()
    assert seen == digest_of(PASSPORT)
    assert outbox.pending() == 1



def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_recent_documents_are_bounded_by_bytes_and_diffs_still_read_the_file(
        detector, outbox) -> None:
    """Big documents: what the detector keeps in memory stays near its 1 MiB bound (it once
    kept its last 1,024 documents: 64 MiB of them with 64 KiB passports; here 20 MiB grew the
    RSS by ~60 MiB, bounded by ~5), and a passport no longer in memory is still diffed
    against its last version, read from the file."""
    pad = "x" * 64 * 1024
    docs = {f"BP-{n}": {**PASSPORT, "pad": pad, "n": n} for n in range(320)}  # 20 MiB
    gc.collect()
    before = _rss_mib()
    for pid, doc in docs.items():
        assert detector.passport(pid, doc, Detection.READ)
    gc.collect()
    grown = _rss_mib() - before
    assert grown < 24, f"RSS grew {grown:.0f} MiB for 320 documents of 64 KiB"
    drain(outbox)
    assert detector.passport("BP-0", {**docs["BP-0"], "n": -1}, Detection.READ)
    (event,) = drain(outbox)
    assert event.data["changed_paths"] == ["/n"]


# --- prices ----------------------------------------------------------------------------------

def test_price_events_name_the_context_and_carry_tariffs(detector, outbox, registry) -> None:
    evse = "DE*EEE*E000001"
    assert detector.tariff(evse, "fleet", tariff_of(UNPRICED), Detection.POLL) is True
    assert detector.tariff(evse, "fleet", tariff_of(PRICED), Detection.READ) is False
    dearer = copy.deepcopy(UNPRICED)
    dearer["priceStructure"]["energy"]["elements"][1]["intervalCosts"] = 45.0
    assert detector.tariff(evse, "fleet", tariff_of(dearer), Detection.READ) is True
    # Another context is another entity.
    assert detector.tariff(evse, "staff", tariff_of(PRICED), Detection.READ) is True
    assert detector.tariff(evse, "fleet", None, Detection.POLL) is True

    snap, upd, other, gone = drain(outbox)
    assert snap.topic == PRICE_TOPIC and snap.key == evse and snap.headers["ce_subject"] == evse
    assert snap.data["tariff_context"] == "fleet"
    assert snap.data["change"] == "CHANGE_KIND_SNAPSHOT" and "previous" not in snap.data
    assert snap.data["current"] == tariff_of(UNPRICED)
    assert upd.data["change"] == "CHANGE_KIND_UPDATED"
    assert upd.data["changed_paths"] == ["/price_structure/energy/elements/1/intervalCosts"]
    assert upd.data["previous"] == tariff_of(UNPRICED)
    assert upd.data["current"]["price_structure"]["energy"]["elements"][1]["intervalCosts"] == 45
    assert other.data["tariff_context"] == "staff" and other.data["change"] == "CHANGE_KIND_SNAPSHOT"
    assert gone.data["change"] == "CHANGE_KIND_DELETED"
    assert "current" not in gone.data and "digest" not in gone.data
    assert gone.data["previous"] == upd.data["current"]
    for e in (snap, upd, other, gone):
        assert_valid_event(e)
    assert counted(registry, "price", "poll") == 2 and counted(registry, "price", "read") == 2
    assert detector.known_evses("fleet") == set() and detector.known_evses("staff") == {evse}


def test_a_page_is_one_batch(detector, outbox) -> None:
    page = [Observation(f"DE*EEE*E{n:06d}", tariff_of(PRICED)) for n in range(500)]
    assert detector.tariffs("fleet", page, Detection.POLL) == 500
    assert detector.tariffs("fleet", page, Detection.POLL) == 0
    assert len(drain(outbox)) == 500


def test_evse_ids_are_case_insensitive(detector, outbox) -> None:
    assert detector.tariff("de*eee*e000001", "fleet", tariff_of(PRICED), Detection.READ)
    assert not detector.tariff("DE*EEE*E000001", "fleet", tariff_of(PRICED), Detection.POLL)
    (event,) = drain(outbox)
    assert event.key == event.data["evse_id"] == "DE*EEE*E000001"


def test_reads_in_another_currency_or_with_tax_are_not_compared() -> None:
    assert tariff_comparable({"evseId": "DE*EEE*E000001", "tag_id": "x", "consumption": "9"})
    assert not tariff_comparable({"evseId": "DE*EEE*E000001", "tag_id": "x", "currency": "CHF"})
    assert not tariff_comparable({"evseIds": "DE*EEE*E000001", "tag_id": "x", "include_tax": ""})


# --- group commit (the gateway starts the outbox's writer thread) ---------------------------

@pytest.fixture
async def grouped(db: Path, registry: CollectorRegistry):
    box = Outbox(db)
    box.open()
    box.start_writer()
    yield box, ChangeDetector(box, GatewayMetrics(registry), clock=lambda: T0)
    box.close()


def file_state(db: Path) -> tuple[list[Sent], dict[str, str]]:
    """Events and last-seen digests as a restarted gateway would find them."""
    with Outbox(db) as box:
        events = drain(box)
        digests = dict(box.connection.execute("SELECT key, digest FROM change_seen"))
    return events, digests


async def test_settled_returns_once_every_detection_is_in_the_file(grouped, db) -> None:
    _, detector = grouped
    docs = [{**PASSPORT, "n": n} for n in range(40)]
    for n, doc in enumerate(docs):  # 40 writes in flight, none awaited yet
        assert detector.passport(f"BP-{n % 4}", doc, Detection.WRITE, ChangeKind.UPDATED)
    await detector.settled()
    events, digests = file_state(db)
    assert [e.data["passport"]["n"] for e in events] == list(range(40))
    assert digests == {f"BP-{k}": digest_of(docs[36 + k]) for k in range(4)}


async def test_unsettled_changes_diff_against_each_other(grouped, db) -> None:
    """A → B → C of one passport before any commit: C is compared with B, not with what
    the file still holds."""
    _, detector = grouped
    a, b = PASSPORT, {**PASSPORT, "x": 1}
    c = {**b, "battery": {**PASSPORT["battery"], "capacity_kwh": 80}}
    for doc in (a, b, c):
        assert detector.passport("BP-1", doc, Detection.READ)
    await detector.settled()
    events, _ = file_state(db)
    assert [e.data.get("changed_paths") for e in events] == [None, ["/x"],
                                                             ["/battery/capacity_kwh"]]
    assert events[2].data["previous_digest"] == digest_of(b)


def test_on_change_names_each_events_own_id(outbox, registry) -> None:
    """The event id handed to on_change (own events skipped on the way back, claims) is
    the ce_id of the record queued: for writes, reads, polls and deletions alike."""
    told: list[tuple[str, str, str]] = []
    detector = ChangeDetector(outbox, GatewayMetrics(registry), clock=lambda: T0,
                              on_change=lambda e, c, key, kind, event_id, d, by:
                              told.append((key, kind, event_id)))
    assert detector.passport("BP-1", PASSPORT, Detection.READ)
    assert detector.passport("BP-1", {**PASSPORT, "x": 1}, Detection.WRITE, ChangeKind.UPDATED)
    assert detector.passports([Observation("BP-2", PASSPORT), Observation("BP-3", PASSPORT)],
                              Detection.POLL) == 2
    assert detector.passport("BP-1", None, Detection.WRITE, ChangeKind.DELETED)
    assert detector.tariff("DE*EEE*E000001", "fleet", tariff_of(UNPRICED), Detection.POLL)
    events = drain(outbox)
    assert [(e.key, e.data["change"], e.headers["ce_id"]) for e in events] == told
    assert len({event_id for _, _, event_id in told}) == len(told) == 6


async def test_a_failed_commit_is_forgotten_and_announced_again(grouped, db, monkeypatch) -> None:
    box, detector = grouped
    assert detector.passport("BP-1", PASSPORT, Detection.READ)
    await detector.settled()
    changed = {**PASSPORT, "x": 1}
    add = box.add

    def failing_add(conn, record, claim=None):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(box, "add", failing_add)
    assert detector.passport("BP-1", changed, Detection.READ)
    with pytest.raises(sqlite3.OperationalError):
        await detector.settled()
    assert detector.last_digest("passport", "BP-1") == digest_of(PASSPORT)  # as in the file
    monkeypatch.setattr(box, "add", add)
    assert detector.passport("BP-1", changed, Detection.READ)  # announced again, not lost
    await detector.settled()
    events, digests = file_state(db)
    assert [e.data.get("changed_paths") for e in events] == [None, ["/x"]]
    assert digests == {"BP-1": digest_of(changed)}


def test_a_read_awaits_every_change_but_a_first_sighting(detector, outbox, registry) -> None:
    """``awaited`` counts the transactions a read answers after (respond.fetcher): not a
    first sighting (SNAPSHOT) in single-replica mode, which a crash before its commit
    loses together with the remembered digest (announced again, as for a poll)."""
    assert detector.passport("BP-1", PASSPORT, Detection.READ)  # snapshot
    assert (detector.queued, detector.awaited) == (1, 0)
    assert detector.tariff("DE*EEE*E000001", "public", {"currency": "EUR"}, Detection.READ)
    assert (detector.queued, detector.awaited) == (2, 0)
    assert detector.passport("BP-1", {**PASSPORT, "x": 1}, Detection.READ)  # updated
    assert (detector.queued, detector.awaited) == (3, 1)
    assert detector.passport("BP-1", None, Detection.READ)  # deleted
    assert detector.passport("BP-1", PASSPORT, Detection.READ)  # created (tombstone)
    assert (detector.queued, detector.awaited) == (5, 3)
    assert detector.passport("BP-2", PASSPORT, Detection.WRITE)  # writes always await
    assert (detector.queued, detector.awaited) == (6, 4)
    assert not detector.passport("BP-1", PASSPORT, Detection.READ)  # nothing new
    assert (detector.queued, detector.awaited) == (6, 4)


def test_in_cluster_mode_a_first_sighting_is_awaited_too(outbox, registry) -> None:
    """Another replica (or Redis) may hold an older version: a local first sighting can
    be a change cluster-wide (the claim decides after the commit)."""

    class Seeds:
        def seed(self, items):
            pass

    detector = ChangeDetector(outbox, GatewayMetrics(registry), clock=lambda: T0,
                              claims=Seeds())
    assert detector.passport("BP-1", PASSPORT, Detection.READ)
    assert (detector.queued, detector.awaited) == (1, 1)



def test_a_first_sighting_handed_to_later_is_recorded_when_the_work_runs(detector, outbox,
                                                                         registry) -> None:
    """``passport(later=...)``: a first sighting no read awaits is recorded by the work
    handed to ``later`` (the cache runs it once the fill's waiters are answered): nothing
    in the outbox before, the SNAPSHOT with its own time after; running it twice records
    nothing more."""
    clock = iter([T0] + [T0.replace(second=5)] * 10)  # seen at T0, recorded after
    detector._clock = lambda: next(clock)
    later: list = []
    assert detector.passport("BP-1", PASSPORT, Detection.READ, later=later.append)
    assert len(later) == 1 and drain(outbox) == [] and detector.queued == 0
    later[0]()
    later[0]()
    events = drain(outbox)
    assert [(e.key, e.data["change"]) for e in events] == [("BP-1", "CHANGE_KIND_SNAPSHOT")]
    assert events[0].data["observed_at"] == "2026-11-21T10:00:00.123456Z"
    assert (detector.queued, detector.awaited) == (1, 0)
    assert counted(registry, "passport", "read") == 1
    # seen now: the same again is no change, a new version is one the read awaits (at once)
    assert not detector.passport("BP-1", PASSPORT, Detection.READ, later=later.append)
    assert detector.passport("BP-1", {**PASSPORT, "x": 1}, Detection.READ, later=later.append)
    assert len(later) == 1 and (detector.queued, detector.awaited) == (2, 1)


def test_a_put_off_first_sighting_goes_before_any_later_detection(detector, outbox) -> None:
    """Order: whatever the detector is asked next runs the work put off first, so events
    of one key (and of all) leave in the order they were seen, and the next detection of
    the key compares with the first sighting (UPDATED, not a second SNAPSHOT)."""
    later: list = []
    assert detector.passport("BP-1", PASSPORT, Detection.READ, later=later.append)
    assert detector.passport("BP-1", {**PASSPORT, "x": 1}, Detection.WRITE,
                             ChangeKind.UPDATED)
    assert detector.passport("BP-2", PASSPORT, Detection.READ, later=later.append)
    assert detector.last_digest("passport", "BP-2") == digest_of(PASSPORT)  # runs it too
    later[0]()  # already run: nothing twice
    later[1]()
    assert [(e.key, e.data["change"]) for e in drain(outbox)] == [
        ("BP-1", "CHANGE_KIND_SNAPSHOT"), ("BP-1", "CHANGE_KIND_UPDATED"),
        ("BP-2", "CHANGE_KIND_SNAPSHOT")]


async def test_settled_records_a_put_off_first_sighting_first(detector, outbox) -> None:
    later: list = []
    assert detector.passport("BP-1", PASSPORT, Detection.READ, later=later.append)
    await detector.settled()
    assert [e.data["change"] for e in drain(outbox)] == ["CHANGE_KIND_SNAPSHOT"]


def test_only_a_first_sighting_no_read_awaits_is_put_off(outbox, registry, monkeypatch) -> None:
    """Not put off (recorded at once, ``later`` not called): a write, a poll, a CREATED
    after a tombstone, a document past the backpressure bound, cluster mode."""
    detector = ChangeDetector(outbox, GatewayMetrics(registry), clock=lambda: T0)
    later: list = []
    assert detector.passport("BP-1", PASSPORT, Detection.WRITE, later=later.append)
    assert detector.passport("BP-2", PASSPORT, Detection.POLL, later=later.append)
    assert detector.passport("BP-3", PASSPORT, Detection.READ)
    assert detector.passport("BP-3", None, Detection.READ)
    assert detector.passport("BP-3", PASSPORT, Detection.READ, later=later.append)  # created
    monkeypatch.setattr(changes, "_UNSETTLED_BYTES_MAX", 10)
    assert detector.passport("BP-4", PASSPORT, Detection.READ, later=later.append)
    monkeypatch.undo()
    assert later == [] and detector.queued == 6

    class Seeds:
        def seed(self, items):
            pass

    clustered = ChangeDetector(outbox, GatewayMetrics(CollectorRegistry()), clock=lambda: T0,
                               claims=Seeds())
    assert clustered.passport("BP-5", PASSPORT, Detection.READ, later=later.append)
    assert later == [] and (clustered.queued, clustered.awaited) == (1, 1)


# --- changed paths: the fast walk names what jsonpatch names ---------------------------------

_scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False) \
    | st.sampled_from(["", "a", "b", "~", "/"])
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.sampled_from(["a", "b", "c/d", "e~f"]), inner,
                                       max_size=3), max_leaves=12)
_documents = st.dictionaries(st.sampled_from(["a", "b", "c", "x/y"]), _json, max_size=4)


@settings(max_examples=400, deadline=None)
@given(previous=_documents, current=_documents, flips=st.lists(st.integers(0, 3), max_size=3))
def test_changed_paths_match_jsonpatch(previous, current, flips) -> None:
    """Same members with some values replaced (the fast walk) or anything else (jsonpatch):
    the pointers are those of jsonpatch's diff, in its order."""
    keys = sorted(previous)
    same_shape = {k: current.get(k, previous[k]) for k in keys}  # replaced values only
    for candidate in (current, same_shape, {**previous, **{keys[i % len(keys)]: True
                                                           for i in flips}} if keys else {}):
        expected = []
        for op in jsonpatch.JsonPatch.from_diff(previous, candidate):
            for p in (op.get("from"), op["path"]):
                if p is not None and p not in expected:
                    expected.append(p)
        assert sorted(_changed_paths(ChangeKind.UPDATED, previous, candidate)) == sorted(expected)
        walked: list[str] = []
        if _replaced_paths("", previous, candidate, walked):
            assert walked == expected  # in jsonpatch's order too


@settings(max_examples=400, deadline=None)
@given(previous=_documents, current=_documents, flips=st.lists(st.integers(0, 3), max_size=3))
def test_diffs_against_kept_member_bytes_match_diffs_of_decoded_documents(
        previous, current, flips) -> None:
    """A recent document is kept as its members' bytes: the event's changed_paths and
    previous are those the decoded document gives, and the row's bytes are orjson's."""
    keys = sorted(previous)
    same_shape = {k: current.get(k, previous[k]) for k in keys}
    kept = _stored(previous)
    assert _row_bytes(kept) == orjson.dumps(previous) and _decoded(kept) == previous
    for candidate in (current, same_shape, {**previous, **{keys[i % len(keys)]: True
                                                           for i in flips}} if keys else {}):
        for entity, kind in (("passport", ChangeKind.UPDATED), ("price", ChangeKind.UPDATED)):
            got = _outcome(entity, kind, kept, candidate, _stored(candidate))
            want = _outcome(entity, kind, orjson.loads(orjson.dumps(previous)), candidate, None)
            assert got == want


def _outcome(entity, kind, previous, current, stored):
    try:
        return _build(entity, "ctx", "K", kind, Detection.READ, "sha256:a", "sha256:b", previous,
                      current, T0, "2026-01-01T00:00:00Z", "id-1", stored)
    except ValueError as exc:  # a price that is no Tariff: the same refusal
        return str(exc)


@given(document=st.dictionaries(st.text(max_size=4), _json, max_size=5) | _json)
def test_kept_bytes_are_orjsons(document) -> None:
    assert _row_bytes(_stored(document)) == orjson.dumps(document)


async def test_a_diff_against_a_recent_document_decodes_only_the_members_that_differ(
        grouped, db, monkeypatch) -> None:
    """Committed or not, a recent document's unchanged members are compared by their bytes:
    the diff decodes the one member that changed, never the whole document."""
    from services.gateway import changes

    _, detector = grouped
    b = {**PASSPORT, "x": {"n": 1}}
    c, d = {**b, "x": {"n": 2}}, {**b, "x": {"n": 3}}
    for pid in ("BP-1", "BP-2"):
        assert detector.passport(pid, b, Detection.READ)
    await detector.settled()  # BP-1 and BP-2 committed; then BP-2 unsettled again
    assert detector.passport("BP-2", c, Detection.READ)
    decoded: list[bytes] = []
    loads = changes.orjson.loads

    def recording(raw):
        decoded.append(bytes(raw))
        return loads(raw)

    monkeypatch.setattr(changes.orjson, "loads", recording)
    assert detector.passport("BP-1", c, Detection.READ)
    assert detector.passport("BP-2", d, Detection.READ)
    monkeypatch.undo()
    assert decoded == [b'{"n":1}', b'{"n":2}']
    await detector.settled()
    events, _ = file_state(db)
    assert [(e.key, e.data.get("changed_paths")) for e in events] == [
        ("BP-1", None), ("BP-2", None), ("BP-2", ["/x/n"]), ("BP-1", ["/x/n"]),
        ("BP-2", ["/x/n"])]
