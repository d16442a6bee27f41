"""Where versions live: one small interface, two implementations (SQLite, PostgreSQL),
chosen by ``AMPGATE_HISTORY__DATABASE_URL``: a plain path or ``sqlite:///path`` → SQLite,
``postgresql://...`` (or ``postgres://``) → PostgreSQL.

Schema migrations are plain versioned SQL files in ``migrations/<dialect>/NNNN_name.sql``,
applied in order at start-up and recorded in ``schema_migrations``.
"""

from __future__ import annotations

import abc
import importlib.resources
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from services.common.settings import ConfigError
from services.history.versions import EntityKey, Version


class StoreUnavailable(Exception):
    """The database could not be reached or is busy: worth retrying."""


class HistoryStore(abc.ABC):
    """Every version of every entity, append-only."""

    dialect: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def record(self, versions: Sequence[Version]) -> list[Version]:
        """Store ``versions`` in order, in ONE transaction, skipping those the rule in
        services.history.versions says were recorded already; return those stored."""

    @abc.abstractmethod
    async def versions(self, key: EntityKey) -> list[Version]:
        """All versions, newest first."""

    @abc.abstractmethod
    async def version_at(self, key: EntityKey, at: datetime) -> Version | None:
        """The latest version observed at or before ``at`` (deleted ones included)."""

    @abc.abstractmethod
    async def version_by_digest(self, key: EntityKey, digest: str) -> Version | None:
        """The newest version with this digest (the same digest = the same document)."""

    @abc.abstractmethod
    async def applied_migrations(self) -> list[int]: ...


def open_store(database_url: str) -> HistoryStore:
    """The store for a database URL (not yet opened)."""
    url = database_url.strip()
    if re.match(r"^postgres(ql)?(\+\w+)?://", url):
        from services.history.postgres_store import PostgresStore

        return PostgresStore(re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url))
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        # sqlite:///abs/path -> /abs/path ; sqlite:///rel -> rel (SQLAlchemy style: 3 slashes
        # then the path; 4 slashes for an absolute one also works).
        path = path.removeprefix("/")
        if not path:
            raise ConfigError("AMPGATE_HISTORY__DATABASE_URL: sqlite:/// needs a path")
    elif "://" in url:
        raise ConfigError("AMPGATE_HISTORY__DATABASE_URL: use a path, sqlite:///path or "
                          "postgresql://...")
    else:
        path = url
    from services.history.sqlite_store import SqliteStore

    return SqliteStore(Path(path))


def migrations(dialect: str) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration file for ``dialect``, in order."""
    folder = importlib.resources.files("services.history.migrations").joinpath(dialect)
    out = []
    for entry in folder.iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    return sorted(out)
