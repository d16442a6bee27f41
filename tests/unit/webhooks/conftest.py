"""Drive the delivery engine directly with ConsumedEvent objects (no broker): real
SQLite queue, real HTTP receivers, a dead-letter sink that keeps what it is given."""

from __future__ import annotations

import base64
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, ConsumedEvent
from services.common.settings import WebhookSettings, WebhookSubscription
from services.webhooks.dead_letter import DeadLetter
from services.webhooks.engine import WebhookEngine
from services.webhooks.metrics import WebhookMetrics
from services.webhooks.store import JobStore
from tests.unit.webhooks.receiver import Receiver, Script

_offsets = itertools.count()


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def subscription(name: str, url: str, *, events: list[str] | None = None,
                 secret: str | None = None, entity_ids: list[str] | None = None
                 ) -> WebhookSubscription:
    return WebhookSubscription(name=name, url=url, events=events or ["*"],
                               secret=secret or new_secret(), entity_ids=entity_ids)


def passport_event(passport_id: str, previous: str, digest: str, *,
                   event_id: str | None = None, ce_type: str = PASSPORT_CE_TYPE,
                   topic: str = PASSPORT_TOPIC, change: str = "CHANGE_KIND_UPDATED"
                   ) -> ConsumedEvent:
    event_id = event_id or str(uuid.uuid4())
    now = datetime.now(UTC)
    data: dict[str, Any] = {
        "passport_id": passport_id, "change": change, "detected_by": "DETECTION_POLL",
        "previous_digest": previous, "digest": digest, "changed_paths": ["/x"],
        "passport": {"id": passport_id, "x": digest}, "observed_at": now.isoformat(),
    }
    headers = {
        "ce_specversion": b"1.0", "ce_id": event_id.encode(), "ce_source": b"ampgate/gateway",
        "ce_type": ce_type.encode(), "ce_subject": passport_id.encode(),
        "ce_time": now.isoformat().replace("+00:00", "Z").encode(),
        "content-type": b"application/json",
    }
    return ConsumedEvent(topic=topic, partition=0, offset=next(_offsets), key=passport_id,
                         id=event_id, type=ce_type, subject=passport_id, time=now, data=data,
                         headers=headers)


class DeadLetters(list):
    """The dead-letter sink: what would have gone to the topic."""

    async def __call__(self, letters: list[DeadLetter]) -> None:
        self.extend(letters)

    def headers(self, i: int) -> dict[str, str]:
        return {k: v.decode() for k, v in self[i].headers}


class Harness:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.registry = CollectorRegistry()
        self.dead_letters = DeadLetters()
        self.engines: list[tuple[WebhookEngine, JobStore]] = []

    async def engine(self, subscriptions: list[WebhookSubscription], *,
                     schedule: list[float] | None = None, start: bool = True,
                     concurrency: int = 8, timeout_s: float = 5.0) -> WebhookEngine:
        settings = WebhookSettings(subscriptions=subscriptions, timeout_s=timeout_s,
                                   retry_schedule_s=schedule or [0.05, 0.05, 0.05])
        store = JobStore(self.state_dir / "webhooks.sqlite3")
        store.open()
        self.registry = CollectorRegistry()
        engine = WebhookEngine(settings, store, self.dead_letters, WebhookMetrics(self.registry),
                               concurrency=concurrency, shutdown_grace_s=0.5)
        self.engines.append((engine, store))
        if start:
            await engine.start()
        return engine

    async def stop(self, engine: WebhookEngine) -> None:
        for i, (e, store) in enumerate(self.engines):
            if e is engine:
                await e.stop()
                store.close()
                del self.engines[i]
                return

    def deliveries(self, outcome: str) -> float:
        return self.registry.get_sample_value("ampgate_webhook_deliveries_total",
                                              {"outcome": outcome}) or 0.0


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    for engine, store in list(h.engines):
        await engine.stop()
        store.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    started: list[Receiver] = []

    async def make(script: Script, *, delay_s: float = 0.0) -> Receiver:
        r = await Receiver(script, delay_s=delay_s).start()
        started.append(r)
        return r

    yield make
    for r in started:
        await r.stop()
