"""The publisher that drains the outbox to Kafka.

Delivery is at-least-once and per-key ordered: the publisher sends outbox rows in id
order (aiokafka keeps one in-flight batch per partition), waits for the acks and only
then forgets them. When Kafka is away the rows wait; the gateway keeps serving and
/readyz shows the publisher degraded.

On shutdown ``drain(grace_s)`` keeps publishing until the outbox is empty or the grace
is over; the rows left wait for the next start (DESIGN.md §7).

After any failure the producer is thrown away and, once the broker answers again, the
topics are ensured BEFORE a new producer sends: a broker that lost its topics (tansu
keeps them in memory) would otherwise auto-create them on the producer's metadata
request with its default partition count while the records already routed by the old
metadata land in partitions that are never readable.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Sequence
from contextlib import suppress
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from services.common.events import EVENT_TOPICS, EventRecord
from services.common.kafka import ensure_topics, make_producer
from services.common.outbox.store import Outbox
from services.common.settings import KafkaSettings

log = structlog.get_logger("ampgate.kafka")

Row = tuple[int, EventRecord]

# Per partition and produce request. aiokafka keeps ONE request in flight per broker and
# puts one batch per partition in it: with the default 16 KiB, ~6 KB events go two at a
# time per partition and a loaded loop publishes a few hundred a second. 256 KiB carries
# ~40 per partition per round trip (a request stays well under brokers' limits).
PUBLISHER_BATCH_BYTES = 256 * 1024


class PublisherMetrics(Protocol):
    """What the publisher updates (the gateway's GatewayMetrics has these)."""

    events_published: Any  # Counter{topic, outcome}
    outbox_pending: Any  # Gauge
    outbox_oldest_age: Any  # Gauge


class OutboxPublisher:
    """Drains the outbox to Kafka continuously, in order, surviving broker outages.

    ``request_timeout_s`` bounds how long a send may wait for a broker that is gone
    before the publisher reconnects (and how long a restarted tansu could still be
    reached by the old producer's retries)."""

    def __init__(
        self,
        outbox: Outbox,
        settings: KafkaSettings,
        metrics: PublisherMetrics,
        *,
        topics: Sequence[str] = EVENT_TOPICS,
        batch_size: int = 500,
        max_in_flight: int = 4,
        request_timeout_s: float = 10.0,
        max_backoff_s: float = 5.0,
        idle_refresh_s: float = 1.0,
    ) -> None:
        self._outbox = outbox
        self._settings = settings
        self._metrics = metrics
        self._topics = tuple(topics)
        self._batch_size = batch_size
        self._max_in_flight = max_in_flight
        self._request_timeout_s = request_timeout_s
        self._max_backoff_s = max_backoff_s
        self._idle_refresh_s = idle_refresh_s
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._state = "stopped"
        self._last_error: str | None = None
        self._connected_since: float | None = None
        self._pending = 0
        self._oldest_age_s = 0.0
        self._gauges_at = 0.0
        self._failures = 0

    # -- lifecycle --

    async def start(self) -> None:
        if self._task is not None:
            return
        self._outbox.bind_loop(asyncio.get_running_loop())
        self._state = "connecting"
        self._refresh_gauges()
        self._task = asyncio.create_task(self._run(), name="outbox-publisher")

    async def stop(self, timeout_s: float | None = None) -> None:
        """Cancel the loop and close the producer; with ``timeout_s``, within about that
        long even if the broker is gone (unsent rows simply stay in the outbox)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # The loop may be closing a producer of its own when cancelled: bounded.
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        await self._close_producer(timeout_s)
        self._state = "stopped"

    async def drain(self, grace_s: float) -> int:
        """Shutdown (DESIGN.md §7): keep publishing until the outbox is empty or
        ``grace_s`` has passed, then stop; what is left stays in the outbox for the next
        start. Call it once nothing adds events any more. Returns the rows left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        pending = self._outbox.pending()
        running = self._task is not None and not self._task.done()
        if pending and running:
            log.info("outbox_draining", pending=pending, grace_s=grace_s)
            while pending and loop.time() < deadline:
                await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                pending = self._outbox.pending()
        # Within the grace if there is time left, else a short bound: acks of sends
        # still on the wire may arrive while the producer closes.
        await self.stop(timeout_s=max(0.5, deadline - loop.time()))
        left = self._outbox.pending()
        self._pending = left
        if left:
            log.warning("outbox_drain_incomplete", pending=left, grace_s=grace_s,
                        error=self._last_error)
        else:
            log.info("outbox_drained")
        return left

    def status(self) -> tuple[bool, dict[str, Any]]:
        """For /readyz: ready unless the publisher itself died; Kafka being away is
        reported (degraded), not fatal: events wait in the outbox."""
        task_ok = self._task is not None and not self._task.done()
        with suppress(Exception):
            self._refresh_gauges()
        detail: dict[str, Any] = {
            "state": self._state if task_ok else "stopped",
            "degraded": self._state != "connected",
            "pending": self._pending,
            "oldest_age_s": round(self._oldest_age_s, 3),
        }
        if self._last_error and self._state != "connected":
            detail["last_error"] = self._last_error
        return task_ok, detail

    @property
    def connected(self) -> bool:
        return self._state == "connected"

    # -- the loop --

    async def _run(self) -> None:
        while True:
            try:
                await self._connect()
                await self._drain_forever()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 — broker away, timeouts, anything: keep the events
                self._failures += 1
                failures = self._failures
                self._state = "reconnecting"
                self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("outbox_publish_failed", error=self._last_error,
                            pending=self._pending, attempt=failures)
                await self._close_producer()
                self._refresh_gauges()
                # Repeated failures on a reachable broker must not spin.
                await asyncio.sleep(min(self._max_backoff_s, 0.1 * 2 ** min(failures, 10)))

    async def _connect(self) -> None:
        async for attempt in AsyncRetrying(
            wait=wait_random_exponential(multiplier=0.1, max=self._max_backoff_s),
            retry=retry_if_exception_type((KafkaError, OSError, TimeoutError)),
            before_sleep=self._on_connect_retry,
            reraise=True,
        ):
            with attempt:
                timeout = self._request_timeout_s
                await asyncio.wait_for(
                    ensure_topics(
                        self._settings,
                        self._topics,
                        self._settings.partitions,
                        self._settings.replication_factor,
                        request_timeout_s=timeout,
                    ),
                    timeout,
                )
                producer = make_producer(
                    self._settings, request_timeout_ms=int(timeout * 1000), linger_ms=0,
                    max_batch_size=PUBLISHER_BATCH_BYTES,
                )
                try:
                    await asyncio.wait_for(producer.start(), timeout)
                except BaseException:
                    await _stop_quietly(producer, timeout)
                    raise
                self._producer = producer
        self._state = "connected"
        self._connected_since = time.monotonic()
        self._last_error = None
        log.info("outbox_publisher_connected", bootstrap=self._settings.bootstrap_servers)

    def _on_connect_retry(self, retry_state: Any) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        self._state = "reconnecting" if self._connected_since else "connecting"
        self._last_error = f"{type(exc).__name__}: {exc}"[:300] if exc else None
        self._refresh_gauges()
        log.warning("kafka_unavailable", error=self._last_error,
                    attempt=retry_state.attempt_number, pending=self._pending)

    async def _drain_forever(self) -> None:
        """Keep up to ``max_in_flight`` batches on the wire; settle them oldest first.

        A batch is forgotten only once it and every batch before it are acknowledged;
        after a failure everything unsettled is sent again (duplicates, never gaps)."""
        wakeup = self._outbox.wakeup
        inflight: deque[tuple[list[Row], list[asyncio.Future[Any]]]] = deque()
        last_id = 0
        broken = False
        try:
            while True:
                wakeup.clear()  # before reading: a commit after this read sets it again
                if not broken and len(inflight) < self._max_in_flight:
                    batch = self._outbox.next_batch(self._batch_size, after_id=last_id)
                    if batch:
                        last_id = batch[-1][0]
                        futures, broken = await self._send(batch)
                        inflight.append((batch, futures))
                        continue
                if inflight:
                    await self._settle(*inflight.popleft())
                    if time.monotonic() - self._gauges_at > self._idle_refresh_s / 2:
                        self._refresh_gauges()  # counting rows costs: not after every batch
                    continue
                self._refresh_gauges()
                with suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), self._idle_refresh_s)
        finally:
            for _, futures in inflight:  # abandoned: resent after reconnecting
                for future in futures:
                    future.add_done_callback(_retrieve)

    async def _send(self, batch: list[Row]) -> tuple[list[asyncio.Future[Any]], bool]:
        """Hand a batch to the producer in id order; (futures, failed part-way)."""
        producer = self._producer
        assert producer is not None
        futures: list[asyncio.Future[Any]] = []
        for _, record in batch:
            try:
                futures.append(await producer.send(
                    record.topic, value=record.value, key=record.key, headers=list(record.headers)
                ))
            except Exception as exc:  # noqa: BLE001 — e.g. no metadata within the request timeout
                failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                futures.append(failed)
                return futures, True
        return futures, False

    async def _settle(self, batch: list[Row], futures: list[asyncio.Future[Any]]) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        done = 0
        for result in results:
            if isinstance(result, BaseException):
                break
            done += 1
        self._outbox.mark_sent([row_id for row_id, _ in batch[:done]])
        self._count(batch[:done], "ok")
        if done == len(batch):
            self._failures = 0
            return
        self._count(batch[done:], "error")
        error = results[done]
        if not isinstance(error, Exception):  # a cancelled send future, not our task
            raise KafkaError(f"send interrupted: {error!r}")
        raise error

    def _count(self, rows: list[tuple[int, EventRecord]], outcome: str) -> None:
        per_topic = Counter(record.topic for _, record in rows)
        for topic, n in per_topic.items():
            self._metrics.events_published.labels(topic, outcome).inc(n)

    async def _close_producer(self, timeout_s: float | None = None) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer, timeout_s or self._request_timeout_s + 1)

    def _refresh_gauges(self) -> None:
        self._gauges_at = time.monotonic()
        self._pending = self._outbox.pending()
        self._oldest_age_s = self._outbox.oldest_age_s()
        self._metrics.outbox_pending.set(self._pending)
        self._metrics.outbox_oldest_age.set(self._oldest_age_s)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an abandoned send's outcome as seen (no 'exception never retrieved')."""
    if not future.cancelled():
        future.exception()


async def _stop_quietly(producer: AIOKafkaProducer, timeout: float) -> None:
    """Stop a producer whose broker may be gone: stop() flushes, bounded by the
    producer's own request timeout; never let it hang the caller."""
    try:
        await asyncio.wait_for(producer.stop(), timeout)
    except (TimeoutError, KafkaError, OSError) as exc:
        log.warning("kafka_producer_stop_failed", error=f"{type(exc).__name__}: {exc}")
