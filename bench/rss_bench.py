"""Memory benchmark: gateway RSS with a full response cache against its budget.

    .venv/bin/python -m bench.rss_bench [--budget-mib 256 --entry-kib 64]

Starts the sandbox and `ampgate gateway` (1 process, AMPGATE_CACHE__MAX_BYTES = the
budget, cache TTL 1 h, Kafka down: nothing here writes); idle RSS after one warm GET.
Then creates passports in the sandbox directly (its owner API, a padding field making
each public document ~--entry-kib) — enough for 1.25 x the budget — and GETs each one
through the gateway (16 at a time), so the cache fills up and evicts. RSS is read from
/proc/<pid>/status after the fill (and its peak sampled during it); the gateway's own
`ampgate_cache_bytes` shows the cache is full. Target: RSS <= 1.15 x budget + idle RSS.
Prints one table and writes bench/results/rss.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import shutil
import string
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bench._support import (
    Child,
    RssSampler,
    check,
    free_port,
    http_json,
    log,
    machine,
    print_table,
    rss_mib,
    start_service,
    warn_if_busy,
    write_results,
)
from bench.http_bench import SANDBOX_DEFAULTS, WARM_ID, gateway_env


def sandbox_token(sandbox_url: str) -> str:
    s = SANDBOX_DEFAULTS
    status, body, _ = http_json("POST", sandbox_url + "/siemensid/oauth/token", {
        "grant_type": "client_credentials", "client_id": s["passport_client_id"],
        "client_secret": s["passport_client_secret"], "audience": s["passport_audience"]})
    if status != 200:
        raise SystemExit(f"sandbox token: {status} {body}")
    return body["access_token"]


async def fill(sandbox_url: str, gateway_url: str, api_key: str, count: int, entry_kib: int,
               timeout_s: float) -> dict[str, Any]:
    """count padded passports created in the sandbox, then each GET through the gateway."""
    token = sandbox_token(sandbox_url)
    rng = secrets.SystemRandom()
    alphabet = string.ascii_letters + string.digits
    ids = [f"RSS-{i:06d}" for i in range(count)]
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    sem = asyncio.Semaphore(16)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def create(pid: str) -> None:
            pad = "".join(rng.choice(alphabet) for _ in range(64))
            doc = {"id": pid, "general_information": {"identification": {"uid": pid}},
                   "bench_padding": pad * (entry_kib * 16)}
            async with sem, session.post(sandbox_url + "/passport/v1/passports", json=doc,
                                         headers={"Authorization": f"Bearer {token}"}) as r:
                await r.read()
                if r.status != 201:
                    raise RuntimeError(f"sandbox create {pid}: {r.status}")

        async def get(pid: str) -> None:
            if time.monotonic() > deadline:
                statuses[-1] = statuses.get(-1, 0) + 1
                return
            async with sem, session.get(f"{gateway_url}/v1/passports/{pid}",
                                        headers={"Authorization": f"Bearer {api_key}"}) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

        t0 = time.perf_counter()
        for start in range(0, count, 256):
            await asyncio.gather(*(create(p) for p in ids[start:start + 256]))
        created_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        for start in range(0, count, 256):
            await asyncio.gather(*(get(p) for p in ids[start:start + 256]))
        return {"created": count, "create_s": round(created_s, 1),
                "fill_s": round(time.perf_counter() - t1, 1), "get_statuses": statuses}


def cache_metrics(gateway_url: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(gateway_url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError as exc:
        log(f"gateway /metrics: {exc!r}")
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("ampgate_cache_bytes", "ampgate_cache_entries") or s.name == "ampgate_cache_evictions_total":
                out[s.name] = out.get(s.name, 0) + s.value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mib", type=float, default=256,
                        help="AMPGATE_CACHE__MAX_BYTES in MiB")
    parser.add_argument("--entry-kib", type=int, default=64, help="size of one cached document")
    parser.add_argument("--fill-factor", type=float, default=1.25,
                        help="documents fetched, as a multiple of what fits the budget")
    parser.add_argument("--timeout", type=float, default=300, help="fill bound, seconds")
    parser.add_argument("--smoke", action="store_true", help="a 4 MiB budget (no thresholds)")
    args = parser.parse_args()
    if args.smoke:
        args.budget_mib, args.timeout = 4, 60
    load_before = warn_if_busy()
    budget = int(args.budget_mib * 1024 * 1024)
    count = math.ceil(args.fill_factor * budget / (args.entry_kib * 1024))
    work = Path(tempfile.mkdtemp(prefix="ampgate-bench-rss-"))
    api_key = "bench-" + secrets.token_urlsafe(24)
    started: list[Child] = []
    try:
        sandbox = start_service("sandbox", {"AMPGATE_LOG__LEVEL": "warning"})
        started.append(sandbox)
        env = gateway_env(sandbox.url, api_key, work / "state",
                          kafka=f"127.0.0.1:{free_port()}", log_level="warning")
        env["AMPGATE_CACHE__MAX_BYTES"] = str(budget)
        gateway = start_service("gateway", env)
        started.append(gateway)
        status, _, _ = http_json("GET", f"{gateway.url}/v1/passports/{WARM_ID}",
                                 headers={"Authorization": f"Bearer {api_key}"})
        if status != 200:
            raise SystemExit(f"gateway answered {status} for the warm key")
        time.sleep(1.0)
        idle = rss_mib(gateway.pid) or float("nan")
        log(f"idle RSS {idle:.1f} MiB; filling a {args.budget_mib:g} MiB cache with {count} "
            f"documents of ~{args.entry_kib} KiB")
        with RssSampler(gateway.pid) as sampler:
            filled = asyncio.run(fill(sandbox.url, gateway.url, api_key, count, args.entry_kib,
                                      args.timeout))
        time.sleep(1.0)
        full = rss_mib(gateway.pid) or float("nan")
        metrics = cache_metrics(gateway.url)
    finally:
        for child in reversed(started):
            child.stop()
        shutil.rmtree(work, ignore_errors=True)
    budget_mib = budget / (1024 * 1024)
    limit = 1.15 * budget_mib + idle
    report = {
        "machine": machine(),
        "config": {"budget_mib": budget_mib, "entry_kib": args.entry_kib, "documents": count,
                   "fill_factor": args.fill_factor, "smoke": args.smoke,
                   "loadavg_before": load_before},
        "fill": filled,
        "cache_metrics": metrics,
        "rss_mib": {"idle": idle, "full": full, "peak_during_fill": sampler.peak,
                    "limit": limit},
        "ratio_over_budget": (full - idle) / budget_mib,
    }
    path = write_results("rss", report)
    cache_mib = metrics.get("ampgate_cache_bytes", float("nan")) / (1024 * 1024)
    rows = [
        ["cache budget MiB (AMPGATE_CACHE__MAX_BYTES)", f"{budget_mib:,.0f}", "", ""],
        ["documents fetched (of ~KiB each) / GET statuses",
         f"{count} ({args.entry_kib}) / {filled['get_statuses']}", "", ""],
        ["ampgate_cache_bytes MiB after the fill / entries / evictions",
         (f"{cache_mib:,.1f} / {metrics.get('ampgate_cache_entries', 0):,.0f} / "
         f"{metrics.get('ampgate_cache_evictions_total', 0):,.0f}"), "~ budget", ""],
        ["gateway RSS MiB idle / full cache (peak during fill)",
         f"{idle:,.1f} / {full:,.1f} ({sampler.peak:,.1f})", "", ""],
        ["RSS with a full cache vs 1.15 x budget + idle", f"{full:,.1f} vs {limit:,.1f}",
         "<=", check(full, limit, higher_is_better=False)],
    ]
    print_table(f"ampgate gateway memory — {report['machine']['cpus']} CPUs, "
                f"fill {filled['fill_s']} s", ["metric", "value", "target", "verdict"], rows)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
