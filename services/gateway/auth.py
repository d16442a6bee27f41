"""The gateway's side of inbound auth: the shared check (services.common.auth) and the
caller's key forwarded to the history service, which checks it again (DESIGN.md §11)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from aiohttp import web

from services.common.auth import Authenticator, presented_key

__all__ = ["Authenticator", "CallerCredential", "forwarding_caller_key"]

# The key of the caller whose request is being proxied. A ContextVar: each request runs in
# its own task, so concurrent callers never see each other's key.
_CALLER_KEY: ContextVar[str | None] = ContextVar("ampgate_caller_key", default=None)


class CallerCredential:
    """The history client's credential: the key the caller presented, as a bearer token, set
    for the duration of one proxied call by ``forwarding_caller_key``. Nothing to refresh:
    a 401 from the history service is the answer for that key."""

    refreshable = False

    async def headers(self) -> tuple[dict[str, str], str]:
        key = _CALLER_KEY.get()
        return ({"Authorization": f"Bearer {key}"} if key else {}), ""

    async def invalidate(self, token: str) -> None:
        return None

    def __repr__(self) -> str:
        return "CallerCredential(<the caller's key>)"


@contextmanager
def forwarding_caller_key(request: web.Request) -> Iterator[None]:
    token = _CALLER_KEY.set(presented_key(request))
    try:
        yield
    finally:
        _CALLER_KEY.reset(token)
