"""The upstream clients, each with its credential, built once per app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import structlog
from aiohttp import web

from services.common.settings import UpstreamSettings
from services.gateway.auth import CallerCredential
from services.gateway.cluster import SharedToken
from services.gateway.keys import (
    CLUSTER_KEY,
    METRICS_KEY,
    SESSION_KEY,
    SETTINGS_KEY,
    UPSTREAMS_KEY,
)
from services.gateway.tokens import (
    ClusterCredential,
    StaticToken,
    TokenManager,
    cognito_fetcher,
    siemensid_fetcher,
)
from services.gateway.upstream_client import UpstreamClient

log = structlog.get_logger("ampgate.gateway")


@dataclass
class Upstreams:
    passport: UpstreamClient
    cpo: UpstreamClient
    pricing: UpstreamClient
    history: UpstreamClient | None
    token_managers: dict[str, TokenManager | ClusterCredential] = field(default_factory=dict)

    @property
    def all(self) -> list[UpstreamClient]:
        return [c for c in (self.passport, self.cpo, self.pricing, self.history) if c is not None]


async def http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    # The token endpoints' session (the upstream clients have their own connections).
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                    json_serialize=None, raise_for_status=False)
    app[SESSION_KEY] = session
    yield
    await session.close()


async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, metrics, session = app[SETTINGS_KEY], app[METRICS_KEY], app[SESSION_KEY]
    assert settings.passport and settings.cpo and settings.pricing  # checked in create_app
    siemens = TokenManager(
        "siemensid", siemensid_fetcher(settings.passport), session, metrics,
        breaker_failures=settings.passport.breaker_failures,
        breaker_reset_s=settings.passport.breaker_reset_s)
    cognito = TokenManager(
        "cognito", cognito_fetcher(settings.cpo), session, metrics,
        breaker_failures=settings.cpo.breaker_failures, breaker_reset_s=settings.cpo.breaker_reset_s)
    cluster = app.get(CLUSTER_KEY)
    passport_cred: TokenManager | ClusterCredential = siemens
    cpo_cred: TokenManager | ClusterCredential = cognito
    if cluster is not None:
        # One token per credential cluster-wide; the local managers only stand in while
        # Redis cannot be used, and run no background refresher (never started).
        def shared(manager: TokenManager, lock_ttl_s: float) -> ClusterCredential:
            cell = SharedToken(cluster.store, cluster.channels, manager.upstream,
                               manager.fresh_grant, holder_id=cluster.replica_id,
                               lock_ttl_s=lock_ttl_s)
            return ClusterCredential(cell, manager)
        passport_cred = shared(siemens, settings.passport.timeout_s + 1.0)
        cpo_cred = shared(cognito, settings.cpo.timeout_s + 1.0)
    limits = {"max_body_bytes": settings.upstream.max_body_bytes,
              "keepalive_s": settings.upstream.keepalive_s}
    history = None
    if settings.history.url is not None:
        history = UpstreamClient(
            "history",
            UpstreamSettings(base_url=settings.history.url, timeout_s=settings.history.timeout_s),
            CallerCredential(), metrics, **limits)
    upstreams = Upstreams(
        passport=UpstreamClient("passport", settings.passport, passport_cred, metrics,
                                **limits),
        cpo=UpstreamClient("cpo", settings.cpo, cpo_cred, metrics,
                           **limits),
        pricing=UpstreamClient("pricing", settings.pricing,
                               StaticToken("x-api-token", settings.pricing.api_token), metrics,
                               **limits),
        history=history,
        token_managers={"siemensid": passport_cred, "cognito": cpo_cred},
    )
    for manager in upstreams.token_managers.values():
        await manager.start()
    app[UPSTREAMS_KEY] = upstreams
    yield
    for manager in upstreams.token_managers.values():
        await manager.stop()
    for client in upstreams.all:
        await client.close()
