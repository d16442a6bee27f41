"""Call counters and injected faults, keyed by endpoint name (``pricing.single``).

A fault targets one endpoint, a family prefix (``pricing``) or ``*``; it applies to
the next ``times`` matching calls (every call if ``times`` is None).
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
FaultKind = Literal["status", "timeout", "reset", "latency"]
KINDS = ("status", "timeout", "reset", "latency")


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


def _error_body(name: str, status: int) -> dict[str, object]:
    message = f"injected fault: HTTP {status}"
    if name.startswith("pricing."):
        return {"status": "error", "message": message}
    if name.endswith(".token"):
        return {"error": "server_error", "error_description": message}
    if name.startswith("cpo."):
        return {"errors": [{"status": str(status), "title": message}]}
    return {"error": "server_error", "message": message}
