"""The shared consumer runtime against a real broker: commits, dead letters, retries
(transient is not poison),
graceful stop vs cancellation, and the lag gauge."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from services.common.consumer import EventConsumer, TransientError
from services.common.events import ConsumedEvent
from services.common.settings import Settings
from tests.fixtures.kafka import unique_name
from tests.unit.history.helpers import (
    create_topics,
    passport_doc,
    passport_record,
    produce,
    read_topic,
    sample,
    wait_until,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


class Setup:
    def __init__(self, kafka) -> None:
        self.bootstrap = kafka.bootstrap
        self.topic = unique_name("passport-changed")
        self.dlq = unique_name("dead-letter")
        self.group = unique_name("group")
        self.settings = Settings(
            kafka=kafka.kafka_settings(partitions=2),
            consumer={"retry_backoff_s": 0.02, "retry_max_backoff_s": 0.1, "batch_size": 50,
                      "session_timeout_s": 2.0},
        )

    def records(self, n: int, start: int = 0):
        # Same record shape as the gateway's, on this test's own topic.
        out = []
        for i in range(start, start + n):
            r = passport_record(f"p{i % 7}", passport_doc(f"p{i % 7}", float(i)), None, i)
            out.append((self.topic, r.key, r.value, list(r.headers)))
        return out

    def consumer(self, handle, registry=None) -> EventConsumer:
        return EventConsumer("test", self.group, [self.topic], self.settings, handle,
                             registry or CollectorRegistry(), dead_letter_topic=self.dlq)


@pytest.fixture
async def setup(kafka) -> Setup:
    s = Setup(kafka)
    await create_topics(s.bootstrap, [s.topic, s.dlq])
    return s


async def test_poison_goes_to_dead_letter_and_the_rest_is_processed(setup: Setup) -> None:
    seen: list[ConsumedEvent] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        seen.extend(events)

    registry = CollectorRegistry()
    good = setup.records(3)
    poison = (setup.topic, b"p1", b"{not json", [("ce_id", b"x")])
    await produce(setup.bootstrap, [good[0], poison, good[1], good[2]])
    consumer = setup.consumer(handle, registry)
    await consumer.start()
    try:
        await wait_until(lambda: len(seen) == 3)
        dead = await read_topic(setup.bootstrap, setup.dlq, 1)
    finally:
        await consumer.stop()
    assert len(dead) == 1 and dead[0].value == b"{not json" and dead[0].key == b"p1"
    headers = dict(dead[0].headers)
    assert headers["dlq_reason"].startswith(b"invalid event: missing header")
    assert headers["dlq_source_topic"] == setup.topic.encode()
    # The source coordinates point at the poison record itself.
    source = [r for r in await read_topic(setup.bootstrap, setup.topic, 4)
              if r.partition == int(headers["dlq_source_partition"])
              and r.offset == int(headers["dlq_source_offset"])]
    assert len(source) == 1 and source[0].value == b"{not json"
    assert headers["dlq_service"] == b"test"
    assert headers["ce_id"] == b"x"  # original headers kept
    labels = {"worker": "test", "topic": setup.topic}
    assert sample(registry, "ampgate_consumer_messages_total", **labels, outcome="invalid") == 1
    assert sample(registry, "ampgate_consumer_messages_total", **labels, outcome="ok") == 3


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets per partition, as the broker keeps them (read by a
    client that does not join the group)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                              enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()
        out = {}
        for p in sorted(reader.partitions_for_topic(topic) or ()):
            offset = await reader.committed(TopicPartition(topic, p))
            if offset is not None:
                out[p] = offset
        return out
    finally:
        await reader.stop()


async def test_a_transient_error_is_retried_until_applied_never_dead_lettered(
        setup: Setup) -> None:
    # DESIGN.md §7 "Transient is not poison". The old runtime gave up after
    # consumer.max_attempts (3 here) and dead-lettered p1 with 'transient: ... (after 3
    # attempts)'; here the database stays "busy" for 12 attempts, well past that budget.
    attempts_with_p1: list[int] = []
    applied: list[str] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        if any(e.data["passport_id"] == "p1" for e in events) and len(attempts_with_p1) < 12:
            attempts_with_p1.append(len(events))
            raise TransientError("database is locked")
        applied.extend(e.data["passport_id"] for e in events)

    registry = CollectorRegistry()
    records = setup.records(3)  # p0, p1, p2
    await produce(setup.bootstrap, records, one_by_one=True)
    on_topic = await read_topic(setup.bootstrap, setup.topic, 3)
    p1 = next(r for r in on_topic if r.key == b"p1")
    consumer = setup.consumer(handle, registry)
    await consumer.start()
    try:
        await wait_until(lambda: len(attempts_with_p1) >= 6)
        # Meanwhile: paused and retrying, and nothing committed past the failing event.
        detail = consumer.status()[1]
        assert detail["retrying"]["error"] == "transient: database is locked"
        committed = await committed_offsets(setup.bootstrap, setup.group, setup.topic)
        assert committed.get(p1.partition, 0) <= p1.offset
        await wait_until(lambda: sorted(applied) == ["p0", "p1", "p2"], timeout_s=30)
        assert "retrying" not in consumer.status()[1]
    finally:
        await consumer.stop()
    assert await read_topic(setup.bootstrap, setup.dlq, 1, timeout_s=1.0) == []
    labels = {"worker": "test", "topic": setup.topic}
    assert sample(registry, "ampgate_consumer_messages_total", **labels, outcome="ok") == 3
    assert sample(registry, "ampgate_consumer_messages_total", **labels,
                  outcome="dead_lettered") == 0
    assert sample(registry, "ampgate_consumer_messages_total", **labels, outcome="retried") >= 12
    committed = await committed_offsets(setup.bootstrap, setup.group, setup.topic)
    assert committed[p1.partition] > p1.offset  # committed once applied


async def test_a_member_stopped_while_retrying_leaves_the_event_to_the_next(setup: Setup) -> None:
    failing: list[str] = []

    async def down(events: list[ConsumedEvent]) -> None:
        failing.extend(e.id for e in events)
        raise TransientError("database is down")

    seen: list[str] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        seen.extend(e.data["passport_id"] for e in events)

    await produce(setup.bootstrap, setup.records(3))
    first = setup.consumer(down)
    await first.start()
    await wait_until(lambda: len(failing) >= 3 * 5)  # past the old 3-attempt budget
    await first.stop()
    second = setup.consumer(handle)
    await second.start()
    try:
        await wait_until(lambda: sorted(seen) == ["p0", "p1", "p2"])
    finally:
        await second.stop()
    assert await read_topic(setup.bootstrap, setup.dlq, 1, timeout_s=1.0) == []


async def test_a_value_the_handler_cannot_apply_is_dead_lettered_alone(setup: Setup) -> None:
    seen: list[str] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        if any(e.data["passport_id"] == "p1" for e in events):
            raise ValueError("changed_paths is not a list of strings")
        seen.extend(e.data["passport_id"] for e in events)

    registry = CollectorRegistry()
    await produce(setup.bootstrap, setup.records(3))
    consumer = setup.consumer(handle, registry)
    await consumer.start()
    try:
        dead = await read_topic(setup.bootstrap, setup.dlq, 1)
        await wait_until(lambda: sorted(seen) == ["p0", "p2"])
    finally:
        await consumer.stop()
    assert len(dead) == 1 and dead[0].key == b"p1"
    assert dict(dead[0].headers)["dlq_reason"] == (
        b"ValueError: changed_paths is not a list of strings")
    labels = {"worker": "test", "topic": setup.topic}
    assert sample(registry, "ampgate_consumer_messages_total", **labels,
                  outcome="dead_lettered") == 1


async def test_graceful_stop_commits_and_a_new_member_does_not_reprocess(setup: Setup) -> None:
    seen: list[str] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        seen.extend(e.id for e in events)

    await produce(setup.bootstrap, setup.records(20))
    first = setup.consumer(handle)
    await first.start()
    await wait_until(lambda: len(seen) == 20)
    await first.stop()
    await produce(setup.bootstrap, setup.records(5, start=20))
    second = setup.consumer(handle)
    await second.start()
    try:
        await wait_until(lambda: len(seen) == 25)
        await asyncio.sleep(0.5)
    finally:
        await second.stop()
    assert len(seen) == len(set(seen)) == 25


async def test_a_cancelled_batch_is_not_committed(setup: Setup) -> None:
    blocked = asyncio.Event()
    seen: list[str] = []

    async def stuck(events: list[ConsumedEvent]) -> None:
        blocked.set()
        await asyncio.sleep(3600)

    async def handle(events: list[ConsumedEvent]) -> None:
        seen.extend(e.id for e in events)

    await produce(setup.bootstrap, setup.records(10))
    first = setup.consumer(stuck)
    await first.start()
    await asyncio.wait_for(blocked.wait(), 20)
    await first.stop(timeout_s=0.2)  # the batch cannot finish: cancelled, not committed
    second = setup.consumer(handle)
    await second.start()
    try:
        await wait_until(lambda: len(seen) == 10)
    finally:
        await second.stop()


class _Pipeline:
    """A handler whose second batch blocks until released, and a count of the records
    the runtime has parsed (so a test knows the next batch was read ahead)."""

    def __init__(self, monkeypatch) -> None:
        from services.common.consumer import runtime

        self.parsed = 0
        self.applied: list[tuple[int, int]] = []  # (partition, offset), once handled
        self.first: list[tuple[int, int]] = []
        self.blocked = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0
        parse = runtime.parse_event

        def counting_parse(record):
            self.parsed += 1
            return parse(record)

        monkeypatch.setattr(runtime, "parse_event", counting_parse)

    async def handle(self, events: list[ConsumedEvent]) -> None:
        self.calls += 1
        if self.calls == 2:
            self.blocked.set()
            await self.release.wait()
        done = [(e.partition, e.offset) for e in events]
        if self.calls == 1:
            self.first = done
        self.applied.extend(done)


async def _read_ahead(setup: Setup, monkeypatch) -> tuple[_Pipeline, EventConsumer]:
    """A member whose first batch is applied and committed, whose second is in the
    handler, and whose third is already polled and parsed."""
    await produce(setup.bootstrap, setup.records(60))
    setup.settings = setup.settings.model_copy(
        update={"consumer": setup.settings.consumer.model_copy(update={"batch_size": 10})})
    pipe = _Pipeline(monkeypatch)
    member = setup.consumer(pipe.handle)
    await member.start()
    await asyncio.wait_for(pipe.blocked.wait(), 20)
    # Batches 1 and 2 parsed, and more: the next batch is read while batch 2 is applied.
    await wait_until(lambda: pipe.parsed > 20)
    return pipe, member


async def test_a_crash_between_decode_and_commit_leaves_those_offsets_to_the_next_member(
        setup: Setup, monkeypatch) -> None:
    pipe, member = await _read_ahead(setup, monkeypatch)
    await member.stop(timeout_s=0.2)  # batch 2 cannot finish: cancelled like a crash
    committed = await committed_offsets(setup.bootstrap, setup.group, setup.topic)
    # Only batch 1 (applied) is committed; not batch 2 (in the handler), not batch 3
    # (decoded, never applied).
    first_end = {p: max(o for q, o in pipe.first if q == p) + 1 for p, _ in pipe.first}
    assert committed == first_end
    assert len(pipe.applied) == len(pipe.first) == 10
    again: list[tuple[int, int]] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        again.extend((e.partition, e.offset) for e in events)

    second = setup.consumer(handle)
    await second.start()
    try:
        await wait_until(lambda: len(pipe.applied) + len(again) >= 60)
        await asyncio.sleep(0.5)
    finally:
        await second.stop()
    # Everything after batch 1 is ingested after the restart, and nothing twice.
    assert len(again) == len(set(again)) == 50
    assert not set(again) & set(pipe.applied)


async def test_a_stop_with_a_batch_read_ahead_commits_only_what_was_applied(
        setup: Setup, monkeypatch) -> None:
    pipe, member = await _read_ahead(setup, monkeypatch)
    stopping = asyncio.create_task(member.stop())
    await asyncio.sleep(0.3)
    pipe.release.set()  # batch 2 finishes; the graceful stop then commits
    await stopping
    applied_first = list(pipe.applied)
    committed = await committed_offsets(setup.bootstrap, setup.group, setup.topic)
    assert committed == {p: max(o for q, o in applied_first if q == p) + 1
                         for p, _ in applied_first}
    again: list[tuple[int, int]] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        again.extend((e.partition, e.offset) for e in events)

    second = setup.consumer(handle)
    await second.start()
    try:
        await wait_until(lambda: len(applied_first) + len(again) >= 60)
        await asyncio.sleep(0.5)
    finally:
        await second.stop()
    everything = applied_first + again
    assert len(everything) == len(set(everything)) == 60


async def test_lag_rises_while_behind_and_returns_to_zero(setup: Setup) -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        await gate.wait()
        seen.extend(e.id for e in events)

    registry = CollectorRegistry()

    def total_lag() -> float:
        return sum(s.value for m in registry.collect() if m.name == "ampgate_consumer_lag"
                   for s in m.samples)

    gate.set()
    first = setup.consumer(handle, registry)
    await first.start()
    await wait_until(lambda: first.status()[1]["partitions"] == 2)
    await first.stop()

    # While no member runs, records pile up; the next member shows the backlog at once.
    await produce(setup.bootstrap, setup.records(120), one_by_one=True)
    gate.clear()
    second = setup.consumer(handle, registry)
    await second.start()
    try:
        await wait_until(lambda: total_lag() == 120)
        assert second.lag() == 120
        gate.set()
        await wait_until(lambda: len(seen) == 120)
        await wait_until(lambda: total_lag() == 0)
        ready, detail = second.status()
        assert ready and detail["status"] == "connected" and detail["lag"] == 0
    finally:
        await second.stop()


def lag_by_partition(registry: CollectorRegistry) -> dict[str, float]:
    return {s.labels["partition"]: s.value for m in registry.collect()
            if m.name == "ampgate_consumer_lag" for s in m.samples}


async def test_lag_reaches_zero_when_the_backlog_is_there_before_the_member_joins(
        setup: Setup) -> None:
    # Regression (bench, webhooks stage): the loop processed and committed a partition
    # while the assignment listener was still reading committed offsets, which then moved
    # the processed mark back; with tansu's low ListOffsets answer overwriting the end,
    # the gauge stayed at 1 on that partition forever (on Kafka: at the whole batch).
    seen: list[str] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        seen.extend(e.id for e in events)

    setup.topic = unique_name("passport-changed")  # more partitions: a wider window
    await create_topics(setup.bootstrap, [setup.topic], partitions=12)
    # Many keys, so every partition has records (multi-record batches).
    await produce(setup.bootstrap, [
        (setup.topic, r.key, r.value, list(r.headers))
        for r in (passport_record(f"p{i}", passport_doc(f"p{i}", 1.0), None, i)
                  for i in range(300))])
    registry = CollectorRegistry()
    consumer = setup.consumer(handle, registry)
    await consumer.start()
    try:
        await wait_until(lambda: len(seen) >= 300)
        await wait_until(lambda: len(lag_by_partition(registry)) == 12)
        await asyncio.sleep(1.2)  # two lag refreshes after the last batch
        assert lag_by_partition(registry) == {str(p): 0 for p in range(12)}
        assert consumer.lag() == 0
    finally:
        await consumer.stop()


async def test_lag_counts_a_backlog_produced_in_batches(setup: Setup) -> None:
    # tansu's ListOffsets answers the last batch's base offset + 1; the fetch highwater
    # is the real end, so the gauge shows the whole backlog, not 1 per batch.
    gate = asyncio.Event()

    async def handle(events: list[ConsumedEvent]) -> None:
        await gate.wait()

    await produce(setup.bootstrap, setup.records(120))  # multi-record batches
    registry = CollectorRegistry()
    consumer = setup.consumer(handle, registry)
    await consumer.start()
    try:
        await wait_until(lambda: sum(lag_by_partition(registry).values()) == 120)
        gate.set()
        await wait_until(lambda: sum(lag_by_partition(registry).values()) == 0)
    finally:
        gate.set()
        await consumer.stop()


async def ampgate_dlq_replay(setup: Setup, topic: str) -> tuple[int, str, str]:
    """`ampgate dlq replay --topic ...` as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMPGATE_")}
    env.update({"AMPGATE_KAFKA__BOOTSTRAP_SERVERS": setup.bootstrap,
                "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE": str(setup.settings.kafka.enable_idempotence),
                "AMPGATE_LOG__FORMAT": "json"})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", "dlq", "replay", "--topic", topic, cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_dlq_replay_republishes_to_the_original_topic_once(setup: Setup) -> None:
    fixed = asyncio.Event()  # the bug that made p1 unappliable, before and after the fix
    seen: list[str] = []

    async def handle(events: list[ConsumedEvent]) -> None:
        if not fixed.is_set() and any(e.data["passport_id"] == "p1" for e in events):
            raise ValueError("cannot apply p1")
        seen.extend(e.data["passport_id"] for e in events)

    records = setup.records(3)
    original = next(r for r in records if r[1] == b"p1")
    await produce(setup.bootstrap, records)
    consumer = setup.consumer(handle)
    await consumer.start()
    try:
        assert len(await read_topic(setup.bootstrap, setup.dlq, 1)) == 1
        await wait_until(lambda: sorted(seen) == ["p0", "p2"])
    finally:
        await consumer.stop()

    code, out, err = await ampgate_dlq_replay(setup, setup.dlq)
    assert (code, out.strip()) == (0, f"replayed 1 dead letters from {setup.dlq}"), err
    on_topic = await read_topic(setup.bootstrap, setup.topic, 4)
    replayed = [r for r in on_topic if r.key == b"p1"]
    assert len(replayed) == 2 and replayed[1].value == original[2]
    assert dict(replayed[1].headers) == dict(original[3])  # ce_* kept, no dlq_*
    assert not any(k.startswith("dlq_") for k, _ in replayed[1].headers)

    # A second replay sends nothing again.
    code, out, _ = await ampgate_dlq_replay(setup, setup.dlq)
    assert (code, out.strip()) == (0, f"replayed 0 dead letters from {setup.dlq}")
    assert len(await read_topic(setup.bootstrap, setup.topic, 5, timeout_s=1.5)) == 4

    # Fixed: the consumer applies the replayed event.
    fixed.set()
    consumer = setup.consumer(handle)
    await consumer.start()
    try:
        await wait_until(lambda: sorted(seen) == ["p0", "p1", "p2"])
    finally:
        await consumer.stop()


async def test_dlq_replay_refuses_what_is_not_a_dead_letter_topic(setup: Setup) -> None:
    await produce(setup.bootstrap, setup.records(1))
    for topic, says in [(unique_name("missing"), "no such topic"),
                        (setup.topic, "is not a dead-letter topic"),
                        ("passport-changed", "is an event topic, not a dead-letter topic")]:
        code, out, err = await ampgate_dlq_replay(setup, topic)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and out == "", (topic, out, err)
        assert len(lines) == 1 and says in lines[0] and lines[0].startswith("ampgate dlq replay:")
    assert len(await read_topic(setup.bootstrap, setup.topic, 2, timeout_s=1.0)) == 1
