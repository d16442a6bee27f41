"""Gateway exceptions: every failure to reach an upstream becomes one of these, and
each is a Problem, so the client gets problem+json with the right status.

    Problem (services.common.errors)
    └── UpstreamError                 502  upstream failed (connection refused, reset, bad answer)
        ├── UpstreamTimeout           504  no answer in time
        ├── UpstreamStatus            502  upstream answered an error status (kept + safe excerpt)
        ├── CircuitOpen               503  breaker open: we do not call; Retry-After
        └── TokenUnavailable          503  no valid upstream token and the token endpoint failed
"""

from __future__ import annotations

from services.common.errors import PROBLEM_BASE, Problem


class UpstreamError(Problem):
    def __init__(self, upstream: str, detail: str, *, status: int = 502,
                 title: str = "Upstream failed", headers: dict[str, str] | None = None,
                 extra: dict | None = None) -> None:
        super().__init__(status, title, detail, type_=PROBLEM_BASE + title.lower().replace(" ", "-"),
                         headers=headers, extra={"upstream": upstream, **(extra or {})})
        self.upstream = upstream


class UpstreamTimeout(UpstreamError):
    def __init__(self, upstream: str, timeout_s: float) -> None:
        super().__init__(upstream, f"{upstream} did not answer within {timeout_s:g} s",
                         status=504, title="Upstream timeout")


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status. 4xx from the upstream keep their
    status for the client (404 stays 404), 5xx become 502."""

    def __init__(self, upstream: str, upstream_status: int, excerpt: str) -> None:
        status = upstream_status if 400 <= upstream_status < 500 and upstream_status not in (401, 403, 407, 429) else 502
        super().__init__(upstream, f"{upstream} answered {upstream_status}", status=status,
                         title="Upstream error" if status == 502 else _TITLES.get(status, "Upstream rejected the request"),
                         extra={"upstream_status": upstream_status, "upstream_excerpt": excerpt})
        self.upstream_status = upstream_status


class CircuitOpen(UpstreamError):
    def __init__(self, upstream: str, retry_after_s: float) -> None:
        secs = max(1, int(retry_after_s + 0.999))
        super().__init__(upstream, f"{upstream} is failing; not calling it for {secs} s",
                         status=503, title="Upstream circuit open", headers={"Retry-After": str(secs)})


class TokenUnavailable(UpstreamError):
    def __init__(self, upstream: str, detail: str, retry_after_s: float = 5.0) -> None:
        secs = max(1, int(retry_after_s + 0.999))
        super().__init__(upstream, detail, status=503, title="Upstream token unavailable",
                         headers={"Retry-After": str(secs)})


_TITLES = {400: "Upstream rejected the request", 404: "Not found", 409: "Conflict",
           422: "Upstream rejected the request"}
