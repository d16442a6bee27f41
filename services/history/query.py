"""Validation of history requests: bad input is a 400 problem+json naming the parameter."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from aiohttp import web

from services.common.errors import ValidationProblem, param_error
from services.history.versions import parse_time

PASSPORT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$")
EVSE_RE = re.compile(r"^([A-Z]{2})([*-]?)([A-Z0-9]{3})\2E([A-Z0-9*]{1,30})$", re.IGNORECASE)
CONTEXT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class HistoryQuery:
    at: datetime | None = None
    from_: str | None = None
    to: str | None = None
    context: str = ""


def passport_id(request: web.Request) -> str:
    raw = request.match_info["passport_id"]
    if len(raw) > 128:
        raise param_error("passport_id", "at most 128 characters")
    if ".." in raw or not PASSPORT_ID_RE.match(raw):
        raise param_error("passport_id", "contains characters that are not allowed")
    return raw


def evse_id(request: web.Request) -> str:
    raw = request.match_info["evse_id"]
    if len(raw) > 40 or not EVSE_RE.match(raw):
        raise param_error("evse_id", "not an eMI3 EVSE id (e.g. DE*EEE*E000001)")
    return raw.upper()


def parse_query(request: web.Request, *, with_context: bool) -> HistoryQuery:
    allowed = {"at", "from", "to"} | ({"context"} if with_context else set())
    errors: list[dict[str, str]] = []
    values: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            errors.append({"parameter": name, "message": "unknown parameter"})
        elif name in values:
            errors.append({"parameter": name, "message": "given more than once"})
        else:
            values[name] = value
    if errors:
        raise ValidationProblem(errors)

    at = None
    if "at" in values:
        # An unencoded "+01:00" arrives as " 01:00": take it as the client meant it.
        raw = re.sub(r" (\d{2}:\d{2})$", r"+\1", values["at"])
        try:
            at = parse_time(raw)
        except ValueError:
            raise param_error(
                "at", "must be an RFC 3339 date-time with offset, e.g. 2026-01-31T12:00:00Z"
            ) from None
    for name in ("from", "to"):
        if name in values and not DIGEST_RE.match(values[name]):
            raise param_error(name, "must be a digest: sha256:<64 hex digits>")
    if ("from" in values) != ("to" in values):
        raise param_error("to" if "from" in values else "from", "give both from and to")
    if at is not None and "from" in values:
        raise param_error("at", "give either at or from/to")
    context = ""
    if with_context:
        context = values.get("context", "")
        if not context:
            raise param_error("context", "required: the tariff context name")
        if not CONTEXT_RE.match(context):
            raise param_error("context", "letters, digits, '_', '.', '-' (at most 64)")
    return HistoryQuery(at=at, from_=values.get("from"), to=values.get("to"), context=context)
