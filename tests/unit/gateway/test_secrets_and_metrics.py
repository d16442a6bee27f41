"""Secrets never reach logs or metrics; every contract metric is exported and lints clean."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from services.common.logging import configure_logging
from services.common.settings import LogSettings
from tests.fixtures.gateway import READER_KEY, WRITER_KEY, auth

SECRET_TAG = "TAGSECRET77"


async def test_no_secret_in_any_log_line_or_metric(make_gateway, sandbox, tmp_path):
    log_path = tmp_path / "gateway.log"
    with open(log_path, "w+") as stream:  # noqa: ASYNC230 - the logging sink under test
        configure_logging(LogSettings(format="json", level="debug"), stream=stream)
        gw = await make_gateway(
            tariff_contexts=[{"name": "fleet", "tag_id": SECRET_TAG}],
            log={"format": "json", "level": "debug"},
        )
        ids = [d["id"] for d in await (await gw.get("/v1/passports", headers=auth())).json()]
        await gw.get(f"/v1/passports/{ids[0]}", headers=auth())
        await gw.get("/v1/charging-stations", headers=auth())
        await gw.get(f"/v1/prices?evseId=DE*EEE*E000001&tag_id={SECRET_TAG}", headers=auth())
        await gw.get("/v1/passports/x", headers={"Authorization": "Bearer a-wrong-key-value"})
        await sandbox.revoke("siemensid")
        await sandbox.revoke("cognito")
        await gw.get(f"/v1/passports/{ids[1]}/owned", headers=auth())
        await gw.get("/v1/charging-stations?page[offset]=50", headers=auth())
        await sandbox.fault("siemensid.token", "status", status=500, times=1)
        await sandbox.fault("cognito.token", "status", status=400, times=1)
        await sandbox.revoke("siemensid")
        await gw.get(f"/v1/passports/{ids[2]}/owned", headers={"X-API-Key": WRITER_KEY})
        await gw.put(f"/v1/passports/{ids[3]}", json={"id": ids[3]}, headers=auth(WRITER_KEY))
        metrics_text = await (await gw.get("/metrics")).text()
        await gw.close()
        stream.flush()
        configure_logging(LogSettings(format="json"))
    logs = log_path.read_text()
    assert '"event":"request"' in logs.replace(" ", "")
    cfg = sandbox.config
    secrets = [READER_KEY, WRITER_KEY, "a-wrong-key-value", SECRET_TAG,
               *(v for v in vars(cfg).values() if isinstance(v, str) and "secret" in v.lower()),
               *(str(getattr(cfg, n)) for n in dir(cfg) if "secret" in n or n.endswith("token"))]
    secrets = [s for s in secrets if s and len(s) >= 6]
    assert secrets
    for secret in secrets:
        assert secret not in logs, f"secret leaked into logs: {secret[:3]}..."
        assert secret not in metrics_text
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", logs), "a JWT leaked into logs"
    assert "client_secret=" not in logs


async def test_contract_metrics_are_exported_and_lint_clean(gateway, sandbox):
    ids = [d["id"] for d in await (await gateway.get("/v1/passports", headers=auth())).json()]
    await gateway.get(f"/v1/passports/{ids[0]}", headers=auth())
    await gateway.get(f"/v1/passports/{ids[0]}", headers=auth())
    await gateway.get("/v1/charging-stations", headers=auth())
    text = await (await gateway.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    expected = [
        "ampgate_http_requests", "ampgate_http_request_duration_seconds",
        "ampgate_upstream_requests", "ampgate_upstream_request_duration_seconds",
        "ampgate_cache_lookups", "ampgate_cache_entries", "ampgate_cache_bytes",
        "ampgate_token_requests", "ampgate_token_expiry_timestamp_seconds",
        "ampgate_upstream_circuit_state", "ampgate_changes_detected",
        "ampgate_events_published", "ampgate_outbox_pending", "ampgate_outbox_oldest_age_seconds",
    ]
    for name in expected:
        assert name in families, name
    # promtool-style lint: counters end in _total, HELP present, names snake_case, bounded labels
    for fam in families.values():
        if not fam.name.startswith("ampgate_"):
            continue
        assert fam.documentation, fam.name
        assert re.fullmatch(r"[a-z_:][a-z0-9_:]*", fam.name)
        if fam.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in fam.samples), fam.name
        for sample in fam.samples:
            route = sample.labels.get("route")
            if route is not None:
                assert ids[0] not in route, "raw ids must not become label values"
    promtool = shutil.which("promtool") or shutil.which(str(Path(sys.executable).parent / "promtool"))
    if promtool:  # the real linter when bootstrap could install it
        lint = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"],
                                       check=False, input=text, capture_output=True, text=True,
                                       timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    clients = {s.labels["client"] for s in families["ampgate_http_requests"].samples
               if "client" in s.labels}
    assert "reader" in clients
    results = {s.labels["result"] for s in families["ampgate_cache_lookups"].samples
               if s.name.endswith("_total") and s.value > 0}
    assert {"hit", "miss"} <= results


async def test_anonymous_requests_are_labelled_anonymous(gateway):
    await gateway.get("/v1/passports/BP-0001")
    text = await (await gateway.get("/metrics")).text()
    assert 'client="anonymous"' in text
