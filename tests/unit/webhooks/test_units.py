"""Pure parts: signing, Retry-After, backoff, the queue's rules."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.webhooks.delivery import MAX_RETRY_AFTER_S, parse_retry_after, retry_delay
from services.webhooks.signing import Signer
from services.webhooks.store import JobStore, NewJob
from services.webhooks.subscriptions import safe_endpoint
from tests.unit.webhooks.conftest import new_secret


def test_signature_verifies_with_reference_library_and_detects_tampering():
    secret = new_secret()
    body = b'{"id":"e1","data":{"x":"\xc3\xa9"}}'
    headers = Signer(SecretStr(secret)).headers("e1", body)
    assert Webhook(secret).verify(body, headers)["id"] == "e1"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"e1", b"e2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "e2"})


def test_known_vector_from_the_spec():
    # Standard Webhooks reference test vector.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signer = Signer(SecretStr(secret))
    when = datetime.fromtimestamp(1614265330, UTC)
    headers = signer.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", b'{"test": 2432232314}', now=when)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert headers["webhook-timestamp"] == "1614265330"


def test_retry_after_forms():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7", now=now) == 7
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True),
                             now=now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True),
                             now=now) == 0
    assert parse_retry_after("999999") == MAX_RETRY_AFTER_S
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_follows_schedule_with_jitter_and_retry_after():
    rng = random.Random(1)
    schedule = [1.0, 10.0, 100.0]
    for attempts, base in [(1, 1.0), (2, 10.0), (3, 100.0), (9, 100.0)]:
        delays = {retry_delay(attempts, schedule, None, rng) for _ in range(50)}
        assert all(0.8 * base <= d <= 1.2 * base for d in delays)
        assert len(delays) > 1  # jittered
    assert retry_delay(1, schedule, 60.0, rng) == 60.0


def test_safe_endpoint_drops_credentials_and_path():
    assert safe_endpoint("https://user:pw@hooks.example.com:8443/t/SECRET?k=v") == \
        "https://hooks.example.com:8443"


def _job(sub: str, event_id: str, entity: str, transition=None) -> NewJob:
    return NewJob(sub, event_id, entity, "t", "passport-changed", 0, 1, b"{}", [("ce_id", b"x")],
                  b"{}", transition)


def test_queue_heads_are_the_oldest_job_of_each_entity(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    store.open()
    store.enqueue([_job("s", "1", "A"), _job("s", "2", "A"), _job("s", "3", "B"),
                   _job("other", "4", "A")], now=100.0)
    assert [j.event_id for j in store.heads("s", 10)] == ["1", "3"]
    store.mark_delivered(store.heads("s", 10)[0].id, 1)
    assert [j.event_id for j in store.heads("s", 10)] == ["2", "3"]
    assert store.pending_count("s") == 2
    store.close()


def test_queue_dedupes_event_ids_and_repeated_transitions(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    store.open()
    t = ("k", "A", "B")
    r = store.enqueue([_job("s", "1", "P", t), _job("s", "1", "P"), _job("s", "2", "P", t),
                       _job("s", "3", "P", ("k", "B", "A")), _job("s", "4", "P", t),
                       _job("t", "1", "P", t)])
    assert (r.queued, r.duplicate_event, r.duplicate_transition) == (4, 1, 1)
    store.close()
    # Durable: reopened, the same ids are still known.
    store = JobStore(tmp_path / "q.sqlite3")
    store.open()
    assert store.enqueue([_job("s", "1", "P")]).duplicate_event == 1
    assert store.pending_count("s") == 3
    store.close()
