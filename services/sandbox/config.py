"""Sandbox configuration: dev defaults, or the credentials of the shared Settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.common.settings import Settings


# What SiemensID grants the sandbox's client; the docs ask for at least data_viewer.
SIEMENSID_SCOPE = "application.bp_portal.data_viewer application.bp_portal.data_editor openid"


@dataclass(frozen=True)
class SandboxConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    passport_client_id: str = "sandbox-passport-client"
    passport_client_secret: str = "sandbox-passport-secret"
    passport_audience: str = "https://api.battery-passport.siemens.com"
    cpo_client_id: str = "sandbox-cpo-client"
    cpo_client_secret: str = "sandbox-cpo-secret"
    pricing_api_token: str = "sandbox-pricing-token"
    siemensid_expires_in: float = 86400
    # The scope claim of SiemensID tokens (None: no scope claim at all); at run time
    # PUT /_control/token-scope changes it.
    siemensid_scope: str | None = SIEMENSID_SCOPE
    cognito_expires_in: float = 86400
    # How long a "timeout" fault holds a connection unless the fault is cleared first.
    timeout_fault_s: float = 30.0
    seed: int = 20221014
    stations: int = 1200
    evses: int = 2000
    passports: int = 300

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxConfig:
        """Take host/port and whichever upstream credentials the settings carry, so a
        gateway started with the same environment authenticates against us."""
        cfg = replace(cls(), host=settings.http.host, port=settings.http.port)
        if (p := settings.passport) is not None:
            cfg = replace(
                cfg,
                passport_client_id=p.client_id,
                passport_client_secret=p.client_secret.get_secret_value(),
                passport_audience=p.audience,
            )
        if (c := settings.cpo) is not None:
            cfg = replace(
                cfg,
                cpo_client_id=c.client_id,
                cpo_client_secret=c.client_secret.get_secret_value(),
            )
        if (pr := settings.pricing) is not None:
            cfg = replace(cfg, pricing_api_token=pr.api_token.get_secret_value())
        return cfg
