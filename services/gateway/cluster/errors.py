"""Cluster-mode exceptions.

    AmpgateError (services.common.errors)
    └── ClusterError
        └── ClusterUnavailable   Redis did not answer in time, refused, or failed the call.
                                 Raised at the one point a redis error enters our code
                                 (``ClusterStore.call``); callers fall back to their local
                                 state (memory tier, local token manager, no lease held).

No redis-py exception leaves ``services.gateway.cluster``: each is translated into
``ClusterUnavailable`` with a message that names the operation and the error type only
(never a key's value: tokens live in Redis).
"""

from __future__ import annotations

from services.common.errors import AmpgateError


class ClusterError(AmpgateError):
    """Base of every cluster-mode error."""


class ClusterUnavailable(ClusterError):
    """The shared store cannot be used right now; fall back to local behaviour."""

    def __init__(self, operation: str, reason: str) -> None:
        super().__init__(f"cluster store unavailable during {operation}: {reason}")
        self.operation = operation
        self.reason = reason
