"""`ampgate history` end to end with a real broker, on SQLite and on PostgreSQL:
at-least-once delivery, exactly-once effect, dead letters, as-of queries."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.common.events import HISTORY_DEAD_LETTER_TOPIC, PASSPORT, PRICE, digest_of
from services.common.settings import Settings
from services.history.app import create_app
from services.history.keys import STORE_KEY
from services.history.versions import EntityKey
from tests.fixtures.gateway import CLIENTS, auth
from tests.unit.history.helpers import (
    create_topics,
    flip_flop,
    fresh_postgres_database,
    passport_doc,
    passport_record,
    price_record,
    produce,
    read_topic,
    sample,
    tariff,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite3")  # a plain path works too
    return await fresh_postgres_database(request.getfixturevalue("postgres_dsn"))


@pytest.fixture
async def private_kafka(private_kafka):
    # Topics first (tansu: a producer must not auto-create them).
    await create_topics(private_kafka.bootstrap, ["passport-changed", "price-changed"], 3)
    return private_kafka


def worker_settings(kafka, database_url: str) -> Settings:
    return Settings(kafka=kafka.kafka_settings(partitions=3),
                    history={"database_url": database_url}, clients=CLIENTS,
                    consumer={"session_timeout_s": 2.0, "retry_backoff_s": 0.05,
                              "batch_size": 100})


async def test_the_same_stream_twice_and_flip_flops(private_kafka, database_url, aiohttp_client):
    registry = CollectorRegistry()
    app = create_app(worker_settings(private_kafka, database_url), registry)
    client = await aiohttp_client(app, headers=auth())
    store = app[STORE_KEY]
    evse = "DE*EEE*E000001"
    stream = [*flip_flop("p1"), *flip_flop("p2"),
              price_record(evse, "fleet", tariff(0.30), None, 0),
              price_record(evse, "fleet", tariff(0.35), tariff(0.30), 10)]
    await produce(private_kafka.bootstrap, stream)
    await wait_until(lambda: sample(registry, "ampgate_history_versions_total",
                                    entity="passport") == 8)

    async def rows():
        out = []
        for key in (EntityKey(PASSPORT, "p1"), EntityKey(PASSPORT, "p2"),
                    EntityKey(PRICE, evse, "fleet")):
            out += [(v.event_id, v.digest, v.observed_at, v.document)
                    for v in await store.versions(key)]
        return out

    await wait_until(lambda: sample(registry, "ampgate_history_versions_total", entity="price") == 2)
    first = await rows()
    assert len(first) == 10

    # The whole stream again (an outbox resend): consumed, and nothing changes.
    await produce(private_kafka.bootstrap, stream)
    await wait_until(lambda: sample(registry, "ampgate_consumer_messages_total", worker="history",
                                    topic="passport-changed", outcome="ok") == 16)
    await wait_until(lambda: sample(registry, "ampgate_consumer_messages_total", worker="history",
                                    topic="price-changed", outcome="ok") == 4)
    assert await rows() == first
    assert sample(registry, "ampgate_history_versions_total", entity="passport") == 8

    resp = await client.get("/v1/passports/p1/history")
    assert len((await resp.json())["versions"]) == 4  # A→B→A→B
    resp = await client.get("/v1/passports/p1/history?at=2026-11-01T10:15:00Z")
    assert (await resp.json())["passport"] == passport_doc("p1", 58.5)
    resp = await client.get(f"/v1/prices/{evse}/history?context=fleet&at=2026-11-01T10:09:00Z")
    assert (await resp.json())["tariff"] == tariff(0.30)

    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["checks"]["consumer"]["lag"] == 0


async def test_poison_is_dead_lettered_and_the_worker_keeps_going(private_kafka, tmp_path,
                                                                  aiohttp_client):
    registry = CollectorRegistry()
    app = create_app(worker_settings(private_kafka, f"sqlite:///{tmp_path}/h.sqlite3"), registry)
    client = await aiohttp_client(app, headers=auth())
    a, b = passport_doc("px", 1.0), passport_doc("px", 2.0)
    first, second = passport_record("px", a, None, 0), passport_record("px", b, a, 1)
    poison = ("passport-changed", b"px", b'{"passport_id": 42}', list(first.headers))
    await produce(private_kafka.bootstrap, [first, poison, second])
    dead = await read_topic(private_kafka.bootstrap, HISTORY_DEAD_LETTER_TOPIC, 1)
    assert len(dead) == 1 and dead[0].value == b'{"passport_id": 42}'
    headers = dict(dead[0].headers)
    assert headers["dlq_service"] == b"history"
    assert b"does not match ampgate.events.v1.PassportChanged" in headers["dlq_reason"]
    await wait_until(lambda: sample(registry, "ampgate_history_versions_total",
                                    entity="passport") == 2)
    body = await (await client.get("/v1/passports/px/history")).json()
    assert [v["digest"] for v in body["versions"]] == [digest_of(b), digest_of(a)]
    assert sample(registry, "ampgate_consumer_messages_total", worker="history",
                  topic="passport-changed", outcome="invalid") == 1
