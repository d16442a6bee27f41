"""The gateway's metrics (DESIGN.md §9), defined once, on the app's own registry.

Counters whose label values are known up front (cache routes × results, token upstreams ×
outcomes, topics × outcomes, entities × detections, eviction reasons) are created at 0 when
the app starts: ``increase()`` then sees the first event (a series that appears at 1 has no
increase) and ratios read 0 instead of "no data"."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.events import DETECTIONS, ENTITIES, EVENT_TOPICS
from services.common.metrics import LATENCY_BUCKETS, PlainCounter, zero

CACHE_RESULTS = ("hit", "miss", "stale", "coalesced", "bypass", "shared_hit")
EVICTION_REASONS = ("lru", "invalidated", "purged")
# The token managers' upstream label values (services/gateway/upstreams.py).
TOKEN_UPSTREAMS = ("siemensid", "cognito")
TOKEN_OUTCOMES = ("ok", "error")
PUBLISH_OUTCOMES = ("ok", "error")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry, *, cache_routes: Iterable[str] = ()) -> None:
        self.upstream_requests = Counter(
            "ampgate_upstream_requests_total",
            "Requests sent upstream, by upstream, operation and status (or error kind).",
            ["upstream", "operation", "status"], registry=registry)
        self.upstream_duration = Histogram(
            "ampgate_upstream_request_duration_seconds",
            "Upstream request latency, by upstream and operation.",
            ["upstream", "operation"], buckets=LATENCY_BUCKETS, registry=registry)
        # Counted on every cache hit: plain numbers (PlainCounter), not a locked Counter.
        self.cache_lookups = PlainCounter(
            "ampgate_cache_lookups_total",
            "Cache lookups by route and result (hit, miss, stale, coalesced, bypass, "
            "shared_hit = answered from the cluster's shared tier).",
            ["route", "result"], registry)
        self.cache_entries = Gauge(
            "ampgate_cache_entries", "Entries held in the response cache.", registry=registry)
        self.cache_bytes = Gauge(
            "ampgate_cache_bytes", "Bytes held in the response cache.", registry=registry)
        self.cache_evictions = Counter(
            "ampgate_cache_evictions_total",
            "Entries removed from the cache, by reason (lru, invalidated, purged).",
            ["reason"], registry=registry)
        self.token_requests = Counter(
            "ampgate_token_requests_total",
            "Requests to upstream token endpoints, by upstream and outcome.",
            ["upstream", "outcome"], registry=registry)
        self.token_expiry = Gauge(
            "ampgate_token_expiry_timestamp_seconds",
            "Unix time at which the current upstream token expires.",
            ["upstream"], registry=registry)
        self.circuit_state = Gauge(
            "ampgate_upstream_circuit_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open.",
            ["upstream"], registry=registry)
        self.changes_detected = Counter(
            "ampgate_changes_detected_total",
            "Changes detected, by entity (passport, price) and how (write, read, poll).",
            ["entity", "detected_by"], registry=registry)
        self.events_published = Counter(
            "ampgate_events_published_total",
            "Events handed to Kafka, by topic and outcome (ok, error).",
            ["topic", "outcome"], registry=registry)
        self.outbox_pending = Gauge(
            "ampgate_outbox_pending", "Events in the outbox not yet acknowledged by Kafka.",
            registry=registry)
        self.outbox_oldest_age = Gauge(
            "ampgate_outbox_oldest_age_seconds",
            "Age of the oldest event waiting in the outbox (0 when empty).", registry=registry)
        zero(self.cache_lookups, list(cache_routes), CACHE_RESULTS)
        zero(self.cache_evictions, EVICTION_REASONS)
        zero(self.token_requests, TOKEN_UPSTREAMS, TOKEN_OUTCOMES)
        zero(self.events_published, EVENT_TOPICS, PUBLISH_OUTCOMES)
        zero(self.changes_detected, ENTITIES, DETECTIONS)
