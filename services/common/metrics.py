"""HTTP metrics every service exports (DESIGN.md §9). Service-specific metrics live in
each service's own metrics.py, registered on the same per-app CollectorRegistry."""

from __future__ import annotations

import itertools
import math
import time
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Metric
from prometheus_client import metrics as metrics_module
from prometheus_client.utils import floatToGoString

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


class PlainCell:
    """One child of a ``PlainCounter``: ``inc`` adds to a plain number."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class PlainCounter:
    """A labelled counter in plain numbers, read by the registry at scrape time (a
    collector): what a prometheus_client ``Counter`` with this name and these labels
    exposes (``_total`` and ``_created`` per child, children in first-seen order), without
    its lock and checks on every ``inc`` (~1 us each: a cache hit makes two). Only for
    counts made on the event loop (no lock). ``labels()`` and ``inc()`` as a Counter's."""

    def __init__(self, name: str, documentation: str, labelnames: Iterable[str],
                 registry: CollectorRegistry) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self._labelnames = tuple(labelnames)  # as a Counter's (the metrics contract test)
        self.cells: dict[tuple[str, ...], PlainCell] = {}
        registry.register(self)

    def labels(self, *values: Any) -> PlainCell:
        cell = self.cells.get(values)
        if cell is None:
            values = tuple(str(v) for v in values)
            if len(values) != len(self._labelnames):
                raise ValueError(f"{self.name}: labels {self._labelnames}, given {values}")
            cell = self.cells.get(values) or self.cells.setdefault(values, PlainCell())
        return cell

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, "counter")]

    def collect(self) -> list[Metric]:
        family = Metric(self.name, self.documentation, "counter")
        total, created = self.name + "_total", self.name + "_created"
        for values, cell in list(self.cells.items()):
            labels = dict(zip(self._labelnames, values))
            family.add_sample(total, labels, cell.value)
            if metrics_module._use_created:
                family.add_sample(created, labels, cell.created)
        return [family]


class _Durations:
    """``ampgate_http_request_duration_seconds``: bucket counts and sums as plain numbers,
    exposed as a prometheus ``Histogram`` with ``LATENCY_BUCKETS`` exposes them."""

    _labelnames = ("route", "method")
    name = "ampgate_http_request_duration_seconds"
    documentation = "Time to answer an HTTP request, by route template and method."

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.bounds = (*buckets, math.inf)
        # label values -> [count per bucket (not cumulative)..., sum, created]
        self.series: dict[tuple[str, str], list[float]] = {}

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, "histogram")]

    def collect(self) -> list[Metric]:
        family = Metric(self.name, self.documentation, "histogram")
        n = len(self.bounds)
        for values, series in list(self.series.items()):
            labels = dict(zip(self._labelnames, values))
            acc = 0.0
            for bound, count in zip(self.bounds, series[:n]):
                acc += count
                family.add_sample(self.name + "_bucket", {**labels, "le": floatToGoString(bound)},
                                  acc)
            family.add_sample(self.name + "_count", labels, acc)
            family.add_sample(self.name + "_sum", labels, float(series[n]))
            if metrics_module._use_created:
                family.add_sample(self.name + "_created", labels, series[n + 1])
        return [family]


class HttpMetrics:
    """The two metrics every request updates, counted without prometheus_client's per-call
    lock and validation (~5 % of a cache hit's CPU): ``observe`` once per answered request.
    /metrics shows what a ``Counter`` and a ``Histogram`` with these names, labels and
    ``LATENCY_BUCKETS`` show (tests/unit/common/test_http_metrics.py compares the two)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = PlainCounter(
            "ampgate_http_requests_total",
            "HTTP requests answered, by route template, method, status and client name.",
            ["route", "method", "status", "client"], registry)
        self.duration = _Durations(LATENCY_BUCKETS)
        registry.register(self.duration)
        self._bounds = self.duration.bounds
        self._sum_at = len(self._bounds)

    def observe(self, route: str, method: str, status: str, client: str,
                seconds: float) -> None:
        cell = self.requests.cells.get((route, method, status, client))
        if cell is None:
            cell = self.requests.labels(route, method, status, client)
        cell.value += 1
        all_series = self.duration.series
        series = all_series.get((route, method))
        if series is None:
            series = all_series[(route, method)] = [0] * self._sum_at + [0.0, time.time()]
        # Histogram.observe's bucket: the first bound >= seconds
        series[bisect_left(self._bounds, seconds)] += 1
        series[self._sum_at] += seconds
