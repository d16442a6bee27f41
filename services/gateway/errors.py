"""Gateway exceptions: every failure to reach an upstream becomes one of these, and
each is a Problem, so the client gets problem+json with the right status.

    Problem (services.common.errors)
    └── UpstreamError                 502  upstream failed (connection refused, reset, bad answer)
        ├── UpstreamTimeout           504  no answer in time
        ├── UpstreamStatus            4xx/502  upstream answered an error status (kept + safe excerpt)
        ├── UpstreamBadBody           502  a 2xx whose body is not JSON, or is over the size cap
        ├── CircuitOpen               503  breaker open: we do not call; Retry-After
        └── TokenUnavailable          503  no valid upstream token and the token endpoint failed

``unavailable`` tells an outage from an answer (DESIGN.md §5): True for everything but an
upstream 4xx that speaks about the resource (404 deleted, 410 gone, 403 made private...).
The cache serves stale-if-error only when it is True; otherwise it drops its entry.
"""

from __future__ import annotations

from services.common.errors import PROBLEM_BASE, Problem


class UpstreamError(Problem):
    #: the upstream could not give an answer (stale-if-error may stand in for it)
    unavailable = True

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


# Upstream statuses that say "not now" rather than "this is the answer": our credential
# rejected even after a fresh token (401, 407), the upstream gave up waiting (408), rate
# limited (429). With 5xx, they are unavailability; they never reach the client as such.
_UNAVAILABLE_4XX = frozenset({401, 407, 408, 429})


class UpstreamStatus(UpstreamError):
    """The upstream answered with an error status. A 4xx about the resource is the
    answer: it keeps its status for the client (404 stays 404, 403 stays 403) and is not
    ``unavailable``. 5xx and the statuses of ``_UNAVAILABLE_4XX`` become 502."""

    def __init__(self, upstream: str, upstream_status: int, excerpt: str) -> None:
        answer = 400 <= upstream_status < 500 and upstream_status not in _UNAVAILABLE_4XX
        status = upstream_status if answer else 502
        super().__init__(upstream, f"{upstream} answered {upstream_status}", status=status,
                         title=_TITLES.get(status, "Upstream rejected the request") if answer
                         else "Upstream error",
                         extra={"upstream_status": upstream_status, "upstream_excerpt": excerpt})
        self.upstream_status = upstream_status
        self.unavailable = not answer


class UpstreamBadBody(UpstreamError):
    """A 2xx answer we cannot pass on: not JSON, or larger than
    ``AMPGATE_UPSTREAM__MAX_BODY_BYTES``. An upstream failure (502), never a 500."""

    def __init__(self, upstream: str, reason: str, upstream_status: int = 200) -> None:
        super().__init__(upstream, f"{upstream} answered {upstream_status} with {reason}",
                         title="Upstream answer unusable",
                         extra={"upstream_status": upstream_status})
        self.reason = reason


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


_TITLES = {400: "Upstream rejected the request", 403: "Upstream refused access",
           404: "Not found", 409: "Conflict", 410: "Gone", 422: "Upstream rejected the request"}
