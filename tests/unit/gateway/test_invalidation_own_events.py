"""The invalidation consumer and the events this replica announced itself: evicted for when
announced (eviction.EvictedHere), so their copies read back from Kafka are skipped before any
parsing; every other event is parsed and handed on as before."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, EventRecord, build_event
from services.common.settings import KafkaSettings
from services.gateway.eviction import EvictedHere
from services.gateway.invalidation import InvalidationConsumer
from tests.unit.common.event_samples import passport_data


def consumed(record: EventRecord, value: bytes | None = None) -> ConsumerRecord:
    value = record.value if value is None else value
    return ConsumerRecord(topic=record.topic, partition=0, offset=1, timestamp=0,
                          timestamp_type=0, key=record.key, value=value, checksum=None,
                          serialized_key_size=len(record.key), serialized_value_size=len(value),
                          headers=list(record.headers))


def consumer_with(evicted_here: EvictedHere, changes: list[str]) -> InvalidationConsumer:
    return InvalidationConsumer(KafkaSettings(bootstrap_servers="127.0.0.1:1"),
                                lambda topic, key, data: changes.append(key),
                                evicted_here=evicted_here)


async def test_an_event_announced_here_is_skipped_without_parsing():
    here = EvictedHere()
    here.add("own-1")
    changes: list[str] = []
    consumer = consumer_with(here, changes)
    own = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-1", passport_data("BP-1"),
                      event_id="own-1")
    # Not even valid JSON: parsing it would log it as invalid; skipped, it is just counted.
    await consumer._handle(consumed(own, value=b"not json"))
    assert changes == [] and consumer.events_seen == 1


async def test_other_events_are_parsed_and_handed_on():
    here = EvictedHere()
    here.add("own-1")
    changes: list[str] = []
    consumer = consumer_with(here, changes)
    other = build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-2", passport_data("BP-2"),
                        event_id="theirs-1")
    await consumer._handle(consumed(other))
    await consumer._handle(consumed(other, value=b"not json"))  # invalid: logged, skipped
    assert changes == ["BP-2"] and consumer.events_seen == 1
