"""The publisher with no broker at all: the gateway keeps going, events wait, /readyz
says why (the broker-backed behaviour is in tests/integration/test_events_publisher.py)."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from services.common.outbox import Outbox, OutboxPublisher
from services.common.settings import KafkaSettings
from services.devtools.local_kafka import free_port
from services.gateway.metrics import GatewayMetrics
from tests.unit.common.test_outbox import event


async def test_without_kafka_events_wait_and_status_reports_degraded(tmp_path):
    registry = CollectorRegistry()
    outbox = Outbox(tmp_path / "gateway.sqlite3")
    outbox.open()
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", enable_idempotence=False)
    publisher = OutboxPublisher(outbox, settings, GatewayMetrics(registry), request_timeout_s=0.5)
    await publisher.start()
    try:
        with outbox.transaction() as conn:
            for n in range(3):
                outbox.add(conn, event(n))
        await asyncio.sleep(0.6)
        ready, detail = publisher.status()
        assert ready is True
        assert detail["state"] == "connecting" and detail["degraded"] is True
        assert detail["pending"] == 3 and detail["oldest_age_s"] >= 0.5
        assert "KafkaConnectionError" in detail["last_error"]
        assert registry.get_sample_value("ampgate_outbox_pending") == 3
    finally:
        started = time.monotonic()
        await publisher.stop()
        assert time.monotonic() - started < 2
    assert publisher.status()[0] is False  # stopped: nothing drains any more
    assert outbox.pending() == 3
    outbox.close()
