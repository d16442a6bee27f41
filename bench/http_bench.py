"""HTTP benchmark: the gateway's cache against nginx proxy_cache and a bare aiohttp
handler, side by side in one run, one process each, over the same sandbox route.

    .venv/bin/python -m bench.http_bench [--runs 3 --duration 10 --connections 64]

Measures (see bench/README.md): cache-hit requests/s and p50/p99 latency with wrk
(median of --runs, targets interleaved so drift hits all three alike); a cold burst
of 200 concurrent requests on a never-seen key with 50 ms injected upstream latency
(upstream calls counted by the sandbox, slowest response); gateway VmRSS idle and
under load. Prints one table and writes bench/results/http.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench._burst import cold_burst
from bench._nginx import start_nginx, worker_pids
from bench._support import (
    PYTHON,
    REPO,
    RESULTS,
    Child,
    RssSampler,
    WrkResult,
    check,
    ensure_debian_tools,
    free_port,
    have_tools,
    http_json,
    is_ci,
    load,
    log,
    machine,
    median,
    print_table,
    ratio,
    rss_mib,
    spawn,
    start_broker,
    start_service,
    stop_broker,
    wait_http,
    warn_if_busy,
    write_results,
)

WARM_ID = "BP-0001"
SANDBOX_DEFAULTS = {  # services/sandbox/config.py defaults; the sandbox runs with them
    "passport_client_id": "sandbox-passport-client",
    "passport_client_secret": "sandbox-passport-secret",
    "passport_audience": "https://api.battery-passport.siemens.com",
    "cpo_client_id": "sandbox-cpo-client",
    "cpo_client_secret": "sandbox-cpo-secret",
    "pricing_api_token": "sandbox-pricing-token",
}


# ---------------------------------------------------------------- the stack


def gateway_env(sandbox_url: str, api_key: str, state_dir: Path, *, kafka: str,
                log_level: str) -> dict[str, str]:
    s = SANDBOX_DEFAULTS
    client = {"name": "bench", "key_sha256": hashlib.sha256(api_key.encode()).hexdigest(),
              "scopes": ["passports:read", "passports:write"]}
    return {
        "AMPGATE_CLIENTS": json.dumps([client]),
        "AMPGATE_PASSPORT__BASE_URL": sandbox_url + "/passport",
        "AMPGATE_PASSPORT__TOKEN_URL": sandbox_url + "/siemensid/oauth/token",
        "AMPGATE_PASSPORT__CLIENT_ID": s["passport_client_id"],
        "AMPGATE_PASSPORT__CLIENT_SECRET": s["passport_client_secret"],
        "AMPGATE_PASSPORT__AUDIENCE": s["passport_audience"],
        "AMPGATE_CPO__BASE_URL": sandbox_url,
        "AMPGATE_CPO__TOKEN_URL": sandbox_url + "/cognito/token",
        "AMPGATE_CPO__CLIENT_ID": s["cpo_client_id"],
        "AMPGATE_CPO__CLIENT_SECRET": s["cpo_client_secret"],
        "AMPGATE_PRICING__BASE_URL": sandbox_url,
        "AMPGATE_PRICING__API_TOKEN": s["pricing_api_token"],
        "AMPGATE_STATE_DIR": str(state_dir),
        # Like nginx's proxy_cache_valid 200 1h: nothing expires during the run.
        "AMPGATE_CACHE__DEFAULT_TTL_S": "3600",
        "AMPGATE_KAFKA__BOOTSTRAP_SERVERS": kafka,
        "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE": "false",
        "AMPGATE_LOG__LEVEL": log_level,
        "AMPGATE_LOG__FORMAT": "json",
    }


# ---------------------------------------------------------------- the cold burst


def burst_against(name: str, port: int, pid: str, sandbox_url: str, headers: dict[str, str],
                  n: int, latency_ms: float) -> dict[str, Any]:
    http_json("POST", sandbox_url + "/_control/faults",
              {"endpoint": "passport.public", "kind": "latency", "latency_ms": latency_ms})
    before = http_json("GET", sandbox_url + "/_control/calls")[1]["counts"]["passport.public"]
    try:
        result = cold_burst([port], f"/v1/passports/{pid}", n, headers)
    finally:
        http_json("DELETE", sandbox_url + "/_control/faults")
    after = http_json("GET", sandbox_url + "/_control/calls")[1]["counts"]["passport.public"]
    result["upstream_calls"] = after - before
    result["passport_id"] = pid
    log(f"cold burst {name}: {result}")
    return result


# ---------------------------------------------------------------- profile


def profile_gateway(gateway: Child, url: str, headers: dict[str, str], args: argparse.Namespace,
                    out_dir: Path) -> dict[str, Any]:
    """py-spy record (raw collapsed stacks) of the gateway during one more wrk run."""
    pyspy = Path(PYTHON).parent / "py-spy"
    if not pyspy.exists():
        log("installing py-spy into .venv for --profile")
        subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    raw = out_dir / "gateway-profile.txt"
    duration = max(2 if args.smoke else 3, int(args.duration))
    spy = subprocess.Popen([str(pyspy), "record", "--pid", str(gateway.pid), "--rate", "100",
                            "--duration", str(duration), "--format", "raw", "--output", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    wrk = load(url, threads=args.threads, connections=args.connections,
                  duration_s=duration, headers=headers)
    _, err = spy.communicate(timeout=duration + 30)
    if spy.returncode != 0 or not raw.exists():
        log(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
        return {"error": err.decode(errors="replace")[-500:]}
    summary = summarize_profile(raw)
    summary["rps_while_profiling"] = wrk.rps
    summary["raw"] = str(raw)
    return summary


_BOILERPLATE = ("<module> (services/__main__.py)", "main (services/cli.py)",
                "run (services/gateway/main.py)")


def summarize_profile(raw: Path, top: int = 20) -> dict[str, Any]:
    """From py-spy's collapsed stacks: self time per function, self time per package
    (where the CPU goes: our code, aiohttp, asyncio, prometheus_client, ...), and
    inclusive time of our own functions (what each step of a request costs)."""
    self_: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f.strip()) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        self_[frames[-1]] += n
        packages[_package(frames[-1])] += n
        for frame in set(frames):
            if frame not in _BOILERPLATE and not frame.startswith(("run (", "_run_once (",
                                                                     "run_forever (")):
                inclusive[frame] += n
            if "(services/" in frame and frame not in _BOILERPLATE:
                ours[frame] += n

    def pct(c: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * v / total, 1)] for name, v in c.most_common(top)]

    # Frames on every stack (runpy, run_app, the service runner) say nothing: left out.
    inclusive = Counter({k: v for k, v in inclusive.items() if v < total})
    return {"samples": total, "self_pct": pct(self_), "total_pct": pct(inclusive), "self_by_package_pct": pct(packages),
            "ours_inclusive_pct": pct(ours)}


def _package(frame: str) -> str:
    where = frame.partition(" (")[2].rstrip(")")
    if where.startswith("services/"):
        return "/".join(where.split("/")[:2])  # services/gateway, services/common
    head = where.split("/")[0]
    return head.removesuffix(".py") if head else "?"


def _short(frame: str) -> str:
    # "handle (aiohttp/web_protocol.py:123)" -> "handle (aiohttp/web_protocol.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per target (median)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--burst", type=int, default=200, help="cold-burst concurrency")
    # 7, not 3: the first burst of a run often opens a new upstream connection (the pooled
    # one timed out while the other targets ran), and with 3 the median is a coin toss
    # between the other two
    parser.add_argument("--bursts", type=int, default=7, help="cold bursts per target")
    parser.add_argument("--latency-ms", type=float, default=50, help="injected upstream latency")
    parser.add_argument("--access-log", action="store_true",
                        help="gateway logs every request (info) and nginx writes an access log; "
                             "default: both off, like nginx's access_log off")
    parser.add_argument("--profile", action="store_true",
                        help="also py-spy the gateway under one more wrk run")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="experiment: start the gateway with its import-time heap frozen "
                             "(gc.freeze()) to see what full GC passes cost the tail")
    parser.add_argument("--targets", default="gateway,nginx,bare",
                        help="comma-separated subset of gateway,nginx,bare")
    parser.add_argument("--smoke", action="store_true",
                        help="every code path, tiny counts, no thresholds; without wrk/nginx "
                             "a Python load loop and no nginx target")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.burst, args.bursts = 1, 1, 20, 1
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]

    if not args.smoke:
        ensure_debian_tools({"wrk": ["wrk"], "nginx": ["nginx-light", "nginx"]})
    elif not have_tools("nginx"):
        log("smoke: nginx missing, nginx target skipped" + (" (CI)" if is_ci() else ""))
        targets = [t for t in targets if t != "nginx"]
    if args.smoke and not have_tools("wrk"):
        log("smoke: wrk missing, a Python load loop drives the targets")
    load_before = warn_if_busy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ampgate-bench-http-"))
    api_key = "bench-" + secrets.token_urlsafe(24)
    auth = {"Authorization": f"Bearer {api_key}"}
    broker = None
    started: list[Child] = []
    try:
        log("starting sandbox")
        sandbox = start_service("sandbox", {"AMPGATE_LOG__LEVEL": "warning"})
        started.append(sandbox)
        sandbox_port = int(sandbox.url.rsplit(":", 1)[1])

        kafka, broker = start_broker()
        log(f"starting gateway (kafka {kafka})")
        gateway = start_service("gateway", gateway_env(
            sandbox.url, api_key, work / "state", kafka=kafka,
            log_level="info" if args.access_log else "warning"), gc_freeze=args.gc_freeze)
        started.append(gateway)
        # Warm: token + cache fill; the first answer is the bytes the others serve too.
        status, _, hdrs = http_json("GET", f"{gateway.url}/v1/passports/{WARM_ID}", headers=auth)
        if status != 200:
            raise SystemExit(f"gateway answered {status} for the warm key")
        req = urllib.request.Request(f"{gateway.url}/v1/passports/{WARM_ID}", headers=auth)
        with urllib.request.urlopen(req) as resp:
            body, content_type, x_cache = resp.read(), resp.headers.get_content_type(), \
                resp.headers.get("X-Cache")
        if x_cache != "HIT":
            log(f"warning: second gateway GET answered X-Cache: {x_cache}")
        time.sleep(1.0)
        rss_idle = rss_mib(gateway.pid)

        body_file = work / "body.json"
        body_file.write_bytes(body)
        bare_port = free_port()
        bare = spawn("bare", [PYTHON, str(REPO / "bench" / "bare_server.py"), "--port",
                              str(bare_port), "--body", str(body_file),
                              "--content-type", content_type])
        bare.url = f"http://127.0.0.1:{bare_port}"
        wait_http(bare, bare.url + "/healthz")
        started.append(bare)

        endpoints = {
            "gateway": (f"{gateway.url}/v1/passports/{WARM_ID}", auth),
            "bare": (f"{bare.url}/v1/passports/{WARM_ID}", {}),
        }
        nginx: Child | None = None
        if "nginx" in targets:
            nginx = start_nginx(free_port(), sandbox_port, access_log=args.access_log)
            started.append(nginx)
            for _ in range(2):
                urllib.request.urlopen(f"{nginx.url}/v1/passports/{WARM_ID}").read()
            with urllib.request.urlopen(f"{nginx.url}/v1/passports/{WARM_ID}") as resp:
                nginx_body, nginx_cache = resp.read(), resp.headers.get("X-Cache")
            if nginx_cache != "HIT" or nginx_body != body:
                log(f"warning: nginx X-Cache={nginx_cache}, same bytes={nginx_body == body}")
            endpoints["nginx"] = (f"{nginx.url}/v1/passports/{WARM_ID}", {})
        runs: dict[str, list[WrkResult]] = {t: [] for t in targets}
        rss_peak = 0.0
        log(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s x{args.runs} "
            f"for {', '.join(targets)} (interleaved)")
        # Short warm-up of each target so the first measured run is not the JIT-less one.
        for t in targets:
            url, hdrs = endpoints[t]
            load(url, threads=args.threads, connections=args.connections,
                 duration_s=1 if args.smoke else 2, headers=hdrs)
        for i in range(args.runs):
            for t in targets:
                url, hdrs = endpoints[t]
                if t == "gateway":
                    with RssSampler(gateway.pid) as sampler:
                        result = load(url, threads=args.threads, connections=args.connections,
                                         duration_s=args.duration, headers=hdrs)
                    rss_peak = max(rss_peak, sampler.peak)
                else:
                    result = load(url, threads=args.threads, connections=args.connections,
                                     duration_s=args.duration, headers=hdrs)
                runs[t].append(result)
                log(f"run {i + 1} {t}: {result.rps} req/s p50 {result.p50_ms} ms "
                    f"p99 {result.p99_ms} ms errors {result.errors}")
        rss_after = rss_mib(gateway.pid)

        bursts: dict[str, list[dict[str, Any]]] = {"gateway": [], "nginx": []}
        for i in range(args.bursts):
            if "gateway" in targets:
                bursts["gateway"].append(burst_against(
                    "gateway", int(gateway.url.rsplit(":", 1)[1]), f"BP-{101 + i:04d}",
                    sandbox.url, auth, args.burst, args.latency_ms))
            if nginx is not None:
                bursts["nginx"].append(burst_against(
                    "nginx", int(nginx.url.rsplit(":", 1)[1]), f"BP-{201 + i:04d}",
                    sandbox.url, {}, args.burst, args.latency_ms))

        profile = None
        if args.profile and "gateway" in targets:
            url, hdrs = endpoints["gateway"]
            profile = profile_gateway(gateway, url, hdrs, args, RESULTS)

        nginx_workers = worker_pids(nginx.pid) if nginx is not None else []
        report = build_report(args, runs, bursts, rss_idle, rss_peak, rss_after, profile,
                              body_bytes=len(body), nginx_workers=len(nginx_workers),
                              kafka=kafka if broker is not None else "down (no broker)",
                              loadavg_before=load_before, smoke=args.smoke,
                              load_tool="wrk" if have_tools("wrk") else "python loop")
        path = write_results("http", report)
        print_report(report)
        print(f"\nwritten: {path}")
    finally:
        for child in reversed(started):
            child.stop()
        stop_broker(broker)
        shutil.rmtree(work, ignore_errors=True)


def _med(results: list[WrkResult], attr: str) -> float:
    return median([getattr(r, attr) for r in results])


def build_report(args: argparse.Namespace, runs: dict[str, list[WrkResult]],
                 bursts: dict[str, list[dict[str, Any]]], rss_idle: float | None,
                 rss_peak: float, rss_after: float | None, profile: dict[str, Any] | None,
                 **extra: Any) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for t, rs in runs.items():
        summary[t] = {
            "rps_median": _med(rs, "rps"),
            "rps_min": min(r.rps for r in rs), "rps_max": max(r.rps for r in rs),
            "p50_ms_median": _med(rs, "p50_ms"), "p99_ms_median": _med(rs, "p99_ms"),
            "errors": sum(r.errors for r in rs),
        }
    gw = summary.get("gateway", {}).get("rps_median", float("nan"))
    ratios = {
        "gateway_over_nginx": ratio(gw, summary.get("nginx", {}).get("rps_median", 0)),
        "gateway_over_bare": ratio(gw, summary.get("bare", {}).get("rps_median", 0)),
        "p99_gateway_over_bare": ratio(summary.get("gateway", {}).get("p99_ms_median", 0),
                                       summary.get("bare", {}).get("p99_ms_median", 0)),
    }
    # min-max of the ratios over the interleaved runs (run i of each target against run i)
    for other in ("nginx", "bare"):
        pairs = [ratio(g.rps, o.rps) for g, o in zip(runs.get("gateway", []), runs.get(other, []),
                                                     strict=False)]
        if pairs:
            ratios[f"gateway_over_{other}_min"] = min(pairs)
            ratios[f"gateway_over_{other}_max"] = max(pairs)
    burst_summary = {
        t: {"upstream_calls_max": max(b["upstream_calls"] for b in bs),
            "slowest_ms_median": median([b["slowest_ms"] for b in bs]),
            "slowest_ms_max": max(b["slowest_ms"] for b in bs),
            "non_200": sum(n for b in bs for s, n in b["statuses"].items() if s != 200)}
        for t, bs in bursts.items() if bs
    }
    return {
        "machine": machine(),
        "config": {"wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s "
                          f"--latency, {args.runs} runs per target, interleaved",
                   "processes": "gateway 1, nginx worker_processes 1, bare aiohttp 1",
                   "access_log": args.access_log, "gateway_gc_freeze": args.gc_freeze,
                   "burst": args.burst,
                   "injected_latency_ms": args.latency_ms, **extra},
        "cache_hit": summary,
        "ratios": ratios,
        "cold_burst": burst_summary,
        "gateway_rss_mib": {"idle": rss_idle, "peak_under_load": rss_peak,
                            "after_load": rss_after},
        "runs": {t: [r.as_dict() for r in rs] for t, rs in runs.items()},
        "bursts": bursts,
        "profile": profile,
    }


def _f(v: Any, nd: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}"


def print_report(r: dict[str, Any]) -> None:
    ch, ra, cb, rss = r["cache_hit"], r["ratios"], r["cold_burst"], r["gateway_rss_mib"]

    def col(t: str, key: str, nd: int = 1) -> str:
        return _f(ch.get(t, {}).get(key), nd)

    def rps(t: str) -> str:
        s = ch.get(t)
        return "-" if not s else f"{s['rps_median']:,.0f} ({s['rps_min']:,.0f}-{s['rps_max']:,.0f})"

    def burst(t: str, key: str, nd: int = 1) -> str:
        return _f(cb.get(t, {}).get(key), nd)

    rows = [
        ["cache hit req/s, median (min-max)", rps("gateway"), rps("nginx"), rps("bare"), "", ""],
        ["cache hit p50 latency ms", col("gateway", "p50_ms_median", 2),
         col("nginx", "p50_ms_median", 2), col("bare", "p50_ms_median", 2), "", ""],
        ["cache hit p99 latency ms", col("gateway", "p99_ms_median", 2),
         col("nginx", "p99_ms_median", 2), col("bare", "p99_ms_median", 2), "", ""],
        ["wrk errors / non-2xx (all runs)", col("gateway", "errors", 0), col("nginx", "errors", 0),
         col("bare", "errors", 0), "0", ""],
        ["ratio gateway / nginx (req/s)", _f(ra["gateway_over_nginx"], 2), "", "",
         ">= 0.2", check(ra["gateway_over_nginx"], 0.2)],
        ["ratio gateway / bare aiohttp (req/s)", _f(ra["gateway_over_bare"], 2), "", "",
         ">= 0.85 (aim 1.0)", check(ra["gateway_over_bare"], 0.85)],
        ["ratio p99 gateway / bare aiohttp", _f(ra["p99_gateway_over_bare"], 2), "", "",
         "<= 1.3", check(ra["p99_gateway_over_bare"], 1.3, higher_is_better=False)],
        [(f"cold burst {r['config']['burst']}x, {r['config']['injected_latency_ms']:.0f} ms "
          "upstream: upstream calls (max)"), burst("gateway", "upstream_calls_max", 0),
         burst("nginx", "upstream_calls_max", 0), "", "1",
         check(cb.get("gateway", {}).get("upstream_calls_max", float("nan")), 1,
               higher_is_better=False)],
        ["cold burst slowest response ms (median / max)",
         f"{burst('gateway', 'slowest_ms_median')} / {burst('gateway', 'slowest_ms_max')}",
         f"{burst('nginx', 'slowest_ms_median')} / {burst('nginx', 'slowest_ms_max')}", "",
         "<= 62 (gateway, median)",
         check(cb.get("gateway", {}).get("slowest_ms_median", float("nan")), 62,
               higher_is_better=False)],
        ["cold burst non-200 answers", burst("gateway", "non_200", 0),
         burst("nginx", "non_200", 0), "", "0", ""],
        ["gateway RSS MiB idle / peak under load",
         f"{_f(rss['idle'])} / {_f(rss['peak_under_load'])}", "", "", "", ""],
    ]
    m = r["machine"]
    print_table(f"ampgate HTTP benchmark — {m['cpus']} CPUs ({m['cpu_model']}), "
                f"{r['config']['wrk']}; {r['config']['processes']}; "
                f"access logs {'on' if r['config']['access_log'] else 'off'}",
                ["metric", "gateway", "nginx proxy_cache", "bare aiohttp", "target", "verdict"],
                rows)
    if r.get("profile") and "self_pct" in r["profile"]:
        p = r["profile"]
        print(f"\ngateway py-spy profile under wrk ({p['samples']} samples, "
              f"{p['rps_while_profiling']:,.0f} req/s while sampled), top self time %:")
        for name, pct in p["self_pct"][:15]:
            print(f"  {pct:5.1f}  {name}")
        print("top total (inclusive) time %:")
        for name, pct in p.get("total_pct", [])[:15]:
            print(f"  {pct:5.1f}  {name}")
        print("self time by package %:")
        for name, pct in p["self_by_package_pct"][:12]:
            print(f"  {pct:5.1f}  {name}")
        print("inclusive time of ampgate functions %:")
        for name, pct in p["ours_inclusive_pct"][:20]:
            print(f"  {pct:5.1f}  {name}")


if __name__ == "__main__":
    main()
