"""Shared test set-up. Server fixtures live in tests/fixtures/ (one module each)."""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.fixtures.sandbox",
    "tests.fixtures.kafka",
    "tests.fixtures.postgres",
    "tests.fixtures.gateway",
    "tests.fixtures.redis",
]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def server_unavailable(what: str, why: str) -> None:
    """Under CI=true a missing real server is a failure, elsewhere a skip (DESIGN.md §10)."""
    message = f"{what} unavailable: {why}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
