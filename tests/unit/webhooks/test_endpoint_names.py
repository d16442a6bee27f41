"""How an endpoint is named in logs: no credentials, no path."""

from __future__ import annotations

from services.webhooks.subscriptions import safe_endpoint


def test_safe_endpoint_drops_credentials_and_path():
    assert safe_endpoint("https://user:pw@hooks.example.com:8443/t/SECRET?k=v") == \
        "https://hooks.example.com:8443"
