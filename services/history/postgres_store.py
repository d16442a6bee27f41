"""The PostgreSQL history store (production: AMPGATE_HISTORY__DATABASE_URL=postgresql://...)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import asyncpg
import orjson

from services.history.store import HistoryStore, StoreUnavailable, migrations
from services.history.versions import EntityKey, Version, is_same_transition

_COLUMNS = ("seq, entity, entity_id, context, event_id, observed_at, change, detected_by, "
            "digest, previous_digest, changed_paths::text, document::text")
_KEY = "entity = $1 AND entity_id = $2 AND context = $3"
_NEWEST_FIRST = "ORDER BY observed_at DESC, seq DESC"
# Two workers starting at once must not both apply a migration.
_MIGRATION_LOCK = 0x616D7067  # "ampg"

# Failures worth retrying: the server is away, restarting, overloaded, or we lost a race.
_TRANSIENT = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
    TimeoutError,
)


def _row(row: asyncpg.Record) -> Version:
    return Version(
        key=EntityKey(row["entity"], row["entity_id"], row["context"]),
        event_id=row["event_id"],
        observed_at=row["observed_at"],
        change=row["change"],
        detected_by=row["detected_by"],
        digest=row["digest"],
        previous_digest=row["previous_digest"],
        changed_paths=tuple(orjson.loads(row["changed_paths"])),
        document=row["document"],
    )


class PostgresStore(HistoryStore):
    dialect = "postgres"

    def __init__(self, dsn: str, *, max_size: int = 5,
                 migrations_dir: Path | None = None) -> None:
        self.dsn = dsn
        self._migrations_dir = migrations_dir
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=self._max_size,
                                             command_timeout=30)
        except _TRANSIENT as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migrations(self.dialect, self._migrations_dir):
                if version not in done:
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        version, name)

    async def applied_migrations(self) -> list[int]:
        async with self._acquire() as conn:
            return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[asyncpg.Connection]:
        if self._pool is None:
            raise StoreUnavailable("the history database is not open")
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _TRANSIENT as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def record(self, versions: Sequence[Version]) -> list[Version]:
        if not versions:
            return []
        stored: list[Version] = []
        async with self._acquire() as conn, conn.transaction():
            seen = {r[0] for r in await conn.fetch(
                "SELECT event_id FROM history_versions WHERE event_id = ANY($1::text[])",
                [v.event_id for v in versions])}
            latest: dict[EntityKey, Version | None] = {}
            rows = []
            for v in versions:
                if v.event_id in seen:
                    continue
                if v.key not in latest:
                    latest[v.key] = await self._latest(conn, v.key)
                if is_same_transition(v, latest[v.key]):
                    continue
                rows.append((v.key.entity, v.key.entity_id, v.key.context, v.event_id,
                             v.observed_at, v.change, v.detected_by, v.digest, v.previous_digest,
                             orjson.dumps(list(v.changed_paths)).decode(), v.document))
                seen.add(v.event_id)
                current = latest[v.key]
                if current is None or v.observed_at >= current.observed_at:
                    latest[v.key] = v
                stored.append(v)
            if rows:
                await conn.executemany(
                    "INSERT INTO history_versions (entity, entity_id, context, event_id, "
                    "observed_at, change, detected_by, digest, previous_digest, changed_paths, "
                    "document) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::json, $11::json) "
                    "ON CONFLICT (event_id) DO NOTHING",
                    rows)
        return stored

    async def _latest(self, conn: asyncpg.Connection, key: EntityKey) -> Version | None:
        row = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} {_NEWEST_FIRST} LIMIT 1",
            key.entity, key.entity_id, key.context)
        return _row(row) if row else None

    async def versions(self, key: EntityKey) -> list[Version]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} {_NEWEST_FIRST}",
                key.entity, key.entity_id, key.context)
        return [_row(r) for r in rows]

    async def version_at(self, key: EntityKey, at: datetime) -> Version | None:
        async with self._acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} AND observed_at <= $4 "
                f"{_NEWEST_FIRST} LIMIT 1", key.entity, key.entity_id, key.context, at)
        return _row(row) if row else None

    async def version_by_digest(self, key: EntityKey, digest: str) -> Version | None:
        async with self._acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} AND digest = $4 "
                f"{_NEWEST_FIRST} LIMIT 1", key.entity, key.entity_id, key.context, digest)
        return _row(row) if row else None
