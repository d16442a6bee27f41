"""The real `ampgate history` process: SIGKILLed mid-stream and restarted it loses nothing
and doubles nothing; stopped, its lag rises, and falls to 0 once it catches up."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from services.common.events import PASSPORT
from services.devtools.local_kafka import free_port
from services.history.store import open_store
from services.history.versions import EntityKey
from tests.unit.history.helpers import (
    create_topics,
    fresh_postgres_database,
    passport_doc,
    passport_record,
    produce,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PASSPORTS = 200


def chain(start: int, steps: int) -> list:
    """Every passport moves through ``steps`` new values: one version each."""
    records = []
    for step in range(start, start + steps):
        for n in range(PASSPORTS):
            pid = f"crash-{n}"
            prev = passport_doc(pid, float(step - 1)) if step else None
            records.append(passport_record(pid, passport_doc(pid, float(step)), prev, step))
    return records


class Worker:
    def __init__(self, kafka, database_url: str, log_path: Path) -> None:
        self.port = free_port()
        self.env = {
            **os.environ,
            "AMPGATE_HTTP__PORT": str(self.port),
            "AMPGATE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap,
            "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE": "false",
            "AMPGATE_KAFKA__PARTITIONS": "3",
            "AMPGATE_HISTORY__DATABASE_URL": database_url,
            "AMPGATE_CONSUMER__BATCH_SIZE": "50",
            "AMPGATE_CONSUMER__SESSION_TIMEOUT_S": "2",
            "AMPGATE_LOG__FORMAT": "json",
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services", "history"], cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def metrics(self) -> dict[str, float]:
        """name{labels} -> value; {} while the HTTP side is not up."""
        try:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{self.port}/metrics",
                    timeout=aiohttp.ClientTimeout(total=2)) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return {}
        out = {}
        for line in text.splitlines():
            m = re.match(r"^(ampgate_\w+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return out

    async def lag(self) -> float | None:
        values = [v for k, v in (await self.metrics()).items()
                  if k.startswith("ampgate_consumer_lag{")]
        return sum(values) if values else None


async def stored(database_url: str) -> list[tuple[str, str]]:
    store = open_store(database_url)
    await store.open()
    try:
        out = []
        for n in range(PASSPORTS):
            out += [(v.event_id, v.digest)
                    for v in await store.versions(EntityKey(PASSPORT, f"crash-{n}"))]
        return out
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/history.sqlite3"
    return await fresh_postgres_database(request.getfixturevalue("postgres_dsn"))


async def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(private_kafka, database_url,
                                                                     tmp_path) -> None:
    records = chain(0, 15)  # 3,000 events
    await create_topics(private_kafka.bootstrap, ["passport-changed", "price-changed"], 3)
    await produce(private_kafka.bootstrap, records)
    worker = Worker(private_kafka, database_url, tmp_path / "worker.log")
    try:
        worker.start()

        async def some_recorded() -> bool:
            m = await worker.metrics()
            return m.get('ampgate_history_versions_total{entity="passport"}', 0) > 0

        await wait_until(some_recorded, timeout_s=30, interval_s=0.005)
        assert worker.signal(signal.SIGKILL) == -signal.SIGKILL
        partial = await stored(database_url)
        assert 0 < len(partial) < len(records), "the kill should land mid-stream"

        worker.start()

        async def caught_up() -> bool:
            return len(await stored(database_url)) == len(records) and await worker.lag() == 0

        await wait_until(caught_up, timeout_s=60, interval_s=0.2)
        rows = await stored(database_url)
        assert sorted(e for e, _ in rows) == sorted(r.header("ce_id").decode() for r in records)

        # Stopped (SIGTERM: graceful, exit 0), a backlog builds up ...
        assert worker.signal(signal.SIGTERM) == 0
        more = chain(15, 10)  # 2,000 events
        await produce(private_kafka.bootstrap, more)
        worker.start()
        seen: list[float] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lag = await worker.lag()
            if lag is not None:
                seen.append(lag)
                if lag == 0 and len(await stored(database_url)) == len(records) + len(more):
                    break
            await asyncio.sleep(0.005)
        # ... the restarted worker reports it, then works it down to 0.
        assert seen and max(seen) > 0 and seen[-1] == 0, seen[:20]
        assert len(await stored(database_url)) == len(records) + len(more)
        assert worker.signal(signal.SIGTERM) == 0
    finally:
        worker.kill_if_running()
