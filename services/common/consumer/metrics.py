"""The consumer runtime's metrics (DESIGN.md §9), one set of collectors per registry.

``ampgate_consumer_messages_total{worker,topic,outcome}`` with outcome
ok|retried|dead_lettered|invalid (``retried``: once per event per failed attempt; all at 0
from the start, so the first dead letter is an increase), and
``ampgate_consumer_lag{worker,topic,partition}`` (see ``lag``). The label is ``worker``,
not ``service``: Kubernetes target labels own ``service`` (a ServiceMonitor would rename
ours).
"""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge

CONSUMER_OUTCOMES = ("ok", "retried", "dead_lettered", "invalid")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "ampgate_consumer_messages_total",
            "Messages consumed, by worker, topic and outcome (ok, retried, dead_lettered, "
            "invalid).",
            ["worker", "topic", "outcome"], registry=registry)
        self.lag = Gauge(
            "ampgate_consumer_lag",
            "Messages on the partition not yet processed by this worker's group.",
            ["worker", "topic", "partition"], registry=registry)


# One set of collectors per registry: two consumers on one registry share them.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, ConsumerMetrics] = (
    weakref.WeakKeyDictionary())


def consumer_metrics(registry: CollectorRegistry) -> ConsumerMetrics:
    metrics = _METRICS.get(registry)
    if metrics is None:
        metrics = _METRICS[registry] = ConsumerMetrics(registry)
    return metrics
