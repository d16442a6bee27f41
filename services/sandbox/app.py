"""The sandbox app factory: wires state, routes and the shared middleware."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from services.common.http import READINESS_KEY, REGISTRY_KEY, add_ops_routes
from services.sandbox._http import Handler, json_response
from services.sandbox.config import SandboxConfig
from services.sandbox.data import SandboxData
from services.sandbox.faults import FaultBoard
from services.sandbox.keys import (
    COGNITO_KEY,
    CONFIG_KEY,
    DATA_KEY,
    FAULTS_KEY,
    OWNED_LIST_KEY,
    SIEMENSID_KEY,
)
from services.sandbox.owned_list import OwnedListShape
from services.sandbox.routes import add_routes
from services.sandbox.tokens import TokenIssuer


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown routes and methods answer JSON, as an upstream API would. (The shared
    request middleware is not used: a simulator needs no request ids or metrics.)"""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return json_response({"error": exc.reason, "message": exc.text}, exc.status,
                             headers={k: v for k, v in exc.headers.items() if k == "Allow"})


async def _release_held(app: web.Application) -> None:
    # Connections held by "timeout" faults must not delay shutdown.
    app[FAULTS_KEY].clear()


def create_app(config: SandboxConfig | None = None, *,
               registry: CollectorRegistry | None = None) -> web.Application:
    config = config or SandboxConfig()
    app = web.Application(middlewares=[_json_errors], client_max_size=4 * 1024**2)
    app[REGISTRY_KEY] = registry or CollectorRegistry()
    app[READINESS_KEY] = {}
    add_ops_routes(app)
    app[CONFIG_KEY] = config
    app[DATA_KEY] = SandboxData.seeded(config.seed, stations=config.stations,
                                       evses=config.evses, passports=config.passports)
    app[FAULTS_KEY] = FaultBoard(default_timeout_s=config.timeout_fault_s)
    app[OWNED_LIST_KEY] = OwnedListShape()
    app[SIEMENSID_KEY] = TokenIssuer(
        "siemensid",
        issuer_url="https://siemensid.sandbox.local/",
        expires_in=config.siemensid_expires_in,
        audience=config.passport_audience,
        scope=config.siemensid_scope,
        claims={"azp": config.passport_client_id, "gty": "client-credentials"},
    )
    app[COGNITO_KEY] = TokenIssuer(
        "cognito",
        issuer_url="https://cognito-idp.eu-central-1.amazonaws.com/eu-central-1_sandbox",
        expires_in=config.cognito_expires_in,
        scope="cpoapi/read",
        claims={"client_id": config.cpo_client_id, "token_use": "access"},
    )
    app.on_shutdown.append(_release_held)
    add_routes(app)
    return app
