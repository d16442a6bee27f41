"""SQLite as every service uses it: a connection in WAL mode, explicit transactions.

``connect``: ``isolation_level=None`` (we write BEGIN/COMMIT ourselves; BEGIN IMMEDIATE
takes the write lock up front, so a transaction never fails half-way on lock upgrade),
``check_same_thread=False`` (the owner decides which thread uses it; close() may run
elsewhere), WAL with ``synchronous=NORMAL`` and a 5 s busy timeout. NORMAL in WAL mode: a
committed transaction survives SIGKILL of the process; only an OS crash or power loss can
drop the last ones — ``transaction(durable=True)`` fsyncs that one commit (FULL).

Kafka headers are stored as one BLOB column (``encode_headers``/``decode_headers``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

BUSY_TIMEOUT_S = 5.0


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` (created if missing) with the PRAGMAs above."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_S)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on an exception (a failed COMMIT included).
    ``durable``: this commit is fsynced (survives power loss too). Do not await inside
    when the connection is used on the event loop."""
    if durable:
        conn.execute("PRAGMA synchronous=FULL")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a failed COMMIT may have rolled back already
                conn.execute("ROLLBACK")
            raise
    finally:
        if durable:
            conn.execute("PRAGMA synchronous=NORMAL")


# Header values are bytes; latin-1 maps each byte to one code point and back, losslessly
# (cheaper than hex or base64 on the publisher's hot path).
def encode_headers(headers: Iterable[tuple[str, bytes]]) -> bytes:
    return orjson.dumps([[name, value.decode("latin-1")] for name, value in headers])


def decode_headers(raw: bytes) -> tuple[tuple[str, bytes], ...]:
    return tuple((name, value.encode("latin-1")) for name, value in orjson.loads(raw))
