"""The durable outbox: order, transactions, wake-ups, and surviving SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, build_event
from services.common.outbox import Outbox
from tests.unit.common.event_samples import passport_data

ROOT = Path(__file__).resolve().parents[3]


def event(n: int, passport_id: str = "BP-1"):
    return build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, passport_id,
                       passport_data(passport_id, changed_paths=[f"/n/{n}"]), event_id=f"e-{n}")


@pytest.fixture
def outbox(tmp_path):
    box = Outbox(tmp_path / "state" / "gateway.sqlite3")
    box.open()
    yield box
    box.close()


def test_events_come_back_oldest_first_byte_for_byte(outbox):
    records = [event(n) for n in range(5)]
    with outbox.transaction() as conn:
        for record in records[:3]:
            outbox.add(conn, record)
    with outbox.transaction() as conn:
        for record in records[3:]:
            outbox.add(conn, record)

    batch = outbox.next_batch(10)
    assert [r for _, r in batch] == records
    assert [i for i, _ in batch] == sorted(i for i, _ in batch)
    assert outbox.pending() == 5
    assert [r for _, r in outbox.next_batch(2)] == records[:2]


def test_mark_sent_forgets_only_what_was_acknowledged(outbox):
    with outbox.transaction() as conn:
        for n in range(4):
            outbox.add(conn, event(n))
    ids = [i for i, _ in outbox.next_batch(10)]
    outbox.mark_sent(ids[:2])
    assert outbox.pending() == 2
    assert [r.header("ce_id") for _, r in outbox.next_batch(10)] == [b"e-2", b"e-3"]
    outbox.mark_sent([])
    outbox.mark_sent(ids[2:])
    assert outbox.pending() == 0 and outbox.next_batch(10) == []
    assert outbox.oldest_age_s() == 0.0


def test_a_failed_transaction_enqueues_nothing_and_other_tables_share_it(outbox):
    with outbox.transaction() as conn:
        conn.execute("CREATE TABLE seen (key TEXT PRIMARY KEY, digest TEXT)")
    with pytest.raises(RuntimeError), outbox.transaction() as conn:
        conn.execute("INSERT INTO seen VALUES ('BP-1', 'sha256:a')")
        outbox.add(conn, event(1))
        raise RuntimeError("upstream said no")
    assert outbox.pending() == 0
    assert outbox.connection.execute("SELECT count(*) FROM seen").fetchone()[0] == 0


def test_add_outside_a_transaction_is_refused(outbox):
    with pytest.raises(RuntimeError, match="inside"):
        outbox.add(outbox.connection, event(1))


def test_uncommitted_events_are_invisible_to_the_publisher_side(outbox):
    with outbox.transaction() as conn:
        outbox.add(conn, event(1))
        assert outbox.pending() == 0 and outbox.next_batch(5) == []
    assert outbox.pending() == 1


def test_oldest_age_grows_while_events_wait(outbox):
    with outbox.transaction() as conn:
        outbox.add(conn, event(1))
    conn = outbox.connection
    conn.execute("UPDATE outbox SET created_at = created_at - 30")
    assert 29.5 < outbox.oldest_age_s() < 35


async def test_commit_with_events_wakes_the_publisher_at_once(outbox):
    outbox.bind_loop(asyncio.get_running_loop())
    outbox.wakeup.clear()
    with outbox.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS seen (k TEXT)")
    assert not outbox.wakeup.is_set()  # no event added: nothing to drain
    with pytest.raises(ValueError), outbox.transaction() as conn:
        outbox.add(conn, event(1))
        raise ValueError
    assert not outbox.wakeup.is_set()  # rolled back
    with outbox.transaction() as conn:
        outbox.add(conn, event(2))
    assert outbox.wakeup.is_set()


async def test_commit_from_another_thread_wakes_the_loop(outbox):
    outbox.bind_loop(asyncio.get_running_loop())
    outbox.wakeup.clear()

    def write() -> None:
        with outbox.transaction() as conn:
            outbox.add(conn, event(1))

    threading.Thread(target=write).start()
    await asyncio.wait_for(outbox.wakeup.wait(), 2)
    assert outbox.pending() == 1


def test_committed_events_survive_sigkill(tmp_path):
    path = tmp_path / "gateway.sqlite3"
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, build_event
        from services.common.outbox import Outbox
        from tests.unit.common.event_samples import passport_data
        box = Outbox({str(path)!r}); box.open()
        for n in range(200):
            with box.transaction() as conn:
                box.add(conn, build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-1",
                                          passport_data("BP-1"), event_id=f"e-{{n}}"))
        print("committed", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == b"committed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with Outbox(path) as box:
        ids = [r.header("ce_id") for _, r in box.next_batch(1000)]
    assert ids == [f"e-{n}".encode() for n in range(200)]
