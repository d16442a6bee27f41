"""Deterministic seed data: passports, the sandbox user, charging stations, EVSEs
and a handful of tariffs shared across them. Same seed, same data.

Tariffs depend on the authentication medium, as upstream ("a tariff that is assigned
to at least one authentication medium"): every medium belongs to one tariff group
(``tariff_group``) and each EVSE answers each group with its own variant of the EVSE's
tariff (``variants``). The docs' sample media are in the ``standard`` group, whose
variant is the tariff itself, so the docs' samples reproduce exactly; any other medium
lands in a group by a hash of its value: two tags usually see different tariffs, and
always the same one for the same tag.
"""

from __future__ import annotations

import copy
import hashlib
import random
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from services.sandbox.tariffs import canonical_evse_id

# The tariffs of the vendor's samples first, so the docs' requests reproduce.
DOC_TARIFFS: dict[str, dict[str, Any]] = {
    "doc-eur": {
        "rateName": "Standard-Verkaufstarif eMSP",
        "costId": 2206,
        "currency": "EUR",
        "sessionFee": None,
        "priceStructure": {
            "energy": {"unit": "Wh", "tax": 19, "elements": [
                {"intervalChange": 100, "intervalCosts": 0},
                {"intervalChange": 101, "intervalCosts": 40.4},
                {"intervalChange": 102, "intervalCosts": 0.4},
                {"intervalChange": 100000, "intervalCosts": 0.4},
            ]},
            "time": {"unit": "min", "tax": 19, "elements": []},
        },
    },
    "doc-chf": {
        "rateName": "Standard-Verkaufstarif eMSP",
        "costId": 2020,
        "currency": "CHF",
        "sessionFee": None,
        "priceStructure": {
            "energy": {"unit": "Wh", "tax": 1.87, "elements": [
                {"intervalChange": 100, "intervalCosts": 0},
                {"intervalChange": 101, "intervalCosts": 65.65},
                {"intervalChange": 102, "intervalCosts": 0.65},
            ]},
            "time": {"unit": "min", "tax": 1.24, "elements": []},
        },
    },
    "doc-xxx": {
        "rateName": "xxx Tariff",
        "costId": 1234,
        "currency": "EUR",
        "sessionFee": None,
        "priceStructure": {
            "energy": {"unit": "Wh", "tax": 20, "elements": [
                {"intervalChange": 100, "intervalCosts": 0},
                {"intervalChange": 101, "intervalCosts": 60.6},
                {"intervalChange": 102, "intervalCosts": 0.6},
            ]},
            "time": {"unit": "min", "tax": 20, "elements": []},
        },
    },
}
EXTRA_TARIFFS: dict[str, dict[str, Any]] = {
    "ac-standard": {
        "rateName": "AC Standard",
        "costId": 3101,
        "currency": "EUR",
        "sessionFee": 0.5,
        "priceStructure": {
            "energy": {"unit": "Wh", "tax": 19, "elements": [
                {"intervalChange": 1000000, "intervalCosts": 0.39}]},
            # Blocking fee: free for 4 h, then 0.10 per minute.
            "time": {"unit": "min", "tax": 19, "elements": [
                {"intervalChange": 240, "intervalCosts": 0},
                {"intervalChange": 100000, "intervalCosts": 0.1}]},
        },
    },
    "dc-fast": {
        "rateName": "DC Fast",
        "costId": 3102,
        "currency": "EUR",
        "sessionFee": 1.0,
        "priceStructure": {
            "energy": {"unit": "Wh", "tax": 19, "elements": [
                {"intervalChange": 1000000, "intervalCosts": 0.59}]},
            "time": {"unit": "min", "tax": 19, "elements": [
                {"intervalChange": 45, "intervalCosts": 0},
                {"intervalChange": 100000, "intervalCosts": 0.2}]},
        },
    },
    "hpc": {
        "rateName": "HPC Roaming",
        "costId": 3103,
        "currency": "EUR",
        "sessionFee": None,
        "priceStructure": {
            "energy": {"unit": "Wh", "tax": 19, "elements": [
                {"intervalChange": 20000, "intervalCosts": 0.69},
                {"intervalChange": 1000000, "intervalCosts": 0.59}]},
            "time": {"unit": "min", "tax": 19, "elements": []},
        },
    },
    "at-time": {
        "rateName": "Zeittarif AT",
        "costId": 3201,
        "currency": "EUR",
        "sessionFee": 0.35,
        "priceStructure": {
            "energy": {"unit": "Wh", "tax": 20, "elements": []},
            "time": {"unit": "min", "tax": 20, "elements": [
                {"intervalChange": 100000, "intervalCosts": 0.05}]},
        },
    },
    "ch-standard": {
        "rateName": "Normaltarif CH",
        "costId": 3301,
        "currency": "CHF",
        "sessionFee": 0.8,
        "priceStructure": {
            "energy": {"unit": "Wh", "tax": 7.7, "elements": [
                {"intervalChange": 1000000, "intervalCosts": 0.55}]},
            "time": {"unit": "min", "tax": 7.7, "elements": []},
        },
    },
}
# EVSE ids of the docs, with the tariff they answer with.
DOC_EVSES = (
    ("DE*EEE*E000001", "doc-eur"),
    ("CH*CHI*E00193", "doc-chf"),
    ("CH*AAA*E00001", "doc-xxx"),
    ("AT*AAA*E00001", "doc-xxx"),
    ("AT*HTB*E00008", "at-time"),
    ("BE-BEC-E041503001", "ac-standard"),
)
_COUNTRY_TARIFFS = {
    "DE": ("ac-standard", "dc-fast", "hpc", "doc-eur"),
    "AT": ("at-time", "ac-standard", "hpc"),
    "CH": ("ch-standard", "doc-chf"),
    "BE": ("ac-standard", "dc-fast"),
    "NL": ("ac-standard", "hpc", "doc-xxx"),
    "FR": ("dc-fast", "hpc"),
}
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


# Tariff groups: name -> (rateName suffix, costId offset, price factor, added session fee).
STANDARD = "standard"
TARIFF_GROUPS: dict[str, tuple[str, int, Decimal, Decimal]] = {
    STANDARD: ("", 0, Decimal(1), Decimal(0)),
    "business": (" (Business)", 10000, Decimal("0.85"), Decimal(0)),
    "roaming": (" (Roaming)", 20000, Decimal("1.2"), Decimal("0.5")),
}
# Media pinned to the standard group: the docs' samples (tag "SOMETHING", the curl
# sample's "123456ABC") and the dev stack's demo tag.
STANDARD_MEDIA = frozenset({("tag_id", "SOMETHING"), ("tag_id", "123456ABC"),
                            ("tag_id", "DEMO-TAG-0001")})

Medium = tuple[str, str]  # (upstream parameter name, normalized value)


def medium_key(param: str, value: str) -> Medium:
    """One key per medium whatever its spelling: tag ids (hex UIDs) and EMAIDs are
    case-insensitive and EMAIDs take optional dashes; UUIDs are compared lower-case."""
    value = value.strip()
    if param == "emaid":
        value = value.replace("-", "").upper()
    elif param == "authendicationUuid":
        value = value.lower()
    else:
        value = value.upper()
    return param, value


def tariff_group(medium: Medium) -> str:
    """The tariff group of a medium: pinned, else by a stable hash of its value."""
    if medium in STANDARD_MEDIA:
        return STANDARD
    h = int.from_bytes(hashlib.sha256("\0".join(medium).encode()).digest()[:8], "big")
    groups = tuple(TARIFF_GROUPS)
    return groups[h % len(groups)]


def _scaled(value: Any, factor: Decimal) -> int | float:
    out = (Decimal(str(value)) * factor).quantize(Decimal("0.0001"), ROUND_HALF_UP).normalize()
    return int(out) if out == out.to_integral_value() else float(out)


def variant(tariff: dict[str, Any], group: str) -> dict[str, Any]:
    """A tariff as the given group is charged it (the standard group: the tariff itself)."""
    suffix, cost_offset, factor, extra_fee = TARIFF_GROUPS[group]
    if group == STANDARD:
        return tariff
    out = copy.deepcopy(tariff)
    out["rateName"] = f"{tariff['rateName']}{suffix}"
    if isinstance(tariff.get("costId"), int):
        out["costId"] = tariff["costId"] + cost_offset
    for part in out["priceStructure"].values():
        for el in part.get("elements", []):
            el["intervalCosts"] = _scaled(el["intervalCosts"], factor)
    fee = tariff.get("sessionFee")
    if fee is not None or extra_fee:
        out["sessionFee"] = _scaled(Decimal(str(fee or 0)) * factor + extra_fee, Decimal(1))
    return out


def variants(tariff: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every group's variant of one tariff, keyed by group."""
    return {group: variant(tariff, group) for group in TARIFF_GROUPS}


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def tariffs() -> dict[str, dict[str, Any]]:
    return copy.deepcopy({**DOC_TARIFFS, **EXTRA_TARIFFS})


def evses(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(evse id as the vendor spells it, tariff name); ids unique whatever the separator."""
    out = list(DOC_EVSES)
    seen = {canonical_evse_id(e) for e, _ in out}
    operators = [(rng.choice(tuple(_COUNTRY_TARIFFS)),
                  "".join(rng.choice(_ALNUM[:26]) for _ in range(3)),
                  rng.random() < 0.3)
                 for _ in range(40)]
    while len(out) < count:
        country, op, dashed = rng.choice(operators)
        sep = "-" if dashed else "*"
        suffix = f"{rng.randrange(1, 10**6):06d}"
        if not dashed and rng.random() < 0.15:
            suffix += f"*{rng.randrange(1, 5)}"  # connector-level ids carry a '*'
        evse_id = f"{country}{sep}{op}{sep}E{suffix}"
        key = canonical_evse_id(evse_id)
        if key in seen:
            continue
        seen.add(key)
        out.append((evse_id, rng.choice(_COUNTRY_TARIFFS[country])))
    return out


_VENDORS = (("ABB", "Terra AC"), ("Alpitronic", "HYC300"), ("Compleo", "eBOX"),
            ("Mennekes", "AMTRON"), ("KEBA", "KeContact P30"), ("Kempower", "S-Series"),
            ("Wallbox", "Commander 2"), ("Hager", "witty"))


def stations(rng: random.Random, count: int) -> list[dict[str, Any]]:
    out = []
    for n in range(1, count + 1):
        vendor, model = rng.choice(_VENDORS)
        out.append({
            "type": "charging_stations",
            "id": _uuid(rng),
            "attributes": {
                "label": f"Station {n}",
                "chargeBoxIdentity": f"cp_{n}",
                "iccid": "8949" + "".join(str(rng.randrange(10)) for _ in range(15)),
                "imsi": "26201" + "".join(str(rng.randrange(10)) for _ in range(10)),
                "serialnumber": f"{rng.randrange(10**8, 10**9)}",
                "firmwareVersion": f"htb.firmware.{rng.randrange(1, 6)}.{rng.randrange(0, 20)}",
                # Attributes beyond the quickstart: vendors add fields.
                "vendor": vendor,
                "model": model,
                "ocppVersion": rng.choice(("1.6", "1.6", "2.0.1")),
                "connectorCount": rng.choice((1, 2, 2, 4)),
                "createdAt": f"20{rng.randrange(18, 24)}-{rng.randrange(1, 13):02d}-"
                             f"{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:00:00Z",
            },
        })
    return out


def user() -> dict[str, Any]:
    return {
        "id": "usr-0001",
        "email": "integrations@sandbox.example",
        "first_name": "Sandbox",
        "last_name": "Integrator",
        "company": "ampgate sandbox GmbH",
        "roles": ["application.bp_portal.data_viewer", "application.bp_portal.data_editor"],
        "language": "en",
    }


def passport_id(n: int) -> str:
    return f"BP-{n:04d}"


_MAKERS = (
    ("Northvolt AB", "SE", "Skellefteå", "https://northvolt.example"),
    ("CATL Europe GmbH", "DE", "Arnstadt", "https://catl.example"),
    ("LG Energy Solution Wroclaw", "PL", "Wrocław", "https://lges.example"),
    ("Samsung SDI Hungary", "HU", "Göd", "https://samsungsdi.example"),
    ("ACC Automotive Cells", "FR", "Billy-Berclau", "https://acc.example"),
    ("Siemens Energy Storage", "DE", "Erlangen", "https://siemens.example"),
)
_CHEMISTRY = (("NMC811", 3.65, 2.5, 4.2), ("LFP", 3.2, 2.5, 3.65), ("NCA", 3.6, 2.7, 4.2),
              ("NMC622", 3.65, 2.5, 4.2))
_CATEGORIES = (("EV battery", 350, 900), ("LMT battery", 5, 20), ("industrial battery", 200, 2500))


def _doc_link(name: str, pid: str, topic: str) -> dict[str, str]:
    return {"name": name, "description": f"{name} for {pid}",
            "location": f"https://docs.sandbox.example/passports/{pid}/{topic}.pdf"}


def _address(rng: random.Random, country: str, locality: str) -> dict[str, Any]:
    return {
        "locality": locality,
        "country_sn": country,
        "post_code": rng.randrange(10000, 99999),
        "street": rng.choice(("Industriestraße", "Battery Lane", "Werkstraße", "Rue de l'Usine")),
        "number": rng.randrange(1, 200),
        "premise": f"Building {rng.choice('ABCDEF')}",
        "postal_delivery_point": f"Gate {rng.randrange(1, 9)}",
    }


def passport(rng: random.Random, pid: str) -> dict[str, Any]:
    """A full document in the shape of the getting-started guide, values varied."""
    maker, country, city, web = rng.choice(_MAKERS)
    chem, nominal, vmin, vmax = rng.choice(_CHEMISTRY)
    category, wmin, wmax = rng.choice(_CATEGORIES)
    weight = rng.randrange(wmin, wmax)
    capacity = round(weight * rng.uniform(0.14, 0.19), 1)  # kWh
    cf_total = round(capacity * rng.uniform(55, 95), 1)
    shares = [rng.uniform(0.05, 0.6) for _ in range(4)]
    shares = [round(s / sum(shares), 3) for s in shares]
    modules = [
        {
            "module_id": f"{pid}-M{m:02d}",
            "resistance": round(rng.uniform(0.8, 2.5), 3),
            "cells": [{"cell_id": f"{pid}-M{m:02d}-C{c:02d}",
                       "resistance": round(rng.uniform(0.2, 0.9), 3)} for c in range(1, 4)],
        }
        for m in range(1, rng.randrange(2, 5))
    ]
    return {
        "id": pid,
        "status": {"state": rng.choice(("active", "active", "active", "draft", "inactive"))},
        "general_information": {
            "identification": {
                "uid": pid,
                "manufacturer_id": {
                    "name": maker,
                    "contact": {
                        "fax_number": f"+49 {rng.randrange(100, 999)} {rng.randrange(10**5, 10**6)}",
                        "website": web,
                        "phone_number": f"+49 {rng.randrange(100, 999)} {rng.randrange(10**5, 10**6)}",
                        "email": f"passport@{web.removeprefix('https://')}",
                    },
                    "address": _address(rng, country, city),
                },
                "manufacturing_date": f"20{rng.randrange(22, 26)}-{rng.randrange(1, 13):02d}-"
                                      f"{rng.randrange(1, 29):02d}",
                "manufacturing_place": _address(rng, country, city),
            },
            "characteristics": {"category": [category], "weight": weight},
        },
        "compliance": {
            "conformity": {
                "declaration_of_conformity_eu": _doc_link("EU declaration of conformity", pid, "doc"),
                "id_declaration_of_conformity_eu": f"DoC-{rng.randrange(10**5, 10**6)}",
            },
            "symbols": {
                "collection_symbol": _doc_link("Separate collection symbol", pid, "collection"),
                "cadmium_symbol": _doc_link("Cadmium symbol", pid, "cd"),
                "lead_symbol": _doc_link("Lead symbol", pid, "pb"),
            },
        },
        "materials": {
            "components": [{
                "critical_raw_materials": rng.sample(
                    ["lithium", "cobalt", "natural graphite", "nickel", "manganese"], 3),
                "hazardous_substances": [{
                    "substance": {
                        "name": "Lithium hexafluorophosphate",
                        "class": "Acute toxicity",
                        "category": "Category 3",
                        "id": "21324-40-3",
                        "substance_impact": "Toxic if swallowed",
                    },
                    "concentration_range": round(rng.uniform(0.5, 2.0), 2),
                    "location": "electrolyte",
                }],
            }],
            "materials": {"chemistry": chem},
        },
        "carbon_footprint": {
            "carbon_footprint": cf_total,
            "pre_processing_share_of_carbon_footprint": shares[0],
            "production_share_of_carbon_footprint": shares[1],
            "distribution_share_of_carbon_footprint": shares[2],
            "end_of_life_share_of_carbon_footprint": shares[3],
            "carbon_footprint_performance_class": rng.choice("ABCDE"),
            "web_link_to_carbon_footprint_study": _doc_link("Carbon footprint study", pid, "cf"),
        },
        "supply_chain_due_diligence": {
            "due_diligence_report": {
                "information_of_due_diligence_report": _doc_link("Due diligence report", pid, "dd"),
            },
            "additional_voluntary": {
                "third_party_supply_chain_assurances": _doc_link("Supply chain assurance", pid, "sca"),
                "eu_tax_disclosure_statement": _doc_link("EU tax disclosure", pid, "tax"),
                "sustainability_report": _doc_link("Sustainability report", pid, "sr"),
            },
        },
        "circularity": {
            "safety_requirements": {"extinguishing_agent": rng.sample(
                ["water", "foam", "CO2", "class D powder"], 2)},
            "recycled_content": {
                f"{when}_consumer_recycled_{metal}_share": round(rng.uniform(0, 0.2), 3)
                for when in ("pre", "post") for metal in ("nickel", "cobalt", "lithium", "lead")
            },
            "renewable_content": {"renewable_content_share": round(rng.uniform(0, 0.5), 3)},
            "end_of_life_information": {
                "role_of_end_users_to_waste_prevention": _doc_link("Waste prevention", pid, "wp"),
                "role_of_end_users_to_separate_collection": _doc_link("Separate collection", pid, "sc"),
                "information_on_recycling_operations": _doc_link("Recycling operations", pid, "ro"),
            },
        },
        "performance": {
            "capacity": {
                "certified_usable_energy": round(capacity * 0.93, 1),
                "rated_capacity": round(capacity * 1000 / (nominal * 96), 1),
                "nominal_voltage": round(nominal * 96, 1),
                "min_voltage": round(vmin * 96, 1),
                "max_voltage": round(vmax * 96, 1),
            },
            "power_capability": {
                "original_power_capability": round(capacity * 3, 1),
                "max_permitted_power": round(capacity * 3.5, 1),
                "ratio_between_power_and_energy": round(rng.uniform(2.5, 4), 2),
            },
            "round_trip_energy": {
                "initial_round_trip_energy_efficiency": round(rng.uniform(0.92, 0.97), 3),
                "round_trip_energy_efficiency_at_half_life": round(rng.uniform(0.86, 0.92), 3),
            },
            "internal_resistance": {
                "initial_resistance": {
                    "pack_id": f"{pid}-P01",
                    "resistance": round(sum(m["resistance"] for m in modules), 3),
                    "modules": modules,
                },
            },
            "battery_lifetime": {
                "expected_lifetime_n_charge_discharge_cycles": rng.randrange(1500, 6000, 100),
                "cycle_life_reference_test": "IEC 62660-1",
                "c_rate_of_cycle_life_test": rng.choice((0.5, 1, 1)),
                "capacity_threshold_for_exhaustion": rng.choice((0.7, 0.8)),
                "soce_threshold_for_exhaustion": rng.choice((0.6, 0.7)),
                "warranty_period": rng.choice((5, 8, 10)),
            },
            "temperature_conditions": {
                "lower_temperature_idle_state": rng.choice((-30, -20)),
                "upper_temperature_idle_state": rng.choice((45, 55, 60)),
            },
        },
    }
