"""/docs in a real headless Chromium (Debian's `chromium`): the page renders every operation
of the route table from what the gateway serves, with every other host unreachable, and a
screenshot is kept under the test run's tmp dir (its path is printed)."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from services.gateway.routes import ROUTES
from tests.conftest import server_unavailable

pytestmark = pytest.mark.integration

TIMEOUT_S = 60


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    server_unavailable("chromium", "install Debian's chromium (scripts/bootstrap.sh does, as root)")
    raise AssertionError("unreachable")


async def _run_chromium(binary: str, profile, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        f"--user-data-dir={profile}",
        # No host but the gateway's resolves: a CDN reference could not load.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=15000", "--window-size=1280,1600", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


async def _served(gateway, route: str) -> float:
    text = await (await gateway.get("/metrics")).text()
    return sum(float(m) for m in re.findall(
        rf'ampgate_http_requests_total{{[^}}]*route="{re.escape(route)}"[^}}]*status="200"'
        rf'[^}}]*}} ([0-9.e+]+)', text))


async def test_docs_page_renders_every_operation_offline(gateway, tmp_path):
    binary = _chromium()
    url = str(gateway.make_url("/docs"))
    dom = await _run_chromium(binary, tmp_path / "profile-dom", "--dump-dom", url)
    # Swagger UI rendered the document it fetched from the gateway: every route is listed.
    rendered = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {r.path for r in ROUTES} <= rendered, (sorted(rendered), dom[:2000])
    assert "ampgate" in dom and 'class="opblock' in dom
    assert await _served(gateway, "openapi") >= 1
    assert await _served(gateway, "docs_asset") >= 3  # css, bundle, preset

    shot = tmp_path / "docs.png"
    await _run_chromium(binary, tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    kept = Path(__file__).resolve().parents[3] / ".artifacts" / "docs-screenshot.png"
    kept.parent.mkdir(exist_ok=True)
    shutil.copyfile(shot, kept)  # a stable place to look at it after the run (git-ignored)
    print(f"\n/docs screenshot: {kept}")
