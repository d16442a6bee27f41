"""Pollers against the upstream sandbox over real sockets: exactly the events a change
deserves, and never a deletion from a pass that did not reach everything."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from prometheus_client import CollectorRegistry

from services.common.outbox import Outbox
from services.common.settings import Settings
from services.gateway.changes import ChangeDetector
from services.gateway.keys import DETECTOR_KEY, OUTBOX_KEY
from services.gateway.metrics import GatewayMetrics
from services.gateway.pollers import PassportPoller, PollResult, PricePoller
from services.gateway.tokens import StaticToken, TokenManager, siemensid_fetcher
from services.gateway.upstream_client import UpstreamClient
from tests.fixtures.gateway import auth
from tests.unit.gateway.test_changes import assert_valid_event, drain

TAG = "TAG-0451-SECRET"  # personal data: must never reach an event
EVSES = 2000  # the sandbox's default EVSE count


@pytest.fixture
def settings(sandbox, tmp_path: Path) -> Settings:
    up = sandbox.upstream_settings()
    # Breakers stay closed: these tests fail an upstream on purpose, then heal it.
    for group in ("passport", "pricing"):
        up[group] = {**up[group], "breaker_failures": 1000}
    return Settings(**up, state_dir=tmp_path,
                    tariff_contexts=[{"name": "fleet", "tag_id": TAG}],
                    poll={"page_size": 500})


class World:
    """Outbox + detector + pollers wired as the gateway does; ``restart()`` = new process."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
        self.metrics = GatewayMetrics(CollectorRegistry())
        self.outbox = Outbox(settings.state_dir / "gateway.sqlite3")
        self.outbox.open()
        self.detector = ChangeDetector(self.outbox, self.metrics)
        assert settings.pricing and settings.passport
        self.pricing = UpstreamClient(
            "pricing", settings.pricing, StaticToken("x-api-token", settings.pricing.api_token), self.metrics)
        self.tokens = TokenManager("siemensid", siemensid_fetcher(settings.passport), session,
                                   self.metrics)
        self.passport = UpstreamClient("passport", settings.passport, self.tokens,
                                       self.metrics)
        self.prices = PricePoller(self.pricing, settings, self.detector)
        self.passports = PassportPoller(self.passport, settings, self.detector)

    def restart(self) -> None:
        self.outbox.close()
        self.outbox = Outbox(self.settings.state_dir / "gateway.sqlite3")
        self.outbox.open()
        self.detector = ChangeDetector(self.outbox, self.metrics)
        self.prices = PricePoller(self.pricing, self.settings, self.detector)
        self.passports = PassportPoller(self.passport, self.settings, self.detector)

    def events(self) -> list[Any]:
        return drain(self.outbox)


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    async with aiohttp.ClientSession() as session:
        w = World(settings, session)
        await w.tokens.start()
        try:
            yield w
        finally:
            await w.tokens.stop()
            w.outbox.close()


def last_evses(n: int, ids: list[str]) -> list[str]:
    """The EVSEs the sandbox pages out last (it pages in sorted order)."""
    return sorted(ids)[-n:]


# --- prices ----------------------------------------------------------------------------------

async def test_price_poll_over_2000_evses_announces_exactly_the_3_changes(sandbox, world) -> None:
    first = await world.prices.poll_once()
    assert first == PollResult(seen=EVSES, changed=EVSES, complete=True)
    snapshots = world.events()
    assert len(snapshots) == EVSES
    assert {e.data["change"] for e in snapshots} == {"CHANGE_KIND_SNAPSHOT"}
    assert {e.data["detected_by"] for e in snapshots} == {"DETECTION_POLL"}
    assert_valid_event(snapshots[0])

    changed = sorted(e.key for e in snapshots)[::700]  # 3 EVSEs spread over the pages
    assert len(changed) == 3
    for n, evse in enumerate(changed):
        await sandbox.put_tariff(evse, {"rateName": f"Changed {n}"})
    second = await world.prices.poll_once()
    assert second == PollResult(seen=EVSES, changed=3, complete=True)
    events = world.events()
    assert sorted(e.key for e in events) == changed
    for e in events:
        assert_valid_event(e)
        assert e.data["change"] == "CHANGE_KIND_UPDATED"
        assert e.data["tariff_context"] == "fleet"
        assert e.data["changed_paths"] == ["/rate_name"]
        assert e.data["current"]["rate_name"].startswith("Changed ")
    # The raw tag id is personal data: not in any key, header or value.
    for e in snapshots + events:
        assert TAG not in repr(e)

    assert await world.prices.poll_once() == PollResult(seen=EVSES, changed=0, complete=True)
    assert world.events() == []


async def test_a_walk_cut_off_by_an_upstream_failure_announces_no_deletions(sandbox, world) -> None:
    await world.prices.poll_once()
    ids = [e.key for e in world.events()]
    gone = last_evses(5, ids)  # on the page the broken walk never reaches
    for evse in gone:
        await sandbox.remove_evse(evse)
    early = min(ids)
    await sandbox.put_tariff(early, {"rateName": "Early change"})
    # Two pages answer, then the pricing API fails (through every retry).
    await sandbox.fault("pricing.all_paged", "latency", latency_ms=1, times=2)
    await sandbox.fault("pricing.all_paged", "status", status=500)

    with structlog.testing.capture_logs() as logs:
        cut = await world.prices.poll_once()
    assert cut.complete is False and cut.seen == 1000
    events = world.events()
    # The change it did see is announced; nothing is declared deleted.
    assert [(e.key, e.data["change"]) for e in events] == [(early, "CHANGE_KIND_UPDATED")]
    (warning,) = [entry for entry in logs if entry["event"] == "poll_incomplete"]
    assert warning["context"] == "fleet" and TAG not in repr(warning)

    await sandbox.clear_faults()
    full = await world.prices.poll_once()
    assert full == PollResult(seen=EVSES - 5, changed=5, complete=True)
    deleted = world.events()
    assert sorted(e.key for e in deleted) == gone
    assert {e.data["change"] for e in deleted} == {"CHANGE_KIND_DELETED"}
    for e in deleted:
        assert_valid_event(e)
        assert "current" not in e.data and e.data["previous"]


async def test_new_evses_are_created_after_the_first_complete_walk(sandbox, world) -> None:
    await sandbox.fault("pricing.all_paged", "status", status=500, times=10)
    assert (await world.prices.poll_once()).complete is False
    await sandbox.clear_faults()
    await world.prices.poll_once()  # the first COMPLETE walk: snapshots
    assert {e.data["change"] for e in world.events()} == {"CHANGE_KIND_SNAPSHOT"}

    await sandbox.add_evse("AT*HTB*E99999")
    assert (await world.prices.poll_once()).changed == 1
    (created,) = world.events()
    assert created.key == "AT*HTB*E99999" and created.data["change"] == "CHANGE_KIND_CREATED"
    assert "previous_digest" not in created.data
    assert_valid_event(created)


async def test_a_restart_reannounces_nothing(sandbox, world) -> None:
    await world.prices.poll_once()
    assert len(world.events()) == EVSES
    world.restart()
    assert await world.prices.poll_once() == PollResult(seen=EVSES, changed=0, complete=True)
    assert world.events() == []
    # ... and still knows which EVSEs the last complete walk found.
    (evse,) = last_evses(1, list(world.detector.known_evses("fleet")))
    await sandbox.remove_evse(evse)
    await world.prices.poll_once()
    assert [(e.key, e.data["change"]) for e in world.events()] == [(evse, "CHANGE_KIND_DELETED")]


async def test_a_flip_back_is_three_events(sandbox, world) -> None:
    await world.prices.poll_once()
    evse = min(e.key for e in world.events())
    await sandbox.put_tariff(evse, {"rateName": "B"})
    await world.prices.poll_once()
    await sandbox.put_tariff(evse, {"rateName": "A"})
    await world.prices.poll_once()
    await sandbox.put_tariff(evse, {"rateName": "B"})
    await world.prices.poll_once()
    assert [e.data["current"]["rate_name"] for e in world.events()] == ["B", "A", "B"]


# --- passports -------------------------------------------------------------------------------

async def test_passport_poll_snapshots_then_changes(sandbox, world) -> None:
    first = await world.passports.poll_once()
    assert first.complete and first.seen == first.changed > 0
    snapshots = world.events()
    assert {e.data["change"] for e in snapshots} == {"CHANGE_KIND_SNAPSHOT"}
    assert_valid_event(snapshots[0])
    ids = sorted(e.key for e in snapshots)

    doc = dict(snapshots[0].data["passport"])
    await sandbox.put_passport(snapshots[0].key, {**doc, "note": "changed"})
    await sandbox.delete_passport(ids[-1])
    await sandbox.put_passport("BP-NEW-1", {"general_information": {"name": "new"}})
    second = await world.passports.poll_once()
    assert second.complete and second.changed == 3
    got = {e.key: e for e in world.events()}
    assert got[snapshots[0].key].data["change"] == "CHANGE_KIND_UPDATED"
    assert got[snapshots[0].key].data["changed_paths"] == ["/note"]
    assert got[ids[-1]].data["change"] == "CHANGE_KIND_DELETED"
    assert "passport" not in got[ids[-1]].data
    assert got["BP-NEW-1"].data["change"] == "CHANGE_KIND_CREATED"
    for e in got.values():
        assert_valid_event(e)


async def test_a_passport_pass_with_failed_documents_deletes_nothing(sandbox, world) -> None:
    await world.passports.poll_once()
    ids = sorted(e.key for e in world.events())
    await sandbox.delete_passport(ids[0])
    await sandbox.fault("passport.public", "status", status=500)
    with structlog.testing.capture_logs() as logs:
        partial = await world.passports.poll_once()
    assert partial.complete is False
    assert world.events() == []
    assert any(entry["event"] == "poll_incomplete" for entry in logs)

    await sandbox.clear_faults()
    assert (await world.passports.poll_once()).complete
    assert [(e.key, e.data["change"]) for e in world.events()] == [
        (ids[0], "CHANGE_KIND_DELETED")]


async def test_a_failed_owned_list_is_an_incomplete_pass(sandbox, world) -> None:
    await sandbox.fault("passport.owned_list", "status", status=503, times=10)
    assert await world.passports.poll_once() == PollResult(0, 0, False)
    assert world.events() == []


# --- passports: the owned list's shapes (undocumented upstream, DESIGN.md §11) ---------------

PASSPORTS = 300  # the sandbox's default passport count


async def test_a_paged_owned_list_is_walked_to_its_end(sandbox, world) -> None:
    first = await world.passports.poll_once()
    assert first == PollResult(seen=PASSPORTS, changed=PASSPORTS, complete=True)
    world.events()
    await sandbox.owned_list(shape="paged", page_size=70)  # {"data": [...], links.next}: 5 pages
    before = (await sandbox.calls())["passport.owned_list"]
    # Page 1 alone would "delete" the 230 passports of pages 2 to 5.
    assert await world.passports.poll_once() == PollResult(seen=PASSPORTS, changed=0,
                                                           complete=True)
    assert world.events() == []
    assert (await sandbox.calls())["passport.owned_list"] - before == 5

    # Changes on any page are seen, and a deletion is one deletion.
    await sandbox.delete_passport("BP-0300")  # was on the last page
    await sandbox.put_passport("BP-0150", {"general_information": {
        "identification": {"uid": "BP-0150"}}, "note": "changed"})  # page 3
    await sandbox.put_passport("BP-NEW-9", {"general_information": {
        "identification": {"uid": "BP-NEW-9"}}})  # appended: the last page
    third = await world.passports.poll_once()
    assert third == PollResult(seen=PASSPORTS, changed=3, complete=True)
    assert sorted((e.key, e.data["change"]) for e in world.events()) == [
        ("BP-0150", "CHANGE_KIND_UPDATED"), ("BP-0300", "CHANGE_KIND_DELETED"),
        ("BP-NEW-9", "CHANGE_KIND_CREATED")]


async def test_a_paged_walk_cut_off_midway_deletes_nothing(sandbox, world) -> None:
    await world.passports.poll_once()
    world.events()
    await sandbox.owned_list(shape="paged", page_size=100)
    await sandbox.delete_passport("BP-0001")
    # Page 1 answers, then the owned list fails through every retry.
    await sandbox.fault("passport.owned_list", "latency", latency_ms=1, times=1)
    await sandbox.fault("passport.owned_list", "status", status=503)
    with structlog.testing.capture_logs() as logs:
        assert await world.passports.poll_once() == PollResult(0, 0, False)
    assert world.events() == []
    assert [e["stage"] for e in logs if e["event"] == "poll_incomplete"] == ["owned_list"]
    await sandbox.clear_faults()
    assert (await world.passports.poll_once()).complete
    assert [(e.key, e.data["change"]) for e in world.events()] == [
        ("BP-0001", "CHANGE_KIND_DELETED")]


async def test_an_owned_list_of_unknown_shape_is_an_incomplete_pass(sandbox, world) -> None:
    await world.passports.poll_once()
    world.events()
    await sandbox.owned_list(shape="unknown")  # {"passports": [...]}: neither array nor data
    with structlog.testing.capture_logs() as logs:
        assert await world.passports.poll_once() == PollResult(0, 0, False)
    assert world.events() == []  # not "everything was deleted"
    (warning,) = [e for e in logs if e["event"] == "poll_incomplete"]
    assert warning["stage"] == "owned_list"
    # The members survive the incomplete pass: a later complete one deletes exactly one.
    await sandbox.owned_list(shape="data")
    await sandbox.delete_passport("BP-0007")
    assert (await world.passports.poll_once()).complete
    assert [(e.key, e.data["change"]) for e in world.events()] == [
        ("BP-0007", "CHANGE_KIND_DELETED")]


async def test_owned_items_without_a_top_level_id_are_keyed_by_their_uid(sandbox, world) -> None:
    await sandbox.owned_list(shape="data", ids="uid")
    first = await world.passports.poll_once()
    assert first == PollResult(seen=PASSPORTS, changed=PASSPORTS, complete=True)
    snapshots = world.events()
    assert {e.key for e in snapshots} == {f"BP-{n:04d}" for n in range(1, PASSPORTS + 1)}
    for e in snapshots[:5]:
        # The public document as the vendor's sample has it: identified by its uid only.
        assert "id" not in e.data["passport"]
        assert e.data["passport"]["general_information"]["identification"]["uid"] == e.key
        assert_valid_event(e)
    # Identified one way or the other, they are the same passports.
    for ids in ("mixed", "id"):
        await sandbox.owned_list(ids=ids)
        assert await world.passports.poll_once() == PollResult(seen=PASSPORTS, changed=0,
                                                               complete=True)
    await sandbox.owned_list(ids="mixed")
    await sandbox.delete_passport("BP-0002")  # an item without a top-level id in "mixed"
    assert (await world.passports.poll_once()).changed == 1
    assert [(e.key, e.data["change"]) for e in world.events()] == [
        ("BP-0002", "CHANGE_KIND_DELETED")]


# --- two tariff contexts: never mixed ----------------------------------------------------------

# Media of two different tariff groups of the sandbox (asserted in the tests).
FLEET_TAG, GUEST_TAG = "X", "TAG-1"
CONTEXTS = [{"name": "fleet", "tag_id": FLEET_TAG}, {"name": "guest", "tag_id": GUEST_TAG}]
EVSE = "DE*EEE*E000001"


async def assert_two_groups(sandbox) -> None:
    groups = [(await sandbox.tariff_for(EVSE, tag_id=t))["group"] for t in (FLEET_TAG, GUEST_TAG)]
    assert groups == ["business", "roaming"], "the test needs media of two tariff groups"


@pytest.fixture
async def two_contexts(sandbox, settings: Settings) -> AsyncIterator[World]:
    await assert_two_groups(sandbox)
    both = Settings(**sandbox.upstream_settings(), state_dir=settings.state_dir,
                    tariff_contexts=CONTEXTS, poll={"page_size": 500})
    async with aiohttp.ClientSession() as session:
        w = World(both, session)
        try:
            yield w
        finally:
            w.outbox.close()


def by_context(events: list[Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        out.setdefault(e.data["tariff_context"], {})[e.key] = e.data
    return out


async def test_each_tariff_context_polls_and_announces_its_own_tariff(sandbox, two_contexts) -> None:
    w = two_contexts
    assert await w.prices.poll_once() == PollResult(seen=2 * EVSES, changed=2 * EVSES,
                                                    complete=True)
    first = by_context(w.events())
    assert {c: len(v) for c, v in first.items()} == {"fleet": EVSES, "guest": EVSES}
    for context, suffix in (("fleet", " (Business)"), ("guest", " (Roaming)")):
        assert all(d["current"]["rate_name"].endswith(suffix) for d in first[context].values())
    for context, tag in (("fleet", FLEET_TAG), ("guest", GUEST_TAG)):
        upstream = (await sandbox.tariff_for(EVSE, tag_id=tag))["tariff"]
        current = first[context][EVSE]["current"]
        assert (current["rate_name"], current["cost_id"]) == (upstream["rateName"],
                                                              upstream["costId"])

    # A change for one medium is that context's change only.
    await sandbox.put_tariff(EVSE, {"rateName": "Fleet only"}, tag_id=FLEET_TAG)
    assert (await w.prices.poll_once()).changed == 1
    (event,) = w.events()
    assert (event.key, event.data["tariff_context"], event.data["current"]["rate_name"]) == (
        EVSE, "fleet", "Fleet only")
    # A change for every medium: one event per context, each with its own prices.
    await sandbox.put_tariff("AT*HTB*E00008", {"rateName": "Zeittarif neu"})
    assert (await w.prices.poll_once()).changed == 2
    both = by_context(w.events())
    assert {c: list(v) for c, v in both.items()} == {"fleet": ["AT*HTB*E00008"],
                                                      "guest": ["AT*HTB*E00008"]}
    fleet, guest = both["fleet"]["AT*HTB*E00008"], both["guest"]["AT*HTB*E00008"]
    assert fleet["current"]["rate_name"] == guest["current"]["rate_name"] == "Zeittarif neu"
    assert (fleet["current"]["cost_id"], guest["current"]["cost_id"]) == (13201, 23201)
    assert fleet["current"]["price_structure"] != guest["current"]["price_structure"]
    assert fleet["previous"]["cost_id"] == 13201 and guest["previous"]["cost_id"] == 23201
    assert_valid_event(event)


async def test_price_reads_of_two_contexts_keep_their_own_tariff(make_gateway, sandbox) -> None:
    await assert_two_groups(sandbox)
    gw = await make_gateway(tariff_contexts=CONTEXTS)
    outbox = gw.app[OUTBOX_KEY]
    url = f"/v1/prices?evseId={EVSE}&tag_id={{}}"
    for cache in ("MISS", "HIT"):
        for tag, cost_id in ((FLEET_TAG, 12206), (GUEST_TAG, 22206)):
            resp = await gw.get(url.format(tag), headers=auth())
            assert resp.status == 200 and resp.headers["X-Cache"] == cache
            assert (await resp.json())["costId"] == cost_id
    await gw.app[DETECTOR_KEY].settled()  # first sightings answer before their commit
    read = by_context(drain(outbox))
    assert {c: d[EVSE]["current"]["cost_id"] for c, d in read.items()} == {
        "fleet": 12206, "guest": 22206}
    assert {d[EVSE]["change"] for d in read.values()} == {"CHANGE_KIND_SNAPSHOT"}

    await sandbox.put_tariff(EVSE, {"rateName": "Guest night"}, tag_id=GUEST_TAG)
    fresh = {**auth(), "Cache-Control": "no-cache"}
    fleet = await (await gw.get(url.format(FLEET_TAG), headers=fresh)).json()
    guest = await (await gw.get(url.format(GUEST_TAG), headers=fresh)).json()
    assert fleet["rateName"] == "Standard-Verkaufstarif eMSP (Business)"
    assert guest["rateName"] == "Guest night"
    events = drain(outbox)
    assert [(e.key, e.data["tariff_context"], e.data["change"], e.data["current"]["rate_name"])
            for e in events] == [(EVSE, "guest", "CHANGE_KIND_UPDATED", "Guest night")]
    # The next plain read of each context answers its own tariff, not the other's.
    for tag, name in ((FLEET_TAG, fleet["rateName"]), (GUEST_TAG, "Guest night")):
        assert (await (await gw.get(url.format(tag), headers=auth())).json())["rateName"] == name


# --- the runner ------------------------------------------------------------------------------

async def test_run_forever_polls_survives_failures_and_zero_is_off(sandbox, world) -> None:
    await asyncio.wait_for(world.prices.run_forever(0), 1)  # off: returns at once

    class Flaky:
        name = "flaky"
        calls = 0

        async def poll_once(self) -> PollResult:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("boom")
            return PollResult(0, 0, True)

    from services.gateway.pollers import run_forever

    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(run_forever(Flaky(), 0.02))
        while Flaky.calls < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [e["event"] for e in logs if e["event"].startswith("poll_")][:2] == [
        "poll_failed", "poll_done"]
