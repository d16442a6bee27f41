"""Outbox → Kafka on a real broker: every value is a valid event, per-key order holds,
nothing is lost when the broker goes away or the gateway is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from google.protobuf import json_format
from prometheus_client import CollectorRegistry

from services.common.events import (
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    PRICE_CE_TYPE,
    PRICE_TOPIC,
    build_event,
    parse_event,
)
from services.common.events.schemas import PassportChanged, PriceChanged
from services.common.kafka import OutboxPublisher, ensure_topics
from services.common.outbox import Outbox
from services.gateway.metrics import GatewayMetrics
from tests.fixtures.kafka import unique_name
from tests.unit.common.event_samples import passport_data, price_data

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def passport_event(passport_id: str, n: int):
    return build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, passport_id,
                       passport_data(passport_id, changed_paths=[f"/n/{n}"]))


def add(outbox: Outbox, *records) -> list[str]:
    with outbox.transaction() as conn:
        for record in records:
            outbox.add(conn, record)
    return [r.header("ce_id").decode() for r in records]


async def read_topics(bootstrap: str, topics, *, until, timeout_s: float = 20.0):
    """Every record of ``topics`` from the beginning, until ``until(records)`` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # metadata of every topic (naming them would auto-create)
        parts = [TopicPartition(t, p) for t in topics
                 for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records = []
        deadline = time.monotonic() + timeout_s
        while not until(records) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for tp in sorted(batch, key=lambda tp: (tp.topic, tp.partition)):
                records.extend(batch[tp])
        return records
    finally:
        await consumer.stop()


def ids_of(records, wanted=None) -> list[str]:
    ids = [dict(r.headers)["ce_id"].decode() for r in records]
    return [i for i in ids if wanted is None or i in wanted]


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "gateway.sqlite3")
    box.open()
    yield box
    box.close()


def sample(metrics: GatewayMetrics, name: str, **labels) -> float:
    for family in metrics.registry.collect():  # type: ignore[attr-defined]
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture
def gateway_metrics():
    registry = CollectorRegistry()
    m = GatewayMetrics(registry)
    m.registry = registry  # type: ignore[attr-defined]
    return m


async def test_published_events_parse_with_protos_and_cloudevents(kafka, outbox, gateway_metrics):
    passport_id, evse_id = unique_name("BP"), f"DE*EEE*E{time.time_ns() % 10**9}"
    records = [
        passport_event(passport_id, 1),
        build_event(PRICE_TOPIC, PRICE_CE_TYPE, evse_id, price_data(evse_id)),
    ]
    publisher = OutboxPublisher(outbox, kafka.kafka_settings(), gateway_metrics)
    await publisher.start()
    try:
        sent = set(add(outbox, *records))
        await wait_for(lambda: outbox.pending() == 0, 20, "outbox drained")
    finally:
        await publisher.stop()

    got = [r for r in await read_topics(
        kafka.bootstrap, [PASSPORT_TOPIC, PRICE_TOPIC],
        until=lambda rs: sent <= set(ids_of(rs))) if dict(r.headers)["ce_id"].decode() in sent]
    assert len(got) == 2
    for record in got:
        message_type = PassportChanged if record.topic == PASSPORT_TOPIC else PriceChanged
        json_format.Parse(record.value, message_type(), ignore_unknown_fields=False)
        event = ce_kafka.from_binary(
            ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value),
            JSONFormat())
        assert event.get_subject() == record.key.decode()
        assert parse_event(record).subject in (passport_id, evse_id)
    assert sample(gateway_metrics, "ampgate_events_published_total",
                  topic=PASSPORT_TOPIC, outcome="ok") == 1
    assert sample(gateway_metrics, "ampgate_events_published_total",
                  topic=PRICE_TOPIC, outcome="ok") == 1
    assert sample(gateway_metrics, "ampgate_outbox_pending") == 0


async def test_hundred_updates_of_one_passport_arrive_in_order_on_one_partition(
        kafka, outbox, gateway_metrics):
    passport_id = unique_name("BP")
    publisher = OutboxPublisher(outbox, kafka.kafka_settings(), gateway_metrics)
    await publisher.start()
    try:
        sent: list[str] = []
        for n in range(100):  # separate writes, as 100 client requests would be
            sent += add(outbox, passport_event(passport_id, n))
            if n % 10 == 0:
                await asyncio.sleep(0)  # let the publisher interleave
        await wait_for(lambda: outbox.pending() == 0, 20, "outbox drained")
    finally:
        await publisher.stop()

    wanted = set(sent)
    records = [r for r in await read_topics(kafka.bootstrap, [PASSPORT_TOPIC],
                                            until=lambda rs: wanted <= set(ids_of(rs)))
               if r.key == passport_id.encode()]
    assert ids_of(records) == sent
    assert len({r.partition for r in records}) == 1
    assert [r.offset for r in records] == sorted(r.offset for r in records)


async def test_ensure_topics_creates_missing_and_accepts_existing(kafka):
    fresh, existing = unique_name("topic"), unique_name("topic")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(existing, 2, 1)])
        assert await ensure_topics(kafka.bootstrap, [fresh, existing], 6, 1) == [fresh]
        assert await ensure_topics(kafka.bootstrap, [fresh, existing], 6, 1) == []
        partitions = {t["topic"]: len(t["partitions"])
                      for t in await admin.describe_topics([fresh, existing])}
    finally:
        await admin.close()
    assert partitions == {fresh: 6, existing: 2}


@pytest.mark.slow
async def test_broker_down_under_steady_writes_loses_nothing(private_kafka, outbox, gateway_metrics):
    settings = private_kafka.kafka_settings(partitions=3)
    publisher = OutboxPublisher(outbox, settings, gateway_metrics,
                                request_timeout_s=1.0, max_backoff_s=0.5)
    await publisher.start()
    sent: list[str] = []

    async def steady_writes(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            n = len(sent)
            sent.extend(add(outbox, passport_event(f"BP-{n % 7}", n)))
            await asyncio.sleep(0.01)

    try:
        await steady_writes(0.5)
        await wait_for(lambda: outbox.pending() == 0, 10, "first broker caught up")
        # tansu keeps records in memory: what it acknowledged leaves with it.
        before_outage = len(sent)
        private_kafka.stop()
        await steady_writes(3.0)
        ready, detail = publisher.status()
        assert ready is True  # the gateway stays ready; the publisher reports degraded
        assert detail["degraded"] is True and detail["state"] != "connected"
        assert detail["pending"] > 0 and detail["oldest_age_s"] > 1.0
        assert "last_error" in detail
        assert sample(gateway_metrics, "ampgate_outbox_pending") > 0
        assert sample(gateway_metrics, "ampgate_outbox_oldest_age_seconds") > 1.0

        private_kafka.start()  # same address, no topics: the publisher must recreate them
        await steady_writes(1.0)
        await wait_for(lambda: outbox.pending() == 0, 30, "outbox drained after restart")
        assert publisher.status() == (True, {"state": "connected", "degraded": False,
                                             "pending": 0, "oldest_age_s": 0.0})
    finally:
        await publisher.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=private_kafka.bootstrap)
    await admin.start()
    try:
        topics = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(None)}
    finally:
        await admin.close()
    assert topics[PASSPORT_TOPIC] == 3  # ensured before producing, not auto-created

    expected = sent[before_outage:]
    records = await read_topics(private_kafka.bootstrap, [PASSPORT_TOPIC],
                                until=lambda rs: set(expected) <= set(ids_of(rs)))
    on_topic = ids_of(records)
    assert len(expected) > 250
    assert set(on_topic) == set(expected), f"lost {len(set(expected) - set(on_topic))}"
    for key in {r.key for r in records}:  # per-key order kept across the outage
        ids = [i for i in ids_of([r for r in records if r.key == key])]
        firsts = list(dict.fromkeys(ids))
        assert firsts == [i for i in expected if i in set(firsts)]


@pytest.mark.slow
async def test_pending_events_of_a_sigkilled_gateway_are_published_after_restart(
        kafka, tmp_path, gateway_metrics):
    path = tmp_path / "gateway.sqlite3"
    passport_id = unique_name("BP")
    # A "gateway" whose Kafka is unreachable enqueues events, then is SIGKILLed.
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from prometheus_client import CollectorRegistry
        from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, build_event
        from services.common.kafka import OutboxPublisher
        from services.common.outbox import Outbox
        from services.common.settings import KafkaSettings
        from services.gateway.metrics import GatewayMetrics
        from tests.unit.common.event_samples import passport_data

        async def main():
            box = Outbox({str(path)!r}); box.open()
            dead = KafkaSettings(bootstrap_servers="127.0.0.1:9", enable_idempotence=False)
            publisher = OutboxPublisher(box, dead, GatewayMetrics(CollectorRegistry()),
                                        request_timeout_s=0.5)
            await publisher.start()
            for n in range(50):
                with box.transaction() as conn:
                    box.add(conn, build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE,
                            {passport_id!r}, passport_data({passport_id!r}), event_id=f"k-{{n}}"))
            print("pending", box.pending(), flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"pending 50"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    outbox = Outbox(path)
    outbox.open()
    publisher = OutboxPublisher(outbox, kafka.kafka_settings(), gateway_metrics)
    await publisher.start()
    try:
        await wait_for(lambda: outbox.pending() == 0, 20, "restarted publisher drained")
    finally:
        await publisher.stop()
        outbox.close()
    wanted = {f"k-{n}" for n in range(50)}
    records = [r for r in await read_topics(kafka.bootstrap, [PASSPORT_TOPIC],
                                            until=lambda rs: wanted <= set(ids_of(rs)))
               if r.key == passport_id.encode()]
    assert ids_of(records) == [f"k-{n}" for n in range(50)]
