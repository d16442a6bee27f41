"""Deployment artefacts against the contract (DESIGN.md §8 settings, §9 metrics).

What an operator relies on: the Helm chart renders (Helm's own engine: `helm lint` and
`helm template` through the helm-python-sdk wheel) into pods that are locked down, probed on
/healthz and /readyz and configured only with AMPGATE_* names the services read; Prometheus
rules pass `promtool check` and their unit tests; dashboards and rules query only metrics the
services export; the compose file and the Dockerfile agree with all of it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from services.cli import COMMANDS
from services.common.settings import ENV_PREFIX, ConfigError, Settings, load_settings
from tests.conftest import server_unavailable

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "ampgate"
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "ampgate-rules.yaml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
COMPONENTS = ("gateway", "history", "webhooks")

# DESIGN.md §9 (+ ampgate_cache_evictions_total): name -> (type, labels).
CONTRACT_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels.split())) for name, kind, labels in [
        ("ampgate_http_requests_total", "counter", "route method status client"),
        ("ampgate_http_request_duration_seconds", "histogram", "route method"),
        ("ampgate_upstream_requests_total", "counter", "upstream operation status"),
        ("ampgate_upstream_request_duration_seconds", "histogram", "upstream operation"),
        ("ampgate_cache_lookups_total", "counter", "route result"),
        ("ampgate_cache_entries", "gauge", ""),
        ("ampgate_cache_bytes", "gauge", ""),
        ("ampgate_cache_evictions_total", "counter", "reason"),
        ("ampgate_token_requests_total", "counter", "upstream outcome"),
        ("ampgate_token_expiry_timestamp_seconds", "gauge", "upstream"),
        ("ampgate_upstream_circuit_state", "gauge", "upstream"),
        ("ampgate_changes_detected_total", "counter", "entity detected_by"),
        ("ampgate_events_published_total", "counter", "topic outcome"),
        ("ampgate_outbox_pending", "gauge", ""),
        ("ampgate_outbox_oldest_age_seconds", "gauge", ""),
        ("ampgate_consumer_messages_total", "counter", "worker topic outcome"),
        ("ampgate_consumer_lag", "gauge", "worker topic partition"),
        ("ampgate_webhook_deliveries_total", "counter", "outcome"),
        ("ampgate_history_versions_total", "counter", "entity"),
        # DESIGN.md §12: cluster mode (registered only with a cluster Redis)
        ("ampgate_cluster_store_up", "gauge", ""),
        ("ampgate_cluster_leases_held", "gauge", "lease"),
        ("ampgate_cluster_redis_call_duration_seconds", "histogram", "operation outcome"),
    ]
}
# Labels Prometheus itself attaches to every scraped series (a ServiceMonitor adds namespace,
# service, pod, container, endpoint: no metric of ours may own one of those names).
TARGET_LABELS = frozenset({"instance", "job", "component", "namespace"})
KUBERNETES_TARGET_LABELS = frozenset({"instance", "job", "namespace", "service", "pod",
                                      "container", "endpoint"})


def _series_labels() -> dict[str, frozenset[str]]:
    """Queryable series name -> its labels (histograms: _bucket/_sum/_count)."""
    out: dict[str, frozenset[str]] = {}
    for name, (kind, labels) in CONTRACT_METRICS.items():
        if kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = out[f"{name}_count"] = labels
        else:
            out[name] = labels
    return out


SERIES = _series_labels()


# --- settings: the env names that exist ---------------------------------------------------

def _models(annotation: Any) -> list[type[BaseModel]]:
    """BaseModel classes a field nests (Optional unwrapped); lists/dicts are JSON values."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return [m for arg in get_args(annotation) for m in _models(arg)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def settings_env_names(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> set[str]:
    names: set[str] = set()
    for field, info in model.model_fields.items():
        env = prefix + field.upper()
        names.add(env)
        for sub in _models(info.annotation):
            names |= settings_env_names(sub, env + "__")
    return names


# Set by the chart ahead of the code that reads them (cluster mode, the SIGTERM drain): allowed
# until Settings has them, then this set empties by itself.
CHART_AHEAD = {"AMPGATE_CLUSTER__REDIS_URL", "AMPGATE_SHUTDOWN__GRACE_S"} - settings_env_names()
ENV_NAMES = settings_env_names() | {f"{ENV_PREFIX}CONFIG"} | CHART_AHEAD


def camel_env(path: list[str]) -> str:
    """['cache', 'defaultTtlS'] -> AMPGATE_CACHE__DEFAULT_TTL_S (the chart's rule)."""
    snake = [re.sub(r"(?<!^)(?=[A-Z])", "_", p).upper() for p in path]
    return ENV_PREFIX + "__".join(snake)


def tree_env(tree: dict[str, Any], path: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (tree or {}).items():
        if isinstance(value, dict):
            out |= tree_env(value, [*(path or []), key])
        else:
            out[camel_env([*(path or []), key])] = value
    return out


def test_settings_env_names_cover_the_design_contract() -> None:
    # A sanity check of the walker itself against names DESIGN.md §8 spells out.
    for name in ("AMPGATE_HTTP__PORT", "AMPGATE_PASSPORT__CLIENT_SECRET", "AMPGATE_CPO__TOKEN_URL",
                 "AMPGATE_PRICING__API_TOKEN", "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE",
                 "AMPGATE_STATE_DIR", "AMPGATE_TARIFF_CONTEXTS", "AMPGATE_CACHE__STALE_IF_ERROR_S",
                 "AMPGATE_HISTORY__DATABASE_URL", "AMPGATE_WEBHOOKS__SUBSCRIPTIONS",
                 "AMPGATE_PASSPORT__PATHS__OWNED_LIST", "AMPGATE_CLIENTS"):
        assert name in ENV_NAMES
    assert "AMPGATE_CLIENTS__NAME" not in ENV_NAMES  # lists are JSON, not nested


# --- metrics: contract vs. the code's registries ------------------------------------------

def test_contract_metrics_are_what_the_services_register() -> None:
    from services.common.consumer import ConsumerMetrics
    from services.common.metrics import HttpMetrics
    from services.gateway.cluster.metrics import ClusterMetrics
    from services.gateway.metrics import GatewayMetrics
    from services.history.metrics import HistoryMetrics
    from services.webhooks.metrics import WebhookMetrics

    registry = CollectorRegistry()
    for cls in (HttpMetrics, GatewayMetrics, ConsumerMetrics, WebhookMetrics, HistoryMetrics,
                ClusterMetrics):
        cls(registry)
    registered = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        registered[name] = family.type
    collectors = registry._names_to_collectors  # no public way to read label names
    for name, (kind, labels) in CONTRACT_METRICS.items():
        assert registered.get(name) == kind, f"{name}: contract {kind}, code {registered.get(name)}"
        assert frozenset(collectors[name]._labelnames) == labels, name
        assert not labels & KUBERNETES_TARGET_LABELS, f"{name}: a ServiceMonitor renames {labels}"


# --- PromQL: which metrics and labels an expression uses ----------------------------------

PROMQL_FUNCS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev", "group",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "time",
    "round", "abs", "clamp_min", "clamp_max", "vector", "scalar", "absent", "label_replace",
    "max_over_time", "min_over_time", "avg_over_time", "sum_over_time", "changes", "resets",
    "timestamp", "predict_linear",
}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                "group_left", "group_right"}


def promql_usage(expr: str) -> tuple[set[str], list[tuple[str, set[str]]], set[str]]:
    """(series names, [(name, selector labels)], grouping labels) of a PromQL expression.
    Grafana's label_values(metric, label) counts as a selector of `metric`."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"label_values\(\s*([\w:]+)\s*(?:\{([^}]*)\})?\s*,\s*(\w+)\s*\)",
               lambda m: f"{m.group(1)}{{{m.group(2) + ',' if m.group(2) else ''}{m.group(3)}=''}}", e)
    selectors = [
        (name, set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body)))
        for name, body in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", e)
    ]
    grouping = {lbl.strip() for lst in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e)
        for lbl in lst.split(",") if lbl.strip()}
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", e)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names: set[str] = set()
    for m in re.finditer(r"(?<![\w$.:])([a-zA-Z_:][\w:]*)(\s*\()?", bare):
        word, call = m.group(1), m.group(2)
        if call:
            assert word in PROMQL_FUNCS, f"unknown function {word}() in {expr!r}"
        elif word not in PROMQL_WORDS and not re.fullmatch(r"[0-9.e+-]+", word):
            names.add(word)
    return names, selectors, grouping


def assert_known(expr: str, known: dict[str, frozenset[str]], where: str) -> None:
    names, selectors, grouping = promql_usage(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - known.keys()
    assert not unknown, f"{where}: unknown metrics {sorted(unknown)} in {expr!r}"
    for name, labels in selectors:
        extra = labels - known[name] - TARGET_LABELS
        assert not extra, f"{where}: {name} has no labels {sorted(extra)}"
    used_labels = frozenset().union(*(known[n] for n in names)) | TARGET_LABELS
    assert grouping <= used_labels, f"{where}: grouping by {sorted(grouping - used_labels)}"


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


# --- Prometheus rules ----------------------------------------------------------------------

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


# --- Grafana -------------------------------------------------------------------------------

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


# --- docker compose ------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())


def test_compose_runs_the_production_like_stack_with_contract_settings() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) >= {"kafka", "postgres", "gateway", "history", "webhooks",
                             "prometheus", "grafana"}
    assert "zookeeper" not in services
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    state_volumes: dict[str, str] = {}
    for name in COMPONENTS:
        svc = services[name]
        assert svc["command"] == [name] and name in COMMANDS
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        env = svc["environment"]
        assert env["AMPGATE_HTTP__HOST"] == "0.0.0.0"
        assert not set(env) - ENV_NAMES, f"{name}: unknown settings {set(env) - ENV_NAMES}"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        # The state dir (outbox, delivery queue, SQLite) on a named volume of its own: it
        # outlives `docker compose down`/`up` and recreated containers.
        (state,) = [v for v in svc["volumes"] if v.split(":")[1] == env["AMPGATE_STATE_DIR"]]
        volume = state.split(":")[0]
        assert volume in doc["volumes"] and not volume.startswith((".", "/")), name
        assert state_volumes.setdefault(volume, name) == name, f"{volume} shared"
    assert services["gateway"]["environment"]["AMPGATE_HISTORY__URL"] == "http://history:8080"
    assert services["history"]["environment"]["AMPGATE_HISTORY__DATABASE_URL"].startswith(
        "postgresql://")
    for svc in services.values():  # host paths it mounts exist
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (DEPLOY / host).exists(), host
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for sc in scrape["scrape_configs"] for c in sc["static_configs"]
               for t in c["targets"]}
    assert targets == {f"{c}:8080" for c in COMPONENTS}


def test_compose_env_example_names_only_contract_settings() -> None:
    names = {line.split("=", 1)[0] for line in
             (DEPLOY / "ampgate.env.example").read_text().splitlines()
             if line and not line.startswith("#")}
    assert names and not names - ENV_NAMES, names - ENV_NAMES


# --- Dockerfile ----------------------------------------------------------------------------

def dockerfile_stages() -> tuple[dict[str, str], list[tuple[str, list[str]]]]:
    """(global ARG defaults, [(stage name, its instructions joined per line)])."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            parts = line.split()
            stages.append((parts[3] if len(parts) > 3 else str(len(stages)), [line]))
        elif stages:
            stages[-1][1].append(line)
        elif line.startswith("ARG ") and "=" in line:
            key, value = line[4:].split("=", 1)
            args[key] = value
    return args, stages


def test_dockerfile_builds_one_locked_down_image_for_every_service() -> None:
    args, stages = dockerfile_stages()
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert all(s[1][0].split()[1] == "${PYTHON_IMAGE}" for s in stages)
    (build_name, build), (_, final) = stages[0], stages[-1]
    assert len(stages) >= 2
    build_text, final_text = "\n".join(build), "\n".join(final)
    # protobuf code generated by the package build itself (DESIGN.md §13), in the build stage
    assert "/opt/venv/bin/pip install ." in build_text and "ampgate --version" in build_text
    assert "gen_protos" not in build_text + final_text
    assert "grpcio-tools" not in final_text
    assert f"COPY --from={build_name} /opt/venv /opt/venv" in final_text
    # non-root, numeric, the uid the chart runs as
    user = [line.split()[1] for line in final if line.startswith("USER ")][-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"]
    entry = [line for line in final if line.startswith("ENTRYPOINT ")][-1]
    cmd = [line for line in final if line.startswith("CMD ")][-1]
    assert json.loads(entry.split(" ", 1)[1]) == ["ampgate"]
    assert json.loads(cmd.split(" ", 1)[1]) == ["gateway"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "ampgate" in pyproject["project"]["scripts"]
    health = [line for line in final if line.startswith("HEALTHCHECK ")][-1]
    assert "/healthz" in health and "AMPGATE_HTTP__PORT" in health
    env = dict(re.findall(r"(AMPGATE_\w+)=(\S+)", " ".join(l for l in final if l.startswith("ENV "))))
    assert env["AMPGATE_HTTP__HOST"] == "0.0.0.0" and env["AMPGATE_HTTP__PORT"] == "8080"
    assert not set(env) - ENV_NAMES


def test_dockerignore_keeps_secrets_and_stale_code_out_but_not_the_sources() -> None:
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
                   or fnmatch.fnmatch(parts[-1], pat.removeprefix("**/"))
                   for pat in patterns for p in prefixes)

    for path in (".git/config", ".venv/bin/python", "services/common/events/_gen/x_pb2.py",
                 "services/gateway/__pycache__/app.cpython-311.pyc", "state/outbox.sqlite3"):
        assert ignored(path), path
    for path in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "services/cli.py",
                 "proto-schemas/ampgate/events/v1/passport_changed.proto"):
        assert not ignored(path), path


# --- Helm: values.yaml -----------------------------------------------------------------------

def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def documented_paths() -> set[str]:
    """Dotted paths of values.yaml keys whose comment block starts with the path."""
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    documented: set[str] = set()
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        m = re.match(r"^( *)([A-Za-z0-9_]+):", line)
        if m:
            indent, key = len(m.group(1)), m.group(2)
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([*(k for _, k in stack), key])
            stack.append((indent, key))
            if comment and re.match(rf"# {re.escape(path)} -- \S", comment[0]):
                documented.add(path)
        comment = []
    return documented


def test_every_value_is_documented_camel_case_and_maps_not_lists() -> None:
    documented = documented_paths()
    undocumented: list[str] = []
    # Kubernetes structures passed through as they are (their parent is documented).
    k8s_lists = {"tolerations", "topologySpreadConstraints", "drop", "scopes", "events",
                 "accessModes"}

    def walk(node: Any, path: str) -> None:
        key = path.rsplit(".", 1)[-1]
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"{path}: not camelCase"
        if isinstance(node, list):
            assert key in k8s_lists, f"{path}: a list; use a map keyed by name"
        if path in documented:
            return
        if isinstance(node, dict) and node:
            for child, sub in node.items():
                walk(sub, f"{path}.{child}")
        else:
            undocumented.append(path)

    for key, node in values().items():
        walk(node, key)
    assert not undocumented, f"values without a '# <path> -- ...' comment: {undocumented}"


def test_values_settings_trees_map_onto_contract_env_names() -> None:
    v = values()
    trees = [v["config"]] + [v[c]["config"] for c in COMPONENTS]
    for tree in trees:
        names = set(tree_env(tree))
        assert not names - ENV_NAMES, f"no such setting: {sorted(names - ENV_NAMES)}"
    # names the templates spell out (secret keys, fixed env)
    spelled = set(re.findall(r"AMPGATE_[A-Z0-9_]+", " ".join(
        p.read_text() for p in (CHART / "templates").iterdir())))
    assert spelled and not spelled - ENV_NAMES, sorted(spelled - ENV_NAMES)
    for case in CI_VALUES:
        doc = yaml.safe_load(case.read_text()) or {}
        for tree in [doc.get("config", {})] + [doc.get(c, {}).get("config", {}) for c in COMPONENTS]:
            assert not set(tree_env(tree)) - ENV_NAMES, case.name
        for c in COMPONENTS:
            extra = set(doc.get(c, {}).get("extraEnv", {}))
            assert not extra - ENV_NAMES, case.name


# --- Helm: lint and template with Helm's own engine ------------------------------------------

_HELM = r"""
import json, sys
import helm_python as helm
chart, cases, out = sys.argv[1], json.load(sys.stdin), {}
for name, vals in cases.items():
    try:
        lint = helm.lint(chart, vals, strict=True, namespace="ampgate")
        with helm.Chart.load(chart) as c:
            rendered = c.render(vals, name="rel", namespace="ampgate")
    except helm.HelmError as exc:
        out[name] = {"error": str(exc)}
        continue
    out[name] = {"lint": lint, "manifests": rendered}
print(json.dumps(out))
"""

# Cases beyond ci/: what the persistence defaults decide, and names at their length limit.
INLINE_CASES: dict[str, dict[str, Any]] = {
    "history-postgres": {"secrets": {"historyDatabaseUrl": "postgresql://a:b@pg:5432/ampgate"}},
    "history-pinned-on": {"existingSecret": "theirs", "history": {"persistence": {"enabled": True}},
                          "webhooks": {"persistence": {"enabled": False}}},
    "long-names": {"fullnameOverride": "a" * 63},
}
# Cases the chart must refuse (name -> values, the error's words).
REFUSED_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "history-sqlite-replicas": ({"history": {"replicaCount": 2}}, "historyDatabaseUrl"),
}


def with_required(vals: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """vals over ci/default-values.yaml: the settings the chart refuses to render without."""
    out = dict(yaml.safe_load((CHART / "ci" / "default-values.yaml").read_text()) if base is None
               else base)
    for key, value in vals.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = with_required(value, out[key]) if both else value
    return out


@pytest.fixture(scope="module")
def rendered_all() -> dict[str, dict[str, Any]]:
    """case name -> {lint, docs (parsed manifests), values} or {error}. Helm runs in a child
    process: its Go runtime stays out of the test process."""
    try:
        import helm_python  # noqa: F401
    except ImportError as exc:
        server_unavailable("helm (helm-python-sdk)", str(exc))
    cases = {p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text()) or {}
             for p in CI_VALUES}
    cases |= {name: with_required(vals) for name, vals in INLINE_CASES.items()}
    cases |= {name: vals for name, (vals, _) in REFUSED_CASES.items()}
    done = subprocess.run([sys.executable, "-c", _HELM, str(CHART)], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out: dict[str, dict[str, Any]] = {}
    for name, result in json.loads(done.stdout).items():
        if "error" in result:
            out[name] = result
            continue
        docs = [d for path, text in result["manifests"].items() if path.endswith(".yaml")
                for d in yaml.safe_load_all(text) if d]
        out[name] = {"lint": result["lint"], "docs": docs, "values": cases[name],
                     "notes": result["manifests"].get("ampgate/templates/NOTES.txt", "")}
    return out


@pytest.fixture(scope="module")
def rendered(rendered_all: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every case the chart renders."""
    return {name: r for name, r in rendered_all.items() if name not in REFUSED_CASES}


def kinds(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployments and StatefulSets by name (names are unique across both)."""
    return kinds(docs, "Deployment") | kinds(docs, "StatefulSet")


def by_component(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in kinds(docs, kind).values()}


def state_volume(workload: dict[str, Any]) -> dict[str, Any]:
    """What the container mounts at AMPGATE_STATE_DIR: {"emptyDir": ...} from the pod's
    volumes or {"claim": <PVC spec>} from the StatefulSet's claim templates."""
    spec = workload["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["AMPGATE_STATE_DIR"]]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {c["metadata"]["name"]: c for c in workload["spec"].get("volumeClaimTemplates", [])}
    assert (mount["name"] in volumes) != (mount["name"] in claims), "one source for the state dir"
    if mount["name"] in claims:
        return {"claim": claims[mount["name"]]["spec"]}
    return volumes[mount["name"]]


def test_ci_cases_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {"default-values.yaml", "full-values.yaml",
                                          "existing-secret-values.yaml", "ephemeral-values.yaml"}


def test_helm_lint_is_clean_for_every_case(rendered: dict[str, dict[str, Any]]) -> None:
    for case, result in rendered.items():
        lint = result["lint"]
        problems = [m for m in lint["messages"] if m["severity"] >= 2]
        assert not lint["errors"] and not problems, f"{case}: {lint}"


def test_pods_are_restricted_probed_and_configured_by_contract_names(
        rendered: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    for case, result in rendered.items():
        docs = result["docs"]
        config = {k: v for cm in kinds(docs, "ConfigMap").values() for k, v in cm["data"].items()}
        secrets = {k: v for s in kinds(docs, "Secret").values()
                   for k, v in s.get("stringData", {}).items()}
        assert not (set(config) | set(secrets)) - ENV_NAMES, case
        assert workloads(docs), case
        for name, dep in workloads(docs).items():
            where = f"{case}/{name}"
            assert len(name) <= 63
            pod = dep["spec"]["template"]
            component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
            assert component in COMPONENTS, where
            assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
            spec = pod["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
            # The image's uid/gid (Dockerfile): a fresh volume becomes writable for it.
            assert spec["securityContext"]["fsGroup"] == 10001, where
            assert spec["automountServiceAccountToken"] is False, where
            (container,) = spec["containers"]
            assert container["args"] == [component], where
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"] and sc["runAsNonRoot"] is True, where
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert not set(env) - ENV_NAMES, f"{where}: {set(env) - ENV_NAMES}"
            (port,) = container["ports"]
            assert port["name"] == "http" and env["AMPGATE_HTTP__PORT"] == str(port["containerPort"])
            assert env["AMPGATE_HTTP__HOST"] == "0.0.0.0", where
            # A StatefulSet's state is its own claim, a Deployment's an emptyDir.
            state = state_volume(dep)
            assert ("claim" in state) == (dep["kind"] == "StatefulSet"), where
            assert "claim" in state or "emptyDir" in state, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where
            refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]
                    if "valueFrom" in e}
            # Optional, except the cluster's Redis URL: replicas without it must not start.
            assert all(e["valueFrom"]["secretKeyRef"]["optional"] is True
                       for e in container["env"]
                       if "valueFrom" in e and e["name"] != "AMPGATE_CLUSTER__REDIS_URL")
            if component != "gateway":  # least privilege: workers never see upstream secrets
                assert not refs & {"AMPGATE_PASSPORT__CLIENT_SECRET", "AMPGATE_CPO__CLIENT_SECRET",
                                   "AMPGATE_PRICING__API_TOKEN"}, where
            # The environment the pod gets is one the service accepts at start-up.
            full = config | {k: v for k, v in env.items() if v is not None}
            full |= {k: secrets[k] for k in refs if k in secrets}
            if result["values"].get("existingSecret"):
                full |= existing_secret_stand_in(refs, full)
            # TLS files from a Secret volume (kafka.tls, cluster.tls) must exist: stand-ins.
            tls_dirs = [m["mountPath"] for m in container["volumeMounts"]
                        if "secret" in volumes.get(m["name"], {})]
            for key, value in full.items():
                if any(value.startswith(f"{d}/") for d in tls_dirs):
                    full[key] = str(tmp_path / where / value.lstrip("/"))
                    Path(full[key]).parent.mkdir(parents=True, exist_ok=True)
                    Path(full[key]).touch()
            for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
                monkeypatch.delenv(key)
            for key, value in full.items():
                if key not in CHART_AHEAD:  # the code does not read them yet
                    monkeypatch.setenv(key, value)
            try:
                load_settings()
            except ConfigError as exc:
                pytest.fail(f"{where}: the service would refuse this configuration: {exc}")


def existing_secret_stand_in(refs: set[str], env: dict[str, str]) -> dict[str, str]:
    """What a user's existingSecret holds: a secret for every upstream group the pod
    configures, JSON lists for the list settings."""
    out: dict[str, str] = {}
    for key in refs:
        group = key.split("__")[0] + "__"
        if "__" not in key or key == "AMPGATE_WEBHOOKS__SUBSCRIPTIONS":
            out[key] = "[]"
        elif any(k.startswith(group) for k in env):
            out[key] = "stand-in"
    return out


def test_services_select_their_component_pods(rendered: dict[str, dict[str, Any]]) -> None:
    for case, result in rendered.items():
        pods = [d["spec"]["template"]["metadata"]["labels"]
                for d in workloads(result["docs"]).values()]
        for name, svc in kinds(result["docs"], "Service").items():
            assert len(name) <= 63, f"{case}/{name}"
            matching = [p for p in pods if svc["spec"]["selector"].items() <= p.items()]
            assert len(matching) == 1, f"{case}/{name} selects {len(matching)} workloads"
            assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_statefulsets_have_a_headless_service_and_a_claim_per_replica(
        rendered: dict[str, dict[str, Any]]) -> None:
    for case, result in rendered.items():
        services = kinds(result["docs"], "Service")
        for name, sts in kinds(result["docs"], "StatefulSet").items():
            where = f"{case}/{name}"
            # The controller-revision-hash label is "<name>-<10 chars>", within 63.
            assert len(name) <= 52, where
            headless = services[sts["spec"]["serviceName"]]
            assert headless["spec"]["clusterIP"] == "None", where
            assert headless["spec"]["selector"].items() <= (
                sts["spec"]["template"]["metadata"]["labels"].items())
            (claim,) = sts["spec"]["volumeClaimTemplates"]
            assert claim["spec"]["resources"]["requests"]["storage"], where
            assert claim["spec"]["accessModes"], where
            # Claim templates are immutable: no labels that change with an upgrade.
            assert not {"helm.sh/chart", "app.kubernetes.io/version"} & set(
                claim["metadata"].get("labels", {})), where
            # A replaced pod is gone before its successor mounts the same claim.
            assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate", where


def test_gateway_keeps_its_outbox_on_a_claim_by_default_and_on_an_emptydir_without_persistence(
        rendered: dict[str, dict[str, Any]]) -> None:
    default, ephemeral = rendered["default"]["docs"], rendered["ephemeral"]["docs"]
    gateway = by_component(default, "StatefulSet")["gateway"]
    assert "gateway" not in by_component(default, "Deployment")
    claim = state_volume(gateway)["claim"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    assert claim["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim  # the cluster's default class
    # One replica by default: more need cluster mode (test_helm_chart.py).
    assert not kinds(default, "HorizontalPodAutoscaler") and gateway["spec"]["replicas"] == 1

    gateway = by_component(ephemeral, "Deployment")["gateway"]
    assert not kinds(ephemeral, "StatefulSet")
    assert state_volume(gateway)["emptyDir"]["sizeLimit"] == "512Mi"
    assert "volumeClaimTemplates" not in gateway["spec"]
    assert not [s for s in kinds(ephemeral, "Service").values()
                if s["spec"].get("clusterIP") == "None"]  # no StatefulSet, no headless Service
    (hpa,) = kinds(ephemeral, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    (pdb,) = kinds(ephemeral, "PodDisruptionBudget").values()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= (
        gateway["spec"]["template"]["metadata"]["labels"].items())
    notes = rendered["ephemeral"]["notes"]
    assert "gateway.persistence.enabled=false" in notes and "lost" in notes


def test_persistence_defaults_follow_where_each_component_keeps_its_state(
        rendered: dict[str, dict[str, Any]]) -> None:
    def modes(case: str) -> dict[str, str]:
        return {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d["kind"]
                for d in workloads(rendered[case]["docs"]).values()}

    # No database URL: the history worker's SQLite file needs a claim too.
    assert modes("default") == dict.fromkeys(COMPONENTS, "StatefulSet")
    # PostgreSQL holds the history: nothing of the history worker's to keep.
    assert modes("history-postgres") == {"gateway": "StatefulSet", "history": "Deployment",
                                         "webhooks": "StatefulSet"}
    # An existingSecret may hold the URL; pinned on, the claim is there anyway.
    assert modes("history-pinned-on") == {"gateway": "StatefulSet", "history": "StatefulSet",
                                          "webhooks": "Deployment"}
    assert modes("ephemeral") == dict.fromkeys(COMPONENTS, "Deployment")

    full = rendered["full"]["docs"]
    assert modes("full")["history"] == "Deployment"
    gateway = by_component(full, "StatefulSet")["gateway"]
    assert state_volume(gateway)["claim"] | {"resources": None} == {
        "accessModes": ["ReadWriteOncePod"], "storageClassName": "fast-ssd", "resources": None}
    assert state_volume(gateway)["claim"]["resources"]["requests"]["storage"] == "5Gi"
    webhooks = by_component(full, "StatefulSet")["webhooks"]
    assert webhooks["spec"]["replicas"] == 2  # two replicas, two queues (claims), never one
    # storageClass "-": an empty storageClassName, so only pre-provisioned volumes bind.
    existing = by_component(rendered["existing-secret"]["docs"], "StatefulSet")["gateway"]
    assert state_volume(existing)["claim"]["storageClassName"] == ""
    # Names at their limit: the StatefulSet stops at 52, its headless Service at 63.
    long = [d for d in rendered["long-names"]["docs"] if d["kind"] == "StatefulSet"]
    assert len({sts["metadata"]["name"] for sts in long}) == len(COMPONENTS)  # still distinct
    assert len({sts["spec"]["serviceName"] for sts in long}) == len(COMPONENTS)
    for sts in long:
        assert len(sts["metadata"]["name"]) <= 52 and len(sts["spec"]["serviceName"]) <= 63


def test_chart_refuses_sqlite_history_on_several_replicas(
        rendered_all: dict[str, dict[str, Any]]) -> None:
    for name, (_, words) in REFUSED_CASES.items():
        assert words in rendered_all[name].get("error", ""), name


def test_service_monitor_scrapes_each_pod_once(rendered: dict[str, dict[str, Any]]) -> None:
    docs = rendered["full"]["docs"]
    (monitor,) = kinds(docs, "ServiceMonitor").values()
    selector = monitor["spec"]["selector"]

    def selects(svc: dict[str, Any]) -> bool:
        labels = svc["metadata"]["labels"]
        if not selector["matchLabels"].items() <= labels.items():
            return False
        for expr in selector.get("matchExpressions", []):
            assert expr["operator"] == "DoesNotExist"  # the only one used
            if expr["key"] in labels:
                return False
        return True

    scraped = [s["spec"]["selector"]["app.kubernetes.io/component"]
               for s in kinds(docs, "Service").values() if selects(s)]
    assert sorted(scraped) == sorted(COMPONENTS)  # headless Services front the same pods


def test_default_case_follows_app_version_and_wires_gateway_to_history(
        rendered: dict[str, dict[str, Any]]) -> None:
    docs = rendered["default"]["docs"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    sets = workloads(docs)
    assert set(sets) == {f"rel-ampgate-{c}" for c in COMPONENTS}
    for dep in sets.values():
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.endswith(":" + chart["appVersion"])
    gateway = sets["rel-ampgate-gateway"]
    env = {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    history_svc = kinds(docs, "Service")["rel-ampgate-history"]
    assert env["AMPGATE_HISTORY__URL"] == (
        f"http://rel-ampgate-history:{history_svc['spec']['ports'][0]['port']}")
    # One replica, no HPA by default: more need cluster mode (test_helm_chart.py).
    assert gateway["spec"]["replicas"] == 1 and not kinds(docs, "HorizontalPodAutoscaler")
    (pdb,) = kinds(docs, "PodDisruptionBudget").values()
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert not kinds(docs, "ServiceMonitor") and not kinds(docs, "PrometheusRule")
    (secret,) = kinds(docs, "Secret").values()
    # Only what was set (the required upstream secrets), nothing else (no half upstreams).
    assert set(secret["stringData"]) == {"AMPGATE_PASSPORT__CLIENT_SECRET",
                                         "AMPGATE_CPO__CLIENT_SECRET", "AMPGATE_PRICING__API_TOKEN"}


def test_full_case_renders_secrets_as_contract_json_and_monitoring(
        rendered: dict[str, dict[str, Any]]) -> None:
    docs = rendered["full"]["docs"]
    (secret,) = kinds(docs, "Secret").values()
    data = secret["stringData"]
    clients = json.loads(data["AMPGATE_CLIENTS"])
    assert {c["name"] for c in clients} == {"billing", "ops"}
    assert json.loads(data["AMPGATE_TARIFF_CONTEXTS"])[0] == {"name": "fleet",
                                                              "emaid": "DE-ABC-123456789"}
    hooks = json.loads(data["AMPGATE_WEBHOOKS__SUBSCRIPTIONS"])
    assert hooks[0]["entity_ids"] == ["BP-1", "BP-2"]
    sets = workloads(docs)
    image = sets["rel-ampgate-gateway"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":1.2.3@sha256:" + "0" * 64)
    env = {e["name"]: e.get("value") for e in
           sets["rel-ampgate-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AMPGATE_CACHE__DEFAULT_TTL_S"] == "12.5"
    assert env["AMPGATE_CACHE__MAX_BYTES"] == "67108864"  # no 6.7108864e+07
    assert env["AMPGATE_POLL__PRICES_INTERVAL_S"] == "900"
    (rule,) = kinds(docs, "PrometheusRule").values()
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    (monitor,) = kinds(docs, "ServiceMonitor").values()
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # The history service checks the callers' keys itself (DESIGN.md §11): it reads the clients.
    history_env = sets["rel-ampgate-history"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "AMPGATE_CLIENTS" in {e["valueFrom"]["secretKeyRef"]["key"] for e in history_env
                                 if "valueFrom" in e}


def test_existing_secret_case_renders_no_secret_and_reads_the_given_one(
        rendered: dict[str, dict[str, Any]]) -> None:
    docs = rendered["existing-secret"]["docs"]
    assert not kinds(docs, "Secret") and not kinds(docs, "HorizontalPodAutoscaler")
    assert not kinds(docs, "ServiceAccount")
    (gateway,) = workloads(docs).values()
    assert gateway["metadata"]["name"] == "ampgate-gateway" and gateway["spec"]["replicas"] == 3
    spec = gateway["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "ampgate-runner"
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in spec["containers"][0]["env"]
            if "valueFrom" in e}
    assert refs == {"ampgate-secrets"}
    env = {e["name"] for e in spec["containers"][0]["env"]}
    assert "AMPGATE_HISTORY__URL" not in env  # history is off
