"""The history service's metrics (DESIGN.md §9); consumer metrics come from the runtime."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.common.events import ENTITIES
from services.common.metrics import zero


class HistoryMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.versions = Counter(
            "ampgate_history_versions_total",
            "Versions recorded (duplicates excluded), by entity (passport, price).",
            ["entity"], registry=registry)
        zero(self.versions, ENTITIES)  # at 0 from the start: the first version is an increase
