"""Lag measurement: per owned partition, the end offset minus the next offset not yet
processed, published as ``ampgate_consumer_lag{worker,topic,partition}`` and refreshed
every ``LAG_REFRESH_S``, also when idle.

The end offset has three sources (ListOffsets on a client of its own, the group
consumer's fetch highwater, the records read) and each can be behind the others, so only
ever the highest is kept while the partition is ours (see ``_broker_quirks``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import suppress

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Gauge

log = structlog.get_logger("ampgate.consumer")

# Lag refresh when idle (end_offsets is one request per broker; keep it cheap).
LAG_REFRESH_S = 0.5
REQUEST_TIMEOUT_S = 10.0


class Lag:
    """The processed positions and end offsets of the partitions a consumer owns."""

    def __init__(self, service: str, gauge: Gauge) -> None:
        self._service = service
        self._gauge = gauge
        # Next offset to process per partition (what we committed or are about to).
        self.done: dict[TopicPartition, int] = {}
        self._end: dict[TopicPartition, int] = {}
        self.wakeup = asyncio.Event()

    def total(self) -> int:
        """Messages on our partitions not yet processed (as last measured)."""
        return sum(max(0, self._end.get(tp, off) - off) for tp, off in self.done.items())

    def processed(self, tp: TopicPartition, next_offset: int) -> int:
        """Records of ``tp`` up to ``next_offset`` are dealt with; returns the position."""
        self.done[tp] = max(self.done.get(tp, 0), next_offset)
        self.raise_end(tp, next_offset)
        return self.done[tp]

    def raise_end(self, tp: TopicPartition, end: int) -> None:
        """End offsets only grow while we own a partition, and each source (ListOffsets,
        fetch highwater, records read) can be behind the others: keep the highest, so a
        late or under-reported answer never lowers the end below what was processed
        (tansu's ListOffsets overwrote it with 1, leaving a lag of 1 forever)."""
        self._end[tp] = max(self._end.get(tp, 0), end)

    def assigned(self, tp: TopicPartition, committed: int) -> None:
        # The assignment is live before the rebalance listener runs, so the loop may
        # already have processed (and committed) records of tp meanwhile: never move the
        # position back, or the gauge keeps that batch as lag forever. Entries of an
        # earlier ownership were dropped by revoked().
        self.done[tp] = max(committed, self.done.get(tp, committed))

    def revoked(self, tp: TopicPartition) -> None:
        self.done.pop(tp, None)
        self._end.pop(tp, None)
        self._unpublish(tp)

    def clear(self) -> None:
        """Nothing is ours any more: do not leave a stale figure behind."""
        for tp in self.done:
            self._unpublish(tp)
        self.done.clear()
        self._end.clear()

    def publish(self) -> None:
        for tp, done in list(self.done.items()):
            if tp in self._end:
                self._gauge.labels(self._service, tp.topic, str(tp.partition)).set(
                    max(0, self._end[tp] - done))

    def _unpublish(self, tp: TopicPartition) -> None:
        with suppress(KeyError):
            self._gauge.remove(self._service, tp.topic, str(tp.partition))

    async def refresh_forever(self, offsets: AIOKafkaConsumer,
                              group: Callable[[], AIOKafkaConsumer | None]) -> None:
        """Refresh end offsets every LAG_REFRESH_S (or at once when woken), on
        ``offsets``, a client of its own: tansu answers requests on a connection in order,
        so a ListOffsets on the group consumer's connection would wait behind its
        long-polling Fetch. ListOffsets is only one of the sources: see ``raise_end``."""
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), LAG_REFRESH_S)
            self.wakeup.clear()
            tps = list(self.done)
            if not tps:
                continue
            try:
                ends = await asyncio.wait_for(offsets.end_offsets(tps), REQUEST_TIMEOUT_S)
            except (KafkaError, TimeoutError) as exc:
                log.debug("lag_unavailable", service=self._service, error=str(exc))
                continue
            consumer = group()
            for tp, end in ends.items():
                if tp not in self.done:  # revoked while we asked
                    continue
                self.raise_end(tp, end)
                # The group consumer's last fetch highwater: exact on Kafka and on tansu,
                # where ListOffsets answers the last batch's base offset + 1.
                if consumer is not None and tp in consumer.assignment():
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        self.raise_end(tp, highwater)
            self.publish()
