"""Tariffs and the Pricing API's arithmetic, reproducing the vendor's samples.

A price structure has an ``energy`` dimension (unit Wh, ``intervalCosts`` per kWh)
and a ``time`` dimension (unit min, ``intervalCosts`` per minute). Element i charges
its ``intervalCosts`` over (intervalChange[i-1], intervalChange[i]]; the first band
starts at 0 and the last one is open-ended (the CHF sample charges 79,899 Wh beyond
its last intervalChange of 102). ``stepCosts`` are the amounts per band; their sum is
``costPower`` (resp. ``costTime``). Sample: 90,000 Wh over 100/101/102/100000 at
0/40.4/0.4/0.4 per kWh -> 0, 0.0404, 0.0004, 35.9592 = 36.

Currencies: the instance's local currency is EUR; ``currencyConversionRate`` is the
requested currency per EUR and ``costTotalLocalCurrency`` = costTotal / rate,
rounded to 3 places (CHF sample: 52 / 1.0642 = 48.863). A tariff's prices are in its
own currency and are converted when another one is requested.
"""

from __future__ import annotations

import copy
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

LOCAL_CURRENCY = "EUR"
# Units of the currency per EUR.
RATES: dict[str, Decimal] = {
    "EUR": Decimal(1),
    "CHF": Decimal("1.0642"),
    "USD": Decimal("1.0835"),
    "GBP": Decimal("0.8571"),
    "PLN": Decimal("4.3520"),
    "SEK": Decimal("11.2180"),
    "DKK": Decimal("7.4590"),
    "NOK": Decimal("11.5230"),
    "CZK": Decimal("24.6100"),
}
TARIFF_FIELDS = ("rateName", "costId", "currency", "priceStructure", "sessionFee")
EVSE_ID = re.compile(r"^([A-Z]{2})([*-]?)([A-Z0-9]{3})\2E([A-Z0-9*]{1,30})$", re.IGNORECASE)

_STEP = Decimal("0.000001")
_PRICE = Decimal("0.0001")
_LOCAL = Decimal("0.001")


def canonical_evse_id(evse_id: str) -> str | None:
    """One key per EVSE whatever the separator or case: ``DE*EEE*E000001``."""
    m = EVSE_ID.match(evse_id.strip())
    if m is None:
        return None
    country, _, operator, rest = m.groups()
    return f"{country}*{operator}*E{rest}".upper()


def number(value: Decimal) -> int | float:
    """JSON number as the vendor prints it: 36, not 36.0."""
    if value == value.to_integral_value():
        return int(value)
    return float(value.normalize())


def dec(value: Any) -> Decimal:
    return Decimal(str(value))


def parse_amount(raw: str) -> Decimal | None:
    """A finite non-negative number from a query parameter, else None."""
    try:
        value = Decimal(raw)
    except (InvalidOperation, ValueError):
        return None
    return value if value.is_finite() and value >= 0 else None


def validate_tariff(tariff: dict[str, Any]) -> str | None:
    """What is wrong with a tariff definition, or None."""
    if not isinstance(tariff.get("rateName"), str):
        return "rateName must be a string"
    if tariff.get("currency") not in RATES:
        return f"currency must be one of {', '.join(RATES)}"
    fee = tariff.get("sessionFee")
    if fee is not None and (not isinstance(fee, int | float) or isinstance(fee, bool) or fee < 0):
        return "sessionFee must be a non-negative number or null"
    structure = tariff.get("priceStructure")
    if not isinstance(structure, dict):
        return "priceStructure must be an object"
    for dim in ("energy", "time"):
        part = structure.get(dim)
        if not isinstance(part, dict) or not isinstance(part.get("elements"), list):
            return f"priceStructure.{dim}.elements must be a list"
        for el in part["elements"]:
            if not isinstance(el, dict) or not all(
                isinstance(el.get(k), int | float) and not isinstance(el.get(k), bool)
                for k in ("intervalChange", "intervalCosts")
            ):
                return f"priceStructure.{dim}.elements need numeric intervalChange and intervalCosts"
    return None


def normalize_tariff_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Accept the response's fee name too, and drop request-dependent numbers."""
    out = dict(fields)
    if "costSessionFee" in out:
        out.setdefault("sessionFee", out.pop("costSessionFee"))
    for computed in ("costTotal", "costTime", "costPower", "costTotalLocalCurrency",
                     "currencyConversionRate", "localCurrency"):
        out.pop(computed, None)
    if isinstance(out.get("priceStructure"), dict):
        structure = copy.deepcopy(out["priceStructure"])
        for part in structure.values():
            if isinstance(part, dict):
                for el in part.get("elements", []) or []:
                    if isinstance(el, dict):
                        el.pop("stepCosts", None)
        out["priceStructure"] = structure
    return out


def _band_costs(elements: list[dict[str, Any]], amount: Decimal, per: Decimal,
                factor: Decimal) -> list[Decimal]:
    """Amount charged in each band; ``per`` is the unit of intervalCosts in the
    dimension's unit (1000 Wh per kWh, 1 min per min)."""
    costs = []
    lower = Decimal(0)
    for i, el in enumerate(elements):
        upper = dec(el["intervalChange"])
        last = i == len(elements) - 1
        top = amount if last else min(amount, upper)
        in_band = max(Decimal(0), top - lower)
        price = _convert(dec(el["intervalCosts"]), factor)
        costs.append((in_band * price / per).quantize(_STEP, ROUND_HALF_UP))
        lower = max(lower, upper)
    return costs


def _convert(amount: Decimal, factor: Decimal) -> Decimal:
    return amount if factor == 1 else (amount * factor).quantize(_PRICE, ROUND_HALF_UP)


def render(
    tariff: dict[str, Any],
    *,
    currency: str | None = None,
    consumption_wh: Decimal | None = None,
    minutes: Decimal | None = None,
    include_tax: bool = False,
    fee_key: str = "costSessionFee",
) -> dict[str, Any]:
    """The Pricing API's answer for one EVSE. Without consumption and duration no
    calculation is done: totals and every ``stepCosts`` are null."""
    tariff_currency = tariff["currency"]
    shown = currency or tariff_currency
    factor = RATES[shown] / RATES[tariff_currency]
    rate = RATES[shown] / RATES[LOCAL_CURRENCY]
    calculate = consumption_wh is not None or minutes is not None

    structure: dict[str, Any] = {}
    totals: dict[str, Decimal] = {}
    for dim, unit, per, amount in (
        ("energy", "Wh", Decimal(1000), consumption_wh),
        ("time", "min", Decimal(1), minutes),
    ):
        part = tariff["priceStructure"][dim]
        elements = part["elements"]
        steps = _band_costs(elements, amount or Decimal(0), per, factor) if calculate else None
        out_part: dict[str, Any] = {
            "unit": part.get("unit", unit),
            "elements": [
                {
                    "intervalChange": el["intervalChange"],
                    "intervalCosts": number(_convert(dec(el["intervalCosts"]), factor)),
                    "stepCosts": number(steps[i]) if steps is not None else None,
                }
                for i, el in enumerate(elements)
            ],
        }
        if include_tax and part.get("tax") is not None:
            out_part["tax"] = part["tax"]
        structure[dim] = out_part
        if steps is not None:
            totals[dim] = sum(steps, Decimal(0))

    fee = tariff.get("sessionFee")
    fee_shown = _convert(dec(fee), factor) if fee is not None else None
    body: dict[str, Any] = {
        "rateName": tariff["rateName"],
        "costId": tariff.get("costId"),
        "currency": shown,
        "localCurrency": LOCAL_CURRENCY,
        "costTotalLocalCurrency": None,
        "currencyConversionRate": number(rate),
        "costTotal": None,
        "costTime": None,
        "costPower": None,
    }
    if calculate:
        total = totals["energy"] + totals["time"] + (fee_shown or Decimal(0))
        body["costTotal"] = number(total)
        body["costTime"] = number(totals["time"])
        body["costPower"] = number(totals["energy"])
        body["costTotalLocalCurrency"] = number((total / rate).quantize(_LOCAL, ROUND_HALF_UP))
    if fee is not None:
        body[fee_key] = number(fee_shown)  # type: ignore[arg-type]
    # Vendors add fields: anything else the tariff carries passes through.
    for key, value in tariff.items():
        if key not in TARIFF_FIELDS and key not in body:
            body[key] = value
    body["priceStructure"] = structure
    return body
