"""The history worker reads 2,000 records per batch unless the operator sets
AMPGATE_CONSUMER__BATCH_SIZE (which then wins, even when it names the general default)."""

from __future__ import annotations

import pytest

from services.common.consumer.worker_app import CONSUMER_KEY
from services.common.settings import load_settings
from services.history.app import BATCH_SIZE, create_app


@pytest.mark.parametrize(("env", "expected"), [
    ({}, BATCH_SIZE),
    ({"AMPGATE_CONSUMER__BATCH_SIZE": "500"}, 500),
    ({"AMPGATE_CONSUMER__BATCH_SIZE": "7"}, 7),
])
def test_history_batch_size(monkeypatch, tmp_path, env, expected):
    monkeypatch.setenv("AMPGATE_HISTORY__DATABASE_URL", str(tmp_path / "h.sqlite3"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = create_app(load_settings())
    assert BATCH_SIZE == 2000
    assert app[CONSUMER_KEY]._batch_size == expected
