"""Settings and metrics: the env names the services read cover the design contract; the
metrics the services register are the contract's (DESIGN.md §8, §9)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from tests.contract.deploy_contract import (
    CONTRACT_METRICS,
    ENV_NAMES,
)

KUBERNETES_TARGET_LABELS = frozenset({"instance", "job", "namespace", "service", "pod",
                                      "container", "endpoint"})


def test_settings_env_names_cover_the_design_contract() -> None:
    # A sanity check of the walker itself against names DESIGN.md §8 spells out.
    for name in ("AMPGATE_HTTP__PORT", "AMPGATE_PASSPORT__CLIENT_SECRET", "AMPGATE_CPO__TOKEN_URL",
                 "AMPGATE_PRICING__API_TOKEN", "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE",
                 "AMPGATE_STATE_DIR", "AMPGATE_TARIFF_CONTEXTS", "AMPGATE_CACHE__STALE_IF_ERROR_S",
                 "AMPGATE_HISTORY__DATABASE_URL", "AMPGATE_WEBHOOKS__SUBSCRIPTIONS",
                 "AMPGATE_PASSPORT__PATHS__OWNED_LIST", "AMPGATE_CLIENTS"):
        assert name in ENV_NAMES
    assert "AMPGATE_CLIENTS__NAME" not in ENV_NAMES  # lists are JSON, not nested


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
