"""HTTP metrics every service exports (DESIGN.md §9). Service-specific metrics live in
each service's own metrics.py, registered on the same per-app CollectorRegistry."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def zero(metric: Any, *values: Iterable[str]) -> None:
    """Create every child of ``metric`` for the cross product of label ``values`` (at 0),
    so the first event is an increase Prometheus can see."""
    for combo in itertools.product(*values):
        metric.labels(*combo)


class Children:
    """Labelled children of a metric, kept: ``.labels()`` validates and takes a lock on
    every call, too slow for a cache hit. Label values are bounded by design."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "ampgate_http_requests_total",
            "HTTP requests answered, by route template, method, status and client name.",
            ["route", "method", "status", "client"],
            registry=registry,
        )
        self.duration = Histogram(
            "ampgate_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests_child = Children(self.requests)
        self.duration_child = Children(self.duration)
