"""One delivery worker per subscription, draining that subscription's queue.

Ordering: only the oldest pending job of an entity (passport id / EVSE id) may be in
flight or retried, so one endpoint sees an entity's events strictly in order, while
other entities on the same endpoint proceed (up to ``concurrency`` at once). A
failing entity therefore waits for its own retries without holding back the rest.

Isolation: each worker has its own task, connection pool and queue; a slow or dead
endpoint only ever delays itself.

Responses: 2xx delivered; 410 Gone disables the subscription (persisted, pending jobs
go to the dead-letter topic, later events are not queued); anything else is retried
on the schedule (with jitter, never sooner than ``Retry-After``; a 429/5xx
Retry-After also pauses the whole endpoint), and after the last attempt the job
goes to the dead-letter topic. A delivery interrupted by a shutdown or a crash is
attempted again (at least once, with the same ``webhook-id``).

State: a 2xx is recorded in memory at once and written with the other finished
deliveries in ONE transaction right before the worker next reads its queue (and on
stop), instead of one commit per delivery. While deliveries are in flight the queue is
read again only once a quarter of the slots are free (or none is in flight), so
one write and one read serve several deliveries. Until then the job still counts as pending
in the file, so a crash in between repeats that delivery (same ``webhook-id``), never
loses one; the worker itself never re-sends it, since it always writes before it
reads. Delivered-but-unwritten and in-flight together never exceed ``concurrency``
(a slot is only reused after that write), which bounds the repeats after a crash.
While the consumer's batch is being written (on the store's thread), that write and
the read after it wait for the batch: the loop would otherwise block on its lock.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from contextlib import suppress

import structlog

from services.common.settings import WebhookSubscription
from services.webhooks.dead_letter import DeadLetterPublisher
from services.webhooks.delivery import Attempt, Sender, retry_delay
from services.webhooks.metrics import WebhookMetrics
from services.webhooks.store import Job, JobStore
from services.webhooks.subscriptions import safe_endpoint

log = structlog.get_logger("ampgate.webhooks")

HOLD_WRITE_S = 0.05


class SubscriptionWorker:
    def __init__(self, subscription: WebhookSubscription, store: JobStore, sender: Sender,
                 dead_letters: DeadLetterPublisher, metrics: WebhookMetrics, *,
                 schedule: list[float], concurrency: int = 32,
                 rng: random.Random | None = None) -> None:
        self.subscription = subscription
        self.name = subscription.name
        self._store = store
        self._sender = sender
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._schedule = list(schedule)
        self._max_attempts = len(self._schedule) + 1
        self._concurrency = concurrency
        # Free slots worth a write and a read of the queue while deliveries are in flight.
        self._refill = max(1, concurrency // 4)
        self._rng = rng or random.Random()
        self._endpoint = safe_endpoint(str(subscription.url))
        self._success = metrics.deliveries.labels("success")
        self._duration = metrics.duration.labels(self.name)
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # entity -> its delivery
        self._delivered: list[tuple[int, int, float]] = []  # (job id, attempts, at), unwritten
        self._paused_until = 0.0
        self._stopping = False
        self.disabled = False

    def load(self) -> None:
        """Read the persisted state (store open): is this subscription disabled?"""
        self.disabled = self._store.is_disabled(self.name, str(self.subscription.url))
        self._metrics.disabled.labels(self.name).set(1 if self.disabled else 0)
        # Counted at scrape time: a COUNT per delivery would cost O(backlog) each time.
        self._metrics.pending.labels(self.name).set_function(self._pending)

    def wake(self) -> None:
        self._wake.set()

    def _pending(self) -> float:
        try:
            return self._store.pending_count(self.name)
        except RuntimeError:  # store closed (shutting down)
            return 0

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    delay = self._dispatch()
                except sqlite3.Error as exc:  # disk trouble: keep the worker alive, retry soon
                    log.error("webhook_queue_error", subscription=self.name, error=str(exc))
                    delay = 1.0
                if delay is None:
                    await self._wake.wait()
                else:
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
        finally:
            await self._drain(grace_s=0)
            self._flush_quietly()

    async def stop(self, task: asyncio.Task[None], grace_s: float) -> None:
        """Let in-flight deliveries finish for up to ``grace_s``, then cancel them (they
        stay pending and are attempted again after the restart)."""
        self._stopping = True
        await self._drain(grace_s)
        self._flush_quietly()
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task

    async def _drain(self, grace_s: float) -> None:
        tasks = list(self._in_flight.values())
        if not tasks:
            return
        if grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _flush(self) -> None:
        """Write the finished deliveries recorded in memory (one transaction). Called
        before every read of the queue, so a delivered job is never handed out again."""
        if self._delivered:
            done, self._delivered = self._delivered, []
            try:
                self._store.mark_delivered_many(done)
            except BaseException:
                self._delivered = done + self._delivered  # kept for the next try
                raise

    def _flush_quietly(self) -> None:
        try:
            self._flush()
        except (sqlite3.Error, RuntimeError) as exc:  # the file or a closed store
            # Not written: those deliveries are repeated after the restart (same id).
            log.error("webhook_queue_error", subscription=self.name, error=str(exc),
                      unrecorded_deliveries=len(self._delivered))

    def _dispatch(self) -> float | None:
        """Start every due head there is room for; seconds until the next one is due
        (None: nothing scheduled, wait for a wake-up)."""
        if self.disabled or self._stopping:
            self._flush()
            return None
        now = time.time()
        if now < self._paused_until:
            self._flush()
            return self._paused_until - now
        free = self._concurrency - len(self._in_flight)
        if free < (self._refill if self._in_flight else 1):
            # A finishing delivery wakes us: the queue is written and read once for
            # several free slots, not once per delivery.
            return None
        if self._delivered and self._store.ingesting:
            # Our write would wait for the enqueue's lock with the loop blocked. The
            # engine wakes us when it is done; the timeout is a backstop.
            return HOLD_WRITE_S
        self._flush()
        next_due: float | None = None
        for job in self._store.heads(self.name, free + len(self._in_flight)):
            if job.entity in self._in_flight:
                continue
            if job.next_attempt_at > now:
                next_due = job.next_attempt_at if next_due is None else min(next_due, job.next_attempt_at)
                continue
            if free == 0:
                break
            free -= 1
            self._in_flight[job.entity] = asyncio.create_task(
                self._deliver(job), name=f"webhook-{self.name}-{job.id}")
        return None if next_due is None else max(next_due - now, 0.0)

    # -- one delivery ---------------------------------------------------------------------

    async def _deliver(self, job: Job) -> None:
        try:
            started = time.perf_counter()
            attempt = await self._sender.send(job.event_id, job.body)
            self._duration.observe(time.perf_counter() - started)
            self._record(job, attempt)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Never let one job kill the worker. If even recording fails (queue trouble),
            # pause briefly rather than resend in a tight loop.
            log.exception("webhook_delivery_error", subscription=self.name, event_id=job.event_id)
            self._paused_until = time.time() + 1.0
            with suppress(Exception):
                self._record(job, Attempt(None, "internal_error"))
        finally:
            self._in_flight.pop(job.entity, None)
            self._wake.set()

    def _record(self, job: Job, attempt: Attempt) -> None:
        attempts = job.attempts + 1
        fields = {"subscription": self.name, "event_id": job.event_id, "entity": job.entity,
                  "attempt": attempts, "status": attempt.status}
        if attempt.ok:
            self._delivered.append((job.id, attempts, time.time()))
            self._success.inc()
            log.info("webhook_delivered", **fields)
            return
        self._flush()  # the rare paths below write at once, after what finished before
        if attempt.gone:
            self._disable(job, attempts, fields)
            return
        if attempt.retry_after_s:
            # The endpoint asked everyone to wait, not just this entity.
            self._paused_until = max(self._paused_until, time.time() + attempt.retry_after_s)
        if attempts >= self._max_attempts:
            self._store.mark_failed(job.id, attempts, attempt.error, reason="max_attempts")
            self._metrics.deliveries.labels("failed").inc()
            log.warning("webhook_delivery_failed", error=attempt.error, final=True, **fields)
            self._dead_letters.wake()
            return
        delay = retry_delay(attempts, self._schedule, attempt.retry_after_s, self._rng)
        self._store.schedule_retry(job.id, attempts, time.time() + delay, attempt.error)
        self._metrics.deliveries.labels("retry").inc()
        log.info("webhook_delivery_failed", error=attempt.error, final=False,
                 retry_in_s=round(delay, 3), **fields)

    def _disable(self, job: Job, attempts: int, fields: dict) -> None:
        self._store.schedule_retry(job.id, attempts, job.next_attempt_at, "http_410")
        moved = self._store.disable(self.name, str(self.subscription.url), "http_410")
        self.disabled = True
        self._metrics.disabled.labels(self.name).set(1)
        self._metrics.deliveries.labels("disabled").inc()
        log.warning("webhook_endpoint_disabled", endpoint=self._endpoint, reason="http_410",
                    dead_lettered=moved, **fields)
        self._dead_letters.wake()
