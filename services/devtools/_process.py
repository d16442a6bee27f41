"""What the local servers (Kafka, PostgreSQL, Redis) share: a free port, the Docker
probe, and a child server started, awaited until it answers, and stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_answers(timeout: float = 1.0) -> bool:
    """A Docker engine answers a ping within ``timeout`` (fast False when there is none)."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker

        client = docker.from_env(timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 — any failure means: no usable engine
        return False


def log_tail(path: Path, chars: int = 500) -> str:
    """The end of a server's log, for the error that says why it did not start."""
    return path.read_text(errors="replace")[-chars:].strip() if path.exists() else ""


def await_answer(proc: subprocess.Popen[bytes], answers: Callable[[], bool], *, name: str,
                 where: str, log: Path, timeout_s: float, poll_s: float,
                 error: type[Exception]) -> None:
    """Wait until ``answers()``; if ``proc`` exits first or ``timeout_s`` passes, stop it
    and raise ``error`` saying which (with the log's tail when it exited)."""
    deadline = time.monotonic() + timeout_s
    while not answers():
        if proc.poll() is not None:
            raise error(f"{name} exited at start: {log_tail(log)}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise error(f"{name} did not answer on {where} within {timeout_s}s")
        time.sleep(poll_s)


def stop_process(proc: subprocess.Popen[bytes] | None, *, timeout_s: float = 5.0) -> None:
    """SIGTERM (after SIGCONT: a paused server cannot handle it), then SIGKILL after
    ``timeout_s``. Only this child, by its PID."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGCONT)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
