"""Call counters and injected faults, keyed by endpoint name (``pricing.single``).

A fault targets one endpoint, a family prefix (``pricing``) or ``*``; it applies to
the next ``times`` matching calls (every call if ``times`` is None).

Kinds: ``status`` (an error answer), ``timeout`` (hold the connection), ``reset`` (drop
it), ``latency`` (delay, then answer), ``non_json`` (a 200 whose body is an HTML page, as
a proxy's error page would be), ``oversized`` (a 200 with a valid JSON body of
``body_bytes`` bytes, default 20 MiB).
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import asdict, dataclass, field
from typing import Literal

import orjson
from aiohttp import web

ENDPOINTS = (
    "siemensid.token",
    "passport.public",
    "passport.owned_list",
    "passport.owned_get",
    "passport.create",
    "passport.update",
    "passport.delete",
    "users.me",
    "users.update",
    "users.create",
    "cognito.token",
    "cpo.stations",
    "pricing.single",
    "pricing.batch",
    "pricing.all_paged",
)
FaultKind = Literal["status", "timeout", "reset", "latency", "non_json", "oversized"]
KINDS = ("status", "timeout", "reset", "latency", "non_json", "oversized")
OVERSIZED_DEFAULT_BYTES = 20 * 1024 * 1024
_NON_JSON_BODY = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"


def matches(pattern: str, name: str) -> bool:
    return pattern in ("*", name) or name.startswith(pattern + ".")


@dataclass
class Fault:
    id: str
    endpoint: str
    kind: FaultKind
    status: int = 503
    latency_ms: float = 0.0
    times: int | None = None
    retry_after: float | None = None
    timeout_s: float | None = None
    body_bytes: int | None = None


@dataclass
class FaultBoard:
    default_timeout_s: float = 30.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ENDPOINTS, 0))
    faults: list[Fault] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _cleared: asyncio.Event | None = None

    def add(self, **spec: object) -> Fault:
        fault = Fault(id=f"fault-{next(self._ids)}", **spec)  # type: ignore[arg-type]
        self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """Drop every fault and release connections held by timeout faults."""
        self.faults.clear()
        if self._cleared is not None:
            self._cleared.set()
            self._cleared = None

    def reset_counts(self) -> None:
        self.counts = dict.fromkeys(ENDPOINTS, 0)

    def _take(self, name: str) -> Fault | None:
        for fault in self.faults:
            if matches(fault.endpoint, name):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def apply(self, name: str, request: web.Request) -> web.StreamResponse | None:
        """Act out the first matching fault; a response means: answer this instead."""
        fault = self._take(name)
        if fault is None:
            return None
        if fault.kind == "latency":
            await asyncio.sleep(fault.latency_ms / 1000)
            return None
        if fault.kind == "timeout":
            if self._cleared is None:
                self._cleared = asyncio.Event()
            hold = fault.timeout_s if fault.timeout_s is not None else self.default_timeout_s
            try:
                await asyncio.wait_for(self._cleared.wait(), hold)
            except TimeoutError:
                pass
            return None
        if fault.kind == "non_json":
            return web.Response(status=200, body=_NON_JSON_BODY, content_type="text/html")
        if fault.kind == "oversized":
            size = fault.body_bytes if fault.body_bytes is not None else OVERSIZED_DEFAULT_BYTES
            return web.Response(status=200, body=_json_of_size(size),
                                content_type="application/json")
        if fault.kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            # Nothing reaches the client: the transport is gone.
            return web.Response(status=500)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(int(fault.retry_after)) if float(
                fault.retry_after).is_integer() else str(fault.retry_after)
        return web.Response(
            status=fault.status,
            body=orjson.dumps(_error_body(name, fault.status)),
            content_type="application/json",
            headers=headers,
        )

    def describe(self) -> list[dict[str, object]]:
        return [asdict(f) for f in self.faults]


def _json_of_size(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (at least the 10 of its frame)."""
    frame = b'{"pad":""}'
    return b'{"pad":"' + b"x" * max(0, size - len(frame)) + b'"}'


def _error_body(name: str, status: int) -> dict[str, object]:
    message = f"injected fault: HTTP {status}"
    if name.startswith("pricing."):
        return {"status": "error", "message": message}
    if name.endswith(".token"):
        return {"error": "server_error", "error_description": message}
    if name.startswith("cpo."):
        return {"errors": [{"status": str(status), "title": message}]}
    return {"error": "server_error", "message": message}
