"""Grafana dashboards: only contract metrics, every selector filtered by namespace and job,
what on-call looks for, provisioned where compose mounts them."""

from __future__ import annotations

import json
import re

import yaml

from tests.contract.deploy_contract import (
    DEPLOY,
    SERIES,
    assert_known,
    compose,
    promql_usage,
)

DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))


def test_dashboards_filter_every_selector_by_namespace_and_job() -> None:
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert {"namespace", "job"} <= set(variables), path.name
        for name in ("namespace", "job"):
            assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        for var in board["templating"]["list"]:
            if var["type"] == "query" and var["name"] != "namespace":
                assert 'namespace=~"$namespace"' in var["definition"], (path.name, var["name"])
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            # Grafana's $__rate_interval assumes the scrape interval (ServiceMonitor, compose).
            assert panel["interval"] == "15s", (path.name, panel["title"])
            for target in panel["targets"]:
                _, selectors, _ = promql_usage(target["expr"])
                bare = re.findall(r"\bampgate_\w+(?!\w|\{)", target["expr"])
                assert not bare, f"{path.name} / {panel['title']}: unfiltered {bare}"
                for name, labels in selectors:
                    assert {"namespace", "job"} <= labels, f"{path.name} / {panel['title']}: {name}"


def test_dashboards_query_only_contract_metrics() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"ampgate-gateway", "ampgate-events", "ampgate-workers"}
    seen: set[str] = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"] and board["title"] and board["uid"] not in seen
        seen.add(board["uid"])
        assert "datasource" in {v["name"] for v in board["templating"]["list"]}
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                assert_known(var["definition"], SERIES, f"{path.name} ${var['name']}")
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
        for panel in panels:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert_known(target["expr"], SERIES, f"{path.name} / {panel['title']}")


def test_gateway_dashboard_shows_what_on_call_looks_for() -> None:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "ampgate-gateway.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in ("ampgate_http_requests_total", "ampgate_http_request_duration_seconds_bucket",
                   "ampgate_cache_lookups_total", "ampgate_upstream_request_duration_seconds_bucket",
                   "ampgate_upstream_requests_total", "ampgate_upstream_circuit_state",
                   "ampgate_token_expiry_timestamp_seconds"):
        assert metric in exprs


def test_grafana_provisioning_points_where_compose_mounts_the_dashboards() -> None:
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "ampgate.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = compose()["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{path}:ro" in mounts
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    # The interval Grafana assumes is the scrape interval (compose and the chart: 15 s).
    assert ds["datasources"][0]["jsonData"]["timeInterval"] == "15s"
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert scrape["global"]["scrape_interval"] == "15s"
