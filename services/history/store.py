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
from importlib.resources.abc import Traversable
from pathlib import Path

from services.common.errors import AmpgateError, ConfigError
from services.history.versions import EntityKey, Version


class StoreUnavailable(AmpgateError):
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


def open_store(database_url: str, *, migrations_dir: Path | None = None) -> HistoryStore:
    """The store for a database URL (not yet opened). ``migrations_dir`` replaces the
    packaged ``migrations/<dialect>/`` folder (tests of the migration runner)."""
    url = database_url.strip()
    if re.match(r"^postgres(ql)?(\+\w+)?://", url):
        from services.history.postgres_store import PostgresStore

        return PostgresStore(re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", url),
                             migrations_dir=migrations_dir)
    if url.startswith("sqlite://"):
        # sqlite:///var/lib/h.db -> /var/lib/h.db: the path after the (empty) host is
        # absolute, as documented; sqlite:////var/lib/h.db (SQLAlchemy's spelling) too.
        # A relative path is written as a plain path.
        path = "/" + url.removeprefix("sqlite://").lstrip("/")
        if path == "/" or not url.startswith("sqlite:///"):
            raise ConfigError("AMPGATE_HISTORY__DATABASE_URL: use sqlite:///absolute/path "
                              "(or a plain path)")
    elif "://" in url:
        raise ConfigError("AMPGATE_HISTORY__DATABASE_URL: use a path, sqlite:///path or "
                          "postgresql://...")
    else:
        path = url
    from services.history.sqlite_store import SqliteStore

    return SqliteStore(Path(path), migrations_dir=migrations_dir)


def migrations(dialect: str, folder: Traversable | None = None) -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration file for ``dialect``, in version order."""
    if folder is None:
        folder = importlib.resources.files("services.history.migrations").joinpath(dialect)
    out = []
    for entry in folder.iterdir():
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if m:
            out.append((int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    out.sort()
    versions = [v for v, _, _ in out]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two {dialect} migrations share a version number: {versions}")
    return out
