"""`ampgate webhooks` SIGKILLed mid-stream and restarted: no event lost, per-entity
order kept; the only repeats are deliveries that were in flight at the kill, and they
carry the same webhook-id (so receivers can drop them)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, PRICE_TOPIC, build_event
from services.common.kafka import ensure_topics
from services.webhooks.dead_letter import DEAD_LETTER_TOPIC
from tests.integration.test_webhooks_kafka import produce
from tests.unit.webhooks.conftest import new_secret
from tests.unit.webhooks.receiver import Receiver, always, eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCY = 32  # the worker's default per-subscription concurrency (engine.CONCURRENCY)


def start_worker(kafka, state_dir: Path, url: str, entity_ids: list[str]) -> subprocess.Popen:
    env = {
        **os.environ,
        "AMPGATE_HTTP__PORT": "0",
        "AMPGATE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
        "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE": str(kafka.enable_idempotence).lower(),
        "AMPGATE_STATE_DIR": str(state_dir),
        "AMPGATE_LOG__FORMAT": "json",
        "AMPGATE_LOG__LEVEL": "warning",
        "AMPGATE_WEBHOOKS__RETRY_SCHEDULE_S": "[0.05, 0.1]",
        "AMPGATE_WEBHOOKS__SUBSCRIPTIONS": orjson.dumps([{
            "name": "erp", "url": url, "events": ["*"], "secret": new_secret(),
            "entity_ids": entity_ids}]).decode(),
    }
    env.pop("AMPGATE_CONFIG", None)
    return subprocess.Popen([sys.executable, "-m", "services", "webhooks"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_sigkill_mid_stream_loses_nothing(kafka, tmp_path):
    receiver = await Receiver(always(200), delay_s=0.05).start()
    run = uuid.uuid4().hex[:6]
    entities = [f"BP-K{run}-{i}" for i in range(20)]
    records = []
    for step in range(10):  # 10 transitions per entity, interleaved across entities
        for e in entities:
            records.append(build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, e, {
                "passport_id": e, "change": "CHANGE_KIND_UPDATED", "detected_by": "DETECTION_POLL",
                "previous_digest": f"sha256:{step}", "digest": f"sha256:{step + 1}",
                "changed_paths": ["/x"], "passport": {"x": step + 1},
                "observed_at": "2026-11-21T10:00:00Z"}))
    expected = {e: [] for e in entities}
    for rec in records:
        h = dict(rec.headers)
        expected[h["ce_subject"].decode()].append(h["ce_id"].decode())

    await ensure_topics(kafka.bootstrap, [PASSPORT_TOPIC, PRICE_TOPIC, DEAD_LETTER_TOPIC], 6, 1)
    proc = start_worker(kafka, tmp_path, receiver.url, entities)
    try:
        await produce(kafka, records)
        await eventually(lambda: len(receiver.requests) >= 40, timeout=60)
        stop(proc, signal.SIGKILL)
        killed_at = len(receiver.requests)
        assert killed_at < len(records), "all delivered before the kill: test too slow to bite"

        proc = start_worker(kafka, tmp_path, receiver.url, entities)
        all_ids = {i for ids in expected.values() for i in ids}
        await eventually(lambda: {r.headers["webhook-id"] for r in receiver.requests} >= all_ids,
                         timeout=90, step=0.1)
        await asyncio.sleep(0.5)
    finally:
        # SIGKILL again: a graceful stop would wait for the group join still blocked on
        # the first (killed) member's session, which is not what this test is about.
        stop(proc, signal.SIGKILL)
        await receiver.stop()

    got: dict[str, list[str]] = defaultdict(list)
    for r in receiver.requests:
        body = orjson.loads(r.body)
        got[body["subject"]].append(r.headers["webhook-id"])
    repeats = len(receiver.requests) - len(all_ids)
    assert 0 <= repeats <= CONCURRENCY  # at most what was in flight at the kill
    for e in entities:
        first_seen = list(dict.fromkeys(got[e]))
        assert first_seen == expected[e], f"order broken for {e}"
