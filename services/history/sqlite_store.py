"""The SQLite history store (the default: embedded, one file, WAL mode)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from services.history.store import HistoryStore, StoreUnavailable, migrations
from services.history.versions import EntityKey, Version, is_same_transition

_COLUMNS = ("seq, entity, entity_id, context, event_id, observed_at_us, change, detected_by, "
            "digest, previous_digest, changed_paths, document")
_KEY = "entity = ? AND entity_id = ? AND context = ?"
_NEWEST_FIRST = "ORDER BY observed_at_us DESC, seq DESC"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(dt: datetime) -> int:
    delta = dt - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _row(row: Any) -> Version:
    return Version(
        key=EntityKey(row[1], row[2], row[3]),
        event_id=row[4],
        observed_at=_from_us(row[5]),
        change=row[6],
        detected_by=row[7],
        digest=row[8],
        previous_digest=row[9],
        changed_paths=tuple(orjson.loads(row[10])),
        document=row[11],
    )


class SqliteStore(HistoryStore):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we write BEGIN/COMMIT ourselves.
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process (not a power cut): the worker
            # re-reads uncommitted Kafka offsets anyway.
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await self._migrate(db)
        except BaseException:
            await db.close()
            raise
        self._db = db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        async with db.execute("SELECT version FROM schema_migrations") as cur:
            done = {r[0] for r in await cur.fetchall()}
        for version, name, sql in migrations(self.dialect):
            if version in done:
                continue
            now = datetime.now(UTC).isoformat()
            # One script, one transaction: a half-applied migration is never recorded.
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n"
                f"INSERT INTO schema_migrations VALUES ({version}, '{name}', '{now}');\nCOMMIT;")

    async def applied_migrations(self) -> list[int]:
        async with self._conn().execute("SELECT version FROM schema_migrations ORDER BY 1") as cur:
            return [r[0] for r in await cur.fetchall()]

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("the history database is not open")
        return self._db

    @asynccontextmanager
    async def _translate(self) -> AsyncIterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:  # locked, disk I/O, ...
            raise StoreUnavailable(str(exc)) from exc

    async def record(self, versions: Sequence[Version]) -> list[Version]:
        if not versions:
            return []
        db = self._conn()
        stored: list[Version] = []
        async with self._translate():
            await db.execute("BEGIN IMMEDIATE")
            try:
                ids = [v.event_id for v in versions]
                marks = ",".join("?" * len(ids))
                async with db.execute(
                        f"SELECT event_id FROM history_versions WHERE event_id IN ({marks})",
                        ids) as cur:
                    seen = {r[0] for r in await cur.fetchall()}
                latest: dict[EntityKey, Version | None] = {}
                now_us = _us(datetime.now(UTC))
                for v in versions:
                    if v.event_id in seen:
                        continue
                    if v.key not in latest:
                        latest[v.key] = await self._latest(db, v.key)
                    if is_same_transition(v, latest[v.key]):
                        continue
                    await db.execute(
                        "INSERT INTO history_versions (entity, entity_id, context, event_id, "
                        "observed_at_us, change, detected_by, digest, previous_digest, "
                        "changed_paths, document, recorded_at_us) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                        (v.key.entity, v.key.entity_id, v.key.context, v.event_id,
                         _us(v.observed_at), v.change, v.detected_by, v.digest,
                         v.previous_digest, orjson.dumps(list(v.changed_paths)).decode(),
                         v.document, now_us))
                    seen.add(v.event_id)
                    current = latest[v.key]
                    if current is None or v.observed_at >= current.observed_at:
                        latest[v.key] = v
                    stored.append(v)
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
        return stored

    async def _latest(self, db: aiosqlite.Connection, key: EntityKey) -> Version | None:
        async with db.execute(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} {_NEWEST_FIRST} LIMIT 1",
                (key.entity, key.entity_id, key.context)) as cur:
            row = await cur.fetchone()
        return _row(row) if row else None

    async def versions(self, key: EntityKey) -> list[Version]:
        async with self._translate(), self._conn().execute(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} {_NEWEST_FIRST}",
                (key.entity, key.entity_id, key.context)) as cur:
            return [_row(r) for r in await cur.fetchall()]

    async def version_at(self, key: EntityKey, at: datetime) -> Version | None:
        async with self._translate(), self._conn().execute(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} AND observed_at_us <= ? "
                f"{_NEWEST_FIRST} LIMIT 1",
                (key.entity, key.entity_id, key.context, _us(at))) as cur:
            row = await cur.fetchone()
        return _row(row) if row else None

    async def version_by_digest(self, key: EntityKey, digest: str) -> Version | None:
        async with self._translate(), self._conn().execute(
                f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} AND digest = ? "
                f"{_NEWEST_FIRST} LIMIT 1",
                (key.entity, key.entity_id, key.context, digest)) as cur:
            row = await cur.fetchone()
        return _row(row) if row else None
