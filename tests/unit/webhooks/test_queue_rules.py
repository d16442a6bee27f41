"""The delivery queue's rules: per-entity heads, event-id and transition dedupe, durable."""

from __future__ import annotations

from services.webhooks.store import JobStore, NewJob


def _job(sub: str, event_id: str, entity: str, transition=None) -> NewJob:
    return NewJob(sub, event_id, entity, "t", "passport-changed", 0, 1, b"{}", [("ce_id", b"x")],
                  b"{}", transition)


def test_queue_heads_are_the_oldest_job_of_each_entity(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    store.open()
    store.enqueue([_job("s", "1", "A"), _job("s", "2", "A"), _job("s", "3", "B"),
                   _job("other", "4", "A")], now=100.0)
    assert [j.event_id for j in store.heads("s", 10)] == ["1", "3"]
    store.mark_delivered(store.heads("s", 10)[0].id, 1)
    assert [j.event_id for j in store.heads("s", 10)] == ["2", "3"]
    assert store.pending_count("s") == 2
    store.close()


def test_queue_dedupes_event_ids_and_repeated_transitions(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    store.open()
    t = ("k", "A", "B")
    r = store.enqueue([_job("s", "1", "P", t), _job("s", "1", "P"), _job("s", "2", "P", t),
                       _job("s", "3", "P", ("k", "B", "A")), _job("s", "4", "P", t),
                       _job("t", "1", "P", t)])
    assert (r.queued, r.duplicate_event, r.duplicate_transition) == (4, 1, 1)
    store.close()
    # Durable: reopened, the same ids are still known.
    store = JobStore(tmp_path / "q.sqlite3")
    store.open()
    assert store.enqueue([_job("s", "1", "P")]).duplicate_event == 1
    assert store.pending_count("s") == 3
    store.close()
