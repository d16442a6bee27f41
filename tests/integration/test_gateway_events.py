"""Change events through the gateway, as a consumer of the topics sees them."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Self

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from google.protobuf import json_format

from services.common.events import PASSPORT_TOPIC, PRICE_TOPIC
from services.common.events.schemas import PassportChanged, PriceChanged
from services.common.kafka import ensure_topics
from tests.fixtures.gateway import CLIENTS, READER_KEY, WRITER_KEY, auth
from tests.fixtures.processes import settings_env, start_service
from tests.fixtures.sandbox import free_port, upstream_settings

pytestmark = pytest.mark.integration
SECRET_TAG = "RAWTAG9931"


class TopicReader:
    """Reads both topics from where they end now; keeps what matches ``keys``."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.records: list = []
        # tansu answers a stale "end" offset, so seek_to_end may land on older records:
        # keep only what was produced after we started reading.
        self.since_ms = int(time.time() * 1000) - 50

    async def __aenter__(self) -> Self:
        await ensure_topics(self.bootstrap, [PASSPORT_TOPIC, PRICE_TOPIC], 6, 1)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.consumer.start()
        await self.consumer.topics()
        parts = [TopicPartition(t, p) for t in (PASSPORT_TOPIC, PRICE_TOPIC)
                 for p in sorted(self.consumer.partitions_for_topic(t) or ())]
        self.consumer.assign(parts)
        await self.consumer.seek_to_end(*parts)
        for tp in parts:  # resolve the end offsets now, before anything is produced
            await self.consumer.position(tp)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()

    async def until(self, predicate, timeout_s: float = 20.0) -> list:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; got {len(self.records)} records")
            batch = await self.consumer.getmany(timeout_ms=200)
            for tp in sorted(batch, key=lambda tp: (tp.topic, tp.partition)):
                self.records.extend(r for r in batch[tp] if r.timestamp >= self.since_ms)
        return self.records

    def for_key(self, key: str) -> list:
        return [r for r in self.records if r.key == key.encode()]


async def states_on_topic(bootstrap: str, pid: str, *, want: int, timeout_s: float) -> list[str]:
    """status.state of every passport-changed event of ``pid``, read from offset 0 (tansu's
    ListOffsets answers are not to be trusted), once the topic exists."""
    # The consumer's partition metadata comes from its start: make sure the topics exist
    # by then (the gateway's publisher accepts topics that already exist).
    await ensure_topics(bootstrap, [PASSPORT_TOPIC, PRICE_TOPIC], 6, 1)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        parts = [TopicPartition(PASSPORT_TOPIC, p)
                 for p in sorted(consumer.partitions_for_topic(PASSPORT_TOPIC) or ())]
        assert parts, "no partitions known for passport-changed"
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, 0)
        states: list[str] = []
        while len({s for s in states if s != "v0"}) < want and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                states += [data(r)["passport"]["status"]["state"] for r in batch
                           if r.key == pid.encode()]
        return states
    finally:
        await consumer.stop()


def data(record) -> dict:
    return orjson.loads(record.value)


def check_contract(record) -> None:
    headers = dict(record.headers)
    message = PassportChanged() if record.topic == PASSPORT_TOPIC else PriceChanged()
    json_format.Parse(record.value, message, ignore_unknown_fields=False)
    event = ce_kafka.from_binary(ce_kafka.KafkaMessage(headers=headers, key=record.key,
                                                       value=record.value), JSONFormat())
    assert event.get_subject() == record.key.decode()
    assert headers["content-type"] == b"application/json"


@pytest.fixture
def kafka_gateway(make_gateway, kafka):
    async def make(**overrides):
        return await make_gateway(kafka={"bootstrap_servers": kafka.bootstrap,
                                         "enable_idempotence": kafka.enable_idempotence},
                                  **overrides)
    return make


def new_passport(pid: str, state: str = "active") -> dict:
    return {"id": pid, "status": {"state": state},
            "general_information": {"identification": {"uid": pid}}}


async def test_each_detection_path_emits_exactly_its_event(kafka_gateway, kafka, sandbox):
    gw = await kafka_gateway(tariff_contexts=[{"name": "fleet", "tag_id": SECRET_TAG}])
    pid = f"BP-E2E-{uuid.uuid4().hex[:8]}"
    async with TopicReader(kafka.bootstrap) as reader:
        # write: POST → created, PUT → updated, with changed_paths
        created = await gw.post("/v1/passports", json=new_passport(pid), headers=auth(WRITER_KEY))
        assert created.status == 201, await created.text()
        await reader.until(lambda rs: len([r for r in rs if r.key == pid.encode()]) >= 1)
        updated = await gw.put(f"/v1/passports/{pid}", json=new_passport(pid, "recalled"),
                               headers=auth(WRITER_KEY))
        assert updated.status == 200
        await reader.until(lambda rs: len([r for r in rs if r.key == pid.encode()]) >= 2)
        # read: the upstream changes behind our back; a revalidating read notices
        await sandbox.put_passport(pid, new_passport(pid, "repaired"))
        read = await gw.get(f"/v1/passports/{pid}", headers={**auth(), "Cache-Control": "no-cache"})
        assert (await read.json())["status"]["state"] == "repaired"
        # the same document read again is not a change
        await gw.get(f"/v1/passports/{pid}", headers={**auth(), "Cache-Control": "no-cache"})
        # a price read for a configured context → snapshot, then a tariff change → updated
        url = f"/v1/prices?evseId=DE*EEE*E000001&tag_id={SECRET_TAG}"
        assert (await gw.get(url, headers=auth())).status == 200
        await sandbox.put_tariff("DE*EEE*E000001", {"rateName": "Night tariff"})
        assert (await gw.get(url, headers={**auth(), "Cache-Control": "no-cache"})).status == 200
        # a different consumption is not a change
        await gw.get(url + "&consumption=5000", headers=auth())
        deleted = await gw.delete(f"/v1/passports/{pid}", headers=auth(WRITER_KEY))
        assert deleted.status in (200, 204)
        await reader.until(lambda rs: len([r for r in rs if r.key == pid.encode()]) >= 4
                           and len([r for r in rs if r.topic == PRICE_TOPIC
                                    and r.key == b"DE*EEE*E000001"]) >= 2)
        await asyncio.sleep(0.5)  # nothing else may follow
        await reader.until(lambda rs: True)
    passport_events = [data(r) for r in reader.for_key(pid)]
    assert [(e["change"], e["detected_by"]) for e in passport_events] == [
        ("CHANGE_KIND_CREATED", "DETECTION_WRITE"),
        ("CHANGE_KIND_UPDATED", "DETECTION_WRITE"),
        ("CHANGE_KIND_UPDATED", "DETECTION_READ"),
        ("CHANGE_KIND_DELETED", "DETECTION_WRITE"),
    ]
    assert "/status/state" in passport_events[1]["changed_paths"]
    assert passport_events[1]["previous_digest"] == passport_events[0]["digest"]
    assert passport_events[2]["passport"]["status"]["state"] == "repaired"
    assert "passport" not in passport_events[3]
    price_events = [data(r) for r in reader.records
                    if r.topic == PRICE_TOPIC and r.key == b"DE*EEE*E000001"]
    assert [(e["change"], e["detected_by"]) for e in price_events] == [
        ("CHANGE_KIND_SNAPSHOT", "DETECTION_READ"), ("CHANGE_KIND_UPDATED", "DETECTION_READ")]
    assert price_events[1]["tariff_context"] == "fleet"
    assert price_events[1]["current"]["rate_name"] == "Night tariff"
    for record in reader.records:
        check_contract(record)
        blob = record.value + record.key + b"".join(v for _, v in record.headers)
        assert SECRET_TAG.encode() not in blob, "raw tag ids are personal data"


async def test_passport_poll_emits_snapshots_then_changes(kafka_gateway, kafka, sandbox):
    from services.gateway.changes import ChangeDetector  # noqa: F401  (wired by the app)

    gw = await kafka_gateway(poll={"passports_interval_s": 0.5})
    pid = f"BP-POLL-{uuid.uuid4().hex[:8]}"
    async with TopicReader(kafka.bootstrap) as reader:
        # the first complete pass announces everything as a snapshot
        await reader.until(lambda rs: len({r.key for r in rs if r.topic == PASSPORT_TOPIC}) >= 300,
                           timeout_s=60)
        await sandbox.put_passport(pid, new_passport(pid))
        await reader.until(lambda rs: any(r.key == pid.encode() for r in rs), timeout_s=30)
    assert gw  # the gateway ran the poller
    first = {data(r)["change"] for r in reader.records if r.key == b"BP-0001"}
    assert first == {"CHANGE_KIND_SNAPSHOT"}
    assert [data(r)["change"] for r in reader.for_key(pid)] == ["CHANGE_KIND_CREATED"]
    assert all(data(r)["detected_by"] == "DETECTION_POLL" for r in reader.records
               if r.topic == PASSPORT_TOPIC)


async def test_hundred_updates_arrive_in_order_on_one_partition(kafka_gateway, kafka, sandbox):
    gw = await kafka_gateway()
    pid = f"BP-ORDER-{uuid.uuid4().hex[:8]}"
    await gw.post("/v1/passports", json=new_passport(pid, "v0"), headers=auth(WRITER_KEY))
    async with TopicReader(kafka.bootstrap) as reader:
        for n in range(1, 101):
            resp = await gw.put(f"/v1/passports/{pid}", json=new_passport(pid, f"v{n}"),
                                headers=auth(WRITER_KEY))
            assert resp.status == 200
        await reader.until(lambda rs: len([r for r in rs if r.key == pid.encode()]) >= 100)
    records = reader.for_key(pid)
    assert len({r.partition for r in records}) == 1
    states = [data(r)["passport"]["status"]["state"] for r in records]
    assert states == [f"v{n}" for n in range(1, 101)]
    digests = [data(r) for r in records]
    for before, after in itertools.pairwise(digests):
        assert after["previous_digest"] == before["digest"]


async def test_broker_down_gateway_serves_and_loses_nothing(make_gateway, private_kafka, sandbox):
    gw = await make_gateway(kafka={"bootstrap_servers": private_kafka.bootstrap,
                                   "enable_idempotence": False})
    pid = f"BP-DOWN-{uuid.uuid4().hex[:8]}"
    await gw.post("/v1/passports", json=new_passport(pid, "v0"), headers=auth(WRITER_KEY))
    await asyncio.to_thread(private_kafka.stop)
    # A steady write load while the broker is away, for longer than the producer's own
    # request timeout: tansu restarts empty, and a producer still retrying into it
    # could write records nobody can read (DESIGN.md §11, tansu caveat).
    for n in range(1, 51):
        resp = await gw.put(f"/v1/passports/{pid}", json=new_passport(pid, f"v{n}"),
                            headers=auth(WRITER_KEY))
        assert resp.status == 200
        await asyncio.sleep(0.24)
    ready = await gw.get("/readyz")
    assert ready.status == 200
    metrics = await (await gw.get("/metrics")).text()
    pending = next(l for l in metrics.splitlines() if l.startswith("ampgate_outbox_pending "))
    assert float(pending.split()[1]) >= 50
    await asyncio.to_thread(private_kafka.start)
    # tansu comes back empty: read everything from offset 0
    states = await states_on_topic(private_kafka.bootstrap, pid, want=50, timeout_s=40)
    # v0 may have gone out (and been lost with the broker's memory) before the stop
    pending = next(l for l in (await (await gw.get("/metrics")).text()).splitlines()
                   if l.startswith("ampgate_outbox_pending "))
    assert [s for s in states if s != "v0"] == [f"v{n}" for n in range(1, 51)], pending


async def test_sigkilled_gateway_publishes_pending_events_after_restart(private_kafka, sandbox, tmp_path):
    env = settings_env({
        **upstream_settings(sandbox.url, sandbox.config),
        "kafka": {"bootstrap_servers": private_kafka.bootstrap, "enable_idempotence": "false"},
        "state_dir": str(tmp_path / "state"),
    })
    env["AMPGATE_CLIENTS"] = orjson.dumps(CLIENTS).decode()
    await asyncio.to_thread(private_kafka.stop)  # events must wait in the outbox
    port = free_port()
    gw = await asyncio.to_thread(start_service, "gateway", port, env)
    pid = f"BP-KILL-{uuid.uuid4().hex[:8]}"
    try:
        async with aiohttp.ClientSession(headers=auth(WRITER_KEY)) as http:
            async with http.post(f"{gw.url}/v1/passports", json=new_passport(pid, "v0")) as r:
                assert r.status == 201
            for n in range(1, 20):
                async with http.put(f"{gw.url}/v1/passports/{pid}",
                                    json=new_passport(pid, f"v{n}")) as r:
                    assert r.status == 200
    finally:
        gw.kill()  # the SIGKILL under test; also when an answer above fails the test
    await asyncio.to_thread(private_kafka.start)
    gw = await asyncio.to_thread(start_service, "gateway", port, env)
    try:
        states = await states_on_topic(private_kafka.bootstrap, pid, want=19, timeout_s=30)
        assert states == [f"v{n}" for n in range(20)]
    finally:
        gw.stop()


async def test_update_through_replica_a_evicts_replica_b(kafka_gateway, kafka, sandbox, tmp_path):
    a = await kafka_gateway(state_dir=tmp_path / "a")
    b = await kafka_gateway(state_dir=tmp_path / "b")
    await asyncio.sleep(1.0)  # let B's invalidation consumer attach
    pid = "BP-0007"
    doc = await (await b.get(f"/v1/passports/{pid}", headers=auth(READER_KEY))).json()
    assert (await b.get(f"/v1/passports/{pid}", headers=auth())).headers["X-Cache"] == "HIT"
    resp = await a.put(f"/v1/passports/{pid}", json={**doc, "status": {"state": "recalled"}},
                       headers=auth(WRITER_KEY))
    assert resp.status == 200
    deadline = time.monotonic() + 15
    while True:
        seen = await b.get(f"/v1/passports/{pid}", headers=auth())
        if (await seen.json())["status"]["state"] == "recalled":
            break
        assert time.monotonic() < deadline, "replica B still serves the old passport"
        await asyncio.sleep(0.1)


async def polled_prices(gw) -> float:
    text = await (await gw.get("/metrics")).text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ampgate_changes_detected_total{")
               and 'detected_by="poll"' in line and 'entity="price"' in line)


async def test_readme_demo_a_polled_tariff_change_is_served_at_once(kafka_gateway, kafka, sandbox):
    """README, "A change, end to end": GET a price for a configured tariff context, change
    that tariff upstream; once the poller has announced it, the same GET answers the new
    tariff — not the old one as a cache HIT until the TTL runs out."""
    interval = 0.5
    gw = await kafka_gateway(tariff_contexts=[{"name": "demo", "tag_id": "DEMO-TAG-0001"}],
                             poll={"prices_interval_s": interval})
    url = "/v1/prices?evseId=DE*EEE*E000001&tag_id=DEMO-TAG-0001"
    deadline = time.monotonic() + 15
    while not await polled_prices(gw):  # the first pass (snapshots) is behind us
        assert time.monotonic() < deadline, "the price poller never completed a pass"
        await asyncio.sleep(0.1)
    async with TopicReader(kafka.bootstrap) as reader:
        # Cached: the first pass's snapshots may still be evicting as they come back from
        # the topic, so ask until the answer is a HIT (the old tariff, held in the cache).
        while (hit := await gw.get(url, headers=auth())).headers["X-Cache"] != "HIT":
            assert time.monotonic() < deadline, "the price never stayed cached"
            await asyncio.sleep(0.05)
        old = await hit.json()
        new_name = f"Night tariff {uuid.uuid4().hex[:6]}"
        assert old["rateName"] != new_name
        await sandbox.put_tariff("DE*EEE*E000001", {"rateName": new_name})
        changed = time.monotonic()

        def announced(rs) -> bool:
            return any(r.topic == PRICE_TOPIC and r.key == b"DE*EEE*E000001"
                       and data(r).get("current", {}).get("rate_name") == new_name
                       for r in rs)

        await reader.until(announced, timeout_s=10)
        resp = await gw.get(url, headers=auth())  # the first GET after the announcement
        assert (await resp.json())["rateName"] == new_name, resp.headers["X-Cache"]
    event = next(data(r) for r in reader.records if r.topic == PRICE_TOPIC
                 and data(r).get("current", {}).get("rate_name") == new_name)
    assert (event["change"], event["detected_by"]) == ("CHANGE_KIND_UPDATED", "DETECTION_POLL")
    assert event["changed_paths"] == ["/rate_name"]
    assert time.monotonic() - changed < 2 * interval + 3.0  # a poll interval, plus slack


async def test_a_user_update_through_replica_a_evicts_replica_b(kafka_gateway, kafka, sandbox,
                                                                tmp_path):
    a = await kafka_gateway(state_dir=tmp_path / "a")
    b = await kafka_gateway(state_dir=tmp_path / "b")
    await asyncio.sleep(1.0)  # let B's invalidation consumer attach
    me = await (await b.get("/v1/users/me", headers=auth())).json()
    assert (await b.get("/v1/users/me", headers=auth())).headers["X-Cache"] == "HIT"
    language = f"x-{uuid.uuid4().hex[:4]}"
    assert me.get("language") != language
    resp = await a.put("/v1/users/me", json={**me, "language": language},
                       headers=auth(WRITER_KEY))
    assert resp.status == 200, await resp.text()
    deadline = time.monotonic() + 10  # well under the 30 s TTL B's entry would live
    while True:
        seen = await b.get("/v1/users/me", headers=auth())
        if (await seen.json()).get("language") == language:
            break
        assert time.monotonic() < deadline, "replica B still serves the old user"
        await asyncio.sleep(0.1)


async def test_a_read_after_a_write_of_the_same_passport_announces_nothing(
        kafka_gateway, kafka, sandbox):
    """The owned view carries a top-level ``id``, the public view (the vendor sample) does not:
    the same passport seen through both is one version, not an UPDATED of ``/id``."""
    gw = await kafka_gateway()
    pid = f"BP-VIEW-{uuid.uuid4().hex[:8]}"
    async with TopicReader(kafka.bootstrap) as reader:
        created = await gw.post("/v1/passports", json=new_passport(pid), headers=auth(WRITER_KEY))
        assert created.status == 201, await created.text()
        public = await gw.get(f"/v1/passports/{pid}", headers=auth())
        assert public.status == 200 and "id" not in await public.json()
        owned = await gw.get(f"/v1/passports/{pid}/owned", headers=auth())
        assert owned.status == 200 and (await owned.json())["id"] == pid
        await reader.until(lambda rs: len(reader.for_key(pid)) >= 1)
        await asyncio.sleep(0.5)  # nothing else may follow
        await reader.until(lambda rs: True)
    assert [data(r)["change"] for r in reader.for_key(pid)] == ["CHANGE_KIND_CREATED"]


async def test_a_first_read_stays_cached_when_its_own_snapshot_comes_back(
        kafka_gateway, kafka, sandbox):
    """The replica that announced a change evicted for it then; its own event read back from
    the topic must not throw out the answer that showed the change (a second upstream call
    for every first read). Another replica's event still evicts (tests above)."""
    gw = await kafka_gateway()
    pid = (await (await gw.get("/v1/passports", headers=auth())).json())[-1]["id"]
    await asyncio.sleep(1.0)  # the invalidation consumer is reading the topics by now
    before = (await sandbox.calls())["passport.public"]
    async with TopicReader(kafka.bootstrap) as reader:
        first = await gw.get(f"/v1/passports/{pid}", headers=auth())
        assert first.status == 200 and first.headers["X-Cache"] == "MISS"
        await reader.until(lambda rs: any(data(r)["change"] == "CHANGE_KIND_SNAPSHOT"
                                          for r in reader.for_key(pid)))
    await asyncio.sleep(1.0)  # and the gateway's own consumer has read it back too
    again = await gw.get(f"/v1/passports/{pid}", headers=auth())
    assert again.headers["X-Cache"] == "HIT"
    assert (await sandbox.calls())["passport.public"] - before == 1
