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


def test_a_dead_letter_replayed_is_queued_again_once(tmp_path):
    store = JobStore(tmp_path / "q.sqlite3")
    store.open()
    store.enqueue([_job("s", "1", "P", ("k", "A", "B"))], now=100.0)
    (job,) = store.heads("s", 10)
    store.mark_failed(job.id, 3, "http_500", reason="max_attempts")
    store.mark_dead_lettered([job.id])
    assert store.heads("s", 10) == []
    # The replayed event twice in one batch, then a new one: revived once, the copy is
    # a duplicate, the new one queued behind it.
    r = store.enqueue([_job("s", "1", "P", ("k", "A", "B")), _job("s", "1", "P", ("k", "A", "B")),
                       _job("s", "2", "P", ("k", "B", "C"))], now=200.0)
    assert (r.revived, r.duplicate_event, r.duplicate_transition, r.queued) == (1, 0, 1, 1)
    assert [(j.event_id, j.attempts) for j in store.heads("s", 10)] == [("1", 0)]
    store.close()


def _enqueue_one_by_one(db, jobs, now):
    """The rules as they read job by job (one statement each): the reference the batched
    enqueue must agree with."""
    out = [0, 0, 0, 0]  # queued, duplicate_event, duplicate_transition, revived
    for job in jobs:
        if db.execute("UPDATE jobs SET state = 'pending', attempts = 0, next_attempt_at = ? "
                      "WHERE subscription = ? AND event_id = ? AND state = 'dead'",
                      (now, job.subscription, job.event_id)).rowcount:
            out[3] += 1
            continue
        if job.transition is not None:
            row = db.execute("SELECT previous_digest, digest FROM latest_transition "
                             "WHERE subscription = ? AND transition_key = ?",
                             (job.subscription, job.transition[0])).fetchone()
            if row is not None and tuple(row) == job.transition[1:]:
                out[2] += 1
                continue
        if db.execute("INSERT OR IGNORE INTO jobs (subscription, event_id, entity, ce_type, "
                      "source_topic, source_partition, source_offset, body, event_headers, "
                      "event_value, next_attempt_at, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                      (job.subscription, job.event_id, job.entity, job.ce_type, job.source_topic,
                       job.source_partition, job.source_offset, job.body, b"[]",
                       job.event_value, now, now)).rowcount == 0:
            out[1] += 1
            continue
        out[0] += 1
        if job.transition is not None:
            db.execute("INSERT INTO latest_transition VALUES (?,?,?,?) ON CONFLICT "
                       "(subscription, transition_key) DO UPDATE SET "
                       "previous_digest = excluded.previous_digest, digest = excluded.digest",
                       (job.subscription, *job.transition))
    return out


def test_batched_enqueue_decides_as_the_rules_read_job_by_job(tmp_path):
    import random

    rng = random.Random(7)
    batched = JobStore(tmp_path / "batched.sqlite3")
    reference = JobStore(tmp_path / "reference.sqlite3")
    batched.open()
    reference.open()
    digests = "ABC"
    for round_ in range(40):
        jobs = []
        for _ in range(rng.randint(1, 30)):
            entity = rng.choice("PQ")
            t = None if rng.random() < 0.2 else (
                f"k{entity}", rng.choice(digests), rng.choice(digests))
            jobs.append(_job(rng.choice(["s", "t"]), str(rng.randint(0, 60)), entity, t))
        r = batched.enqueue(jobs, now=float(round_))
        with reference.db:
            want = _enqueue_one_by_one(reference.db, jobs, float(round_))
        assert [r.queued, r.duplicate_event, r.duplicate_transition, r.revived] == want, round_
        # Some pending jobs die (given up, then published as dead letters): later rounds
        # replay them.
        for store in (batched, reference):
            dead = [row[0] for row in store.db.execute(
                "SELECT id FROM jobs WHERE state = 'pending' "
                "AND (CAST(event_id AS INTEGER) * 7 + ?) % 5 = 0",
                (round_,))]
            for job_id in dead:
                store.mark_failed(job_id, 1, "x", reason="max_attempts")
            store.mark_dead_lettered(dead, now=float(round_))
    # Same jobs in the same order (ids may differ: an ignored insert can use one up).
    query = ("SELECT subscription, event_id, entity, state, attempts FROM jobs ORDER BY id")
    assert list(batched.db.execute(query)) == list(reference.db.execute(query))
    query = "SELECT * FROM latest_transition ORDER BY 1, 2"
    assert list(batched.db.execute(query)) == list(reference.db.execute(query))
    batched.close()
    reference.close()


async def test_jobs_come_back_byte_for_byte_in_batch_order(tmp_path):
    # The batch is inserted in multi-row statements (on the store's thread): bodies,
    # headers and values come back as the same bytes, ids in the batch's order.
    store = JobStore(tmp_path / "q.sqlite3")
    store.open()
    body = '{"a":"Zoë ✓ \\u0000 \\"q\\"","n":1.5}'.encode()
    headers = [("ce_id", b"x\x00\xff\n"), ("ce_time", "é".encode())]
    jobs = [NewJob("s", str(i), f"E{i}", "t", "topic", 2, 10 + i, body, headers, b'{"v":[1]}')
            for i in range(250)]  # more than one statement's worth of rows
    assert (await store.enqueue_beside(jobs)).queued == 250
    heads = store.heads("s", 300)
    assert [j.event_id for j in heads] == [str(i) for i in range(250)]
    assert [j.id for j in heads] == sorted(j.id for j in heads)
    assert all(j.body == body and isinstance(j.body, bytes) for j in heads)
    assert heads[0].source_partition == 2 and heads[3].source_offset == 13
    store.mark_failed(heads[0].id, 1, "x", reason="max_attempts")
    dead = store.dead_letters(10)[0]
    assert dead.event_headers == headers and dead.event_value == b'{"v":[1]}'
    # Any bytes, not only UTF-8 JSON.
    raw = NewJob("s", "raw", "R", "t", "topic", 0, 1, b"\xff\xfe", headers, b"\x80")
    assert store.enqueue([raw]).queued == 1
    assert next(j for j in store.heads("s", 300) if j.event_id == "raw").body == b"\xff\xfe"
    store.close()
