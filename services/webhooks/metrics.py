"""The webhooks worker's metrics (DESIGN.md §9), on the app's own registry.

``ampgate_webhook_deliveries_total`` keeps the contract's single ``outcome`` label;
per-subscription views use the subscription NAME (bounded by configuration), never
its URL."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS

OUTCOMES = ("success", "retry", "failed", "disabled", "dead_lettered")


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "ampgate_webhook_deliveries_total",
            "Webhook delivery outcomes: success (2xx), retry (failed attempt, retried later), "
            "failed (last attempt failed), disabled (410 or subscription disabled), "
            "dead_lettered (published to the dead-letter topic).",
            ["outcome"], registry=registry)
        for outcome in OUTCOMES:
            self.deliveries.labels(outcome)
        self.pending = Gauge(
            "ampgate_webhook_pending",
            "Deliveries waiting in the local queue, by subscription name.",
            ["subscription"], registry=registry)
        self.disabled = Gauge(
            "ampgate_webhook_subscription_disabled",
            "1 when the subscription was disabled (its endpoint answered 410 Gone).",
            ["subscription"], registry=registry)
        self.duration = Histogram(
            "ampgate_webhook_attempt_duration_seconds",
            "Time of one delivery attempt, by subscription name.",
            ["subscription"], buckets=LATENCY_BUCKETS, registry=registry)
