"""The delivery engine end to end over real HTTP (no broker): signing, retries, dead
letters, disabling, isolation, ordering, effect-once."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from structlog.testing import capture_logs

from services.common.events import PASSPORT_CE_TYPE, PRICE_CE_TYPE
from tests.unit.webhooks.conftest import new_secret, passport_event, subscription
from tests.unit.webhooks.receiver import always, eventually, sequence


async def test_delivery_is_signed_per_standard_webhooks(harness, receiver):
    r = await receiver(always(204))
    secret = new_secret()
    engine = await harness.engine([subscription("erp", r.url, secret=secret)])
    event = passport_event("BP-1", "sha256:a", "sha256:b")

    await engine.handle_batch([event])
    await eventually(lambda: len(r.requests) == 1)

    got = r.requests[0]
    # A third-party verifier: the reference library, not our code.
    payload = Webhook(secret).verify(got.body, got.headers)
    assert got.headers["webhook-id"] == event.id
    assert got.headers["webhook-signature"].startswith("v1,")
    assert got.headers["Content-Type"] == "application/json"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5
    assert payload["id"] == event.id
    assert payload["type"] == PASSPORT_CE_TYPE
    assert payload["subject"] == "BP-1"
    assert payload["specversion"] == "1.0"
    assert payload["source"] == "ampgate/gateway"
    assert payload["data"] == event.data
    # Wrong secret: the reference verifier rejects it.
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(got.body, got.headers)
    await eventually(lambda: harness.deliveries("success") == 1)


async def test_fails_three_times_then_succeeds_delivered_once_same_id(harness, receiver):
    r = await receiver(sequence(500, 503, 502))
    secret = new_secret()
    engine = await harness.engine([subscription("erp", r.url, secret=secret)],
                                  schedule=[0.05, 0.05, 0.05, 0.05])
    event = passport_event("BP-1", "sha256:a", "sha256:b")

    await engine.handle_batch([event])
    await eventually(lambda: len(r.successes) == 1)
    await asyncio.sleep(0.3)  # nothing more comes

    assert [q.status for q in r.requests] == [500, 503, 502, 200]
    assert {q.headers["webhook-id"] for q in r.requests} == {event.id}
    for q in r.requests:
        Webhook(secret).verify(q.body, q.headers)
    assert len({q.body for q in r.requests}) == 1  # identical body on every attempt
    assert harness.deliveries("success") == 1
    assert harness.deliveries("retry") == 3
    assert harness.deliveries("failed") == 0
    assert harness.dead_letters == []


@pytest.mark.parametrize("endpoint", ["failing", "refusing"])
async def test_last_attempt_failed_goes_to_dead_letter(harness, receiver, endpoint):
    if endpoint == "failing":
        url = (await receiver(always(500))).url
    else:
        closed = await receiver(always(200))
        await closed.stop()
        url = closed.url  # nothing listens there any more
    engine = await harness.engine([subscription("erp", url)], schedule=[0.02, 0.02])
    event = passport_event("BP-9", "sha256:a", "sha256:b")

    with capture_logs() as logs:
        await engine.handle_batch([event])
        await eventually(lambda: len(harness.dead_letters) == 1)

    letter = harness.dead_letters[0]
    headers = harness.dead_letters.headers(0)
    assert letter.topic == "webhooks-dead-letter"
    assert letter.key == b"BP-9"
    assert orjson.loads(letter.value) == event.data
    assert headers["dlq_reason"] == "max_attempts"
    assert headers["dlq_source_topic"] == "passport-changed"
    assert headers["dlq_service"] == "webhooks"
    assert headers["dlq_subscription"] == "erp"
    assert headers["dlq_attempts"] == "3"
    assert headers["ce_id"] == event.id and headers["ce_type"] == PASSPORT_CE_TYPE
    assert harness.deliveries("retry") == 2
    assert harness.deliveries("failed") == 1
    assert harness.deliveries("dead_lettered") == 1
    assert [e["event"] for e in logs].count("webhook_dead_lettered") == 1
    # Never the URL in logs (it may carry credentials).
    assert url not in repr(logs)


async def test_gone_disables_the_subscription_persistently(harness, receiver):
    gone = await receiver(always(410))
    fine = await receiver(always(200))
    subs = [subscription("old", gone.url), subscription("new", fine.url)]
    engine = await harness.engine(subs)

    with capture_logs() as logs:
        await engine.handle_batch([passport_event("BP-1", "", "sha256:a")])
        await eventually(lambda: any(e["event"] == "webhook_endpoint_disabled" for e in logs))
    disabled = next(e for e in logs if e["event"] == "webhook_endpoint_disabled")
    assert disabled["subscription"] == "old" and disabled["status"] == 410
    assert gone.url not in repr(logs)
    await eventually(lambda: len(harness.dead_letters) == 1)
    assert harness.dead_letters.headers(0)["dlq_reason"] == "subscription_disabled"
    assert engine.status()[1]["disabled"] == ["old"]

    await engine.handle_batch([passport_event("BP-1", "sha256:a", "sha256:b")])
    await eventually(lambda: len(fine.requests) == 2)
    await asyncio.sleep(0.2)
    assert len(gone.requests) == 1  # never called again
    assert harness.deliveries("disabled") == 2  # the 410 + the event not queued for it
    assert harness.registry.get_sample_value(
        "ampgate_webhook_subscription_disabled", {"subscription": "old"}) == 1

    # Survives a restart ...
    await harness.stop(engine)
    engine = await harness.engine(subs)
    assert engine.status()[1]["disabled"] == ["old"]
    await harness.stop(engine)
    # ... until the subscription points somewhere else.
    engine = await harness.engine([subscription("old", fine.url)])
    assert engine.status()[1]["disabled"] == []


async def test_disabled_while_a_batch_is_written_its_jobs_go_to_dead_letter(harness, receiver):
    # The batch is written on the store's thread: a 410 can disable the subscription
    # after the batch was matched and before its jobs are in the file.
    gone = await receiver(always(410))
    engine = await harness.engine([subscription("old", gone.url)])
    store = harness.engines[-1][1]
    write = store.enqueue_beside

    async def disabled_meanwhile(jobs):
        worker = engine.workers[0]
        worker.disabled = True
        store.disable(worker.name, gone.url, "http_410")
        return await write(jobs)

    store.enqueue_beside = disabled_meanwhile
    await engine.handle_batch([passport_event("BP-1", "", "sha256:a")])
    assert store.pending_count("old") == 0
    await eventually(lambda: len(harness.dead_letters) == 1)
    assert harness.dead_letters.headers(0)["dlq_reason"] == "subscription_disabled"
    assert gone.requests == []


async def test_slow_endpoint_does_not_delay_a_fast_one(harness, receiver):
    slow = await receiver(always(200), delay_s=2.0)
    fast = await receiver(always(200))
    engine = await harness.engine([subscription("slow", slow.url), subscription("fast", fast.url)],
                                  concurrency=1)
    events = [passport_event(f"BP-{i}", "", f"sha256:{i}") for i in range(5)]

    started = time.monotonic()
    await engine.handle_batch(events)  # returns without waiting for any endpoint
    assert time.monotonic() - started < 0.5
    await eventually(lambda: len(fast.requests) == 5, timeout=1.5)
    assert len(slow.requests) == 0


async def test_retry_after_is_honoured(harness, receiver):
    r = await receiver(sequence((429, {"Retry-After": "1"})))
    engine = await harness.engine([subscription("erp", r.url)], schedule=[0.01, 0.01])

    await engine.handle_batch([passport_event("BP-1", "", "sha256:a")])
    await eventually(lambda: len(r.successes) == 1, timeout=5)
    gap = r.requests[1].at - r.requests[0].at
    assert 0.95 <= gap < 2.0


async def test_retry_after_http_date_pauses_the_whole_endpoint(harness, receiver):
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=2), usegmt=True)
    r = await receiver(sequence((503, {"Retry-After": when})))
    engine = await harness.engine([subscription("erp", r.url)], schedule=[0.01, 0.01],
                                  concurrency=1)

    await engine.handle_batch([passport_event("BP-1", "", "sha256:a")])
    await eventually(lambda: len(r.requests) == 1)
    # Another entity's event arrives while the endpoint asked us to wait: it waits too.
    await engine.handle_batch([passport_event("BP-2", "", "sha256:b")])
    await eventually(lambda: len(r.successes) == 2, timeout=6)
    assert r.requests[1].at - r.requests[0].at >= 0.9  # date has 1 s resolution


async def test_entity_order_kept_per_endpoint_others_proceed(harness, receiver):
    first_a = {"failed": False}

    def script(n, body):
        # The first attempt of A's first event fails; everything else succeeds.
        if body["subject"] == "A" and body["data"]["digest"] == "sha256:a1" and not first_a["failed"]:
            first_a["failed"] = True
            return 500, {}
        return 200, {}

    r = await receiver(script)
    engine = await harness.engine([subscription("erp", r.url)], schedule=[0.3])
    await engine.handle_batch([
        passport_event("A", "", "sha256:a1"),
        passport_event("A", "sha256:a1", "sha256:a2"),
        passport_event("B", "", "sha256:b1"),
    ])
    await eventually(lambda: len(r.successes) == 3)

    order = [(q.json["subject"], q.json["data"]["digest"], q.status) for q in r.requests]
    assert order == [
        ("A", "sha256:a1", 500),
        ("B", "sha256:b1", 200),  # B did not wait for A's retry
        ("A", "sha256:a1", 200),
        ("A", "sha256:a2", 200),  # A2 only after A1
    ] or order == [
        ("B", "sha256:b1", 200),
        ("A", "sha256:a1", 500),
        ("A", "sha256:a1", 200),
        ("A", "sha256:a2", 200),
    ]


async def test_event_types_and_entity_filter(harness, receiver):
    passports = await receiver(always(200))
    one_evse = await receiver(always(200))
    everything = await receiver(always(200))
    engine = await harness.engine([
        subscription("passports", passports.url, events=[PASSPORT_CE_TYPE]),
        subscription("one-evse", one_evse.url, events=[PRICE_CE_TYPE], entity_ids=["DE*EEE*E1"]),
        subscription("all", everything.url, events=["*"]),
    ])
    await engine.handle_batch([
        passport_event("BP-1", "", "sha256:p"),
        passport_event("DE*EEE*E1", "", "sha256:x", ce_type=PRICE_CE_TYPE, topic="price-changed"),
        passport_event("DE*EEE*E2", "", "sha256:y", ce_type=PRICE_CE_TYPE, topic="price-changed"),
    ])
    await eventually(lambda: len(everything.requests) == 3)
    await eventually(lambda: len(passports.requests) == 1 and len(one_evse.requests) == 1)
    await asyncio.sleep(0.1)
    assert passports.requests[0].json["subject"] == "BP-1"
    assert one_evse.requests[0].json["subject"] == "DE*EEE*E1"
    assert len(passports.requests) == 1 and len(one_evse.requests) == 1


async def test_effect_once_but_flip_flops_every_time(harness, receiver):
    r = await receiver(always(200))
    engine = await harness.engine([subscription("erp", r.url)])
    ab = passport_event("BP-1", "sha256:A", "sha256:B")

    await engine.handle_batch([ab])
    await engine.handle_batch([ab])  # a replay after a crash: same ce_id
    # Another gateway replica saw the same change: new id, same transition.
    await engine.handle_batch([passport_event("BP-1", "sha256:A", "sha256:B")])
    await eventually(lambda: len(r.requests) == 1)
    await asyncio.sleep(0.2)
    assert len(r.requests) == 1

    # A→B→A→B: every flip is a change worth telling.
    await engine.handle_batch([passport_event("BP-1", "sha256:B", "sha256:A"),
                               passport_event("BP-1", "sha256:A", "sha256:B"),
                               passport_event("BP-1", "sha256:B", "sha256:A")])
    await eventually(lambda: len(r.requests) == 4)
    digests = [q.json["data"]["digest"] for q in r.requests]
    assert digests == ["sha256:B", "sha256:A", "sha256:B", "sha256:A"]
    assert len({q.headers["webhook-id"] for q in r.requests}) == 4


async def test_queued_jobs_survive_a_restart(harness, receiver):
    r = await receiver(always(200))
    subs = [subscription("erp", r.url)]
    # Queued, offsets committed, then the process dies before delivering.
    engine = await harness.engine(subs, start=False)
    event = passport_event("BP-1", "", "sha256:a")
    await engine.handle_batch([event])
    await harness.stop(engine)
    assert r.requests == []

    await harness.engine(subs)
    await eventually(lambda: len(r.requests) == 1)
    assert r.requests[0].headers["webhook-id"] == event.id
