"""Every public exception of ampgate, rooted at ``AmpgateError`` (the whole tree is here;
each class lives in the module named beside it).

    AmpgateError
    ├── ConfigError                       a setting is missing or malformed (one line naming it)
    ├── Problem                           answered as RFC 9457 problem+json (any status)
    │   ├── ValidationProblem             400, with errors[] naming each parameter / pointer
    │   └── UpstreamError (gateway.errors)        502  an upstream failed
    │       ├── UpstreamTimeout                   504  no answer in time
    │       ├── UpstreamStatus                    4xx/502  an error status from the upstream
    │       ├── UpstreamBadBody                   502  a 2xx that is not JSON or over the cap
    │       ├── CircuitOpen                       503  breaker open; Retry-After
    │       └── TokenUnavailable                  503  no valid upstream token
    ├── ParamError (common.query)         also a ValueError: names the parameter a query
    │                                     model rejects (becomes a ValidationProblem entry)
    ├── InvalidEvent (common.events)      a message that is not a valid ampgate event: poison
    ├── TopicsMissing (common.kafka)      also an aiokafka KafkaError: topics absent and not
    │                                     to be created
    ├── TransientError (common.consumer)  a handler failure worth retrying: never dead-lettered
    ├── ReplayError (common.dlq)          bad ``dlq replay`` input
    ├── TokenEndpointError (gateway.tokens)   the token endpoint answered, but not a token
    ├── ClusterError (gateway.cluster.errors)
    │   └── ClusterUnavailable            the shared store cannot be used now: fall back
    ├── BadEventData (history.versions)   a well-formed event we cannot record: dead letter
    ├── StoreUnavailable (history.store)  the history database is away: transient
    └── dev tooling only (services.devtools)
        ├── KafkaUnavailable              also a RuntimeError: no broker to start or reach
        ├── PostgresUnavailable           no PostgreSQL to start or reach
        └── RedisUnavailable              also a RuntimeError: no Redis to start or reach

Private control-flow exceptions (a leading ``_``) stay inside their modules, and the
sandbox's are the simulated vendors', not ours.

Foreign exceptions are translated where they enter our code: HTTP client errors
(``services.common.http1``) and timeouts in the upstream client
(``services.gateway.upstream_client``: UpstreamError, UpstreamTimeout), aiohttp's in the
token managers (TokenUnavailable); redis errors in
``ClusterStore.call`` (ClusterUnavailable); aiokafka errors never leave the outbox
publisher (they become its degraded status and a retry) nor the consumer runtime's
group loop (it reconnects); TopicsMissing is raised where topics are checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROBLEM_BASE = "https://ampgate.dev/problems/"


class AmpgateError(Exception):
    """Root of every ampgate exception."""


class ConfigError(AmpgateError):
    """A setting is missing or malformed; the message is one line naming it."""


class Problem(AmpgateError):
    """An error the client sees as problem+json."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_ or PROBLEM_BASE + title.lower().replace(" ", "-")
        self.errors = list(errors or [])
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self, instance: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            doc["detail"] = self.detail
        if instance:
            doc["instance"] = instance
        if self.errors:
            doc["errors"] = self.errors
        doc.update(self.extra)
        return doc


class ValidationProblem(Problem):
    def __init__(self, errors: Sequence[Mapping[str, Any]], detail: str | None = None,
                 status: int = 400) -> None:
        first = errors[0] if errors else {}
        where = first.get("parameter") or first.get("pointer") or "request"
        super().__init__(
            status,
            "Invalid request",
            detail or f"{where}: {first.get('message', 'invalid')}",
            type_=PROBLEM_BASE + "validation",
            errors=errors,
        )


def param_error(parameter: str, message: str) -> ValidationProblem:
    return ValidationProblem([{"parameter": parameter, "message": message}])

