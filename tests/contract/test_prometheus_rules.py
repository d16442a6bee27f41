"""Prometheus rules: only contract metrics and labels, `promtool check` and the rule unit
tests pass, the chart ships the same file, namespace and job kept apart."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import server_unavailable
from tests.contract.deploy_contract import (
    CHART,
    DEPLOY,
    RULES,
    SERIES,
    assert_known,
    promql_usage,
)


def test_promql_usage_reads_metrics_labels_and_grouping() -> None:
    names, selectors, grouping = promql_usage(
        'histogram_quantile(0.99, sum by (route, le) (rate(ampgate_http_request_duration_seconds_bucket'
        '{route=~"$route"}[$__rate_interval]))) > 2 and on (route) x:y:z')
    assert names == {"ampgate_http_request_duration_seconds_bucket", "x:y:z"}
    assert selectors == [("ampgate_http_request_duration_seconds_bucket", {"route"})]
    assert grouping == {"route", "le"}
    with pytest.raises(AssertionError, match="unknown metrics"):
        assert_known("sum(rate(ampgate_http_requests[5m]))", SERIES, "t")
    with pytest.raises(AssertionError, match="has no labels"):
        assert_known('ampgate_cache_bytes{route="x"}', SERIES, "t")


def load_rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_use_only_contract_metrics_and_cover_the_alerts_sre_needs() -> None:
    rules = load_rules()
    known = dict(SERIES)
    for rule in rules:  # recording rules become queryable series (labels: what they keep)
        if "record" in rule:
            _, _, grouping = promql_usage(rule["expr"])
            known[rule["record"]] = frozenset(grouping - {"le"})
    for rule in rules:
        assert_known(rule["expr"], known, rule.get("alert") or rule["record"])
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    used = set().union(*(promql_usage(r["expr"])[0] for r in rules))
    for needed in ("ampgate_http_requests_total", "ampgate_upstream_circuit_state",
                   "ampgate_token_requests_total", "ampgate_token_expiry_timestamp_seconds",
                   "ampgate_outbox_pending", "ampgate_outbox_oldest_age_seconds",
                   "ampgate_consumer_lag", "ampgate_webhook_deliveries_total",
                   "ampgate_cache_lookups_total"):
        assert needed in used, f"no rule watches {needed}"
    assert any(r.get("record", "").startswith("route:ampgate_cache_hit") for r in rules)


def _promtool() -> str:
    found = Path(sys.executable).with_name("promtool")
    path = str(found) if found.exists() else shutil.which("promtool")
    if path is None:
        server_unavailable("promtool", "not in the venv or on PATH (scripts/bootstrap.sh installs it)")
    return str(path)


def test_promtool_checks_rules_config_and_runs_the_rule_unit_tests() -> None:
    promtool = _promtool()
    prom = DEPLOY / "prometheus"
    for args in (["check", "rules", "ampgate-rules.yaml"], ["check", "config", "prometheus.yml"],
                 ["test", "rules", "rules.test.yaml"]):
        done = subprocess.run([promtool, *args], cwd=prom, capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, f"promtool {shlex.join(args)}:\n{done.stdout}{done.stderr}"
    # Every alert has at least one unit test.
    tests = yaml.safe_load((prom / "rules.test.yaml").read_text())["tests"]
    tested = {c["alertname"] for t in tests for c in t.get("alert_rule_test", [])}
    alerts = {r["alert"] for r in load_rules() if "alert" in r}
    assert alerts <= tested, f"alerts without a unit test: {sorted(alerts - tested)}"


def test_chart_ships_the_same_rules_file() -> None:
    assert (CHART / "files" / "ampgate-rules.yaml").read_bytes() == RULES.read_bytes()


def _aggregations(expr: str) -> list[tuple[str, set[str] | None]]:
    """(operator, its `by` labels or None for a bare aggregation) of every sum/max/... ."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    out = []
    for m in re.finditer(r"\b(sum|min|max|avg|count|topk|bottomk|quantile|group)\s*"
                         r"(?:(by|without)\s*\(([^)]*)\))?\s*\(", e):
        labels = None if m.group(2) is None else {x.strip() for x in m.group(3).split(",")}
        out.append((m.group(1) + (f" {m.group(2)}" if m.group(2) else ""), labels))
    return out


def test_rules_keep_namespace_and_job_apart() -> None:
    # Two releases scraped by one Prometheus must never be summed together.
    for rule in load_rules():
        where = rule.get("alert") or rule["record"]
        for op, labels in _aggregations(rule["expr"]):
            assert labels is not None and op.endswith(" by"), f"{where}: bare {op}()"
            assert {"namespace", "job"} <= labels, f"{where}: {op} ({sorted(labels)})"
