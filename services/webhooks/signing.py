"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, HMAC-SHA256 with the
base64 key after ``whsec_``; the signature header is ``v1,<base64>``. We sign with the
reference library itself so sender and verifier cannot drift apart.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import SecretStr
from standardwebhooks import Webhook


class Signer:
    """One per subscription (decodes the secret once)."""

    def __init__(self, secret: SecretStr) -> None:
        self._webhook = Webhook(secret.get_secret_value())

    def headers(self, msg_id: str, body: bytes, *, now: datetime | None = None) -> dict[str, str]:
        """Headers for one attempt: the id stays the same on every retry, the timestamp
        is the attempt's own (receivers reject timestamps older than ~5 minutes)."""
        now = now or datetime.now(UTC)
        signature = self._webhook.sign(msg_id=msg_id, timestamp=now, data=body.decode())
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        }
