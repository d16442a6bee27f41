"""The durable outbox: events wait here, in SQLite, until Kafka has acknowledged them.

One file, ``outbox_path(state_dir)`` (``<state_dir>/gateway.sqlite3``), also holds the
change detector's last-seen digests, so "remember the digest + enqueue the event" is one transaction.

Durability (services.common.sqlite): WAL mode with ``synchronous=NORMAL``. A committed transaction is in the WAL
file before COMMIT returns, so it survives SIGKILL of the process (only an OS crash or
power loss can drop the last transactions, which FULL would prevent at an fsync each).

Threading: the calls run on the event loop, synchronously. They are sub-millisecond
local writes without fsync, cheaper than a hop to a thread; in exchange the body of
``transaction()`` must not ``await`` (no other coroutine can interleave). Two
connections: the writer for transactions, and one for the publisher, which so reads
only committed rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

from services.common import sqlite
from services.common.events import EventRecord
from services.common.sqlite import decode_headers, encode_headers

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


def outbox_path(state_dir: Path) -> Path:
    """The gateway's SQLite file in ``state_dir``: the one place its name is made."""
    return Path(state_dir) / DB_FILENAME


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Set after a commit that added events: the publisher drains at once.
        self.wakeup = asyncio.Event()
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._added = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite.connect(self.path)
        self._conn.execute(_SCHEMA)
        self._reader = sqlite.connect(self.path)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None

    def close(self) -> None:
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
        """The writer connection, for reads by the owner of tables in the same file."""
        if self._conn is None:
            raise RuntimeError("outbox is not open")
        return self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception). Do not await inside."""
        try:
            with sqlite.transaction(self.connection) as conn:
                yield conn
        except BaseException:
            self._added = False
            raise
        if self._added:
            self._added = False
            self._notify()

    def add(self, conn: sqlite3.Connection, record: EventRecord) -> None:
        """Enqueue ``record``; call inside ``transaction()`` with its connection."""
        if not conn.in_transaction:
            raise RuntimeError("Outbox.add must run inside Outbox.transaction()")
        conn.execute(
            "INSERT INTO outbox (created_at, topic, key, headers, value) VALUES (?, ?, ?, ?, ?)",
            (time.time(), record.topic, record.key, encode_headers(record.headers), record.value),
        )
        self._added = True

    def _notify(self) -> None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # committed from another thread: hop onto the publisher's loop
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.wakeup.set)
            return
        self.wakeup.set()

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
        return self._read.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def oldest_age_s(self) -> float:
        # ids grow in commit order (one writer at a time), so the lowest id is the oldest.
        row = self._read.execute("SELECT created_at FROM outbox ORDER BY id LIMIT 1").fetchone()
        return 0.0 if row is None else max(0.0, time.time() - row[0])

    def next_batch(self, limit: int, *, after_id: int = 0) -> list[tuple[int, EventRecord]]:
        """Up to ``limit`` waiting events, oldest first (with ids above ``after_id``:
        the publisher reads on while earlier batches await their acks)."""
        rows = self._read.execute(
            "SELECT id, topic, key, headers, value FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [
            (row_id, EventRecord(topic=topic, key=key, headers=decode_headers(headers), value=value))
            for row_id, topic, key, headers, value in rows
        ]

    def mark_sent(self, ids: Sequence[int]) -> None:
        """Forget events Kafka has acknowledged."""
        if not ids:
            return
        ordered = sorted(ids)
        with sqlite.transaction(self._read) as conn:
            if ordered[-1] - ordered[0] + 1 == len(set(ordered)):  # a run: the usual case
                conn.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (ordered[0], ordered[-1]))
            else:
                conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ordered])
