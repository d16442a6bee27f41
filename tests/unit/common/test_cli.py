"""A missing or malformed setting stops start-up with one clear line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
UPSTREAMS = {
    "AMPGATE_PASSPORT__BASE_URL": "http://127.0.0.1:9/passport",
    "AMPGATE_PASSPORT__TOKEN_URL": "http://127.0.0.1:9/token",
    "AMPGATE_PASSPORT__CLIENT_ID": "id",
    "AMPGATE_PASSPORT__CLIENT_SECRET": "secret",
    "AMPGATE_CPO__BASE_URL": "http://127.0.0.1:9",
    "AMPGATE_CPO__TOKEN_URL": "http://127.0.0.1:9/token",
    "AMPGATE_CPO__CLIENT_ID": "id",
    "AMPGATE_CPO__CLIENT_SECRET": "secret",
    "AMPGATE_PRICING__BASE_URL": "http://127.0.0.1:9",
    "AMPGATE_PRICING__API_TOKEN": "token",
}


def run_gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AMPGATE_")}
    return subprocess.run([sys.executable, "-m", "services", "gateway"], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize(("env", "named"), [
    ({}, "AMPGATE_PASSPORT__BASE_URL"),
    ({**UPSTREAMS, "AMPGATE_PASSPORT__TOKEN_URL": ""}, "AMPGATE_PASSPORT__TOKEN_URL"),
    ({k: v for k, v in UPSTREAMS.items() if k != "AMPGATE_CPO__CLIENT_SECRET"},
     "AMPGATE_CPO__CLIENT_SECRET"),
    ({**UPSTREAMS, "AMPGATE_HTTP__PORT": "eighty"}, "AMPGATE_HTTP__PORT"),
    ({**UPSTREAMS, "AMPGATE_CLIENTS": "[{"}, "AMPGATE_CLIENTS"),
    ({**UPSTREAMS, "AMPGATE_CLIENTS": '[{"name": "a", "key_sha256": "xyz", "scopes": []}]'},
     "AMPGATE_CLIENTS__0__KEY_SHA256"),
    ({**UPSTREAMS, "AMPGATE_TARIFF_CONTEXTS": '[{"name": "a"}]'}, "AMPGATE_TARIFF_CONTEXTS__0"),
    ({**UPSTREAMS, "AMPGATE_CONFIG": "/nonexistent/ampgate.toml"}, "AMPGATE_CONFIG"),
    # A misspelled top-level name stops start-up like a misspelled nested one.
    ({**UPSTREAMS, "AMPGATE_CLUSTRE__REDIS_URL": "redis://127.0.0.1:6379"},
     "AMPGATE_CLUSTRE__REDIS_URL"),
    ({**UPSTREAMS, "AMPGATE_UPSTREAMS__PASSPORT__TIMEOUT_S": "3"},
     "AMPGATE_UPSTREAMS__PASSPORT__TIMEOUT_S"),
    ({**UPSTREAMS, "AMPGATE_HTTP_PORT": "9000"}, "AMPGATE_HTTP_PORT"),
    ({**UPSTREAMS, "AMPGATE_CLUSTER__REDIS_URLS": "redis://127.0.0.1:6379"},
     "AMPGATE_CLUSTER__REDIS_URLS"),
])
def test_bad_setting_fails_start_up_naming_it(env, named):
    result = run_gateway(env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert named in lines[0] and "configuration error" in lines[0]
    assert "secret" not in lines[0].lower() or "CLIENT_SECRET" in lines[0]


def test_version_prints_the_installed_version():
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    result = subprocess.run([sys.executable, "-m", "services", "--version"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ampgate {version}"
