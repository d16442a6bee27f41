"""Group commit: one thread runs the outbox's write jobs, as many as wait in ONE transaction.

A job is a function of the writer connection (inserts, no commit of its own). The event
loop ``submit``s it and gets a future; the thread takes every job waiting, runs them in
arrival order inside one ``BEGIN IMMEDIATE ... COMMIT`` and only then resolves their
futures on the loop (should a job raise, the transaction is rolled back and each job is
run again in a transaction of its own, so only that job fails). So:

- a future that resolved without an exception means its rows are committed (in the WAL:
  they survive SIGKILL, services.common.sqlite); a caller that must not answer before its
  event is durable awaits it;
- jobs commit in submission order (one thread, FIFO): per-key order holds, ids grow in
  the order the loop submitted;
- while one transaction commits, the next jobs queue up: the busier the loop, the bigger
  the batch, one COMMIT for all. SQLite and zlib release the GIL, so that work overlaps
  with the loop (publishing, answering requests);
- the jobs submitted during one pass of the loop reach the thread together, at the end of
  that pass (``call_soon``): one hand-over and one wake-up of the thread per pass, not per
  job (each wake-up is a GIL hand-over the loop waits for; ~0.1 ms a job in the events
  bench). ``idle()`` and ``close()`` hand over what is held first.

The thread and the loop share the connection under ``lock``: whoever else writes on it
(``Outbox.transaction()``) waits for ``idle()`` first, so its transaction comes after
every job submitted before it.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger(__name__)

Job = Callable[[sqlite3.Connection], Any]

_STOP = object()


@dataclass(slots=True)
class _Pending:
    job: Job
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = field(default=None)


class GroupCommitWriter:
    """The writer thread (see the module docstring). ``after_commit`` runs in the thread,
    under ``lock``, after each COMMIT (the outbox wakes its publisher from there)."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock,
                 loop: asyncio.AbstractEventLoop, after_commit: Callable[[], None], *,
                 max_batch: int = 1000) -> None:
        self._conn = conn
        self._lock = lock
        self._loop = loop
        self._after_commit = after_commit
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # lists of _Pending, _STOP
        self._held: list[_Pending] = []  # submitted during this pass of the loop
        self._loop_thread = threading.current_thread()  # made on the loop (start_writer)
        self._idle = threading.Condition()
        self._submitted = 0
        self._done = 0
        self.batches = 0  # transactions committed (tests, benchmarks)
        self._thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue ``job``; the future resolves (on the loop) once its transaction committed."""
        future = self._loop.create_future()
        self._submitted += 1  # only the loop's thread submits (and asks idle())
        if not self._held:
            self._loop.call_soon(self._hand_over)
        self._held.append(_Pending(job, future))
        return future

    def _hand_over(self) -> None:
        """The jobs held (the loop's thread): to the writer thread, in submission order."""
        held, self._held = self._held, []
        if held:
            self._queue.put(held)

    def idle(self) -> None:
        """Block until every job submitted so far is committed (or failed)."""
        if threading.current_thread() is self._thread:
            return
        if threading.current_thread() is self._loop_thread:
            self._hand_over()
        with self._idle:
            self._idle.wait_for(lambda: self._done >= self._submitted)

    def close(self) -> None:
        """Run what is queued, then stop the thread."""
        self._hand_over()
        self._queue.put(_STOP)
        self._thread.join()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = list(item)
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.extend(item)
            self._commit(batch)
            with self._idle:
                self._done += len(batch)
                self._idle.notify_all()
            if not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(_settle, batch)
                except RuntimeError:  # the loop closed meanwhile: nobody awaits these
                    pass

    def _commit(self, batch: list[_Pending]) -> None:
        with self._lock:
            try:
                self._transaction(batch)
            except Exception:  # noqa: BLE001 — one job (or the commit) failed: nothing is in
                if len(batch) == 1:
                    return
                for pending in batch:  # each alone, so only the failing job fails
                    pending.error = None
                    with suppress(Exception):
                        self._transaction([pending])
            finally:
                try:
                    self._after_commit()
                except Exception:  # committed; a failed wake-up is logged only
                    log.exception("outbox_after_commit_failed")

    def _transaction(self, batch: list[_Pending]) -> None:
        """Every job of ``batch`` in one transaction; on an exception nothing is in and
        every job carries it (the failing one its own)."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for pending in batch:
                try:
                    pending.result = pending.job(conn)
                except BaseException as exc:
                    pending.error = exc
                    raise
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for pending in batch:
                pending.error = pending.error or exc
            log.error("outbox_commit_failed", jobs=len(batch), error=repr(exc)[:300])
            raise
        self.batches += 1


def _settle(batch: list[_Pending]) -> None:
    for pending in batch:
        if pending.future.done():
            continue
        if pending.error is not None:
            pending.future.set_exception(pending.error)
        else:
            pending.future.set_result(pending.result)
