"""The durable outbox: events wait here, in SQLite, until Kafka has acknowledged them.

One file, ``outbox_path(state_dir)`` (``<state_dir>/gateway.sqlite3``), also holds the
change detector's last-seen digests, so "remember the digest + enqueue the event" is one transaction.

Durability (services.common.sqlite): WAL mode with ``synchronous=NORMAL``. A committed transaction is in the WAL
file before COMMIT returns, so it survives SIGKILL of the process (only an OS crash or
power loss can drop the last transactions, which FULL would prevent at an fsync each).

Threading: by default the calls run on the event loop, synchronously; the body of
``transaction()`` must not ``await`` (no other coroutine can interleave). Two
connections: the writer for transactions, and the reader (the publisher's, and every
other read of committed rows on the loop). ``start_writer()`` (the gateway does) adds
group commit (services.common.outbox.writer): ``write(job)`` hands a job to the writer
thread and returns a future that resolves once the job is committed; many jobs share
one transaction. ``transaction()`` still works then: it first waits until the writer
has committed everything submitted before it, so the order of writes is the order of
the calls.

Cluster mode (DESIGN.md §12): a row may first be written UNCLAIMED, into the table
``outbox_unclaimed`` with the transition it announces (shared-digest entity, previous,
new, event id). The publisher never reads that table. A claimer
(services.gateway.claims) decides each unclaimed row against the shared digests and
then either ``promote``s it — moves it into ``outbox`` under a NEW id, in one
transaction, so the publisher's read cursor (ids above the last it read) always
reaches it — or ``drop``s it. In single-replica mode nothing is ever unclaimed: rows go
to ``outbox`` directly, as before.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import orjson
import structlog

from services.common import sqlite
from services.common.events import EventRecord
from services.common.outbox.writer import GroupCommitWriter
from services.common.sqlite import decode_headers, encode_headers

log = structlog.get_logger(__name__)

DB_FILENAME = "gateway.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    headers BLOB NOT NULL,
    value BLOB NOT NULL
)
"""

_UNCLAIMED_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_unclaimed (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    headers BLOB NOT NULL,
    value BLOB NOT NULL,
    entity TEXT NOT NULL,     -- the shared-digest entity, e.g. price:<context>:<evse>
    previous TEXT,            -- the digest this replica saw before (NULL: never seen)
    new TEXT NOT NULL,        -- '' for a deletion
    event_id TEXT NOT NULL,   -- the event's ce_id: the claim in Redis is keyed by it
    always INTEGER NOT NULL   -- 1: publish even if the claim is lost (writes)
)
"""


@dataclass(frozen=True, slots=True)
class ClaimSpec:
    """What an unclaimed row announces (see the module docstring)."""

    entity: str
    previous: str | None
    new: str
    event_id: str
    always: bool = False


@dataclass(frozen=True, slots=True)
class UnclaimedRow:
    id: int
    record: EventRecord
    claim: ClaimSpec


def outbox_path(state_dir: Path) -> Path:
    """The gateway's SQLite file in ``state_dir``: the one place its name is made."""
    return Path(state_dir) / DB_FILENAME


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Set after a commit that added events: the publisher drains at once.
        self.wakeup = asyncio.Event()
        # Set after a commit that added UNCLAIMED rows: the claimer runs at once.
        self.claim_wakeup = asyncio.Event()
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._added = False
        self._added_unclaimed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # One transaction at a time on the writer connection: the loop's or the writer's.
        self._lock = threading.Lock()
        self._writer: GroupCommitWriter | None = None
        self._forgetting: set[int] = set()  # acknowledged, their DELETE not committed yet

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite.connect(self.path)
        self._conn.execute(_SCHEMA)
        self._conn.execute(_UNCLAIMED_SCHEMA)
        self._reader = sqlite.connect(self.path)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def start_writer(self, *, max_batch: int = 1000) -> None:
        """Group commit from now on (module docstring); call on the loop that awaits the
        futures, after ``open()``. ``close()`` commits what is queued and stops it."""
        if self._writer is None:
            self._loop = asyncio.get_running_loop()
            self._writer = GroupCommitWriter(self.connection, self._lock, self._loop,
                                             self._after_writer_commit, max_batch=max_batch)

    @property
    def writer(self) -> GroupCommitWriter | None:
        return self._writer

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        for conn in (self._reader, self._conn):
            if conn is not None:
                conn.close()
        self._conn = self._reader = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer connection, for reads by the owner of tables in the same file. With
        the writer thread running, this waits until it has committed every job submitted
        so far: use the connection at once, without awaiting in between."""
        if self._conn is None:
            raise RuntimeError("outbox is not open")
        if self._writer is not None:
            self._writer.idle()
        return self._conn

    @property
    def reader(self) -> sqlite3.Connection:
        """The reader connection: committed rows only, never waits for the writer. For
        reads on the loop's thread."""
        if self._reader is None:
            raise RuntimeError("outbox is not open")
        return self._reader

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception). Do not await inside.
        After every job submitted to the writer thread before it."""
        conn = self.connection  # waits for the writer to be idle
        with self._lock:
            try:
                with sqlite.transaction(conn):
                    yield conn
            except BaseException:
                self._added = self._added_unclaimed = False
                raise
            self._after_commit_notify()

    def write(self, job: Callable[[sqlite3.Connection], Any]) -> asyncio.Future[Any] | None:
        """Run ``job(conn)`` in a transaction. With the writer thread: queued (group
        commit), returns the future of its commit. Without: committed before this
        returns (None)."""
        if self._writer is not None:
            return self._writer.submit(job)
        with self.transaction() as conn:
            job(conn)
        return None

    def _after_writer_commit(self) -> None:  # the writer thread, under the lock
        self._after_commit_notify()

    def _after_commit_notify(self) -> None:
        if self._added:
            self._added = False
            self._notify(self.wakeup)
        if self._added_unclaimed:
            self._added_unclaimed = False
            self._notify(self.claim_wakeup)

    def add(self, conn: sqlite3.Connection, record: EventRecord,
            claim: ClaimSpec | None = None) -> None:
        """Enqueue ``record``; call inside ``transaction()`` with its connection. With
        ``claim`` the row is UNCLAIMED: the publisher sends it only once promoted."""
        if not conn.in_transaction:
            raise RuntimeError("Outbox.add must run inside Outbox.transaction()")
        if claim is None:
            conn.execute(
                "INSERT INTO outbox (created_at, topic, key, headers, value) "
                "VALUES (?, ?, ?, ?, ?)",
                (time.time(), record.topic, record.key, encode_headers(record.headers),
                 record.value),
            )
            self._added = True
            return
        conn.execute(
            "INSERT INTO outbox_unclaimed (created_at, topic, key, headers, value, entity, "
            "previous, new, event_id, always) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), record.topic, record.key, encode_headers(record.headers), record.value,
             claim.entity, claim.previous, claim.new, claim.event_id, int(claim.always)),
        )
        self._added_unclaimed = True

    def _notify(self, event: asyncio.Event) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # committed from another thread: hop onto the publisher's loop
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(event.set)
            return
        event.set()

    # -- the claimer's side (reads: committed rows, the reader; decide: a transaction) --

    def unclaimed(self, limit: int, *, after_id: int = 0) -> list[UnclaimedRow]:
        """Up to ``limit`` unclaimed rows, oldest first (committed ones: the reader)."""
        rows = self.reader.execute(
            "SELECT id, topic, key, headers, value, entity, previous, new, event_id, always "
            "FROM outbox_unclaimed WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit),
        ).fetchall()
        return [
            UnclaimedRow(row_id, EventRecord(topic=topic, key=key, headers=decode_headers(headers),
                                             value=value),
                         ClaimSpec(entity, previous, new, event_id, bool(always)))
            for row_id, topic, key, headers, value, entity, previous, new, event_id, always
            in rows
        ]

    def unclaimed_count(self) -> int:
        return self.reader.execute("SELECT count(*) FROM outbox_unclaimed").fetchone()[0]

    def decide(self, promote: Sequence[int], drop: Sequence[int],
               replace: Sequence[tuple[int, EventRecord, ClaimSpec]] = ()) -> None:
        """One transaction: move ``promote`` rows into the outbox (new ids, in the given
        order), delete ``drop`` rows, rewrite ``replace`` rows (still unclaimed: a
        re-evaluated transition with a new event id)."""
        with self.transaction() as conn:
            for row_id in promote:
                conn.execute(
                    "INSERT INTO outbox (created_at, topic, key, headers, value) "
                    "SELECT created_at, topic, key, headers, value FROM outbox_unclaimed "
                    "WHERE id = ?", (row_id,))
                conn.execute("DELETE FROM outbox_unclaimed WHERE id = ?", (row_id,))
            conn.executemany("DELETE FROM outbox_unclaimed WHERE id = ?", [(i,) for i in drop])
            for row_id, record, claim in replace:
                conn.execute(
                    "UPDATE outbox_unclaimed SET headers = ?, value = ?, previous = ?, new = ?, "
                    "event_id = ?, always = ? WHERE id = ?",
                    (encode_headers(record.headers), record.value, claim.previous, claim.new,
                     claim.event_id, int(claim.always), row_id))
            if promote:
                self._added = True

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop whose ``wakeup`` waiters commits from other threads should reach."""
        self._loop = loop

    # -- the publisher's side (reader connection: committed rows only) --

    @property
    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("outbox is not open")
        return self._reader

    def pending(self) -> int:
        """Rows waiting: publishable and (cluster mode) not yet claimed."""
        if not self._forgetting:
            return self._read.execute(
                "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM outbox_unclaimed)"
            ).fetchone()[0]
        # Their DELETE may have committed already (its callback not run yet): count exactly.
        return self._read.execute(
            "SELECT (SELECT count(*) FROM outbox WHERE id NOT IN (SELECT value FROM json_each(?)))"
            " + (SELECT count(*) FROM outbox_unclaimed)", (orjson.dumps(sorted(self._forgetting)),)
        ).fetchone()[0]

    def oldest_age_s(self) -> float:
        # ids grow in commit order (one writer at a time), so the lowest id is the oldest.
        row = self._read.execute("SELECT created_at FROM outbox ORDER BY id LIMIT 1").fetchone()
        return 0.0 if row is None else max(0.0, time.time() - row[0])

    def next_batch(self, limit: int, *, after_id: int = 0) -> list[tuple[int, EventRecord]]:
        """Up to ``limit`` waiting events, oldest first (with ids above ``after_id``:
        the publisher reads on while earlier batches await their acks)."""
        forgetting = self._forgetting
        rows = self._read.execute(
            "SELECT id, topic, key, headers, value FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit + len(forgetting)),
        ).fetchall()
        if forgetting:
            rows = [row for row in rows if row[0] not in forgetting][:limit]
        return [
            (row_id, EventRecord(topic=topic, key=key, headers=decode_headers(headers), value=value))
            for row_id, topic, key, headers, value in rows
        ]

    def mark_sent(self, ids: Sequence[int]) -> None:
        """Forget events Kafka has acknowledged. With the writer thread: queued with the
        other writes (a crash before that commit sends them again: duplicates, no gaps)."""
        if not ids:
            return
        ordered = sorted(ids)

        def forget(conn: sqlite3.Connection) -> None:
            if ordered[-1] - ordered[0] + 1 == len(set(ordered)):  # a run: the usual case
                conn.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (ordered[0], ordered[-1]))
            else:
                conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ordered])

        if self._writer is not None:
            # Until that commit, these rows are hidden from next_batch() and pending().
            self._forgetting.update(ordered)

            def forgotten(future: asyncio.Future[Any]) -> None:
                self._forgetting.difference_update(ordered)  # deleted, or back if it failed
                _log_failed_forget(future)

            self._writer.submit(forget).add_done_callback(forgotten)
            return
        with sqlite.transaction(self._read) as conn:
            forget(conn)


def _log_failed_forget(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning("outbox_mark_sent_failed", error=repr(exc)[:300])  # sent again later
