"""Cluster-mode metrics (DESIGN.md §12), on the registry the gateway passes in.

The cluster modules know nothing of Prometheus: they take plain callbacks. This class
supplies them, so the wiring is one line per object::

    m = ClusterMetrics(registry)
    store = ClusterStore(url, on_state=m.store_state, on_call=m.observe_call)
    keeper = LeaseKeeper(lease, on_change=m.lease_state)

Label values are bounded: ``operation`` is a fixed name chosen in code (``"lease.renew"``,
``"cache.get"`` …), ``outcome`` is ok / error / down, ``lease`` a poller or token name.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, Histogram

from services.common.metrics import Children

# Redis calls are sub-millisecond when healthy; the timeout is ~0.1 s.
REDIS_BUCKETS = (0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)


class ClusterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.store_up = Gauge(
            "ampgate_cluster_store_up",
            "1 while the shared cluster store (Redis) answers, 0 while it does not.",
            registry=registry)
        self.leases_held = Gauge(
            "ampgate_cluster_leases_held",
            "1 while this replica holds the named lease (poller, token refresh), else 0.",
            ["lease"], registry=registry)
        self.redis_duration = Histogram(
            "ampgate_cluster_redis_call_duration_seconds",
            "Latency of calls to the cluster store, by operation and outcome "
            "(ok, error, down = refused at once while the store is down).",
            ["operation", "outcome"], buckets=REDIS_BUCKETS, registry=registry)
        self._durations = Children(self.redis_duration)
        self._leases = Children(self.leases_held)

    def store_state(self, up: bool) -> None:
        self.store_up.set(1 if up else 0)

    def lease_state(self, lease: str, held: bool) -> None:
        self._leases(lease).set(1 if held else 0)

    def observe_call(self, operation: str, seconds: float, outcome: str) -> None:
        self._durations(operation, outcome).observe(seconds)
