"""The durable delivery queue: one SQLite file (WAL) in the state directory.

The consumer writes one job per (event, matching subscription) here and only then
lets its offset be committed, so a crash never loses a webhook; workers drain the
jobs at their own pace. A job's life:

    pending ──2xx──▶ delivered
       │ └─failure──▶ pending (attempts+1, next_attempt_at later)
       ├─last attempt failed / subscription disabled──▶ dead_letter ──published──▶ dead

Effect-once rules (DESIGN.md §7), enforced in ``enqueue``:
- the same event (CloudEvent id) for a subscription is queued once (unique key);
- an event repeating the latest transition queued for that subscription and entity
  (same previous_digest and digest: another gateway replica saw the same change)
  is skipped; a value flipping back and forth (A→B→A→B) is queued every time.

All calls are short synchronous transactions on the event-loop thread (the file is
local, WAL keeps readers and the writer apart), except the consumer's ``enqueue_beside``:
the batch's durable transaction (inserts and an fsync'd COMMIT, ~a quarter of the
worker's time during a backlog) runs on a thread with its own connection, so deliveries
go on meanwhile. While it runs, ``ingesting`` is true: a writer on the loop would wait
for its lock (SQLite's busy wait blocks the loop), so the workers hold their writes
until it is done (the engine wakes them).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import orjson

from services.common import sqlite
from services.common.sqlite import decode_headers, encode_headers

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription    TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    entity          TEXT    NOT NULL,      -- ordering key: the CloudEvent subject
    ce_type         TEXT    NOT NULL,
    source_topic    TEXT    NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset   INTEGER NOT NULL,
    body            BLOB    NOT NULL,      -- the exact bytes every attempt sends
    event_headers   BLOB    NOT NULL,      -- the original Kafka headers, for the dead letter
    event_value     BLOB    NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    created_at      REAL    NOT NULL,
    finished_at     REAL,
    last_error      TEXT,
    dlq_reason      TEXT,
    UNIQUE (subscription, event_id)
);
CREATE INDEX IF NOT EXISTS jobs_heads ON jobs (subscription, state, entity, id);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (subscription, state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
CREATE TABLE IF NOT EXISTS latest_transition (
    subscription    TEXT NOT NULL,
    transition_key  TEXT NOT NULL,
    previous_digest TEXT NOT NULL,
    digest          TEXT NOT NULL,
    PRIMARY KEY (subscription, transition_key)
);
CREATE TABLE IF NOT EXISTS disabled_subscriptions (
    subscription    TEXT PRIMARY KEY,
    url_sha256      TEXT NOT NULL,
    reason          TEXT NOT NULL,
    disabled_at     REAL NOT NULL
);
"""

# In the order of Job's fields.
_JOB_COLUMNS = ("subscription, event_id, entity, ce_type, source_topic, source_partition, "
                "source_offset, body, id, attempts, next_attempt_at, created_at")
_JOB_COLUMNS_J = ", ".join("j." + c.strip() for c in _JOB_COLUMNS.split(","))


def url_fingerprint(url: str) -> str:
    """Disabling is remembered per URL: pointing a subscription elsewhere re-enables it."""
    return hashlib.sha256(url.encode()).hexdigest()


@dataclass(frozen=True)
class _Delivery:
    """What a queued job and a job to queue both are: one event for one subscription."""

    subscription: str
    event_id: str
    entity: str
    ce_type: str
    source_topic: str
    source_partition: int
    source_offset: int
    body: bytes


@dataclass(frozen=True)
class NewJob(_Delivery):
    event_headers: Sequence[tuple[str, bytes]]
    event_value: bytes
    # (key, previous_digest, digest) when the event is a transition, else None
    transition: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class Job(_Delivery):
    id: int
    attempts: int
    next_attempt_at: float
    created_at: float


@dataclass(frozen=True)
class DeadJob:
    id: int
    subscription: str
    entity: str
    source_topic: str
    source_partition: int
    source_offset: int
    event_headers: list[tuple[str, bytes]]
    event_value: bytes
    attempts: int
    reason: str
    last_error: str | None


@dataclass
class EnqueueResult:
    queued: int = 0
    duplicate_event: int = 0
    duplicate_transition: int = 0
    revived: int = 0  # dead-lettered jobs queued again by a replay


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._ingest_db: sqlite3.Connection | None = None  # used only on _ingest_thread
        self._ingest_thread: ThreadPoolExecutor | None = None
        self._ingesting = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # NORMAL (WAL): every commit survives a process crash; after a power loss the
        # last ones may roll back. Fine for delivery state (the worst case is a repeat
        # with the same webhook-id); enqueue and disable commit durably (FULL).
        db = sqlite.connect(self.path)
        db.executescript(_SCHEMA)
        self._db = db
        self._ingest_db = sqlite.connect(self.path)
        self._ingest_thread = ThreadPoolExecutor(1, thread_name_prefix="webhooks-enqueue")

    def close(self) -> None:
        if self._ingest_thread is not None:
            self._ingest_thread.shutdown(wait=True)  # an enqueue under way finishes first
            self._ingest_thread = None
        if self._ingest_db is not None:
            self._ingest_db.close()
            self._ingest_db = None
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def ingesting(self) -> bool:
        """An ``enqueue_beside`` holds (or is about to take) the write lock."""
        return self._ingesting > 0

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("JobStore is not open")
        return self._db

    # -- ingest ---------------------------------------------------------------------------

    async def enqueue_beside(self, jobs: Iterable[NewJob]) -> EnqueueResult:
        """``enqueue`` on the store's own thread and connection (the event loop goes on)."""
        if self._ingest_thread is None or self._ingest_db is None:
            raise RuntimeError("JobStore is not open")
        loop = asyncio.get_running_loop()
        jobs = list(jobs)
        self._ingesting += 1
        done = self._ingest_thread.submit(self._enqueue_on, self._ingest_db, jobs, time.time())
        # Counted down when the thread is done, not when the awaiting task is (a
        # cancelled batch still finishes its transaction).
        done.add_done_callback(lambda _: loop.call_soon_threadsafe(self._ingest_done))
        return await asyncio.wrap_future(done)

    def _ingest_done(self) -> None:
        self._ingesting -= 1

    def enqueue(self, jobs: Iterable[NewJob], *, now: float | None = None) -> EnqueueResult:
        """Queue a batch in ONE durable transaction (all or nothing): the consumer
        commits its offsets right after, so from then on the queue is the only copy.

        The rules are applied job by job, in order, to what the file holds plus what
        the batch queued before (read with one query per subscription and table, then
        written with one statement each)."""
        return self._enqueue_on(self.db, list(jobs), time.time() if now is None else now)

    @staticmethod
    def _enqueue_on(conn: sqlite3.Connection, jobs: list[NewJob], now: float) -> EnqueueResult:
        result = EnqueueResult()
        with sqlite.transaction(conn, durable=True) as db:
            states = _known_states(db, jobs)
            latest = _latest_transitions(db, jobs)
            revive: list[tuple[float, str, str]] = []
            insert: list[tuple[object, ...]] = []
            transitions: dict[tuple[str, str], tuple[str, str]] = {}
            for job in jobs:
                ident = (job.subscription, job.event_id)
                state = states.get(ident)
                # A dead letter replayed to its topic (`ampgate dlq replay`) is delivered
                # again: its job comes back to life with fresh attempts, same webhook-id.
                if state == "dead":
                    states[ident] = "pending"
                    revive.append((now, *ident))
                    result.revived += 1
                    continue
                if job.transition is not None:
                    key, previous, digest = job.transition
                    if latest.get((job.subscription, key)) == (previous, digest):
                        result.duplicate_transition += 1
                        continue
                if state is not None:  # the same event for this subscription: queued once
                    result.duplicate_event += 1
                    continue
                states[ident] = "pending"
                insert.append((job.subscription, job.event_id, job.entity, job.ce_type,
                               job.source_topic, job.source_partition, job.source_offset,
                               job.body, encode_headers(job.event_headers), job.event_value,
                               now, now))
                result.queued += 1
                if job.transition is not None:
                    latest[(job.subscription, key)] = transitions[(job.subscription, key)] = (
                        previous, digest)
            if revive:
                db.executemany(
                    "UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                    "finished_at = NULL, last_error = NULL, dlq_reason = NULL "
                    "WHERE subscription = ? AND event_id = ? AND state = 'dead'", revive)
            if insert:
                _insert_jobs(db, insert)
            if transitions:
                db.executemany(
                    "INSERT INTO latest_transition VALUES (?,?,?,?) "
                    "ON CONFLICT (subscription, transition_key) DO UPDATE SET "
                    "previous_digest = excluded.previous_digest, digest = excluded.digest",
                    [(sub, key, prev, dig) for (sub, key), (prev, dig) in transitions.items()])
        return result

    # -- delivery -------------------------------------------------------------------------

    def heads(self, subscription: str, limit: int) -> list[Job]:
        """The oldest pending job of each entity (only a head may be attempted: per-entity
        order), earliest due first."""
        # Walks pending jobs in due order and stops after ``limit`` heads, so the cost
        # follows the limit, not the backlog (a GROUP BY would scan every pending job).
        rows = self.db.execute(
            f"SELECT {_JOB_COLUMNS_J} FROM jobs AS j INDEXED BY jobs_due "
            "WHERE j.subscription = ? AND j.state = 'pending' AND NOT EXISTS ("
            "  SELECT 1 FROM jobs AS e WHERE e.subscription = j.subscription"
            "  AND e.state = 'pending' AND e.entity = j.entity AND e.id < j.id"
            ") ORDER BY j.next_attempt_at, j.id LIMIT ?",
            (subscription, limit)).fetchall()
        return [Job(*row) for row in rows]

    def mark_delivered(self, job_id: int, attempts: int, *, now: float | None = None) -> None:
        # A job dead-lettered by a concurrent disable but not yet published counts as delivered.
        self.db.execute(
            "UPDATE jobs SET state = 'delivered', attempts = ?, finished_at = ?, last_error = NULL "
            "WHERE id = ? AND state IN ('pending', 'dead_letter')",
            (attempts, time.time() if now is None else now, job_id))

    def mark_delivered_many(self, done: Sequence[tuple[int, int, float]]) -> None:
        """``mark_delivered`` for many (job id, attempts, finished_at) in ONE transaction:
        what the workers call every few milliseconds instead of one commit per delivery."""
        with sqlite.transaction(self.db) as db:
            db.executemany(
                "UPDATE jobs SET state = 'delivered', attempts = ?, finished_at = ?, "
                "last_error = NULL WHERE id = ? AND state IN ('pending', 'dead_letter')",
                [(attempts, finished_at, job_id) for job_id, attempts, finished_at in done])

    def schedule_retry(self, job_id: int, attempts: int, next_attempt_at: float, error: str) -> None:
        self.db.execute(
            "UPDATE jobs SET attempts = ?, next_attempt_at = ?, last_error = ? "
            "WHERE id = ? AND state = 'pending'",
            (attempts, next_attempt_at, error, job_id))

    def mark_failed(self, job_id: int, attempts: int, error: str, reason: str) -> None:
        """Give up on a job: it waits in state dead_letter until published there."""
        self.db.execute(
            "UPDATE jobs SET state = 'dead_letter', attempts = ?, last_error = ?, dlq_reason = ? "
            "WHERE id = ? AND state = 'pending'",
            (attempts, error, reason, job_id))

    def pending_count(self, subscription: str) -> int:
        return self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE subscription = ? AND state = 'pending'",
            (subscription,)).fetchone()[0]

    # -- dead letters ---------------------------------------------------------------------

    def dead_letters(self, limit: int) -> list[DeadJob]:
        rows = self.db.execute(
            "SELECT id, subscription, entity, source_topic, source_partition, source_offset, "
            "event_headers, event_value, attempts, dlq_reason, last_error FROM jobs "
            "WHERE state = 'dead_letter' ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [DeadJob(r[0], r[1], r[2], r[3], r[4], r[5], list(decode_headers(r[6])), r[7], r[8],
                        r[9] or "unknown", r[10]) for r in rows]

    def mark_dead_lettered(self, ids: Sequence[int], *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with sqlite.transaction(self.db) as db:
            db.executemany("UPDATE jobs SET state = 'dead', finished_at = ? "
                           "WHERE id = ? AND state = 'dead_letter'", [(now, i) for i in ids])

    # -- subscriptions --------------------------------------------------------------------

    def disable(self, subscription: str, url: str, reason: str, *,
                now: float | None = None) -> int:
        """Persist the disabling and move the subscription's pending jobs to the dead
        letter; returns how many were moved."""
        now = time.time() if now is None else now
        with sqlite.transaction(self.db, durable=True) as db:
            db.execute(
                "INSERT INTO disabled_subscriptions VALUES (?,?,?,?) ON CONFLICT (subscription) "
                "DO UPDATE SET url_sha256 = excluded.url_sha256, reason = excluded.reason, "
                "disabled_at = excluded.disabled_at",
                (subscription, url_fingerprint(url), reason, now))
            cur = db.execute(
                "UPDATE jobs SET state = 'dead_letter', dlq_reason = 'subscription_disabled' "
                "WHERE subscription = ? AND state = 'pending'", (subscription,))
            return cur.rowcount

    def dead_letter_pending(self, subscription: str) -> int:
        """Move a disabled subscription's pending jobs to the dead letter (those an
        enqueue wrote after its ``disable``); returns how many were moved."""
        cur = self.db.execute(
            "UPDATE jobs SET state = 'dead_letter', dlq_reason = 'subscription_disabled' "
            "WHERE subscription = ? AND state = 'pending'", (subscription,))
        return cur.rowcount

    def is_disabled(self, subscription: str, url: str) -> bool:
        """Disabled for this URL? A disabling recorded for another URL is forgotten."""
        row = self.db.execute(
            "SELECT url_sha256 FROM disabled_subscriptions WHERE subscription = ?",
            (subscription,)).fetchone()
        if row is None:
            return False
        if row[0] == url_fingerprint(url):
            return True
        self.enable(subscription)
        return False

    def enable(self, subscription: str) -> None:
        self.db.execute("DELETE FROM disabled_subscriptions WHERE subscription = ?", (subscription,))

    # -- housekeeping ---------------------------------------------------------------------

    def prune(self, older_than_s: float, *, now: float | None = None) -> int:
        """Forget finished jobs. Their event ids stop deduplicating after this: keep the
        retention longer than any replay you expect (default 7 days)."""
        now = time.time() if now is None else now
        cur = self.db.execute(
            "DELETE FROM jobs WHERE state IN ('delivered', 'dead') AND finished_at < ?",
            (now - older_than_s,))
        return cur.rowcount


_INSERT_COLUMNS = ("subscription, event_id, entity, ce_type, source_topic, source_partition, "
                   "source_offset, body, event_headers, event_value, next_attempt_at, created_at")
# The batch's rows in a few multi-row INSERTs (ROWS_PER_INSERT rows each, 12 parameters a
# row: well under SQLite's limit of 32,766): each statement is one step with the GIL
# released, where executemany takes the GIL back for every row, and on the store's
# thread waits each time for the event loop's thread to hand it over. Rows go in in the
# batch's order (the ids give the per-entity order of deliveries).
ROWS_PER_INSERT = 100
_ROW = "(" + ",".join("?" * 12) + ")"


def _insert_jobs(db: sqlite3.Connection, rows: list[tuple[object, ...]]) -> None:
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        db.execute(f"INSERT OR IGNORE INTO jobs ({_INSERT_COLUMNS}) VALUES "
                   + ",".join([_ROW] * len(chunk)),
                   [v for row in chunk for v in row])


def _by_subscription(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for subscription, name in pairs:
        out.setdefault(subscription, []).append(name)
    return {sub: list(dict.fromkeys(names)) for sub, names in out.items()}


# One statement and ONE result row per lookup (the rows as a JSON array): fetching row by
# row takes the GIL back for every row, and the store's thread would wait for the event
# loop's thread each time.
_STATES = ("SELECT json_group_array(json_array(event_id, state)) FROM jobs "
           "WHERE subscription = ? AND event_id IN (SELECT value FROM json_each(?))")
_LATEST = ("SELECT json_group_array(json_array(transition_key, previous_digest, digest)) "
           "FROM latest_transition WHERE subscription = ? "
           "AND transition_key IN (SELECT value FROM json_each(?))")


def _known_states(db: sqlite3.Connection, jobs: Sequence[NewJob]) -> dict[tuple[str, str], str]:
    """The state of each (subscription, event id) of ``jobs`` already queued."""
    states: dict[tuple[str, str], str] = {}
    for sub, ids in _by_subscription((j.subscription, j.event_id) for j in jobs).items():
        (found,), = db.execute(_STATES, (sub, orjson.dumps(ids)))
        states.update(((sub, event_id), state) for event_id, state in orjson.loads(found))
    return states


def _latest_transitions(db: sqlite3.Connection,
                        jobs: Sequence[NewJob]) -> dict[tuple[str, str], tuple[str, str]]:
    """The latest transition queued per (subscription, transition key) of ``jobs``."""
    latest: dict[tuple[str, str], tuple[str, str]] = {}
    pairs = ((j.subscription, j.transition[0]) for j in jobs if j.transition is not None)
    for sub, keys in _by_subscription(pairs).items():
        (found,), = db.execute(_LATEST, (sub, orjson.dumps(keys)))
        latest.update(((sub, key), (prev, dig)) for key, prev, dig in orjson.loads(found))
    return latest
