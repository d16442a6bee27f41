"""HttpMetrics counts in plain numbers and is read at scrape time: /metrics must show
exactly what prometheus_client's Counter and Histogram showed for the same requests."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from services.common.metrics import LATENCY_BUCKETS, HttpMetrics, PlainCounter, zero

# (route, method, status, client, seconds): on bucket bounds, between, below, above all
REQUESTS = [
    ("passport_public", "GET", "200", "reader", 0.00004),
    ("passport_public", "GET", "200", "reader", 0.005),
    ("passport_public", "GET", "304", "reader", 0.0051),
    ("prices", "GET", "200", "other", 12.0),
    ("passport_public", "GET", "200", "reader", 0.001),
    ("unmatched", "POST", "404", "anonymous", 0.3),
    ("prices", "GET", "502", "other", 10.0),
]


def exposition(registry: CollectorRegistry) -> str:
    # _created holds each series' creation time: equal up to the clock
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", generate_latest(registry).decode())


def test_the_exposition_is_that_of_prometheus_client_metrics():
    reference = CollectorRegistry()
    requests = Counter(
        "ampgate_http_requests_total",
        "HTTP requests answered, by route template, method, status and client name.",
        ["route", "method", "status", "client"], registry=reference)
    duration = Histogram(
        "ampgate_http_request_duration_seconds",
        "Time to answer an HTTP request, by route template and method.",
        ["route", "method"], buckets=LATENCY_BUCKETS, registry=reference)
    ours = CollectorRegistry()
    metrics = HttpMetrics(ours)
    assert exposition(ours) == exposition(reference)  # nothing yet
    for route, method, status, client, seconds in REQUESTS:
        requests.labels(route, method, status, client).inc()
        duration.labels(route, method).observe(seconds)
        metrics.observe(route, method, status, client, seconds)
    assert exposition(ours) == exposition(reference)
    assert ours.get_sample_value("ampgate_http_requests_total", {
        "route": "passport_public", "method": "GET", "status": "200", "client": "reader"}) == 3
    assert ours.get_sample_value("ampgate_http_request_duration_seconds_bucket", {
        "route": "passport_public", "method": "GET", "le": "0.005"}) == 3


def test_created_series_follow_prometheus_client_switch():
    from prometheus_client import disable_created_metrics, enable_created_metrics

    ours = CollectorRegistry()
    HttpMetrics(ours).observe("prices", "GET", "200", "other", 0.01)
    assert "ampgate_http_requests_created{" in exposition(ours)
    disable_created_metrics()
    try:
        assert "_created" not in exposition(ours)
    finally:
        enable_created_metrics()


def test_a_plain_counter_exposes_what_a_counter_does():
    reference, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("ampgate_cache_lookups_total", "Cache lookups.", ["route", "result"],
                      registry=reference)
    plain = PlainCounter("ampgate_cache_lookups_total", "Cache lookups.", ["route", "result"],
                         ours)
    for metric in (counter, plain):
        zero(metric, ["prices", "passport_public"], ["hit", "miss"])
        metric.labels("passport_public", "hit").inc()
        metric.labels("passport_public", "hit").inc(2)
        metric.labels("other", 404).inc()  # label values become strings, as in a Counter
    assert exposition(ours) == exposition(reference)
    assert ours.get_sample_value("ampgate_cache_lookups_total",
                                 {"route": "passport_public", "result": "hit"}) == 3
    with pytest.raises(ValueError):
        plain.labels("only-one")
    with pytest.raises(ValueError):
        plain.labels("prices", "hit").inc(-1)
