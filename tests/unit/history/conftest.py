"""History tests run on SQLite AND on PostgreSQL (a fresh database per test); the PostgreSQL
runs talk to a real server, so they carry the ``integration`` marker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.history.store import HistoryStore, open_store
from tests.unit.history.helpers import fresh_postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
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
