"""A wheel built from the sources is the whole product (DESIGN.md §13): installed into a fresh
venv with no other step, `ampgate --version` works and `ampgate gateway` serves, with the
generated event code coming from the wheel (built by the backend, not by a script)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import aiohttp
import pytest

from tests.fixtures.gateway import CLIENTS, READER_KEY, auth
from tests.fixtures.processes import settings_env
from tests.fixtures.sandbox import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GEN = "services/common/events/_gen/ampgate/events/v1"


def fresh_sources(dest: Path) -> Path:
    """What a fresh clone holds for the build: no generated code, no build leftovers."""
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "proto-schemas", dest / "proto-schemas")
    shutil.copytree(REPO / "services", dest / "services", ignore=shutil.ignore_patterns(
        "_gen", "_gen.old", "__pycache__", "*.pyc"))
    assert not (dest / GEN).exists()
    return dest


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 120) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv holding the wheel; its dependencies visible from this venv through a .pth
    line (so no download), which adds that directory to sys.path without running the .pth
    files in it: the checkout's editable install stays invisible."""
    root = tmp_path_factory.mktemp("packaging")
    src = root / "src"
    src.mkdir()
    fresh_sources(src)
    wheels = root / "wheels"
    run(sys.executable, "-m", "pip", "wheel", ".", "-w", wheels, "--no-deps", "-q", cwd=src)
    (wheel,) = wheels.glob("ampgate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{GEN}/passport_changed_pb2.py" in names, "the wheel lacks the generated code"
    venv = root / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    python = venv / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                  cwd=root).strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "dependencies-from-the-test-venv.pth").write_text("\n".join(sorted(ours)) + "\n")
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
        "-q", wheel, cwd=root)
    return venv


def test_the_wheel_has_the_generated_code_and_a_version(installed: Path, tmp_path: Path):
    python = installed / "bin" / "python"
    where = run(python, "-c", "import services, services.common.events.schemas as s; "
                "from services.common.events._gen.ampgate.events.v1 import passport_changed_pb2 "
                "as m; print(services.__file__); print(m.__file__); print(s.PassportChanged)",
                cwd=tmp_path).splitlines()
    assert all(line.startswith(str(installed)) for line in where[:2]), where
    assert "PassportChanged" in where[2]
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert run(installed / "bin" / "ampgate", "--version", cwd=tmp_path).strip() == (
        f"ampgate {version}")


async def test_the_installed_gateway_serves_the_sandbox(installed: Path, sandbox, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AMPGATE_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(settings_env({
        **sandbox.upstream_settings(), "clients": CLIENTS, "state_dir": str(tmp_path / "state"),
        "http": {"host": "127.0.0.1", "port": port},
        # No broker here: events wait in the outbox, as they would in production.
        "kafka": {"bootstrap_servers": "127.0.0.1:9", "enable_idempotence": False},
        "log": {"format": "json", "level": "warning"},
    }))
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:  # noqa: ASYNC230 - the child's log, opened once
        proc = await asyncio.create_subprocess_exec(
            str(installed / "bin" / "ampgate"), "gateway", cwd=tmp_path, env=env,
            stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            while True:
                assert proc.returncode is None, log.read_text()[-3000:]
                try:
                    async with session.get(f"{url}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                await asyncio.sleep(0.1)
            before = (await sandbox.calls()).get("cpo.stations", 0)
            async with session.get(f"{url}/v1/charging-stations", headers=auth(READER_KEY)) as resp:
                assert resp.status == 200, await resp.text()
                assert resp.headers["X-Cache"] == "MISS"
                assert (await resp.json())["data"]
            assert (await sandbox.calls()).get("cpo.stations", 0) == before + 1
    finally:
        if proc.returncode is None:
            proc.kill()  # shutdown is not what this test is about (and may drain for a while)
        await asyncio.wait_for(proc.wait(), 10)
