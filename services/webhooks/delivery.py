"""One HTTP attempt to one endpoint, classified; and when to try again.

Each subscription has its own ``Sender`` with its own connection pool (``http1.Origin``:
keep-alive HTTP/1.1, a fraction of aiohttp's cost per request), so a slow or dead
endpoint can exhaust only its own connections. Redirects are not followed (a
redirected webhook is a misconfiguration, and following it would leak the body
elsewhere): a 3xx counts as a failed attempt.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from services.common.http1 import ConnectError, HttpError, Origin
from services.common.settings import WebhookSubscription
from services.webhooks.signing import Signer

USER_AGENT = "ampgate-webhooks/1"
# An endpoint cannot park its queue for longer than this with one Retry-After.
MAX_RETRY_AFTER_S = 3600.0
JITTER = 0.2  # each scheduled delay is stretched or shrunk by up to 20 %


@dataclass(frozen=True)
class Attempt:
    status: int | None            # None: no HTTP answer (refused, reset, timeout)
    error: str                    # short and safe for logs: "http_503", "timeout", ...
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def gone(self) -> bool:
        return self.status == 410


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP-date; None when absent or malformed."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def retry_delay(attempts: int, schedule: list[float], retry_after_s: float | None,
                rng: random.Random) -> float:
    """Delay before the next attempt after ``attempts`` failed ones: the schedule's
    entry (exponential by configuration) with jitter, never shorter than Retry-After."""
    base = schedule[min(attempts, len(schedule)) - 1]
    delay = base * rng.uniform(1 - JITTER, 1 + JITTER)
    return max(delay, retry_after_s or 0.0)


class Sender:
    def __init__(self, subscription: WebhookSubscription, *, timeout_s: float) -> None:
        self.url = str(subscription.url)
        self._signer = Signer(subscription.secret)
        self._timeout_s = timeout_s
        self._origin: Origin | None = None

    async def start(self) -> None:
        self._origin = Origin(self.url, timeout_s=self._timeout_s,
                              connect_s=min(self._timeout_s, 5.0),
                              headers={"User-Agent": USER_AGENT, "Accept": "*/*"})

    async def close(self) -> None:
        if self._origin is not None:
            await self._origin.close()
            self._origin = None

    async def send(self, msg_id: str, body: bytes) -> Attempt:
        assert self._origin is not None, "Sender.start() first"
        headers = self._signer.headers(msg_id, body)
        try:
            resp = await self._origin.post(body, headers)
        except TimeoutError:
            return Attempt(None, "timeout")
        except ConnectError:
            return Attempt(None, "connect_error")
        except HttpError as exc:
            return Attempt(None, type(exc).__name__)
        retry_after = None
        if resp.status == 429 or resp.status >= 500:
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
        error = "" if 200 <= resp.status < 300 else f"http_{resp.status}"
        return Attempt(resp.status, error, retry_after)
