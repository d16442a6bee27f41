"""What the deployment artefacts are checked against (DESIGN.md §8 settings, §9 metrics)
and how the tests read them: the contract metrics, the env names Settings reads, PromQL usage."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from services.common.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]


CHART = ROOT / "helm" / "ampgate"


DEPLOY = ROOT / "deploy"


RULES = DEPLOY / "prometheus" / "ampgate-rules.yaml"


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


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())


def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())
