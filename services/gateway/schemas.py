"""Response models: what every route answers, for the OpenAPI document and the tests.

The shapes are the vendors' (upstream-docs/) as the gateway passes them through (DESIGN.md
§11), plus the gateway's own documents (problem+json, history, purge, health). Every model
allows unknown fields (vendors add fields; they pass through untouched) and types what the
docs show. These models are documentation and test oracles only: no request ever validates
a response against them (a cache hit does no JSON work).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from services.common import events

Number = float  # JSON number: the vendors send integers and decimals alike


class Open(BaseModel):
    """Base of every response model: unknown fields pass through."""

    model_config = ConfigDict(extra="allow")


# -- Battery passport (battery-passport-getting-started.txt) ---------------------------------


class DocumentLink(Open):
    name: str | None = None
    description: str | None = None
    location: str | None = Field(None, description="URL of the document")


class Address(Open):
    locality: str | None = None
    country_sn: str | None = None
    post_code: Number | str | None = None
    street: str | None = None
    number: Number | str | None = None
    premise: str | None = None
    postal_delivery_point: str | None = None


class Contact(Open):
    fax_number: str | None = None
    website: str | None = None
    phone_number: str | None = None
    email: str | None = None


class Manufacturer(Open):
    name: str | None = None
    contact: Contact | None = None
    address: Address | None = None


class Identification(Open):
    uid: str | None = Field(None, description="the passport's id when the document has no `id`")
    manufacturer_id: Manufacturer | None = None
    manufacturing_date: str | None = None
    manufacturing_place: Address | None = None


class Characteristics(Open):
    category: list[str] | None = None
    weight: Number | None = None


class GeneralInformation(Open):
    identification: Identification | None = None
    characteristics: Characteristics | None = None


class Conformity(Open):
    declaration_of_conformity_eu: DocumentLink | None = None
    id_declaration_of_conformity_eu: str | None = None


class Symbols(Open):
    collection_symbol: DocumentLink | None = None
    cadmium_symbol: DocumentLink | None = None
    lead_symbol: DocumentLink | None = None


class Compliance(Open):
    conformity: Conformity | None = None
    symbols: Symbols | None = None


class Substance(Open):
    name: str | None = None
    class_: str | None = Field(None, alias="class")
    category: str | None = None
    id: str | None = None
    substance_impact: str | None = None


class HazardousSubstance(Open):
    substance: Substance | None = None
    concentration_range: Number | None = None
    location: str | None = None


class Component(Open):
    critical_raw_materials: list[str] | None = None
    hazardous_substances: list[HazardousSubstance] | None = None


class Chemistry(Open):
    chemistry: str | None = None


class Materials(Open):
    components: list[Component] | None = None
    materials: Chemistry | None = None


class CarbonFootprint(Open):
    carbon_footprint: Number | None = None
    pre_processing_share_of_carbon_footprint: Number | None = None
    production_share_of_carbon_footprint: Number | None = None
    distribution_share_of_carbon_footprint: Number | None = None
    end_of_life_share_of_carbon_footprint: Number | None = None
    carbon_footprint_performance_class: str | None = None
    web_link_to_carbon_footprint_study: DocumentLink | None = None


class DueDiligenceReport(Open):
    information_of_due_diligence_report: DocumentLink | None = None


class AdditionalVoluntary(Open):
    third_party_supply_chain_assurances: DocumentLink | None = None
    eu_tax_disclosure_statement: DocumentLink | None = None
    sustainability_report: DocumentLink | None = None


class SupplyChainDueDiligence(Open):
    due_diligence_report: DueDiligenceReport | None = None
    additional_voluntary: AdditionalVoluntary | None = None


class SafetyRequirements(Open):
    extinguishing_agent: list[str] | None = None


class RecycledContent(Open):
    pre_consumer_recycled_nickel_share: Number | None = None
    pre_consumer_recycled_cobalt_share: Number | None = None
    pre_consumer_recycled_lithium_share: Number | None = None
    pre_consumer_recycled_lead_share: Number | None = None
    post_consumer_recycled_nickel_share: Number | None = None
    post_consumer_recycled_cobalt_share: Number | None = None
    post_consumer_recycled_lithium_share: Number | None = None
    post_consumer_recycled_lead_share: Number | None = None


class RenewableContent(Open):
    renewable_content_share: Number | None = None


class EndOfLifeInformation(Open):
    role_of_end_users_to_waste_prevention: DocumentLink | None = None
    role_of_end_users_to_separate_collection: DocumentLink | None = None
    information_on_recycling_operations: DocumentLink | None = None


class Circularity(Open):
    safety_requirements: SafetyRequirements | None = None
    recycled_content: RecycledContent | None = None
    renewable_content: RenewableContent | None = None
    end_of_life_information: EndOfLifeInformation | None = None


class Capacity(Open):
    certified_usable_energy: Number | None = None
    rated_capacity: Number | None = None
    nominal_voltage: Number | None = None
    min_voltage: Number | None = None
    max_voltage: Number | None = None


class PowerCapability(Open):
    original_power_capability: Number | None = None
    max_permitted_power: Number | None = None
    ratio_between_power_and_energy: Number | None = None


class RoundTripEnergy(Open):
    initial_round_trip_energy_efficiency: Number | None = None
    round_trip_energy_efficiency_at_half_life: Number | None = None


class CellResistance(Open):
    cell_id: str | None = None
    resistance: Number | None = None


class ModuleResistance(Open):
    module_id: str | None = None
    resistance: Number | None = None
    cells: list[CellResistance] | None = None


class PackResistance(Open):
    pack_id: str | None = None
    resistance: Number | None = None
    modules: list[ModuleResistance] | None = None


class InternalResistance(Open):
    initial_resistance: PackResistance | None = None


class BatteryLifetime(Open):
    expected_lifetime_n_charge_discharge_cycles: Number | None = None
    cycle_life_reference_test: str | None = None
    c_rate_of_cycle_life_test: Number | None = None
    capacity_threshold_for_exhaustion: Number | None = None
    soce_threshold_for_exhaustion: Number | None = None
    warranty_period: Number | None = None


class TemperatureConditions(Open):
    lower_temperature_idle_state: Number | None = None
    upper_temperature_idle_state: Number | None = None


class Performance(Open):
    capacity: Capacity | None = None
    power_capability: PowerCapability | None = None
    round_trip_energy: RoundTripEnergy | None = None
    internal_resistance: InternalResistance | None = None
    battery_lifetime: BatteryLifetime | None = None
    temperature_conditions: TemperatureConditions | None = None


class PassportStatus(Open):
    state: str | None = Field(None, examples=["active"])


class PassportDocument(Open):
    """A battery passport as the Battery Passport API answers it (public or owned)."""

    id: str | None = Field(None, description="the passport id (owned documents; the public "
                           "document may carry only general_information.identification.uid)")
    status: PassportStatus | None = None
    general_information: GeneralInformation | None = None
    compliance: Compliance | None = None
    materials: Materials | None = None
    carbon_footprint: CarbonFootprint | None = None
    supply_chain_due_diligence: SupplyChainDueDiligence | None = None
    circularity: Circularity | None = None
    performance: Performance | None = None


class OwnedPassportsPage(Open):
    """The owned list when the upstream pages it: the documents under ``data``."""

    data: list[PassportDocument]


OwnedPassports = RootModel[list[PassportDocument] | OwnedPassportsPage]


# -- Users -------------------------------------------------------------------------------------


class UserDocument(Open):
    """An upstream user of the Battery Passport API."""

    id: str | None = None
    email: str | None = None
    name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    roles: list[str] | None = None
    language: str | None = None


# -- Pricing (beenergised-pricing-api.txt) -----------------------------------------------------


class PriceElement(Open):
    intervalChange: Number
    intervalCosts: Number | None = None
    stepCosts: Number | None = Field(None, description="null without consumption/duration")


class PriceDimension(Open):
    unit: str | None = Field(None, examples=["Wh", "min"])
    elements: list[PriceElement]
    tax: Number | None = Field(None, description="only with include_tax")


class PriceStructure(Open):
    energy: PriceDimension | None = None
    time: PriceDimension | None = None


class Price(Open):
    """The price of one EVSE for one authentication medium. Without consumption and
    duration no calculation is done: costTotal, costTime, costPower (and every stepCosts)
    are null. The session fee is `costSessionFee` in single/batch, `sessionFee` in
    all_paged; `tax` appears only with include_tax."""

    rateName: str | None
    costId: int | str | None = None
    currency: str
    localCurrency: str | None = None
    costTotalLocalCurrency: Number | None = None
    currencyConversionRate: Number | None = None
    costTotal: Number | None
    costTime: Number | None
    costPower: Number | None
    costSessionFee: Number | None = Field(None, description="session fee (single, batch)")
    sessionFee: Number | None = Field(None, description="session fee (all_paged)")
    tax: Any = Field(None, description="only with include_tax, when the vendor sends one")
    priceStructure: PriceStructure


PriceBatch = RootModel[dict[str, Price]]


class PricePagination(Open):
    nextCursorId: str | None = Field(description="the next page's cursor; null on the last page")
    isLastPage: bool


class PricePage(Open):
    pagination: PricePagination
    data: dict[str, Price] = Field(description="prices keyed by EVSE id")


# -- CPO charging stations (beenergised-cpo-api-quickstart.txt) --------------------------------


class StationAttributes(Open):
    label: str | None = None
    chargeBoxIdentity: str | None = None
    iccid: str | None = None
    imsi: str | None = None
    serialnumber: str | None = None
    firmwareVersion: str | None = None


class Station(Open):
    type: str = Field(examples=["charging_stations"])
    id: str
    attributes: StationAttributes


class StationsPagination(Open):
    total: int
    offset: int
    limit: int = Field(description="the page size the upstream applied (it clamps at ~500)")
    lastPage: bool


class StationsMeta(Open):
    pagination: StationsPagination


class StationsLinks(Open):
    """Absolute URLs of this gateway (never the upstream's host)."""

    current: str | None = None
    next: str | None = None
    prev: str | None = None


class StationsPage(Open):
    """A JSON:API page of charging stations."""

    data: list[Station]
    meta: StationsMeta
    links: StationsLinks


# -- History (DESIGN.md §11) -------------------------------------------------------------------

# The enums' values, inline in the schema (services.common.events.kinds defines them).
ChangeKind = Literal[tuple(k.value for k in events.ChangeKind)]  # type: ignore[valid-type]
Detection = Literal[tuple(d.value for d in events.Detection)]  # type: ignore[valid-type]
# A deletion has no document, so no digest: it is empty then.
Digest = Annotated[str, Field(pattern=r"^(sha256:[0-9a-f]{64})?$")]


class VersionSummary(Open):
    digest: Digest = Field(description="sha256 of the version's document; empty for a deletion")
    observed_at: str = Field(description="RFC 3339, UTC")
    change: ChangeKind
    detected_by: Detection
    changed_paths: list[str] = Field(description="RFC 6901 pointers")


class PassportVersions(Open):
    """Every version of a passport, newest first."""

    passport_id: str
    versions: list[VersionSummary]


class PassportVersionAt(VersionSummary):
    """The version in force at `at`, with its document."""

    passport_id: str
    passport: PassportDocument | None


class Tariff(Open):
    """The tariff-defining part of a price (ampgate.events.v1.Tariff, proto3 JSON)."""

    rate_name: str | None = None
    cost_id: int | str | None = None
    currency: str | None = None
    price_structure: dict[str, Any] | None = None
    session_fee: Number | None = None
    tax: Any = None


class PriceVersions(Open):
    evse_id: str
    tariff_context: str
    versions: list[VersionSummary]


class PriceVersionAt(VersionSummary):
    evse_id: str
    tariff_context: str
    tariff: Tariff | None


class PatchOperation(Open):
    """One RFC 6902 operation."""

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str
    value: Any = None
    from_: str | None = Field(None, alias="from")


JsonPatch = RootModel[list[PatchOperation]]
# The history answer: the version list, the version at `at`, or with from/to the RFC 6902
# patch between two versions (sent as application/json-patch+json; listed here too so that a
# client reading JSON can take it).
PassportHistory = RootModel[PassportVersions | PassportVersionAt | list[PatchOperation]]
PriceHistory = RootModel[PriceVersions | PriceVersionAt | list[PatchOperation]]


# -- The gateway's own documents ---------------------------------------------------------------


class ProblemError(Open):
    parameter: str | None = Field(None, description="the query or path parameter at fault")
    pointer: str | None = Field(None, description="RFC 6901 pointer into the body at fault")
    message: str


class Problem(Open):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[ProblemError] | None = None
    upstream: str | None = Field(None, description="the upstream that failed")
    upstream_status: int | None = Field(None, description="the status the upstream answered")
    upstream_excerpt: str | None = Field(None, description="a safe excerpt of its answer")


class Purged(Open):
    purged: int = Field(description="cached responses dropped")


class Health(Open):
    status: Literal["ok"]


class Readiness(Open):
    status: Literal["ready", "not ready"]
    checks: dict[str, Any]
