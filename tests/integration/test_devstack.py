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


class DevStack:
    """``python -m services dev [args]`` as a user runs it, its output read line by line."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        env = {**os.environ, "AMPGATE_STATE_DIR": str(tmp_path),
               "AMPGATE_HTTP__PORT": str(free_port()),
               "AMPGATE_POLL__PRICES_INTERVAL_S": "1", "AMPGATE_POLL__PASSPORTS_INTERVAL_S": "0",
               "AMPGATE_LOG__FORMAT": "json"}
        self.proc = subprocess.Popen([sys.executable, "-m", "services", "dev", *args], cwd=REPO,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                         daemon=True).start()

    def output(self) -> str:
        return "".join(self.lines)[-3000:]

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            assert self.proc.poll() is None, self.output()
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in:\n" + self.output())

    def count(self, pattern: str) -> int:
        return sum(1 for line in list(self.lines) if re.search(pattern, line))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        return self.proc.returncode


def _lease_held(gateway: str, lease: str) -> float:
    status, body = _get(gateway + "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith("ampgate_cluster_leases_held{") and f'lease="{lease}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no ampgate_cluster_leases_held for {lease} on {gateway}")


def _change_tariff(sandbox: str, rate_name: str) -> None:
    req = urllib.request.Request(f"{sandbox}/_control/tariffs/DE*EEE*E000001", method="PUT",
                                 data=orjson.dumps({"rateName": rate_name}),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200


PRICE = "/v1/prices?evseId=DE*EEE*E000001&tag_id=DEMO-TAG-0001"
UPDATED = (r"webhook ← ampgate\.price\.changed\.v1 DE\*EEE\*E000001 CHANGE_KIND_UPDATED "
           r"(.*) \(webhook-id")


def test_dev_stack_shows_a_change_end_to_end(tmp_path):
    stack = DevStack(tmp_path)
    try:
        gateway = stack.wait_for(r"gateway\s+(http://127\.0\.0\.1:\d+)", 90).group(1)
        sandbox = stack.wait_for(r"sandbox\s+(http://127\.0\.0\.1:\d+)", 5).group(1)
        key = stack.wait_for(r"API key\s+(\S+)", 5).group(1)
        auth = {"Authorization": f"Bearer {key}"}
        status, body = _get(gateway + PRICE, auth)
        assert status == 200 and b"rateName" in body
        stack.wait_for(r"initial snapshots: 1 so far", 60)  # the first poll reached the webhook
        _change_tariff(sandbox, "Night tariff")
        hook = stack.wait_for(UPDATED, 60)
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
        returncode = stack.stop()
    assert returncode == 0, stack.output()
