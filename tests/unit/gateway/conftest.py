"""Fixtures shared by the gateway's engine tests (tokens, upstream client, cache)."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from services.gateway.metrics import GatewayMetrics


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry) -> GatewayMetrics:
    return GatewayMetrics(registry)
