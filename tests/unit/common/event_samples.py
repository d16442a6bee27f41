"""Event data samples shaped as DESIGN.md §11 describes (shared by the event tests)."""

from __future__ import annotations

from typing import Any

OBSERVED_AT = "2026-11-21T10:00:00.123456Z"


def passport_data(passport_id: str = "BP-000123", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "passport_id": passport_id,
        "change": "CHANGE_KIND_UPDATED",
        "detected_by": "DETECTION_WRITE",
        "previous_digest": "sha256:" + "0" * 64,
        "digest": "sha256:" + "1" * 64,
        "changed_paths": ["/general_information/weight"],
        "passport": {"id": passport_id, "general_information": {"weight": 412, "tags": [1, None]}},
        "observed_at": OBSERVED_AT,
    }
    data.update(overrides)
    return data


def tariff(cost_id: int = 2206, rate: float = 40.4) -> dict[str, Any]:
    return {
        "rate_name": "Standard-Verkaufstarif eMSP",
        "cost_id": cost_id,
        "currency": "EUR",
        "price_structure": {
            "energy": {"unit": "Wh", "elements": [
                {"intervalChange": 100, "stepCosts": None, "intervalCosts": 0},
                {"intervalChange": 101, "stepCosts": None, "intervalCosts": rate},
            ], "tax": 1.87},
            "time": {"unit": "min", "elements": []},
        },
        "session_fee": 0.5,
    }


def price_data(evse_id: str = "DE*EEE*E000001", **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "evse_id": evse_id,
        "tariff_context": "default",
        "change": "CHANGE_KIND_UPDATED",
        "detected_by": "DETECTION_POLL",
        "previous_digest": "sha256:" + "2" * 64,
        "digest": "sha256:" + "3" * 64,
        "changed_paths": ["/price_structure/energy/elements/1/intervalCosts"],
        "previous": tariff(rate=40.4),
        "current": tariff(rate=60.6),
        "observed_at": OBSERVED_AT,
    }
    data.update(overrides)
    return data
