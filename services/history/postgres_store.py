"""The PostgreSQL history store (production: AMPGATE_HISTORY__DATABASE_URL=postgresql://...)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import asyncpg
import orjson

from services.history.store import HistoryStore, StoreUnavailable, migrations
from services.history.versions import EntityKey, Version, versions_to_record

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
        async with self._acquire() as conn, conn.transaction():
            seen = {r[0] for r in await conn.fetch(
                "SELECT event_id FROM history_versions WHERE event_id = ANY($1::text[])",
                [v.event_id for v in versions])}
            keys = list(dict.fromkeys(v.key for v in versions if v.event_id not in seen))
            stored = versions_to_record(versions, seen, await self._latest_of(conn, keys))
            if stored:
                await conn.executemany(
                    "INSERT INTO history_versions (entity, entity_id, context, event_id, "
                    "observed_at, change, detected_by, digest, previous_digest, changed_paths, "
                    "document) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::json, $11::json) "
                    "ON CONFLICT (event_id) DO NOTHING",
                    [(v.key.entity, v.key.entity_id, v.key.context, v.event_id, v.observed_at,
                      v.change, v.detected_by, v.digest, v.previous_digest,
                      orjson.dumps(list(v.changed_paths)).decode(), v.document)
                     for v in stored])
        return stored

    async def _latest_of(self, conn: asyncpg.Connection,
                         keys: list[EntityKey]) -> dict[EntityKey, Version]:
        """The latest stored version of each of ``keys`` that has one, in ONE query (each
        key's newest row from the (entity, entity_id, context, observed_at, seq) index)."""
        if not keys:
            return {}
        rows = await conn.fetch(
            f"SELECT h.* FROM unnest($1::text[], $2::text[], $3::text[]) "
            f"AS k(entity, entity_id, context) CROSS JOIN LATERAL ("
            f"SELECT {_COLUMNS} FROM history_versions x WHERE x.entity = k.entity "
            f"AND x.entity_id = k.entity_id AND x.context = k.context {_NEWEST_FIRST} LIMIT 1) h",
            [k.entity for k in keys], [k.entity_id for k in keys], [k.context for k in keys])
        latest = {}
        for row in rows:
            version = _row(row)
            latest[version.key] = version
        return latest

    async def versions(self, key: EntityKey) -> list[Version]:
        async with self._acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} {_NEWEST_FIRST}",
                key.entity, key.entity_id, key.context)
        return [_row(r) for r in rows]

    async def version_at(self, key: EntityKey, at: datetime) -> Version | None:
        return await self._newest(key, "observed_at <= $4", at)

    async def version_by_digest(self, key: EntityKey, digest: str) -> Version | None:
        return await self._newest(key, "digest = $4", digest)

    async def _newest(self, key: EntityKey, condition: str, value: object) -> Version | None:
        """The newest version of ``key`` meeting ``condition`` (on parameter $4)."""
        async with self._acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} AND {condition} "
                f"{_NEWEST_FIRST} LIMIT 1", key.entity, key.entity_id, key.context, value)
        return _row(row) if row else None
