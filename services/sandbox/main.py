"""`ampgate sandbox`: the upstream simulators on AMPGATE_HTTP__HOST/PORT."""

from __future__ import annotations

import structlog

from services.common.runner import serve
from services.common.settings import Settings
from services.sandbox.app import create_app
from services.sandbox.config import SandboxConfig

log = structlog.get_logger("ampgate.sandbox")


def run(settings: Settings) -> None:
    config = SandboxConfig.from_settings(settings)
    app = create_app(config)
    log.info("sandbox_starting", host=config.host, port=config.port)
    http = settings.http.model_copy(update={"host": config.host, "port": config.port})
    serve(app, http, shutdown_timeout=5)
