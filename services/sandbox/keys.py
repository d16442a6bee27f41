"""Typed application keys of the sandbox (state lives on the app, never in globals)."""

from __future__ import annotations

from aiohttp import web

from services.sandbox.config import SandboxConfig
from services.sandbox.data import SandboxData
from services.sandbox.faults import FaultBoard
from services.sandbox.owned_list import OwnedListShape
from services.sandbox.tokens import TokenIssuer

CONFIG_KEY = web.AppKey("sandbox_config", SandboxConfig)
DATA_KEY = web.AppKey("sandbox_data", SandboxData)
FAULTS_KEY = web.AppKey("sandbox_faults", FaultBoard)
SIEMENSID_KEY = web.AppKey("sandbox_siemensid", TokenIssuer)
COGNITO_KEY = web.AppKey("sandbox_cognito", TokenIssuer)
OWNED_LIST_KEY = web.AppKey("sandbox_owned_list", OwnedListShape)
