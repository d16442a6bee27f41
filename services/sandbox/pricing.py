"""be.ENERGISED Pricing API: single, batch and cursor-paged tariffs (static x-api-token).

Every answer is the tariff of the one authentication medium asked with (tag id, EMAID
or UUID): media in different tariff groups see different tariffs (see ``seed``)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from decimal import Decimal

from aiohttp import web

from services.sandbox._http import endpoint, json_response
from services.sandbox.keys import CONFIG_KEY, DATA_KEY
from services.sandbox.seed import Medium, medium_key
from services.sandbox.tariffs import RATES, canonical_evse_id, parse_amount, render

# Upstream spelling: "authendicationUuid".
MEDIA = ("tag_id", "emaid", "authendicationUuid")


class _Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message


def _error(status: int, message: str) -> web.Response:
    return json_response({"status": "error", "message": message}, status)


@dataclass(frozen=True)
class _Query:
    currency: str | None
    consumption_wh: Decimal | None
    minutes: Decimal | None
    include_tax: bool


def _check_token(request: web.Request) -> None:
    given = request.headers.get("x-api-token", "")
    expected = request.app[CONFIG_KEY].pricing_api_token
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise _Rejected(401, "Invalid or missing API token")


def _medium(request: web.Request) -> Medium:
    given = [m for m in MEDIA if request.query.get(m)]
    if len(given) != 1:
        raise _Rejected(400, "Exactly one of tag_id, emaid, authendicationUuid is required")
    return medium_key(given[0], request.query[given[0]])


def _amount(request: web.Request, name: str) -> Decimal | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    value = parse_amount(raw)
    if value is None:
        raise _Rejected(400, f"{name} must be a non-negative number")
    return value


def _query(request: web.Request, *, calculation: bool = True) -> _Query:
    currency = request.query.get("currency") or None
    if currency is not None:
        currency = currency.upper()
        if currency not in RATES:
            raise _Rejected(400, f"Unsupported currency {currency}")
    consumption = minutes = None
    if calculation:
        consumption = _amount(request, "consumption")
        seconds = _amount(request, "duration")
        in_minutes = _amount(request, "duration_in_minutes")
        if seconds is not None and in_minutes is not None:
            raise _Rejected(400, "Give duration or duration_in_minutes, not both")
        minutes = seconds / 60 if seconds is not None else in_minutes
    # The docs' sample sends a bare "&include_tax"; anything but an explicit no counts.
    tax = request.query.get("include_tax")
    include_tax = tax is not None and tax.lower() not in ("false", "0", "no")
    return _Query(currency, consumption, minutes, include_tax)


def _answer(evse_tariff: dict, q: _Query, fee_key: str = "costSessionFee") -> dict:
    return render(evse_tariff, currency=q.currency, consumption_wh=q.consumption_wh,
                  minutes=q.minutes, include_tax=q.include_tax, fee_key=fee_key)


@endpoint("pricing.single")
async def single(request: web.Request) -> web.Response:
    try:
        _check_token(request)
        medium = _medium(request)
        evse_id = request.query.get("evseId", "")
        if canonical_evse_id(evse_id) is None:
            raise _Rejected(400, "evseId is missing or not a valid eMI3 EVSE ID")
        q = _query(request)
    except _Rejected as exc:
        return _error(exc.status, exc.message)
    evse = request.app[DATA_KEY].evse(evse_id)
    if evse is None:
        return _error(404, f"No tariff found for EVSE {evse_id}")
    return json_response(_answer(evse.tariff_for(medium), q))


@endpoint("pricing.batch")
async def batch(request: web.Request) -> web.Response:
    try:
        _check_token(request)
        medium = _medium(request)
        ids = [e.strip() for e in request.query.get("evseIds", "").split(",") if e.strip()]
        if not ids:
            raise _Rejected(400, "evseIds is required (comma separated)")
        if bad := [e for e in ids if canonical_evse_id(e) is None]:
            raise _Rejected(400, f"Not a valid eMI3 EVSE ID: {bad[0]}")
        q = _query(request)
    except _Rejected as exc:
        return _error(exc.status, exc.message)
    data = request.app[DATA_KEY]
    # Keyed by the id as requested; EVSEs without a tariff are left out.
    found = {e: data.evse(e) for e in ids}
    body = {e: _answer(evse.tariff_for(medium), q) for e, evse in found.items() if evse is not None}
    if not body:
        return _error(404, "No tariff found for any of the given EVSEs")
    return json_response(body)


@endpoint("pricing.all_paged")
async def all_paged(request: web.Request) -> web.Response:
    try:
        _check_token(request)
        medium = _medium(request)
        raw_limit = request.query.get("limit", "")
        if not raw_limit.isdigit() or int(raw_limit) < 1:
            raise _Rejected(400, "limit is required and must be a positive integer")
        cursor = request.query.get("cursor", "")
        if not cursor:
            raise _Rejected(400, "cursor is required (start for the first page)")
        q = _query(request, calculation=False)
    except _Rejected as exc:
        return _error(exc.status, exc.message)
    data = request.app[DATA_KEY]
    start = data.cursor_start(cursor)
    if start is None:
        return _error(400, f"Unknown cursor {cursor}")
    evses, next_cursor = data.page(start, int(raw_limit))
    return json_response({
        "pagination": {"nextCursorId": next_cursor, "isLastPage": next_cursor is None},
        "data": {e.evse_id: _answer(e.tariff_for(medium), q, fee_key="sessionFee") for e in evses},
    })
