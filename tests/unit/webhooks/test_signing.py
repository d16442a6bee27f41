"""Standard Webhooks signatures: the reference library verifies ours; the spec's vector."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from services.webhooks.signing import Signer
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
