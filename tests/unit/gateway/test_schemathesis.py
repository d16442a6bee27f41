"""schemathesis against a live gateway with the sandbox, the broker and the history worker
behind, with every check it has: no 5xx, documented statuses, content types, headers and
response bodies that match their schemas, schema-valid input accepted and schema-invalid
input rejected, 405 + Allow for undocumented methods, auth that cannot be skipped, stateful
links (create → read → delete) — write routes and history included. Bounded in time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.gateway.live_stack import (
    ALL_SCOPES_KEY,
    CONTEXT,
    EVSE_ID,
    PASSPORT_ID,
    TAG_ID,
    start_stack,
)

pytestmark = pytest.mark.integration

# What the route table documents in prose but OpenAPI cannot say about query parameters:
# exactly one authentication medium, duration xor duration_in_minutes, from with to, at
# without from/to; and the upstream answers 400 to a currency it does not know. Valid
# parameters one by one may still be a 400 there, with errors[] naming the rule.
ACCEPT_400 = '["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]'
CONFIG = f"""
[auth.openapi.bearer]
bearer = "{ALL_SCOPES_KEY}"

[auth.openapi.apiKey]
api_key = "{ALL_SCOPES_KEY}"

[[operations]]
include-tag = "prices"
checks.positive_data_acceptance.expected-statuses = {ACCEPT_400}

[[operations]]
include-tag = "history"
checks.positive_data_acceptance.expected-statuses = {ACCEPT_400}
"""
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
# Errors inside the generator (not answers of the API) seen with this schemathesis on
# CPython 3.11; anything else schemathesis calls an error fails the test.
TOOL_ERRORS = ("Inconsistent results", "AST constructor recursion depth mismatch")


@pytest.fixture(scope="module")
def stack(kafka, tmp_path_factory):
    gen = start_stack(tmp_path_factory.mktemp("contract"), kafka.bootstrap)
    stack = next(gen)
    # Something in history for the explicit examples to find (reads announce snapshots).
    assert stack.get(f"/v1/passports/{PASSPORT_ID}")[0] == 200
    assert stack.get(f"/v1/prices?evseId={EVSE_ID}&tag_id={TAG_ID}")[0] == 200
    stack.wait_for_history(f"/v1/passports/{PASSPORT_ID}/history")
    stack.wait_for_history(f"/v1/prices/{EVSE_ID}/history?context={CONTEXT}")
    yield stack
    next(gen, None)


def test_schemathesis_all_checks(stack, tmp_path):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    cli = Path(sys.executable).with_name("schemathesis")
    proc = subprocess.run(
        [str(cli), "--config-file", str(config), "run", stack.url + "/openapi.json",
         "--checks", "all", "--exclude-checks", "use_after_free",  # → use_after_free_but_history
         "--max-examples", "10", "--generation-deterministic",
         "--request-timeout", "10", "--max-time", "50", "--workers", "2", "--no-color",
         "--suppress-health-check", "all", "--max-failures", "50"],
        check=False, capture_output=True, text=True, timeout=150, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
    )
    out = proc.stdout + proc.stderr
    summary = out.strip().splitlines()[-1]
    assert "failure" not in summary, out[-20000:]
    assert "Operations:       22 selected / 22 total" in out, out[-5000:]
    assert "HookError" not in out and "Unable to load" not in out, out[-5000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert re.search(rf"(✅|🚫)\s+{phase}", out), (phase, out[-5000:])
    if proc.returncode != 0:  # errors, not failures: only known generator trouble is excused
        errors = out.split("ERRORS", 1)[1].split("SUMMARY", 1)[0] if "ERRORS" in out else out
        sections = [s for s in re.split(r"\n_{5,} .+ _{5,}\n", errors) if s.strip()][1:]
        assert sections and all(any(t in s for t in TOOL_ERRORS) for s in sections), out[-20000:]
