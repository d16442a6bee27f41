"""When to try a delivery again: Retry-After forms, the backoff schedule with jitter."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from services.webhooks.delivery import MAX_RETRY_AFTER_S, parse_retry_after, retry_delay


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
