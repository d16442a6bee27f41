"""History tests run on SQLite AND on PostgreSQL (a fresh database per test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.history.store import HistoryStore, open_store


async def fresh_postgres_database(dsn: str) -> str:
    """A new empty database on the server of ``dsn``; its DSN."""
    name = f"history_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.sqlite3"
    dsn = request.getfixturevalue("postgres_dsn")
    return await fresh_postgres_database(dsn)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[HistoryStore]:
    s = open_store(database_url)
    await s.open()
    yield s
    await s.close()
