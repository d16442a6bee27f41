"""Upstream credentials (DESIGN.md §6): one token manager per upstream identity.

A ``TokenManager`` holds one OAuth2 client-credentials token, refreshes it in the
background at ~75 % of its lifetime, shares one refresh between every concurrent
caller, backs off (jittered, exponential, with a breaker) while the token endpoint
fails, keeps serving the current token while it is still usable, and never hands
out an expired one. ``StaticToken`` is the pricing API's fixed ``x-api-token``.

Cluster mode (DESIGN.md §12): ``ClusterCredential`` prefers the cluster's shared token
cell (``services.gateway.cluster.SharedToken``: one IdP call per credential per refresh,
cluster-wide) and falls back to a local ``TokenManager`` that runs no background refresher
and is asked only while Redis cannot be used. The shared cell's fetch IS the local
manager's refresh (``fresh_grant``), so both paths share one backoff, one breaker and one
``ampgate_token_requests_total``, and the replica that fetched keeps the token locally:
a Redis outage then costs it no request, every other replica at most one.

Tokens, secrets and token URLs with their query string are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt
import orjson
import structlog
from pydantic import SecretStr
from yarl import URL

from services.common.errors import AmpgateError
from services.common.settings import CpoSettings, PassportSettings
from services.gateway.cluster import ClusterUnavailable, SharedToken
from services.gateway.errors import TokenUnavailable
from services.gateway.metrics import GatewayMetrics

log = structlog.get_logger(__name__)

DEFAULT_EXPIRES_IN = 3600.0  # Kong's default: a grant without expires_in still expires
_BACKOFF_BASE_S = 0.5
_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    expires_in: float = DEFAULT_EXPIRES_IN

    def __repr__(self) -> str:  # never print the token itself
        return f"TokenGrant(access_token=<redacted>, expires_in={self.expires_in:g})"


TokenFetcher = Callable[[aiohttp.ClientSession], Awaitable[TokenGrant]]


class TokenEndpointError(AmpgateError):
    """The token endpoint answered, but not with a token. The message is safe to log."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _timeout(settings: PassportSettings | CpoSettings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=settings.timeout_s, connect=settings.connect_timeout_s)


async def _read_grant(resp: aiohttp.ClientResponse) -> TokenGrant:
    body = await resp.read()
    if resp.status != 200:
        # OAuth2 errors are {"error": "invalid_client"}: a code, safe to log; nothing else is.
        code = None
        with contextlib.suppress(Exception):
            doc = orjson.loads(body)
            if isinstance(doc, dict) and isinstance(doc.get("error"), str):
                code = doc["error"][:64]
        raise TokenEndpointError(
            f"token endpoint answered {resp.status}" + (f" ({code})" if code else ""), resp.status
        )
    try:
        doc = orjson.loads(body)
        token = doc["access_token"]
        if not isinstance(token, str) or not token:
            raise ValueError
        expires_in = doc.get("expires_in")
        expires = float(expires_in) if expires_in not in (None, "") else DEFAULT_EXPIRES_IN
        if expires <= 0:
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise TokenEndpointError("token endpoint answered 200 without a usable token") from None
    return TokenGrant(token, expires)


def _scopes(claims: dict[str, Any]) -> set[str]:
    """Scopes as IdPs spell them: ``scope`` (space-separated), ``scp`` or ``scopes`` (lists)."""
    found: set[str] = set()
    for name in ("scope", "scp", "scopes"):
        value = claims.get(name)
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list):
            found.update(v for v in value if isinstance(v, str))
    return found


def check_scope(upstream: str, token: str, required_scope: str) -> bool:
    """Warn (``token_scope_missing``) if the JWT lacks the scope. Not a verification:
    the upstream verifies; we only want to tell the operator early."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        log.warning("token_not_jwt", upstream=upstream)
        return False
    if required_scope not in _scopes(claims):
        log.warning("token_scope_missing", upstream=upstream, required_scope=required_scope)
        return False
    return True


def siemensid_fetcher(settings: PassportSettings) -> TokenFetcher:
    """SiemensID: POST a JSON body with the client credentials and audience."""
    url = str(settings.token_url)
    timeout = _timeout(settings)

    async def fetch(session: aiohttp.ClientSession) -> TokenGrant:
        payload = {
            "client_id": settings.client_id,
            "client_secret": settings.client_secret.get_secret_value(),
            "audience": settings.audience,
            "grant_type": "client_credentials",
        }
        async with session.post(url, data=orjson.dumps(payload), timeout=timeout,
                                headers={"Content-Type": "application/json",
                                         "Accept": "application/json"}) as resp:
            grant = await _read_grant(resp)
        check_scope("passport", grant.access_token, settings.required_scope)
        return grant

    return fetch


def cognito_fetcher(settings: CpoSettings) -> TokenFetcher:
    """Cognito, as the CPO docs show it: credentials in the query string, form content type."""
    url = URL(str(settings.token_url)).update_query(
        grant_type="client_credentials",
        client_id=settings.client_id,
        client_secret=settings.client_secret.get_secret_value(),
    )
    timeout = _timeout(settings)

    async def fetch(session: aiohttp.ClientSession) -> TokenGrant:
        async with session.post(url, timeout=timeout, headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "application/json"}) as resp:
            return await _read_grant(resp)

    return fetch


class Credential(Protocol):
    """What an upstream client needs from its credential."""

    async def headers(self) -> tuple[dict[str, str], str]:
        """Headers to inject and the token identity to pass to ``invalidate``."""
        ...

    async def invalidate(self, token: str) -> None:
        """The upstream answered 401 to a request carrying ``token``."""
        ...


class StaticToken:
    """A fixed secret in a header (pricing ``x-api-token``): nothing to refresh."""

    refreshable = False  # a 401 cannot be fixed by asking again

    def __init__(self, header: str, secret: SecretStr) -> None:
        self._header = header
        self._secret = secret

    async def headers(self) -> tuple[dict[str, str], str]:
        return {self._header: self._secret.get_secret_value()}, ""

    async def invalidate(self, token: str) -> None:
        return None

    def __repr__(self) -> str:
        return f"StaticToken(header={self._header!r}, secret=<redacted>)"


class TokenManager:
    """One bearer token per upstream identity; see the module docstring for the rules."""

    refreshable = True

    def __init__(
        self,
        upstream: str,
        fetcher: TokenFetcher,
        session: aiohttp.ClientSession,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        breaker_failures: int = 5,
        breaker_reset_s: float = 10.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstream = upstream
        self._fetcher = fetcher
        self._session = session
        self._metrics = metrics
        self._clock = clock
        self._wall = wall_clock
        self._breaker_failures = breaker_failures
        self._breaker_reset_s = breaker_reset_s

        self._token: str | None = None
        self._usable_until = 0.0  # monotonic; after this the token is never handed out
        self._refresh_at = 0.0  # monotonic; proactive refresh point
        self._inflight: asyncio.Task[str] | None = None
        self._failures = 0  # consecutive failed refreshes
        self._next_attempt_at = 0.0  # backoff / open breaker: no attempt before this
        self._replan = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._grant: TokenGrant | None = None  # the last one fetched (fresh_grant)

    def __repr__(self) -> str:
        return f"TokenManager(upstream={self.upstream!r})"

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the background refresher. The first token is fetched there, so a
        token endpoint that is down at start-up does not stop the gateway."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresher(), name=f"token-{self.upstream}")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._inflight) if t is not None]
        self._task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    # -- Credential ----------------------------------------------------------------

    async def headers(self) -> tuple[dict[str, str], str]:
        token = await self.token()
        return {"Authorization": f"Bearer {token}"}, token

    async def invalidate(self, token: str) -> None:
        # Only the current token: 200 concurrent 401s for one revoked token drop it once,
        # and a 401 for an older token must not throw away the fresh one.
        if token and token == self._token:
            log.info("token_invalidated", upstream=self.upstream)
            self._token = None
            self._grant = None
            self._usable_until = 0.0
            self._refresh_at = 0.0
            self._replan.set()

    # -- the token ---------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._token is not None and self._clock() < self._usable_until

    async def token(self) -> str:
        """A token valid now. Raises TokenUnavailable when there is none and the
        endpoint is failing (fast, without calling it, while backing off)."""
        now = self._clock()
        if self._token is not None and now < self._usable_until:
            if now >= self._refresh_at and self._inflight is None and now >= self._next_attempt_at:
                self._begin_refresh()  # past 75 %: refresh behind the caller's back
            return self._token
        # shield: a caller that gives up must not cancel the refresh others wait for
        return await asyncio.shield(self._joined_refresh(now))

    async def fresh_grant(self) -> TokenGrant:
        """Fetch a new token now, under this manager's backoff and breaker (the fetch of
        the shared cell in cluster mode). The manager keeps the token too. Raises
        TokenUnavailable like ``token()``."""
        token = await asyncio.shield(self._joined_refresh(self._clock()))
        grant = self._grant
        if grant is None or grant.access_token != token:  # pragma: no cover - defensive
            grant = TokenGrant(token, max(1.0, self._usable_until - self._clock()))
        return grant

    def _joined_refresh(self, now: float) -> asyncio.Task[str]:
        """The refresh in flight, or a new one unless the token endpoint is backing off."""
        if self._inflight is not None:
            return self._inflight
        if now < self._next_attempt_at:
            raise TokenUnavailable(
                self.upstream, f"no valid token for {self.upstream}; token endpoint failing",
                retry_after_s=self._next_attempt_at - now)
        return self._begin_refresh()

    def _begin_refresh(self) -> asyncio.Task[str]:
        assert self._inflight is None
        task = asyncio.create_task(self._refresh(), name=f"token-refresh-{self.upstream}")
        self._inflight = task
        task.add_done_callback(self._refresh_done)
        return task

    def _refresh_done(self, task: asyncio.Task[str]) -> None:
        if self._inflight is task:
            self._inflight = None
        if not task.cancelled():
            task.exception()  # retrieved: the background refresh may have no waiter
        self._replan.set()

    async def _refresh(self) -> str:
        try:
            grant = await self._fetcher(self._session)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - translate all: aiohttp, timeouts, bad bodies
            self._failed(exc)
            now = self._clock()
            raise TokenUnavailable(
                self.upstream, f"could not get a token for {self.upstream}",
                retry_after_s=max(0.0, self._next_attempt_at - now)) from None
        self._succeeded(grant)
        return grant.access_token

    def _succeeded(self, grant: TokenGrant) -> None:
        now = self._clock()
        lifetime = grant.expires_in
        self._token = grant.access_token
        self._grant = grant
        self._usable_until = now + lifetime - min(60.0, 0.1 * lifetime)
        # 75 % of the lifetime, a little earlier at random so replicas spread out
        self._refresh_at = now + lifetime * 0.75 * random.uniform(0.95, 1.0)
        self._failures = 0
        self._next_attempt_at = 0.0
        self._metrics.token_requests.labels(self.upstream, "ok").inc()
        self._metrics.token_expiry.labels(self.upstream).set(self._wall() + lifetime)
        log.info("token_refreshed", upstream=self.upstream, expires_in=lifetime)

    def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        delay = min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2 ** (self._failures - 1))
        delay *= random.uniform(0.5, 1.0)
        breaker_open = self._failures >= self._breaker_failures
        if breaker_open:
            delay = max(delay, self._breaker_reset_s)
        self._next_attempt_at = self._clock() + delay
        self._metrics.token_requests.labels(self.upstream, "error").inc()
        # Only the exception type and our own safe message: aiohttp's messages can
        # carry the request URL, and Cognito's URL carries the secret.
        log.warning(
            "token_refresh_failed",
            upstream=self.upstream,
            error=type(exc).__name__,
            detail=str(exc) if isinstance(exc, TokenEndpointError) else None,
            status=getattr(exc, "status", None) if isinstance(exc, TokenEndpointError) else None,
            failures=self._failures,
            retry_in_s=round(delay, 3),
            breaker_open=breaker_open,
            still_serving=self.usable,
        )

    async def _refresher(self) -> None:
        """Proactive refresh: sleep until the refresh point (or the end of a backoff),
        refresh, repeat. Woken early whenever the plan changes (invalidate, refresh)."""
        while True:
            self._replan.clear()
            now = self._clock()
            due = max(self._refresh_at if self._token is not None else now, self._next_attempt_at)
            delay = due - now
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._replan.wait(), delay)
                continue
            task = self._inflight or self._begin_refresh()
            with contextlib.suppress(Exception):
                await asyncio.shield(task)


class ClusterCredential:
    """A bearer credential shared by every replica (see the module docstring): the shared
    cell first; the local manager while Redis cannot be used. Start nothing: the local
    manager must not run its background refresher in cluster mode."""

    refreshable = True

    def __init__(self, shared: SharedToken, local: TokenManager) -> None:
        self.upstream = local.upstream
        self._shared = shared
        self._local = local

    def __repr__(self) -> str:
        return f"ClusterCredential(upstream={self.upstream!r})"

    async def token(self) -> str:
        try:
            return await self._shared.token()
        except ClusterUnavailable:
            return await self._local.token()  # at most one extra request per replica

    async def headers(self) -> tuple[dict[str, str], str]:
        token = await self.token()
        return {"Authorization": f"Bearer {token}"}, token

    async def invalidate(self, token: str) -> None:
        """401: drop it here, and in Redis if Redis still holds that very token (once
        cluster-wide); the next ``headers()`` anywhere refreshes once, under the lease."""
        await self._local.invalidate(token)
        with contextlib.suppress(ClusterUnavailable):
            await self._shared.invalidate(token)

    async def start(self) -> None:
        return None  # nothing runs in the background: the shared cell refreshes on use

    async def stop(self) -> None:
        with contextlib.suppress(ClusterUnavailable):
            await self._shared.close()
        await self._local.stop()
