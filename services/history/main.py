"""`ampgate history`: consume change events, store every version, serve history queries."""

from __future__ import annotations

from services.common.consumer import run_worker
from services.common.settings import Settings
from services.history.app import create_app


def run(settings: Settings) -> None:
    run_worker(create_app(settings), settings)
