"""Group commit (services.common.outbox.writer): what an awaited commit promises — the rows
are in the file, in submission order, and a SIGKILL mid-batch loses none of them."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, build_event
from services.common.outbox import Outbox
from tests.unit.common.event_samples import passport_data

ROOT = Path(__file__).resolve().parents[3]


def event(n: int, passport_id: str = "BP-1"):
    return build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, passport_id,
                       passport_data(passport_id, changed_paths=[f"/n/{n}"]), event_id=f"e-{n}")


def in_file(path: Path) -> list[bytes]:
    """ce_ids in the outbox as another process would read them (a new connection)."""
    with Outbox(path) as box:
        return [r.header("ce_id") for _, r in box.next_batch(100_000)]


@pytest.fixture
async def outbox(tmp_path):
    box = Outbox(tmp_path / "gateway.sqlite3")
    box.open()
    box.start_writer()
    yield box
    box.close()


def adder(box: Outbox, record):
    return lambda conn: box.add(conn, record)


async def test_concurrent_writers_are_all_in_the_file_once_their_awaits_return(outbox):
    """200 'requests' each submit an event and await its commit: when an await returns,
    that event is already in the file; they share far fewer transactions than 200."""
    seen_in_file_at_ack: list[bool] = []

    async def request(n: int) -> None:
        await asyncio.sleep(0)
        await outbox.write(adder(outbox, event(n, f"BP-{n % 7}")))
        seen_in_file_at_ack.append(f"e-{n}".encode() in in_file(outbox.path))

    await asyncio.gather(*(request(n) for n in range(200)))
    assert all(seen_in_file_at_ack) and len(seen_in_file_at_ack) == 200
    assert sorted(in_file(outbox.path)) == sorted(f"e-{n}".encode() for n in range(200))
    assert outbox.writer is not None and outbox.writer.batches < 100  # grouped


async def test_rows_commit_in_submission_order_and_wake_the_publisher(outbox):
    outbox.wakeup.clear()
    futures = [outbox.write(adder(outbox, event(n))) for n in range(50)]
    await asyncio.gather(*futures)
    await asyncio.wait_for(outbox.wakeup.wait(), 2)
    assert in_file(outbox.path) == [f"e-{n}".encode() for n in range(50)]


async def test_jobs_submitted_in_one_pass_of_the_loop_share_one_transaction(outbox):
    """They reach the writer thread together at the end of the pass: one hand-over, one
    wake-up of the thread, one COMMIT (not a first transaction of one job, then the rest)."""
    futures = [outbox.write(adder(outbox, event(n))) for n in range(50)]
    await asyncio.gather(*futures)
    assert outbox.writer is not None and outbox.writer.batches == 1
    assert in_file(outbox.path) == [f"e-{n}".encode() for n in range(50)]


async def test_a_failing_job_fails_alone(outbox):
    def broken(conn: sqlite3.Connection) -> None:
        outbox.add(conn, event(99))
        raise ValueError("boom")

    futures = [outbox.write(adder(outbox, event(0))), outbox.write(broken),
               outbox.write(adder(outbox, event(1)))]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert results[0] is None and results[2] is None
    assert in_file(outbox.path) == [b"e-0", b"e-1"]  # nothing of the failed job


async def test_a_transaction_on_the_loop_comes_after_the_jobs_queued_before_it(outbox):
    for n in range(20):
        outbox.write(adder(outbox, event(n)))  # not awaited
    with outbox.transaction() as conn:
        (count,) = conn.execute("SELECT count(*) FROM outbox").fetchone()
        outbox.add(conn, event(20))
    assert count == 20
    assert in_file(outbox.path) == [f"e-{n}".encode() for n in range(21)]


async def test_close_commits_what_is_queued(tmp_path):
    box = Outbox(tmp_path / "gateway.sqlite3")
    box.open()
    box.start_writer()
    for n in range(30):
        box.write(adder(box, event(n)))
    box.close()
    assert in_file(box.path) == [f"e-{n}".encode() for n in range(30)]


def test_sigkill_mid_batch_loses_nothing_acknowledged(tmp_path):
    """A process keeps 32 writes in flight and prints each one once its commit is awaited;
    SIGKILLed in the middle of that, every write it acknowledged is in the file, and the
    file holds whole jobs only (each job writes an event and its marker row together)."""
    path = tmp_path / "gateway.sqlite3"
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from services.common.events import PASSPORT_CE_TYPE, PASSPORT_TOPIC, build_event
        from services.common.outbox import Outbox
        from tests.unit.common.event_samples import passport_data

        async def main():
            box = Outbox({str(path)!r}); box.open()
            with box.transaction() as conn:
                conn.execute("CREATE TABLE marker (n INTEGER PRIMARY KEY)")
            box.start_writer()

            def job(n):
                def run(conn):
                    box.add(conn, build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, "BP-1",
                                              passport_data("BP-1"), event_id=f"e-{{n}}"))
                    conn.execute("INSERT INTO marker (n) VALUES (?)", (n,))
                return run

            async def write(n):
                await box.write(job(n))
                sys.stdout.write(f"{{n}}\\n"); sys.stdout.flush()

            n = 0
            while True:
                await asyncio.gather(*(write(n + k) for k in range(32)))
                n += 32

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    acked: list[int] = []
    try:
        while len(acked) < 1000:
            line = proc.stdout.readline()
            assert line, "the writer process died"
            acked.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    acked += [int(line) for line in proc.stdout.read().split()]  # printed before the kill

    events = {int(i.decode().removeprefix("e-")) for i in in_file(path)}
    with sqlite3.connect(path) as conn:
        markers = {n for (n,) in conn.execute("SELECT n FROM marker")}
    assert set(acked) <= events
    assert events == markers  # whole jobs, never half of one


async def test_acknowledged_rows_are_gone_at_once_while_their_delete_is_queued(outbox):
    await asyncio.gather(*(outbox.write(adder(outbox, event(n))) for n in range(5)))
    ids = [i for i, _ in outbox.next_batch(10)]
    outbox.mark_sent(ids[:3])  # queued to the writer thread
    assert [r.header("ce_id") for _, r in outbox.next_batch(10)] == [b"e-3", b"e-4"]
    assert outbox.pending() == 2
    outbox.writer.idle()
    assert in_file(outbox.path) == [b"e-3", b"e-4"]
    assert outbox.pending() == 2
