"""The gateway as its users meet it, for the contract tests: `ampgate sandbox`, `ampgate
history` and `ampgate gateway` as child processes on real sockets, wired to the test
broker, with one API key holding every scope."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson

from services.sandbox.config import SandboxConfig
from tests.fixtures.gateway import CLIENTS
from tests.fixtures.processes import ServiceProcess, settings_env, start_service
from tests.fixtures.sandbox import free_port, start_sandbox_process, upstream_settings

ALL_SCOPES_KEY = "contract-all-scopes-key"
ALL_SCOPES = ["passports:read", "passports:write", "users:read", "users:write",
              "stations:read", "prices:read", "history:read", "admin"]
# A passport and an EVSE the sandbox seeds, with the tariff context of the sandbox's demo tag.
PASSPORT_ID = "BP-0001"
EVSE_ID = "DE*EEE*E000001"
TAG_ID = "DEMO-TAG-0001"
CONTEXT = "demo"


@dataclass
class Stack:
    url: str
    sandbox_url: str
    gateway: ServiceProcess
    history: ServiceProcess

    def get(self, path: str) -> tuple[int, object]:
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"Bearer {ALL_SCOPES_KEY}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def wait_for_history(self, path: str, timeout_s: float = 20.0) -> object:
        """Reads announce versions through Kafka to the history worker: wait for one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, body = self.get(path)
            if status == 200:
                return body
            time.sleep(0.1)
        raise AssertionError(f"no history at {path} within {timeout_s} s: "
                             f"{self.history.log()[-2000:]}")


def start_stack(state_dir: Path, bootstrap: str):
    """Yields a Stack; stops every process it started."""
    sandbox_proc, sandbox_url = start_sandbox_process(free_port())
    procs: list[ServiceProcess] = []
    try:
        clients = [*CLIENTS, {"name": "contract",
                              "key_sha256": hashlib.sha256(ALL_SCOPES_KEY.encode()).hexdigest(),
                              "scopes": ALL_SCOPES}]
        common = {
            "kafka": {"bootstrap_servers": bootstrap, "enable_idempotence": "false"},
            "tariff_contexts": [{"name": CONTEXT, "tag_id": TAG_ID}],
        }
        # The gateway first: it creates the topics the history worker subscribes to.
        gw_port, history_port = free_port(), free_port()
        env = settings_env({
            **upstream_settings(sandbox_url, SandboxConfig()), **common,
            "state_dir": str(state_dir / "gateway"),
            "history": {"url": f"http://127.0.0.1:{history_port}"},
            "shutdown": {"grace_s": 2},  # the broker is up: little to drain at teardown
        })
        env["AMPGATE_CLIENTS"] = orjson.dumps(clients).decode()
        gateway = start_service("gateway", gw_port, env)
        procs.append(gateway)
        history_env = settings_env({**common, "state_dir": str(state_dir / "history")})
        history_env["AMPGATE_CLIENTS"] = env["AMPGATE_CLIENTS"]
        history = start_service("history", history_port, history_env)
        procs.append(history)
        yield Stack(gateway.url, sandbox_url, gateway, history)
    finally:
        for proc in reversed(procs):
            proc.stop()
        sandbox_proc.terminate()
        sandbox_proc.wait(10)
