"""From consumed events to stored versions: the history worker's batch handler."""

from __future__ import annotations

import sqlite3
from collections import Counter

import asyncpg
import structlog
from aiohttp import web

from services.common.consumer import TransientError
from services.common.events import ConsumedEvent
from services.history.keys import METRICS_KEY, STORE_KEY
from services.history.store import StoreUnavailable
from services.history.versions import version_from_event

log = structlog.get_logger("ampgate.history")

# What the database says about the VALUE (it can never be stored as it is); anything
# else the store raises is about the database (away, refusing connections, busy, full,
# read-only during a failover) and passes with time.
_VALUE_ERRORS = (
    sqlite3.DataError,
    sqlite3.IntegrityError,
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
)


async def handle_batch(app: web.Application, events: list[ConsumedEvent]) -> None:
    """Record a batch in one transaction. Data we cannot record raises BadEventData (or
    a database value error): dead-lettered by the runtime. A database that is away or
    busy raises TransientError: the runtime retries until it is back (DESIGN.md §7)."""
    versions = [version_from_event(e) for e in events]
    try:
        stored = await app[STORE_KEY].record(versions)
    except StoreUnavailable as exc:
        raise TransientError(str(exc)) from exc
    except _VALUE_ERRORS:
        raise
    except (sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
    metrics = app[METRICS_KEY]
    for entity, n in Counter(v.key.entity for v in stored).items():  # one inc per entity
        metrics.versions.labels(entity).inc(n)
    log.info("versions_recorded", events=len(events), recorded=len(stored),
             duplicates=len(events) - len(stored))
