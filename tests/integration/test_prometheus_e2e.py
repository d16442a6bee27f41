"""A real Prometheus (the server binary bootstrap takes out of Debian's package) scrapes a running
stack — sandbox, gateway, history, webhooks, broker — every second and loads the project's rule
file. Every expression of every dashboard (template variables as `.*` and as a real value) and
every rule is evaluated through the HTTP API: no parse error, no empty panel whose metric the
stack exports, no alert on the healthy stack. Then faults go in — the pricing upstream down, the
Cognito token endpoint broken, a poison event on a topic, the broker stopped — and the alert
meant for each must fire.

The temp copy of the rules differs in durations only: every `for:` becomes 0s and the
recording group's `interval:` 1s, so a test of a few minutes sees what production sees after
the configured minutes. Thresholds and expressions are the shipped ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaProducer

from services.common.events import PASSPORT_TOPIC
from services.sandbox.config import SandboxConfig
from tests.conftest import server_unavailable
from tests.fixtures.processes import ServiceProcess, settings_env, start_service
from tests.fixtures.sandbox import free_port, start_sandbox_process, upstream_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "ampgate-rules.yaml"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
KEY = "e2e-key"
SCOPES = ["passports:read", "passports:write", "users:read", "users:write", "stations:read",
          "prices:read", "history:read", "admin"]
NAMESPACE = "e2e"
TOKEN_LIFETIME_S = 30  # short-lived tokens: the expiry alert must stay quiet anyway
# Grafana's built-ins for a 1 s scrape: $__rate_interval is at least 4 scrape intervals.
GRAFANA_BUILTINS = {"$__rate_interval": "10s", "$__interval": "2s", "$__range": "5m"}


def prometheus_binary() -> str:
    found = Path(sys.executable).with_name("prometheus")
    path = str(found) if found.exists() else shutil.which("prometheus")
    if path is None:
        server_unavailable("prometheus", "not in the venv or on PATH (scripts/bootstrap.sh "
                                         "extracts it from Debian's prometheus package)")
    return str(path)


def test_rules(tmp: Path) -> Path:
    """The shipped rules with short durations (see the module doc)."""
    text = RULES.read_text()
    text = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", text)
    text = re.sub(r"(?m)^(\s+)interval: \S+$", r"\1interval: 1s", text)
    path = tmp / "rules.yaml"
    path.write_text(text)
    return path


test_rules.__test__ = False  # a helper, not a test


class Prom:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def api(self, path: str, **params: Any) -> Any:
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        return (await self.api("query", query=expr))["result"]

    async def alerts(self) -> list[dict[str, Any]]:
        return (await self.api("alerts"))["alerts"]

    async def label_values(self, metric_selector: str, label: str) -> list[str]:
        series = await self.api("series", **{"match[]": metric_selector})
        return sorted({s[label] for s in series if label in s})


async def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(every_s)


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(name, value)
    for name, value in values.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def dashboard_targets(board: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


async def variable_values(prom: Prom, board: dict[str, Any]) -> dict[str, str]:
    """A real value per query variable, each chosen under the ones before it."""
    chosen: dict[str, str] = {}
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["definition"])
        assert m, var["definition"]
        selector = substitute(m.group(1), chosen)
        found = await prom.label_values(selector, m.group(2))
        assert found, f"{board['uid']}: ${var['name']} has no values ({selector})"
        preferred = {"route": "prices", "worker": "history", "job": "ampgate-gateway"}
        pick = preferred.get(var["name"])
        chosen[var["name"]] = pick if pick in found else found[0]
    return chosen


async def evaluate_dashboards(prom: Prom) -> list[str]:
    """Every target of every dashboard, variables as .* and as real values; returns the
    figures for the report. Fails on a parse error or an empty result whose metrics the
    stack exports (under the same namespace/job)."""
    figures, problems = [], []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        names = [v["name"] for v in board["templating"]["list"] if v["type"] == "query"]
        real = await variable_values(prom, board)
        for mode, values in (("all", dict.fromkeys(names, ".*")), ("real", real)):
            total = with_data = absent = 0
            for title, raw in dashboard_targets(board):
                expr = substitute(raw, values)
                total += 1
                try:
                    result = await prom.query(expr)
                except AssertionError as exc:
                    problems.append(f"{path.name} / {title} [{mode}]: {exc}")
                    continue
                if result:
                    with_data += 1
                    continue
                # Empty: fine only if one of its metrics has no series under this filter.
                missing = []
                for metric in sorted(set(re.findall(r"\bampgate_\w+", raw))):
                    sel = (f'{{__name__="{metric}",namespace=~"{values.get("namespace", ".*")}",'
                           f'job=~"{values.get("job", ".*")}"}}')
                    if not await prom.query(f"count({sel})"):
                        missing.append(metric)
                if missing:
                    absent += 1
                else:
                    problems.append(f"{path.name} / {title} [{mode}]: empty result for {expr}")
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            figures.append(f"{board['title']} [{mode}: {shown}]: {total} expressions, "
                           f"{with_data} with data, {absent} without (metric not under filter)")
    assert not problems, "\n".join(problems)
    return figures


async def evaluate_rules(prom: Prom) -> str:
    groups = (await prom.api("rules"))["groups"]
    rules = [r for g in groups for r in g["rules"]]
    shipped = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(rules) == len(shipped)
    bad = [f"{r['name']}: {r.get('lastError')}" for r in rules if r["health"] != "ok"]
    assert not bad, bad
    with_data = 0
    for rule in shipped:
        result = await prom.query(rule["expr"])  # parses and evaluates
        with_data += bool(result)
    return f"rules: {len(shipped)} expressions evaluated, none in error, {with_data} non-empty"


async def firing(prom: Prom, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [a for a in await prom.alerts()
            if a["labels"]["alertname"] == alertname and a["state"] in ("pending", "firing")
            and all(a["labels"].get(k) == v for k, v in labels.items())]


async def _accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


async def test_dashboards_and_alerts_against_a_real_prometheus(private_kafka, tmp_path) -> None:
    prometheus = prometheus_binary()
    started = time.monotonic()
    ports = {name: free_port() for name in ("sandbox", "gateway", "history", "webhooks",
                                            "receiver", "prometheus")}
    procs: list[ServiceProcess] = []
    prom_proc: subprocess.Popen | None = None
    receiver = web.Application()
    receiver.router.add_post("/hooks", _accept)
    runner = web.AppRunner(receiver, access_log=None)
    await runner.setup()
    session = aiohttp.ClientSession()
    sandbox_proc, sandbox_url = await asyncio.to_thread(start_sandbox_process, ports["sandbox"])
    try:
        await web.TCPSite(runner, "127.0.0.1", ports["receiver"]).start()
        for issuer in ("siemensid", "cognito"):
            async with session.put(f"{sandbox_url}/_control/token-lifetime",
                                   json={"issuer": issuer, "expires_in": TOKEN_LIFETIME_S}) as r:
                assert r.status == 200, await r.text()
        env = {
            "AMPGATE_STATE_DIR": str(tmp_path / "state"),
            "AMPGATE_KAFKA__BOOTSTRAP_SERVERS": private_kafka.bootstrap,
            "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE": str(private_kafka.enable_idempotence).lower(),
            "AMPGATE_CONSUMER__SESSION_TIMEOUT_S": "2",
            **settings_env(upstream_settings(sandbox_url, SandboxConfig())),
            "AMPGATE_CLIENTS": orjson.dumps([{"name": "e2e", "key_sha256": hashlib.sha256(
                KEY.encode()).hexdigest(), "scopes": SCOPES}]).decode(),
            "AMPGATE_HISTORY__URL": f"http://127.0.0.1:{ports['history']}",
            "AMPGATE_WEBHOOKS__SUBSCRIPTIONS": orjson.dumps([{
                "name": "e2e", "url": f"http://127.0.0.1:{ports['receiver']}/hooks",
                "events": ["*"], "secret": "whsec_" + "A" * 32}]).decode(),
            "AMPGATE_LOG__LEVEL": "warning",
        }
        for name in ("history", "webhooks", "gateway"):
            state = tmp_path / name
            procs.append(await asyncio.to_thread(
                start_service, name, ports[name], {**env, "AMPGATE_STATE_DIR": str(state)},
                timeout_s=30))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                       "scrape_timeout": "900ms"},
            "rule_files": [str(test_rules(tmp_path))],
            "scrape_configs": [
                {"job_name": f"ampgate-{name}",
                 "static_configs": [{"targets": [f"127.0.0.1:{ports[name]}"],
                                     "labels": {"namespace": NAMESPACE}}]}
                for name in ("gateway", "history", "webhooks")],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_log = (tmp_path / "prometheus.log").open("w")
        prom_proc = await asyncio.to_thread(
            subprocess.Popen,
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{ports['prometheus']}", "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        prom_log.close()  # the child has its own copy
        prom = Prom(f"http://127.0.0.1:{ports['prometheus']}", session)

        async def targets_up() -> bool:
            try:
                result = await prom.query('up{namespace="e2e"} == 1')
            except (aiohttp.ClientError, AssertionError):
                return False
            return len(result) == 3

        await wait_for("three targets up", targets_up, 30)
        gw = f"http://127.0.0.1:{ports['gateway']}"
        auth = {"Authorization": f"Bearer {KEY}"}

        async def get(path: str, headers: dict[str, str] | None = None) -> int:
            async with session.get(gw + path, headers=auth if headers is None else headers) as r:
                await r.read()
                return r.status

        # A little mixed traffic for ~12 s: hits, misses, writes (events), history, 4xx.
        async with session.get(gw + "/v1/passports", headers=auth) as r:
            ids = [d["id"] for d in await r.json()]
        deadline = time.monotonic() + 12
        n = 0
        while time.monotonic() < deadline:
            n += 1
            assert await get(f"/v1/passports/{ids[n % 3]}") == 200
            assert await get("/v1/prices?evseId=DE*EEE*E000001&tag_id=E2E-TAG") == 200
            assert await get("/v1/charging-stations?page[limit]=5") == 200
            assert await get("/v1/users/me") == 200
            assert await get("/v1/prices?evseId=nope&tag_id=E2E-TAG") == 400
            assert await get("/v1/passports/BP-0001", headers={}) == 401
            if n % 5 == 0:
                async with session.get(f"{gw}/v1/passports/{ids[0]}/owned", headers=auth) as r:
                    doc = await r.json()
                doc["e2e_round"] = n
                async with session.put(f"{gw}/v1/passports/{ids[0]}", headers=auth,
                                       json=doc) as r:
                    assert r.status == 200, await r.text()
                assert await get(f"/v1/passports/{ids[0]}/history") == 200
            await asyncio.sleep(0.2)

        async def history_stored() -> bool:
            return bool(await prom.query('ampgate_history_versions_total{entity="passport"} > 0'))

        await wait_for("history versions scraped", history_stored, 20)
        await asyncio.sleep(2)  # a last scrape and a rule evaluation over all of it

        figures = await evaluate_dashboards(prom)
        figures.append(await evaluate_rules(prom))
        healthy = [a["labels"] for a in await prom.alerts()]
        assert not healthy, f"alerts on the healthy stack: {healthy}"
        figures.append("healthy stack: 0 alerts pending or firing")

        # --- faults ----------------------------------------------------------------------
        async with session.post(f"{sandbox_url}/_control/faults", json={
                "endpoint": "pricing", "kind": "status", "status": 503, "times": 10_000}) as r:
            assert r.status < 300, await r.text()
        async with session.post(f"{sandbox_url}/_control/faults", json={
                "endpoint": "cognito.token", "kind": "status", "status": 500,
                "times": 10_000}) as r:
            assert r.status < 300, await r.text()
        producer = AIOKafkaProducer(bootstrap_servers=private_kafka.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(PASSPORT_TOPIC, b"{not an event", key=b"poison")
        finally:
            await producer.stop()

        async def keep_asking() -> None:
            # Misses on a failing upstream: the breaker opens, then its probes keep failing.
            # Traffic goes on, as it would: a status series born with the first burst (503
            # is not known up front, so not exported at 0) shows a rate from the next one.
            i = 0
            while True:
                i += 1
                await get(f"/v1/prices?evseId=DE*EEE*E{900000 + i % 50}&tag_id=E2E-TAG")
                await asyncio.sleep(0.3)

        asker = asyncio.create_task(keep_asking())

        expected = [
            # The first dead letter: seen because the counters are exported at 0.
            ("AmpgateConsumerDeadLetters", {"worker": "history", "topic": PASSPORT_TOPIC}),
            ("AmpgateConsumerDeadLetters", {"worker": "webhooks", "topic": PASSPORT_TOPIC}),
            ("AmpgateUpstreamCircuitOpen", {"upstream": "pricing", "job": "ampgate-gateway"}),
            ("AmpgateUpstreamErrors", {"upstream": "pricing"}),
            ("AmpgateHighErrorRatio", {"route": "prices"}),
            # Refresh is due at 75% of 30 s; below 15% left the alert fires.
            ("AmpgateTokenExpiringSoon", {"upstream": "cognito"}),
        ]
        for alertname, labels in expected:
            try:
                found = await wait_for(f"{alertname} {labels}",
                                       lambda a=alertname, lb=labels: firing(prom, a, **lb),
                                       TOKEN_LIFETIME_S + 15)
            except AssertionError as exc:
                seen = {expr: await prom.query(expr) for expr in (
                    "upstream:ampgate_upstream_errors:ratio_rate5m",
                    'ampgate_upstream_requests_total{upstream="pricing"}',
                    'ampgate_consumer_messages_total{outcome="invalid"}')}
                raise AssertionError(f"{exc}; alerts: {await prom.alerts()}; seen: {seen}") from None
            figures.append(f"fault → {alertname} {labels}: {found[0]['state']} after "
                           f"{time.monotonic() - started:.0f} s of the test")
        # The healthy upstream stays quiet.
        assert not await firing(prom, "AmpgateUpstreamCircuitOpen", upstream="passport")
        asker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asker

        # The broker stopped: a write's event cannot be handed over.
        await asyncio.to_thread(private_kafka.stop)
        async with session.get(f"{gw}/v1/passports/{ids[1]}/owned", headers=auth) as r:
            doc = await r.json()
        doc["e2e_round"] = "broker-down"
        async with session.put(f"{gw}/v1/passports/{ids[1]}", headers=auth, json=doc) as r:
            assert r.status == 200, await r.text()
        found = await wait_for("AmpgateEventPublishErrors",
                               lambda: firing(prom, "AmpgateEventPublishErrors",
                                              topic=PASSPORT_TOPIC), 40)
        figures.append(f"fault → AmpgateEventPublishErrors (broker stopped): {found[0]['state']}"
                       f" after {time.monotonic() - started:.0f} s of the test")
        print("\n" + "\n".join(figures))
    finally:
        await session.close()
        if prom_proc is not None:
            prom_proc.terminate()
            prom_proc.wait(10)
        for proc in procs:
            await asyncio.to_thread(proc.stop, 10)
        sandbox_proc.terminate()
        sandbox_proc.wait(10)
        await runner.cleanup()
