"""The README's run command: the whole stack comes up, and a tariff change flows from the
sandbox upstream through the poller, Kafka, the history worker and a signed webhook."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from tests.fixtures.sandbox import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_dev_stack_shows_a_change_end_to_end(tmp_path):
    env = {**os.environ, "AMPGATE_STATE_DIR": str(tmp_path), "AMPGATE_HTTP__PORT": str(free_port()),
           "AMPGATE_POLL__PRICES_INTERVAL_S": "1", "AMPGATE_POLL__PASSPORTS_INTERVAL_S": "0",
           "AMPGATE_LOG__FORMAT": "json"}
    proc = subprocess.Popen([sys.executable, "-m", "services", "dev"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def wait_for(pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in lines:
                if m := re.search(pattern, line):
                    return m
            assert proc.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n" + "".join(lines)[-3000:])

    try:
        gateway = wait_for(r"gateway\s+(http://127\.0\.0\.1:\d+)", 90).group(1)
        sandbox = wait_for(r"sandbox\s+(http://127\.0\.0\.1:\d+)", 5).group(1)
        key = wait_for(r"API key\s+(\S+)", 5).group(1)
        auth = {"Authorization": f"Bearer {key}"}
        status, body = _get(f"{gateway}/v1/prices?evseId=DE*EEE*E000001&tag_id=DEMO-TAG-0001", auth)
        assert status == 200 and b"rateName" in body
        wait_for(r"initial snapshots: 1 so far", 60)  # the first poll reached the webhook
        req = urllib.request.Request(f"{sandbox}/_control/tariffs/DE*EEE*E000001", method="PUT",
                                     data=b'{"rateName": "Night tariff"}',
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        hook = wait_for(r"webhook ← ampgate\.price\.changed\.v1 DE\*EEE\*E000001 CHANGE_KIND_UPDATED "
                        r"(.*) \(webhook-id", 60)
        assert "/rate_name" in hook.group(1)
        deadline = time.monotonic() + 30
        while True:
            status, body = _get(f"{gateway}/v1/prices/DE*EEE*E000001/history?context=demo", auth)
            versions = orjson.loads(body).get("versions", []) if status == 200 else []
            if len(versions) >= 2:
                break
            assert time.monotonic() < deadline, (status, body[:300])
            time.sleep(0.3)
        assert [v["change"] for v in versions[:2]] == ["CHANGE_KIND_UPDATED", "CHANGE_KIND_SNAPSHOT"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, "".join(lines)[-2000:]
