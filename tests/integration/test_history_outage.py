"""The history worker while its database is away (DESIGN.md §7, transient is not poison):
no dead letter, nothing committed past the events it could not record, every version
recorded once the database is back."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from services.common.events import HISTORY_DEAD_LETTER_TOPIC, PASSPORT_TOPIC
from services.common.settings import Settings
from services.history.app import GROUP_ID, create_app
from tests.fixtures.gateway import CLIENTS, auth
from tests.unit.history.helpers import (
    create_topics,
    fresh_postgres_database,
    passport_doc,
    passport_record,
    produce,
    read_topic,
    sample,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def private_kafka(private_kafka):
    await create_topics(private_kafka.bootstrap, ["passport-changed", "price-changed"], 3)
    return private_kafka


def worker_settings(kafka, database_url: str) -> Settings:
    return Settings(kafka=kafka.kafka_settings(partitions=3),
                    history={"database_url": database_url}, clients=CLIENTS,
                    consumer={"session_timeout_s": 2.0, "retry_backoff_s": 0.05,
                              "retry_max_backoff_s": 0.2, "batch_size": 100})


def versions_recorded(registry) -> float:
    return sample(registry, "ampgate_history_versions_total", entity="passport")


def retried(registry) -> float:
    return sample(registry, "ampgate_consumer_messages_total", worker="history",
                  topic=PASSPORT_TOPIC, outcome="retried")


async def committed_offsets(bootstrap: str) -> dict[int, int]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP_ID,
                              enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()
        out = {}
        for p in sorted(reader.partitions_for_topic(PASSPORT_TOPIC) or ()):
            offset = await reader.committed(TopicPartition(PASSPORT_TOPIC, p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        await reader.stop()


def stream(pid: str, start: int, n: int) -> list:
    out, prev = [], None if start == 0 else passport_doc(pid, float(start - 1))
    for i in range(start, start + n):
        doc = passport_doc(pid, float(i))
        out.append(passport_record(pid, doc, prev, i))
        prev = doc
    return out


async def first_offsets(bootstrap: str, pid: str, skip: int) -> dict[int, int]:
    """Partition → offset of ``pid``'s record number ``skip`` (the first of the outage)."""
    records = [r for r in await read_topic(bootstrap, PASSPORT_TOPIC, skip + 1)
               if r.key == pid.encode()]
    return {records[skip].partition: records[skip].offset}


async def outage_then_recovery(kafka, database_url: str, aiohttp_client, *, down, up,
                               wait_failing) -> CollectorRegistry:
    registry = CollectorRegistry()
    client = await aiohttp_client(create_app(worker_settings(kafka, database_url), registry))
    await produce(kafka.bootstrap, stream("px", 0, 3))
    await wait_until(lambda: versions_recorded(registry) == 3)
    await down()
    try:
        await produce(kafka.bootstrap, stream("px", 3, 5))
        await wait_until(wait_failing(registry), timeout_s=20)
        first_failing = await first_offsets(kafka.bootstrap, "px", 3)
        committed = await committed_offsets(kafka.bootstrap)
        for partition, offset in first_failing.items():
            assert committed.get(partition, 0) <= offset, "committed past an unrecorded event"
        ready = await (await client.get("/readyz")).json()
        assert ready["checks"]["consumer"]["retrying"]["events"] >= 1, ready
        assert versions_recorded(registry) == 3
    finally:
        await up()
    await wait_until(lambda: versions_recorded(registry) == 8, timeout_s=20)
    body = await (await client.get("/v1/passports/px/history", headers=auth())).json()
    assert len(body["versions"]) == 8
    assert await read_topic(kafka.bootstrap, HISTORY_DEAD_LETTER_TOPIC, 1, timeout_s=1.0) == []
    assert sample(registry, "ampgate_consumer_messages_total", worker="history",
                  topic=PASSPORT_TOPIC, outcome="dead_lettered") == 0
    return registry


@pytest.mark.slow
async def test_sqlite_locked_by_another_connection(private_kafka, tmp_path, aiohttp_client):
    path = tmp_path / "history.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    async def down() -> None:
        holder.execute("BEGIN EXCLUSIVE")  # every writer waits, then 'database is locked'

    async def up() -> None:
        holder.execute("ROLLBACK")

    try:
        # The store waits 5 s (busy_timeout) per attempt: two failed attempts ~ 10 s.
        await outage_then_recovery(private_kafka, str(path), aiohttp_client, down=down, up=up,
                                   wait_failing=lambda reg: lambda: retried(reg) >= 10)
    finally:
        holder.close()


async def test_postgres_refusing_connections(private_kafka, postgres_dsn, aiohttp_client):
    url = await fresh_postgres_database(postgres_dsn)
    name = url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(postgres_dsn)

    async def down() -> None:
        # The database is there but takes no connections; the pool's are cut.
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = $1", name)

    async def up() -> None:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    try:
        # Ten failed attempts of the 5-event batch: well past the old 5-attempt budget.
        await outage_then_recovery(private_kafka, url, aiohttp_client, down=down, up=up,
                                   wait_failing=lambda reg: lambda: retried(reg) >= 50)
    finally:
        await admin.close()
