"""Cluster-mode tests run against a real Redis (tests/fixtures/redis.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from services.gateway.cluster.channels import Channels
from services.gateway.cluster.store import ClusterStore
from tests.fixtures.redis import private_redis, redis_server, redis_url

__all__ = ["private_redis", "redis_server", "redis_url"]

StoreFactory = Callable[..., Awaitable[ClusterStore]]


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    """Started ClusterStores (one per simulated replica = one connection pool each),
    closed after the test. Short health/retry steps keep the outage tests quick."""
    made: list[ClusterStore] = []

    async def make(url: str, *, up: bool = True, **kwargs) -> ClusterStore:
        kwargs.setdefault("health_interval_s", 0.2)
        kwargs.setdefault("retry_max_s", 0.2)
        kwargs.setdefault("timeout_s", 0.5)  # the test box is shared: scheduler delays
        store = ClusterStore(url, **kwargs)
        made.append(store)
        await store.start()
        if not store.is_up and up:
            await asyncio.wait_for(store.wait_up(), 5)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def make_channels() -> AsyncIterator[Callable[..., Awaitable[Channels]]]:
    made: list[Channels] = []

    async def make(store: ClusterStore, channels) -> Channels:
        ch = Channels(store, channels, retry_max_s=0.2)
        made.append(ch)
        await ch.start()
        return ch

    yield make
    for ch in made:
        await ch.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:8]}"
