"""Outbox → Kafka on a real broker: every value is a valid event, per-key order holds,
nothing is lost when the broker goes away or the gateway is SIGKILLed, and SIGTERM
drains the outbox within the grace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import aiohttp
import orjson
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
from services.common.kafka import ensure_topics
from services.common.outbox import Outbox, OutboxPublisher
from services.gateway.metrics import GatewayMetrics
from tests.fixtures.gateway import CLIENTS, WRITER_KEY, auth
from tests.fixtures.kafka import unique_name
from tests.fixtures.processes import settings_env, start_service
from tests.fixtures.sandbox import free_port, upstream_settings
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
        from services.common.outbox import OutboxPublisher
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


# -- SIGTERM: drain, bounded by AMPGATE_SHUTDOWN__GRACE_S (DESIGN.md §7) ----------------

def gateway_env(sandbox, kafka, state_dir: Path, grace_s: float) -> dict[str, str]:
    env = settings_env({
        **upstream_settings(sandbox.url, sandbox.config),
        "kafka": {"bootstrap_servers": kafka.bootstrap, "enable_idempotence": "false"},
        "state_dir": str(state_dir),
        "shutdown": {"grace_s": grace_s},
    })
    env["AMPGATE_CLIENTS"] = orjson.dumps(CLIENTS).decode()
    return env


async def write_versions(url: str, pid: str, n: int) -> list[str]:
    """POST then PUTs through the gateway: ``n`` passport-changed events."""
    def doc(state: str) -> dict:
        return {"id": pid, "status": {"state": state},
                "general_information": {"identification": {"uid": pid}}}

    async with aiohttp.ClientSession(headers=auth(WRITER_KEY)) as http:
        async with http.post(f"{url}/v1/passports", json=doc("v0")) as resp:
            assert resp.status == 201, await resp.text()
        for i in range(1, n):
            async with http.put(f"{url}/v1/passports/{pid}", json=doc(f"v{i}")) as resp:
                assert resp.status == 200
    return [f"v{i}" for i in range(n)]


def outbox_rows(state_dir: Path) -> int:
    conn = sqlite3.connect(state_dir / "gateway.sqlite3")
    try:
        return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    finally:
        conn.close()


async def states_of(bootstrap: str, pid: str, want: int) -> list[str]:
    def states(rs) -> list[str]:
        return [orjson.loads(r.value)["passport"]["status"]["state"] for r in rs
                if r.key == pid.encode()]

    await ensure_topics(bootstrap, [PASSPORT_TOPIC, PRICE_TOPIC], 6, 1)
    records = await read_topics(bootstrap, [PASSPORT_TOPIC],
                                until=lambda rs: len(states(rs)) >= want, timeout_s=15)
    return states(records)


def logged_events(log: str) -> list[str]:
    events = []
    for line in log.splitlines():
        with contextlib.suppress(ValueError):
            events.append(orjson.loads(line).get("event"))
    return events


def wait_exit(proc: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.slow
async def test_sigterm_drains_the_outbox_to_kafka_before_exit(private_kafka, sandbox, tmp_path):
    state = tmp_path / "state"
    env = gateway_env(sandbox, private_kafka, state, grace_s=15)
    await asyncio.to_thread(private_kafka.stop)  # the writes' events wait in the outbox
    gw = await asyncio.to_thread(start_service, "gateway", free_port(), env)
    try:
        pid = unique_name("BP-TERM")
        written = await write_versions(gw.url, pid, 20)
        assert outbox_rows(state) == 20
        gw.proc.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        await asyncio.sleep(0.5)
        # No longer taking requests, but still running: draining, waiting for Kafka.
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/healthz"):
                pass
        assert gw.proc.poll() is None, gw.log()[-2000:]
        await asyncio.to_thread(private_kafka.start)
        code = await asyncio.to_thread(wait_exit, gw.proc, 20)
        took = time.monotonic() - terminated
    finally:
        gw.kill()
    assert code == 0, gw.log()[-3000:]
    assert took < 15, f"exit after {took:.1f} s, grace 15 s"
    assert outbox_rows(state) == 0
    assert "outbox_drained" in logged_events(gw.log())
    assert await states_of(private_kafka.bootstrap, pid, 20) == written


@pytest.mark.slow
async def test_sigterm_with_the_broker_down_exits_within_the_grace_and_keeps_the_rows(
        private_kafka, sandbox, tmp_path):
    state = tmp_path / "state"
    env = gateway_env(sandbox, private_kafka, state, grace_s=2)
    await asyncio.to_thread(private_kafka.stop)
    port = free_port()
    gw = await asyncio.to_thread(start_service, "gateway", port, env)
    try:
        pid = unique_name("BP-DOWN")
        written = await write_versions(gw.url, pid, 10)
        gw.proc.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        code = await asyncio.to_thread(wait_exit, gw.proc, 15)
        took = time.monotonic() - terminated
    finally:
        gw.kill()
    assert code == 0, gw.log()[-3000:]
    assert 2 <= took < 2 + 3, f"exit after {took:.1f} s, grace 2 s"  # it did wait, boundedly
    assert outbox_rows(state) == 10
    assert "outbox_drain_incomplete" in logged_events(gw.log())
    # The next start publishes what was left.
    await asyncio.to_thread(private_kafka.start)
    gw = await asyncio.to_thread(start_service, "gateway", port, env)
    try:
        assert await states_of(private_kafka.bootstrap, pid, 10) == written
    finally:
        gw.stop()
