"""Identifiers, defined once: the patterns of EVSE ids, EMAIDs, passport ids, tag ids,
tariff context names and digests, their ECMA-262 forms for OpenAPI, and the checks of ids
that arrive in a path (a 400 problem+json naming the parameter).

The gateway and the history service check the same paths with the same functions, so an id
one accepts the other accepts too.
"""

from __future__ import annotations

import re

from aiohttp import web

from services.common.errors import param_error

# eMI3 EVSE id, separators used consistently (DESIGN.md §3).
EVSE_RE = re.compile(r"^([A-Z]{2})([*-]?)([A-Z0-9]{3})\2E([A-Z0-9*]{1,30})$", re.IGNORECASE)
EMAID_RE = re.compile(r"^[A-Z]{2}-?[A-Z0-9]{3}-?[A-Z0-9]{9}(-?[A-Z0-9])?$", re.IGNORECASE)
# Passport ids: a bounded, safe charset. No '/', no '..', no control characters.
PASSPORT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:~-]{0,127}$")
TAG_ID_RE = re.compile(r"^[A-Za-z0-9_:-]{1,64}$")
CONTEXT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

# The same rules as ECMA-262 patterns for the OpenAPI document (no backreference, no
# IGNORECASE flag, no lookaround), so generated clients and fuzzers send what we accept.
EVSE_PATTERN = (r"^[A-Za-z]{2}(\*[A-Za-z0-9]{3}\*|-[A-Za-z0-9]{3}-|[A-Za-z0-9]{3})[Ee]"
                r"[A-Za-z0-9*]{1,30}$")
EMAID_PATTERN = r"^[A-Za-z]{2}-?[A-Za-z0-9]{3}-?[A-Za-z0-9]{9}(-?[A-Za-z0-9])?$"
PASSPORT_ID_PATTERN = r"^[A-Za-z0-9](\.?[A-Za-z0-9_:~-])*\.?$"  # PASSPORT_ID_RE, no ".."


def path_id(request: web.Request, name: str, pattern: re.Pattern[str] = PASSPORT_ID_RE,
            *, upper: bool = False) -> str:
    """A path id, checked against a safe charset. aiohttp has already percent-decoded it,
    so an encoded slash or control character shows up here and is rejected."""
    return checked_path_id(request.match_info[name], name, pattern, upper=upper)


def checked_path_id(raw: str, name: str, pattern: re.Pattern[str] = PASSPORT_ID_RE,
                    *, upper: bool = False) -> str:
    """``path_id`` of a value already taken from the path (the gateway's hit path matches
    paths itself, before aiohttp's router)."""
    if len(raw) > 128:
        raise param_error(name, "at most 128 characters")
    if ".." in raw or not pattern.match(raw):
        raise param_error(name, "contains characters that are not allowed")
    return raw.upper() if upper else raw


def evse_path_id(request: web.Request, name: str = "evse_id") -> str:
    """An EVSE id from the path, upper-cased (EVSE ids are case-insensitive)."""
    raw = request.match_info[name]
    if len(raw) > 40 or not EVSE_RE.match(raw):
        raise param_error(name, "not an eMI3 EVSE id (e.g. DE*EEE*E000001)")
    return raw.upper()
