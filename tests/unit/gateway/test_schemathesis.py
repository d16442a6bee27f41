"""Property-based tests from /openapi.json against a live gateway with the sandbox behind:
no 5xx, and every error is problem+json."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck

from tests.fixtures.processes import settings_env, start_service
from tests.fixtures.sandbox import free_port, start_sandbox_process, upstream_settings
from services.sandbox.config import SandboxConfig
from tests.unit.gateway.conftest import ADMIN_KEY, CLIENTS

ALL_SCOPES_KEY = "schemathesis-key"


@pytest.fixture(scope="module")
def live_gateway(tmp_path_factory):
    import hashlib

    sandbox_proc, sandbox_url = start_sandbox_process(free_port())
    clients = [*CLIENTS, {"name": "fuzzer", "key_sha256": hashlib.sha256(ALL_SCOPES_KEY.encode()).hexdigest(),
                          "scopes": ["passports:read", "users:read", "stations:read", "prices:read",
                                     "history:read"]}]
    env = settings_env({
        **upstream_settings(sandbox_url, SandboxConfig()),
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "enable_idempotence": "false"},
        "state_dir": str(tmp_path_factory.mktemp("gw")),
    })
    env["AMPGATE_CLIENTS"] = __import__("orjson").dumps(clients).decode()
    gw = start_service("gateway", free_port(), env)
    yield gw
    gw.stop()
    sandbox_proc.terminate()
    sandbox_proc.wait(10)


@pytest.fixture(scope="module")
def api_schema(live_gateway):
    return schemathesis.openapi.from_url(live_gateway.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.include(method="GET").exclude(path_regex="history").parametrize()
@hypothesis.settings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_problem_json(case):
    response = case.call(headers={"Authorization": f"Bearer {ALL_SCOPES_KEY}"}, timeout=20)
    assert response.status_code < 500, (case.path, case.query, response.text[:300])
    if response.status_code >= 400:
        assert response.headers.get("Content-Type", "").startswith("application/problem+json"), (
            case.path, response.status_code, response.text[:300])
