"""RFC 3339 date-times: the one parser and the one format every service uses.

* ``parse_rfc3339``: a date-time WITH offset (``Z``/``z`` or ``±hh:mm``), ``T``, ``t`` or a
  space between date and time, up to nanoseconds (microseconds are kept); answered in UTC.
  Anything else is a ``ValueError`` — an unencoded ``+`` that arrived as a space is not
  repaired: the gateway and the history service reject it alike.
* ``rfc3339``: UTC, microseconds, ``Z``: ``2026-11-21T10:00:00.123456Z`` (also the proto3
  JSON Timestamp form).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})$")

# What rfc3339() writes (every event time we produce): parsed in one call, same result.
_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

RFC3339_HINT = "must be an RFC 3339 date-time with offset, e.g. 2026-01-31T12:00:00Z"


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 date-time with offset, as an aware UTC datetime; ValueError otherwise."""
    if type(value) is str and len(value) == 27 and _CANONICAL.fullmatch(value):
        # fromisoformat reads the "Z" as UTC itself (3.11): a tenth of slice + replace()
        return datetime.fromisoformat(value)
    m = _TIME.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError("not an RFC 3339 date-time with offset")
    date, clock, frac, offset = m.groups()
    offset = "+00:00" if offset in ("Z", "z") else offset
    text = f"{date}T{clock}.{(frac or '0')[:6].ljust(6, '0')}{offset}"
    return datetime.fromisoformat(text).astimezone(UTC)


def rfc3339(moment: datetime) -> str:
    """UTC, microseconds, ``Z``: 2026-11-21T10:00:00.123456Z (also proto3 JSON Timestamp)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a timezone-aware time")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
