"""The SQLite history store (the default: embedded, one file, WAL mode).

One plain sqlite3 connection owned by one dedicated thread: every call (a whole batch's
transaction included) is ONE hop to that thread, so the event loop never idles waiting
on a hop per statement.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson

from services.common import sqlite
from services.common.timestamps import rfc3339
from services.history.store import HistoryStore, StoreUnavailable, migrations
from services.history.versions import EntityKey, Version, versions_to_record

_COLUMNS = ("seq, entity, entity_id, context, event_id, observed_at_us, change, detected_by, "
            "digest, previous_digest, changed_paths, document")
_KEY = "entity = ? AND entity_id = ? AND context = ?"
_NEWEST_FIRST = "ORDER BY observed_at_us DESC, seq DESC"
# The batch's rows as ONE JSON array bound to one statement: SQLite inserts them all in
# one step with the GIL released, where executemany takes the GIL back for every row
# (and waits for the event loop's thread to hand it over each time).
_INSERT = ("INSERT INTO history_versions (entity, entity_id, context, event_id, "
           "observed_at_us, change, detected_by, digest, previous_digest, "
           "changed_paths, document, recorded_at_us) "
           "SELECT " + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(11)) + ", ? "
           "FROM json_each(?) WHERE true ORDER BY key ON CONFLICT (event_id) DO NOTHING")
# The latest version of many entities in one query: each key's newest seq comes from the
# (entity, entity_id, context, observed_at_us, seq) index, read backwards.
_LATEST_OF_KEYS = (
    "WITH k(entity, entity_id, context) AS (VALUES {values}) "
    "SELECT {columns} FROM k JOIN history_versions h ON h.seq = ("
    "SELECT x.seq FROM history_versions x "
    "WHERE x.entity = k.entity AND x.entity_id = k.entity_id AND x.context = k.context "
    "ORDER BY x.observed_at_us DESC, x.seq DESC LIMIT 1)")
_LATEST_COLUMNS = ", ".join(f"h.{c.strip()}" for c in _COLUMNS.split(","))
# Well under SQLite's bound-parameter limit (32,766; 999 on old builds).
_CHUNK = 300
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# On top of services.common.sqlite's WAL + synchronous=NORMAL (durability unchanged):
# a batch of 2,000 versions dirties index pages all over the event-id index, so
# * a 32 MiB page cache (the default is 2 MiB) keeps those pages in memory;
# * a checkpoint every ~40 MB of WAL (10,000 pages; the default is 1,000, i.e. nearly
#   every batch's COMMIT also copied its pages back and fsynced) writes a page updated by
#   many batches once; the WAL is truncated back to 64 MiB after a checkpoint.
# Store calls alone, 60 batches of 2,000 (machine shared, 3 interleaved runs each):
# 4,920-6,136 rows/s with the defaults, 10,290-16,964 with these.
_INGEST_PRAGMAS = ("cache_size=-32768", "wal_autocheckpoint=10000",
                   "journal_size_limit=67108864")

T = TypeVar("T")


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


def _chunks(items: list[T], size: int = _CHUNK) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class SqliteStore(HistoryStore):
    dialect = "sqlite"

    def __init__(self, path: Path, *, migrations_dir: Path | None = None) -> None:
        self.path = path
        self._migrations_dir = migrations_dir
        self._db: sqlite3.Connection | None = None
        self._thread: ThreadPoolExecutor | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-sqlite")
        try:
            db = await asyncio.get_running_loop().run_in_executor(thread, self._connect)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        self._db, self._thread = db, thread

    def _connect(self) -> sqlite3.Connection:
        # Only our thread uses the connection; close() may run wherever it must. NORMAL
        # sync survives a killed process (not a power cut): the worker re-reads
        # uncommitted Kafka offsets anyway.
        db = sqlite.connect(self.path)
        try:
            for pragma in _INGEST_PRAGMAS:
                db.execute(f"PRAGMA {pragma}")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    async def close(self) -> None:
        db, self._db = self._db, None
        thread, self._thread = self._thread, None
        if db is None or thread is None:
            return
        try:
            # Queued behind any call still running, which therefore finishes first.
            await asyncio.get_running_loop().run_in_executor(thread, db.close)
        finally:
            thread.shutdown(wait=False)

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        done = {r[0] for r in db.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in migrations(self.dialect, self._migrations_dir):
            if version in done:
                continue
            now = rfc3339(datetime.now(UTC))
            # One script, one transaction: a half-applied migration is never recorded.
            db.executescript(
                f"BEGIN IMMEDIATE;\n{sql}\n"
                f"INSERT INTO schema_migrations VALUES ({version}, '{name}', '{now}');\nCOMMIT;")

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in the store's thread: one hop."""
        db, thread = self._db, self._thread
        if db is None or thread is None:
            raise StoreUnavailable("the history database is not open")
        return await asyncio.get_running_loop().run_in_executor(thread, fn, db)

    async def _query(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._call(fn)
        except sqlite3.OperationalError as exc:  # locked, disk I/O, ...
            raise StoreUnavailable(str(exc)) from exc

    async def applied_migrations(self) -> list[int]:
        return await self._call(
            lambda db: [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY 1")])

    async def record(self, versions: Sequence[Version]) -> list[Version]:
        if not versions:
            return []
        batch = list(versions)
        now_us = _us(datetime.now(UTC))
        return await self._query(lambda db: _record(db, batch, now_us))

    async def versions(self, key: EntityKey) -> list[Version]:
        sql = f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} {_NEWEST_FIRST}"
        return await self._query(
            lambda db: [_row(r) for r in db.execute(sql, (key.entity, key.entity_id, key.context))])

    async def version_at(self, key: EntityKey, at: datetime) -> Version | None:
        return await self._one(
            f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} AND observed_at_us <= ? "
            f"{_NEWEST_FIRST} LIMIT 1",
            (key.entity, key.entity_id, key.context, _us(at)))

    async def version_by_digest(self, key: EntityKey, digest: str) -> Version | None:
        return await self._one(
            f"SELECT {_COLUMNS} FROM history_versions WHERE {_KEY} AND digest = ? "
            f"{_NEWEST_FIRST} LIMIT 1",
            (key.entity, key.entity_id, key.context, digest))

    async def _one(self, sql: str, params: tuple[Any, ...]) -> Version | None:
        row = await self._query(lambda db: db.execute(sql, params).fetchone())
        return _row(row) if row else None


def _record(db: sqlite3.Connection, versions: list[Version], now_us: int) -> list[Version]:
    """The whole batch in one transaction, in the store's thread (THE RULE of
    services.history.versions: skip a known event id, or the entity's latest transition
    again; the batch's own events count as stored as soon as they are)."""
    with sqlite.transaction(db):
        ids = list(dict.fromkeys(v.event_id for v in versions))
        seen = _known_event_ids(db, ids)
        latest = _latest_of(db, list(dict.fromkeys(v.key for v in versions
                                                   if v.event_id not in seen)))
        stored = versions_to_record(versions, seen, latest)
        if stored:
            db.execute(_INSERT, (now_us, orjson.dumps([
                (v.key.entity, v.key.entity_id, v.key.context, v.event_id, _us(v.observed_at),
                 v.change, v.detected_by, v.digest, v.previous_digest,
                 orjson.dumps(list(v.changed_paths)).decode(), v.document)
                for v in stored])))
    return stored


def _known_event_ids(db: sqlite3.Connection, ids: list[str]) -> set[str]:
    seen: set[str] = set()
    for chunk in _chunks(ids):
        marks = ",".join("?" * len(chunk))
        seen.update(r[0] for r in db.execute(
            f"SELECT event_id FROM history_versions WHERE event_id IN ({marks})", chunk))
    return seen


def _latest_of(db: sqlite3.Connection, keys: list[EntityKey]) -> dict[EntityKey, Version]:
    """The latest stored version of each of ``keys`` that has one."""
    latest: dict[EntityKey, Version] = {}
    for chunk in _chunks(keys):
        values = ",".join(["(?, ?, ?)"] * len(chunk))
        params = [p for k in chunk for p in (k.entity, k.entity_id, k.context)]
        sql = _LATEST_OF_KEYS.format(columns=_LATEST_COLUMNS, values=values)
        for row in db.execute(sql, params):
            version = _row(row)
            latest[version.key] = version
    return latest
