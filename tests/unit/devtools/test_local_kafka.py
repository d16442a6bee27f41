"""Finding or starting a broker on any machine (DESIGN.md §10)."""

from __future__ import annotations

import os
import time

import pytest

from services.devtools.local_kafka import (
    TEST_BOOTSTRAP_ENV,
    KafkaUnavailable,
    LocalKafka,
    docker_answers,
    free_port,
    kafka_answers,
)
from tests.conftest import server_unavailable


@pytest.fixture
def tansu():
    try:
        broker = LocalKafka.tansu().start()
    except KafkaUnavailable as exc:
        server_unavailable("tansu broker", str(exc))
    yield broker
    broker.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_tansu_answers_kafka_and_restarts_on_the_same_address(tansu):
    assert tansu.kind == "tansu" and tansu.owned and tansu.can_restart
    assert tansu.idempotence_supported is False and tansu.enable_idempotence is False
    assert tansu.bootstrap.startswith("127.0.0.1:")
    assert kafka_answers(tansu.bootstrap)
    first_pid, address = tansu.pid, tansu.bootstrap

    tansu.restart()
    assert tansu.bootstrap == address and tansu.pid != first_pid
    assert not alive(first_pid)
    assert kafka_answers(tansu.bootstrap)

    pid = tansu.pid
    tansu.stop()
    assert not alive(pid) and not tansu.running
    assert not kafka_answers(address, timeout=0.5)


def test_an_address_in_the_environment_wins(tansu, monkeypatch):
    monkeypatch.setenv(TEST_BOOTSTRAP_ENV, tansu.bootstrap)
    found = LocalKafka.discover()
    assert (found.kind, found.owned, found.can_restart) == ("external", False, False)
    assert found.start().bootstrap == tansu.bootstrap
    assert found.idempotence_supported is True  # a real Kafka is assumed; settings can say otherwise
    found.stop()  # not ours: nothing happens
    assert kafka_answers(tansu.bootstrap)


def test_an_environment_address_that_does_not_answer_is_reported(monkeypatch):
    monkeypatch.setenv(TEST_BOOTSTRAP_ENV, f"127.0.0.1:{free_port()}")
    with pytest.raises(KafkaUnavailable, match="does not answer"):
        LocalKafka.discover().start(timeout_s=1)


def test_without_docker_discovery_is_fast_and_falls_back_to_tansu(monkeypatch):
    monkeypatch.delenv(TEST_BOOTSTRAP_ENV, raising=False)
    started = time.monotonic()
    has_docker = docker_answers()
    found = LocalKafka.discover()
    assert time.monotonic() - started < 2.5
    assert found.kind == ("container" if has_docker else "tansu")
