"""Exceptions shared by every service.

    AmpgateError
    ├── ConfigError (services.common.settings)   a setting is missing or malformed
    └── Problem                                  answered as RFC 9457 problem+json
        ├── ValidationProblem   400, with errors[] naming each parameter / pointer
        └── (raised directly with any status: 401, 403, 404, 413, 415, 502, 503, 504 ...)

Foreign exceptions (aiohttp client, aiokafka) are translated into ours where they
enter our code; gateway-specific ones live in services.gateway.errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PROBLEM_BASE = "https://ampgate.dev/problems/"


class AmpgateError(Exception):
    pass


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


def body_error(pointer: str, message: str) -> ValidationProblem:
    return ValidationProblem([{"pointer": pointer, "message": message}])
