"""`ampgate gateway`."""

from __future__ import annotations

from services.common.runner import serve
from services.common.settings import Settings
from services.gateway.app import create_app


def run(settings: Settings) -> None:
    serve(create_app(settings), settings.http)
