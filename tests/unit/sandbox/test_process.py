"""`ampgate sandbox` as a process takes its credentials from the shared settings."""

from __future__ import annotations

import json
import urllib.request

from tests.fixtures.sandbox import free_port, start_sandbox_process


def test_sandbox_process_uses_settings_credentials() -> None:
    proc, url = start_sandbox_process(free_port(), {
        "AMPGATE_PRICING__BASE_URL": "http://127.0.0.1:1",
        "AMPGATE_PRICING__API_TOKEN": "process-token",
        "AMPGATE_LOG__FORMAT": "json",
    })
    try:
        req = urllib.request.Request(url + "/api/pricing/?evseId=DE*EEE*E000001&tag_id=T",
                                     headers={"x-api-token": "process-token"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
            assert json.load(resp)["costId"] == 2206
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode in (0, -15)
