"""What dashboards and alerts rely on in /metrics: one set of values for the `route` label, and
counters with known label sets exported at 0 before the first event (so `increase()` sees the
first one and ratios read 0, not "no data")."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.common.settings import Settings
from services.gateway.routes import ROUTES
from tests.fixtures.gateway import auth

EVSE = "DE*EEE*E000001"


def samples(text: str, family: str) -> list[tuple[dict[str, str], float]]:
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            return [(s.labels, s.value) for s in fam.samples if s.name.endswith("_total")]
    return []


async def test_http_and_cache_metrics_label_a_route_with_the_same_name(gateway) -> None:
    ids = [d["id"] for d in await (await gateway.get("/v1/passports", headers=auth())).json()]
    assert (await gateway.get(f"/v1/passports/{ids[0]}", headers=auth())).status == 200
    assert (await gateway.get(f"/v1/prices?evseId={EVSE}&tag_id=T1", headers=auth())).status == 200
    assert (await gateway.get(f"/v1/prices?evseId={EVSE}&tag_id=T1", headers=auth())).status == 200
    text = await (await gateway.get("/metrics")).text()
    http_routes = {labels["route"] for labels, value in samples(text, "ampgate_http_requests")
                   if value > 0}
    cache_routes = {labels["route"] for labels, value in samples(text, "ampgate_cache_lookups")
                    if value > 0}
    assert {"passport_owned_list", "passport_public", "prices", "metrics"} <= http_routes | {
        "metrics"}
    assert {"passport_public", "prices"} <= http_routes
    # The dashboard's $route picked from HTTP metrics filters the cache panels too.
    assert cache_routes and cache_routes <= http_routes, (cache_routes, http_routes)
    assert not [r for r in http_routes | cache_routes if "/" in r or "{" in r]
    unmatched = await gateway.get("/no/such/path")
    assert unmatched.status == 404
    text = await (await gateway.get("/metrics")).text()
    assert "unmatched" in {labels["route"] for labels, _ in samples(text, "ampgate_http_requests")}


async def test_gateway_counters_with_known_labels_start_at_zero(gateway) -> None:
    text = await (await gateway.get("/metrics")).text()  # no other request made

    def zeros(family: str, *names: str) -> set[tuple[str, ...]]:
        return {tuple(labels[n] for n in names) for labels, value in samples(text, family)
                if value == 0}

    cached = {r.name for r in ROUTES if r.cached}
    results = ("hit", "miss", "stale", "coalesced", "bypass")
    assert zeros("ampgate_cache_lookups", "route", "result") >= {
        (r, res) for r in cached for res in results}
    assert zeros("ampgate_token_requests", "upstream", "outcome") >= {
        (u, o) for u in ("siemensid", "cognito") for o in ("ok", "error")}
    assert zeros("ampgate_events_published", "topic", "outcome") >= {
        (t, o) for t in ("passport-changed", "price-changed") for o in ("ok", "error")}
    assert zeros("ampgate_changes_detected", "entity", "detected_by") >= {
        (e, d) for e in ("passport", "price") for d in ("write", "read", "poll")}
    assert zeros("ampgate_cache_evictions", "reason") >= {("lru",), ("invalidated",), ("purged",)}


def _worker_settings(tmp_path) -> Settings:
    return Settings(state_dir=tmp_path, kafka={"bootstrap_servers": "127.0.0.1:9",
                                               "enable_idempotence": False})


def _text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest
    return generate_latest(registry).decode()


def test_worker_counters_start_at_zero_under_the_worker_label(tmp_path) -> None:
    from services.history.app import create_app as history_app
    from services.webhooks.app import create_app as webhooks_app

    for worker, make in (("history", history_app), ("webhooks", webhooks_app)):
        registry = CollectorRegistry()
        make(_worker_settings(tmp_path / worker), registry=registry)
        text = _text(registry)
        found = {(labels["worker"], labels["topic"], labels["outcome"])
                 for labels, value in samples(text, "ampgate_consumer_messages") if value == 0}
        assert found == {(worker, t, o) for t in ("passport-changed", "price-changed")
                         for o in ("ok", "retried", "dead_lettered", "invalid")}, worker
        assert 'service="' not in text  # a ServiceMonitor would rename it to exported_service
        if worker == "history":
            assert {labels["entity"] for labels, value in
                    samples(text, "ampgate_history_versions") if value == 0} == {"passport", "price"}
        else:
            assert {labels["outcome"] for labels, value in
                    samples(text, "ampgate_webhook_deliveries") if value == 0} >= {"dead_lettered"}
