"""The group loop: poll, hand the batch to the handler, commit; pause and retry what
fails transiently.

Delivery is at least once, effect exactly once:

* ``enable_auto_commit=False``; a ``getmany()`` batch is parsed, handed to the worker's
  ``handle_batch`` and only THEN committed (``{tp: last.offset + 1}``). A crash or a
  cancellation mid-batch commits nothing, so the batch is delivered again.
* Pipelined, one batch deep: while batch N is in the handler (a history store's
  transaction runs in its own thread), batch N+1 is polled and parsed on the event loop.
  N+1 goes to the handler only once N's handler has returned, and N's offsets are
  committed only then: in order, never past what is applied. A stop, crash or
  rebalance in between leaves N+1 uncommitted (it is read again, from the last commit).
* The first time a group starts it reads from the earliest offset: nothing is missed.
* Transient is not poison (DESIGN.md §7). A message that is not a valid event
  (``parse_event`` raises ``InvalidEvent``) can never be applied: it goes to the
  dead-letter topic. A handler that raises ``TransientError`` (database locked or down,
  broker hiccup) has NOT applied the batch: the records are held, every partition is
  paused (the group still sees us poll) and the batch is retried with capped exponential
  backoff for as long as it takes. Nothing at or after a held record is committed.
  Any other exception from the handler says "this value cannot be applied": the batch
  is retried one event at a time, events that still fail that way are dead-lettered,
  and an event that fails transiently holds itself and everything after it.
* Dead letters keep key, value and original headers, plus ``dlq_reason``,
  ``dlq_source_topic``, ``dlq_source_partition``, ``dlq_source_offset``, ``dlq_service``.
* A rebalance listener waits for the batch in flight, commits it, then lets the
  partitions go; records fetched for partitions we no longer own are dropped unprocessed.
* ``stop()`` (SIGTERM) finishes the batch in flight, commits, leaves the group.
* A failed commit is kept and retried on the next loop; if it is never committed the
  batch comes again after a restart, which the handler's idempotence absorbs.

Metrics: ``metrics``; lag: ``lag``; dead letters: ``dead_letter``; tansu: ``_broker_quirks``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from prometheus_client import CollectorRegistry

from services.common.consumer._broker_quirks import (
    ensure_topics_first,
    generation_zero_member,
    leave_group,
)
from services.common.consumer.dead_letter import send_dead_letter
from services.common.consumer.lag import Lag
from services.common.consumer.metrics import CONSUMER_OUTCOMES, consumer_metrics
from services.common.errors import AmpgateError
from services.common.events import ConsumedEvent, InvalidEvent, parse_event
from services.common.kafka import make_producer
from services.common.kafka_security import client_options
from services.common.metrics import zero
from services.common.settings import Settings

log = structlog.get_logger("ampgate.consumer")

HandleBatch = Callable[[list[ConsumedEvent]], Awaitable[None]]

# How long getmany() waits when idle: also the bound on how late stop() is noticed and
# how often the lag gauge is refreshed while nothing arrives.
POLL_TIMEOUT_MS = 250
COMMIT_TIMEOUT_S = 10.0
# Records parsed between two looks at the event loop while a batch is in the handler
# (~10-20 ms of parsing).
_PARSE_SLICE = 200
# The longest we wait for Kafka before (re)trying to connect.
MAX_RECONNECT_DELAY_S = 5.0


class TransientError(AmpgateError):
    """Raised by a handler for a failure worth retrying (database busy or down, broker
    hiccup). The batch is not committed; it is retried with capped backoff until it is
    applied. Never dead-lettered."""


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: EventConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._on_assigned(assigned)


class EventConsumer:
    """A consumer group member that hands parsed events to ``handle_batch``."""

    def __init__(
        self,
        service: str,
        group_id: str,
        topics: Sequence[str],
        settings: Settings,
        handle_batch: HandleBatch,
        registry: CollectorRegistry,
        *,
        dead_letter_topic: str,
        batch_size: int | None = None,
    ) -> None:
        """``batch_size``: this worker's records per batch when the settings do not set
        ``consumer.batch_size`` (AMPGATE_CONSUMER__BATCH_SIZE) themselves."""
        self.service = service
        self.group_id = group_id
        self.topics = tuple(topics)
        self.dead_letter_topic = dead_letter_topic
        self._settings = settings
        self._handle_batch = handle_batch
        self._batch_size = (settings.consumer.batch_size
                            if batch_size is None or "batch_size" in settings.consumer.model_fields_set
                            else batch_size)
        self._metrics = consumer_metrics(registry)
        zero(self._metrics.messages, [service], self.topics, CONSUMER_OUTCOMES)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Held while a batch is processed and committed; the rebalance listener takes it,
        # so partitions are never handed over in the middle of a batch.
        self._batch_lock = asyncio.Lock()
        # Processed positions and end offsets of our partitions; the lag gauge.
        self._lag = Lag(service, self._metrics.lag)
        self._uncommitted: dict[TopicPartition, int] = {}
        # The batch in the handler while the next one is polled and parsed (the pipeline):
        # its records and the task that settles them (how many, from the front).
        self._in_flight: tuple[list[ConsumerRecord], asyncio.Task[int]] | None = None
        self._in_flight_error: BaseException | None = None
        # Records whose effect failed for a transient reason, oldest first: retried until
        # applied; while any are held every partition is paused and nothing past them
        # is committed.
        self._held: list[ConsumerRecord] = []
        self._held_attempts = 0
        self._effect_error: str | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._connected = False
        self._last_error: str | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start consuming in a background task; returns at once. The task connects (and
        reconnects) to Kafka on its own; ``status()`` tells when it is consuming."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"consumer-{self.service}")

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful: finish the batch in flight, commit it, leave the group. A batch that
        does not finish within ``timeout_s`` is cancelled and NOT committed."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            log.warning("consumer_stop_timeout", service=self.service, timeout_s=timeout_s)
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        except asyncio.CancelledError:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
            raise

    def status(self) -> tuple[bool, dict[str, Any]]:
        """For /readyz: ready while the consumer task runs. Kafka being away is reported
        (``degraded``), not fatal: the worker's own API keeps serving, and the consumer
        reconnects by itself."""
        running = self._task is not None and not self._task.done()
        detail: dict[str, Any] = {
            "status": ("connected" if self._connected else "connecting") if running else "stopped",
            "degraded": not (running and self._connected),
            "group": self.group_id,
            "partitions": len(self._lag.done),
            "lag": self._lag.total(),
        }
        if self._last_error and not self._connected:
            detail["last_error"] = self._last_error
        if self._held:  # paused: the effect fails for a transient reason, retrying
            detail["retrying"] = {"events": len(self._held), "attempts": self._held_attempts,
                                  "error": self._effect_error}
        return running, detail

    def lag(self) -> int:
        """Messages on our partitions not yet processed (as last measured)."""
        return self.status()[1]["lag"]

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._run_until_stopped()
        finally:
            # Cancelled mid-batch (stop() timed out, or the loop is torn down): leave the
            # group WITHOUT committing the unfinished batch; it is delivered again.
            if self._consumer or self._producer or self._offsets:
                await self._disconnect(commit=False)

    async def _run_until_stopped(self) -> None:
        delay = self._settings.consumer.retry_backoff_s
        while not self._stopping.is_set():
            try:
                await self._connect()
                delay = self._settings.consumer.retry_backoff_s
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — Kafka gone, or a bug: keep going
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.warning("consumer_error", service=self.service, error=self._last_error,
                            retry_in_s=delay)
                await self._disconnect(commit=False)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY_S)
            else:
                await self._disconnect(commit=True)

    async def _connect(self) -> None:
        kafka = self._settings.kafka
        session_ms = int(self._settings.consumer.session_timeout_s * 1000)
        await ensure_topics_first(kafka, [*self.topics, self.dead_letter_topic], COMMIT_TIMEOUT_S)
        producer = make_producer(kafka, client_id=f"{kafka.client_id}-{self.service}-dlq")
        consumer = AIOKafkaConsumer(
            **client_options(kafka),
            client_id=f"{kafka.client_id}-{self.service}",
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._batch_size,
            # The session timeout is how fast a dead member's partitions move on (tansu
            # also waits half of it before answering a JoinGroup); the rebalance timeout
            # bounds how long a rebalance waits for the batch in flight.
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 5),
            rebalance_timeout_ms=max(session_ms, 60_000),
        )
        await producer.start()
        # Set before start(): the rebalance listener may run while start() is awaited.
        self._producer, self._consumer = producer, consumer
        try:
            consumer.subscribe(list(self.topics), listener=_Listener(self))
            await consumer.start()
        except BaseException:
            self._producer = self._consumer = None
            await producer.stop()
            raise
        offsets = AIOKafkaConsumer(**client_options(kafka),
                                   client_id=f"{kafka.client_id}-{self.service}-lag",
                                   enable_auto_commit=False)
        try:
            await offsets.start()
        except BaseException:
            await self._disconnect(commit=False)
            raise
        self._offsets = offsets
        self._lag_task = asyncio.create_task(
            self._lag.refresh_forever(offsets, lambda: self._consumer), name="consumer-lag")
        self._connected = True
        self._last_error = None
        log.info("consumer_started", service=self.service, group=self.group_id,
                 topics=list(self.topics))

    async def _disconnect(self, *, commit: bool) -> None:
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = None
        self._connected = False
        lag_task, self._lag_task = self._lag_task, None
        if lag_task is not None:
            lag_task.cancel()
            with suppress(asyncio.CancelledError):
                await lag_task
        offsets, self._offsets = self._offsets, None
        if offsets is not None:
            with suppress(Exception):
                await offsets.stop()
        if not commit:
            await self._cancel_in_flight()
        if consumer is not None:
            if commit:
                async with self._batch_lock:
                    await self._finish_in_flight(consumer)
                    await self._commit(consumer)
            member_id = generation_zero_member(consumer)
            # Leaves the group: the partitions move to another member at once.
            with suppress(Exception):
                await consumer.stop()
            if member_id:
                await leave_group(self._settings.kafka, self.service, self.group_id, member_id,
                                  COMMIT_TIMEOUT_S)
        if producer is not None:
            with suppress(Exception):
                await producer.stop()
        self._lag.clear()
        self._uncommitted.clear()
        self._held = []  # not committed: read again from the last commit
        self._held_attempts = 0
        if commit:
            log.info("consumer_stopped", service=self.service, group=self.group_id)

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            if self._in_flight_error is not None:  # the batch failed while a rebalance waited
                error, self._in_flight_error = self._in_flight_error, None
                raise error
            if self._held:
                async with self._batch_lock:
                    await self._finish_in_flight(consumer)
                    await self._commit(consumer)
                await self._retry_held(consumer)
                continue
            # Polled and parsed while the batch before is still in the handler. With one
            # there, only what is already fetched is taken: nothing fetched, it finishes
            # and is committed at once instead of after a poll timeout.
            batch = await consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS if self._in_flight is None else 0,
                max_records=self._batch_size)
            owned = consumer.assignment()
            records = [r for tp, rs in batch.items() if tp in owned for r in rs]
            parsed = await self._parse_beside(records)
            async with self._batch_lock:
                await self._finish_in_flight(consumer)
                # A rebalance since getmany() may have taken partitions away.
                owned = consumer.assignment()
                kept = [(r, p) for r, p in zip(records, parsed, strict=True)
                        if TopicPartition(r.topic, r.partition) in owned]
                if kept and self._held:
                    # The batch before failed transiently: these come after what it holds.
                    self._held.extend(r for r, _ in kept)
                    self._raise_end_held()
                elif kept:
                    batch_records = [r for r, _ in kept]
                    self._in_flight = (batch_records, asyncio.create_task(
                        self._settle([p for _, p in kept]), name=f"consumer-{self.service}-batch"))
                    await asyncio.sleep(0)  # the handler starts (up to its first wait) now
                # The batch before's offsets: applied, so committed while this one runs.
                await self._commit(consumer)
            self._lag.publish()
        async with self._batch_lock:  # stopping: the batch in flight finishes first
            await self._finish_in_flight(consumer)

    async def _finish_in_flight(self, consumer: AIOKafkaConsumer) -> None:
        """Wait for the batch in the handler and mark what it settled (under the batch
        lock). Its exception, if any, is raised here."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        records, task = in_flight
        settled = await task
        self._settled(consumer, records, settled)

    async def _cancel_in_flight(self) -> None:
        """Not committing (an error, a cancelled stop): the batch in the handler is
        cancelled and read again from the last commit."""
        in_flight, self._in_flight = self._in_flight, None
        self._in_flight_error = None
        if in_flight is not None:
            in_flight[1].cancel()
            with suppress(BaseException):
                await in_flight[1]

    async def _apply_records(self, consumer: AIOKafkaConsumer,
                             records: list[ConsumerRecord]) -> None:
        """Process ``records`` at once (no pipeline: the held records' retry)."""
        self._settled(consumer, records, await self._settle(self._parse(records)))

    def _settled(self, consumer: AIOKafkaConsumer, records: list[ConsumerRecord],
                 settled: int) -> None:
        """Mark what was dealt with as done, hold the rest (a transient failure) and
        pause every partition until the held part is applied."""
        for r in records[:settled]:
            tp = TopicPartition(r.topic, r.partition)
            self._uncommitted[tp] = self._lag.processed(tp, r.offset + 1)
        self._held = records[settled:]
        if self._held:
            self._raise_end_held()
            consumer.pause(*consumer.assignment())
        else:
            self._held_attempts = 0
            self._effect_error = None
            if consumer.paused():
                consumer.resume(*consumer.paused())
                log.info("consumer_resumed", service=self.service)

    def _raise_end_held(self) -> None:
        for r in self._held:
            self._lag.raise_end(TopicPartition(r.topic, r.partition), r.offset + 1)

    async def _retry_held(self, consumer: AIOKafkaConsumer) -> None:
        """Wait out the backoff while still polling (paused partitions return nothing, and
        the group sees a live member), then try the held records again."""
        cfg = self._settings.consumer
        delay = min(cfg.retry_backoff_s * 2 ** max(0, self._held_attempts - 1),
                    cfg.retry_max_backoff_s)
        due = asyncio.get_running_loop().time() + delay
        while not self._stopping.is_set():
            consumer.pause(*consumer.assignment())  # also partitions assigned meanwhile
            left = due - asyncio.get_running_loop().time()
            if left <= 0:
                break
            started = asyncio.get_running_loop().time()
            fetched = await consumer.getmany(timeout_ms=max(1, int(min(left, POLL_TIMEOUT_MS / 1000) * 1000)))
            for tp, rs in fetched.items():  # fetched before the pause took: read them again
                if rs and tp in consumer.assignment():
                    consumer.seek(tp, rs[0].offset)
            if asyncio.get_running_loop().time() - started < 0.005:
                await asyncio.sleep(min(left, POLL_TIMEOUT_MS / 1000))  # never spin
        if self._stopping.is_set():
            return  # not committed: delivered again after the restart
        async with self._batch_lock:
            owned = consumer.assignment()
            # Partitions taken away meanwhile: their new owner reads from the last commit.
            held = [r for r in self._held if TopicPartition(r.topic, r.partition) in owned]
            self._held = held  # still reported as retrying while they are applied again
            if held:
                await self._apply_records(consumer, held)
            elif consumer.paused():
                consumer.resume(*consumer.paused())
            await self._commit(consumer)
        self._lag.publish()

    # -- processing ----------------------------------------------------------------

    @staticmethod
    def _parse(records: list[ConsumerRecord]) -> list[tuple[ConsumerRecord, ConsumedEvent | None, str]]:
        """Each record with its event, or None and why it is not one."""
        parsed: list[tuple[ConsumerRecord, ConsumedEvent | None, str]] = []
        for record in records:
            try:
                parsed.append((record, parse_event(record), ""))
            except InvalidEvent as exc:
                parsed.append((record, None, f"invalid event: {exc}"))
        return parsed

    async def _parse_beside(self, records: list[ConsumerRecord]
                            ) -> list[tuple[ConsumerRecord, ConsumedEvent | None, str]]:
        """``_parse``, giving the loop back every ``_PARSE_SLICE`` records while a batch
        is in the handler: its database answers (an asyncpg round trip, the SQLite
        thread's result) are taken as they come, not after the whole batch is parsed."""
        if self._in_flight is None or len(records) <= _PARSE_SLICE:
            return self._parse(records)
        parsed = []
        for start in range(0, len(records), _PARSE_SLICE):
            if start:
                await asyncio.sleep(0)
            parsed.extend(self._parse(records[start:start + _PARSE_SLICE]))
        return parsed

    async def _settle(self, parsed: list[tuple[ConsumerRecord, ConsumedEvent | None, str]]) -> int:
        """Apply parsed records in order; return how many of them, from the front, are
        dealt with (applied or dead-lettered). The rest failed transiently: held."""
        records = [r for r, _, _ in parsed]
        valid = [(r, e) for r, e, _ in parsed if e is not None]
        outcome, reason = await self._attempt([e for _, e in valid]) if valid else ("ok", None)
        if outcome == "transient":
            self._held_failed(valid, reason)
            return 0
        if outcome == "ok":
            for record, event, why in parsed:
                if event is None:
                    await self._dead_letter_invalid(record, why)
            self._count(valid, "ok")
            return len(records)
        # A value the handler cannot apply: one by one, so only that one is dead-lettered.
        for index, (record, event, why) in enumerate(parsed):
            if event is None:
                await self._dead_letter_invalid(record, why)
                continue
            if len(valid) > 1:
                outcome, reason = await self._attempt([event])
            if outcome == "transient":
                self._held_failed([(record, event)], reason)
                return index
            if outcome == "ok":
                self._count([(record, event)], "ok")
                continue
            log.error("event_dead_lettered", service=self.service, topic=record.topic,
                      partition=record.partition, offset=record.offset, event_id=event.id,
                      reason=reason)
            await self._dead_letter(record, reason or "cannot be applied")
            self._count([(record, event)], "dead_lettered")
        return len(records)

    def _held_failed(self, items: list[tuple[ConsumerRecord, ConsumedEvent]],
                     reason: str | None) -> None:
        self._held_attempts += 1
        self._effect_error = reason
        cfg = self._settings.consumer
        retry_in = min(cfg.retry_backoff_s * 2 ** (self._held_attempts - 1),
                       cfg.retry_max_backoff_s)
        self._count(items, "retried")
        first = items[0][0] if items else None
        log.warning("batch_retry", service=self.service, events=len(items),
                    attempt=self._held_attempts, retry_in_s=retry_in, error=reason,
                    topic=first.topic if first else None,
                    partition=first.partition if first else None,
                    offset=first.offset if first else None)

    async def _dead_letter_invalid(self, record: ConsumerRecord, reason: str) -> None:
        log.warning("event_invalid", service=self.service, topic=record.topic,
                    partition=record.partition, offset=record.offset, reason=reason)
        await self._dead_letter(record, reason)
        self._metrics.messages.labels(self.service, record.topic, "invalid").inc()

    async def _attempt(self, events: list[ConsumedEvent]) -> tuple[str, str | None]:
        """Run the handler once: ("ok", None), ("transient", reason) or ("poison", reason)."""
        try:
            await self._handle_batch(events)
        except TransientError as exc:
            return "transient", f"transient: {exc}"
        except Exception as exc:  # bad data the handler cannot apply (or a handler bug)
            log.exception("batch_failed", service=self.service, events=len(events))
            return "poison", f"{type(exc).__name__}: {exc}"
        return "ok", None

    def _count(self, items: list[tuple[ConsumerRecord, ConsumedEvent]], outcome: str) -> None:
        per_topic = Counter(record.topic for record, _ in items)  # one inc per topic
        for topic, n in per_topic.items():
            self._metrics.messages.labels(self.service, topic, outcome).inc(n)

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        assert self._producer is not None
        # If this fails the exception ends the loop iteration WITHOUT a commit, so the
        # batch is read again after the reconnect: a dead letter is never lost.
        await send_dead_letter(self._producer, self.dead_letter_topic, record, reason,
                               self.service)

    # -- offsets and rebalances -----------------------------------------------------------

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        owned = consumer.assignment()
        offsets = {tp: off for tp, off in self._uncommitted.items() if tp in owned}
        if not offsets:
            self._uncommitted.clear()
            return
        try:
            # Bounded: with the coordinator gone aiokafka would retry forever.
            await asyncio.wait_for(consumer.commit(offsets), COMMIT_TIMEOUT_S)
        except TimeoutError:
            log.warning("commit_timeout", service=self.service)
            self._last_error = "commit: timed out"
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on; the new owner re-reads from the last commit.
            log.warning("commit_failed_rebalanced", service=self.service, error=str(exc))
            self._uncommitted.clear()
        except KafkaError as exc:
            log.warning("commit_failed", service=self.service, error=str(exc))
            self._last_error = f"commit: {exc}"
        else:
            for tp in offsets:
                self._uncommitted.pop(tp, None)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in assigned:
            committed = await consumer.committed(tp)
            if committed is None:
                committed = (await consumer.beginning_offsets([tp]))[tp]
            self._lag.assigned(tp, committed)
        log.info("partitions_assigned", service=self.service,
                 partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
        # Show the backlog before the first batch is even processed.
        self._lag.wakeup.set()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None or not revoked:
            return
        async with self._batch_lock:  # let the batch in flight finish, then commit it
            try:
                await self._finish_in_flight(consumer)
            except Exception as exc:  # noqa: BLE001 — the loop raises it (no commit of it)
                self._in_flight_error = exc
            await self._commit(consumer)
        # Held records of a revoked partition are its new owner's (from the last commit).
        self._held = [r for r in self._held
                      if TopicPartition(r.topic, r.partition) not in revoked]
        for tp in revoked:
            self._uncommitted.pop(tp, None)
            self._lag.revoked(tp)
        log.info("partitions_revoked", service=self.service,
                 partitions=sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))
