"""A gateway wired to an in-process sandbox over real sockets."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.common.settings import Settings
from services.gateway.app import create_app

READER_KEY = "test-reader-key"
WRITER_KEY = "test-writer-key"
ADMIN_KEY = "test-admin-key"
NOSCOPE_KEY = "test-noscope-key"


def _client(name: str, key: str, scopes: list[str]) -> dict[str, Any]:
    return {"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": scopes}


CLIENTS = [
    _client("reader", READER_KEY, ["passports:read", "users:read", "stations:read", "prices:read",
                                   "history:read"]),
    _client("writer", WRITER_KEY, ["passports:read", "passports:write", "users:read",
                                   "users:write"]),
    _client("admin", ADMIN_KEY, ["admin", "passports:read"]),
    _client("noscope", NOSCOPE_KEY, []),
]


def auth(key: str = READER_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def gateway_settings(sandbox, tmp_path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        up = sandbox.upstream_settings()
        for group in ("passport", "cpo", "pricing"):
            up[group] = {**up[group], **overrides.pop(group, {})}
        base: dict[str, Any] = {
            **up,
            "clients": CLIENTS,
            "state_dir": tmp_path / "state",
            # No broker in these tests: events wait in the outbox, as they would in production.
            "kafka": {"bootstrap_servers": "127.0.0.1:9", "enable_idempotence": False},
            "log": {"format": "json", "level": "info"},
        }
        base.update(overrides)
        return Settings(**base)

    return build


@pytest.fixture
async def make_gateway(aiohttp_client, gateway_settings):
    async def make(**overrides: Any):
        registry = CollectorRegistry()
        app = create_app(gateway_settings(**overrides), registry=registry)
        client = await aiohttp_client(app)
        client.registry = registry
        return client

    return make


@pytest.fixture
async def gateway(make_gateway):
    return await make_gateway()
