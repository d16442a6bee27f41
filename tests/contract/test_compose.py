"""docker compose: the production-like stack, configured only by contract settings."""

from __future__ import annotations

import yaml

from services.cli import COMMANDS
from tests.contract.deploy_contract import (
    COMPONENTS,
    DEPLOY,
    ENV_NAMES,
    compose,
)


def test_compose_runs_the_production_like_stack_with_contract_settings() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) >= {"kafka", "postgres", "gateway", "history", "webhooks",
                             "prometheus", "grafana"}
    assert "zookeeper" not in services
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    state_volumes: dict[str, str] = {}
    for name in COMPONENTS:
        svc = services[name]
        assert svc["command"] == [name] and name in COMMANDS
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        env = svc["environment"]
        assert env["AMPGATE_HTTP__HOST"] == "0.0.0.0"
        assert not set(env) - ENV_NAMES, f"{name}: unknown settings {set(env) - ENV_NAMES}"
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        # The state dir (outbox, delivery queue, SQLite) on a named volume of its own: it
        # outlives `docker compose down`/`up` and recreated containers.
        (state,) = [v for v in svc["volumes"] if v.split(":")[1] == env["AMPGATE_STATE_DIR"]]
        volume = state.split(":")[0]
        assert volume in doc["volumes"] and not volume.startswith((".", "/")), name
        assert state_volumes.setdefault(volume, name) == name, f"{volume} shared"
    assert services["gateway"]["environment"]["AMPGATE_HISTORY__URL"] == "http://history:8080"
    assert services["history"]["environment"]["AMPGATE_HISTORY__DATABASE_URL"].startswith(
        "postgresql://")
    for svc in services.values():  # host paths it mounts exist
        for volume in svc.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("."):
                assert (DEPLOY / host).exists(), host
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for sc in scrape["scrape_configs"] for c in sc["static_configs"]
               for t in c["targets"]}
    assert targets == {f"{c}:8080" for c in COMPONENTS}


def test_compose_env_example_names_only_contract_settings() -> None:
    names = {line.split("=", 1)[0] for line in
             (DEPLOY / "ampgate.env.example").read_text().splitlines()
             if line and not line.startswith("#")}
    assert names and not names - ENV_NAMES, names - ENV_NAMES
