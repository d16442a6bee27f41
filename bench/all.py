"""Every benchmark, then ONE table: each target of the performance issue with the figure,
its reference from the same run, the target and a verdict (met / missed).

    .venv/bin/python -m bench.all [--smoke] [--profile]

Runs bench.http_bench, bench.events_bench, bench.workers_bench, bench.rss_bench and
bench.cluster_bench one after the other (each starts and stops its own processes), then
reads their bench/results/*.json. --smoke: each script with --smoke (tiny counts, a few seconds
each, every code path); the table is printed but its verdicts mean nothing then.
Exit status: non-zero when a script failed (a missed target is not a failure).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from bench._support import REPO, RESULTS, log, print_table, read_results, run_module

# (module, full-run arguments, smoke arguments, bound in seconds: full, smoke)
BENCHES: list[tuple[str, list[str], list[str], float, float]] = [
    ("http_bench", [], ["--smoke", "--profile"], 1200, 120),
    ("events_bench", [], ["--smoke"], 1200, 120),
    ("workers_bench", [], ["--smoke"], 1800, 180),
    ("rss_bench", [], ["--smoke"], 900, 90),
    ("cluster_bench", [], ["--smoke"], 900, 90),
]

def cluster_rows(r: dict[str, Any] | None) -> list[list[str]]:
    """Cluster mode (issue 9): memory-tier hits on / off, shared-tier latency, cold burst
    over 3 replicas; the rows are built by bench.cluster_bench itself."""
    if r is None:
        return [["cluster rows", "cluster_bench gave no results", "", "", "", "n/a"]]
    from bench.cluster_bench import rows

    return rows(r)


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _n(v: Any, nd: int = 0) -> str:
    return "-" if _nan(v) else f"{v:,.{nd}f}"


def _rng(values: list[float], nd: int = 0) -> str:
    vals = [v for v in values if not _nan(v)]
    return f"({min(vals):,.{nd}f}–{max(vals):,.{nd}f})" if vals else ""


def verdict(value: Any, target: float, *, higher: bool = True) -> str:
    if _nan(value):
        return "n/a"
    return "met" if (value >= target if higher else value <= target) else "missed"


def http_rows(r: dict[str, Any] | None) -> list[list[str]]:
    if r is None:
        return [["cache-hit / cold-burst rows", "http_bench gave no results", "", "", "", "n/a"]]
    ch, ra, cb = r["cache_hit"], r["ratios"], r["cold_burst"]
    runs = r.get("runs", {})

    def rps(t: str) -> str:
        s = ch.get(t)
        return "-" if not s else f"{s['rps_median']:,.0f} ({s['rps_min']:,.0f}–{s['rps_max']:,.0f})"

    def p99(t: str) -> str:
        return _n(ch.get(t, {}).get("p99_ms_median"), 2) + " ms"

    gb, gn, p = ra.get("gateway_over_bare"), ra.get("gateway_over_nginx"), \
        ra.get("p99_gateway_over_bare")
    p99_pairs = [g["p99_ms"] / b["p99_ms"] for g, b in zip(runs.get("gateway", []),
                                                            runs.get("bare", []), strict=False)
                 if b["p99_ms"]]
    g_burst, n_burst = cb.get("gateway", {}), cb.get("nginx", {})
    bursts = [b["slowest_ms"] for b in r.get("bursts", {}).get("gateway", [])]
    burst_ok = verdict(g_burst.get("slowest_ms_median"), 62, higher=False)
    if burst_ok == "met" and g_burst.get("upstream_calls_max") != 1:
        burst_ok = "missed"
    return [
        ["cache-hit req/s, gateway / bare aiohttp", rps("gateway"), "bare " + rps("bare"),
         f"{_n(gb, 2)} {_rng([ra.get('gateway_over_bare_min'), ra.get('gateway_over_bare_max')], 2)}",
         ">= 0.85 (aim 1.0)", verdict(gb, 0.85)],
        ["cache-hit req/s, gateway / nginx proxy_cache", rps("gateway"), "nginx " + rps("nginx"),
         f"{_n(gn, 2)} {_rng([ra.get('gateway_over_nginx_min'), ra.get('gateway_over_nginx_max')], 2)}",
         ">= 0.2", verdict(gn, 0.2)],
        ["cache-hit p99, gateway / bare", p99("gateway"), "bare " + p99("bare"),
         f"{_n(p, 2)}x {_rng(p99_pairs, 2)}", "<= 1.3x", verdict(p, 1.3, higher=False)],
        [(f"cold burst {r['config']['burst']}x, {r['config']['injected_latency_ms']:.0f} ms "
         "upstream: slowest; upstream calls"),
         (f"{_n(g_burst.get('slowest_ms_median'), 1)} ms {_rng(bursts, 1)}; "
         f"{g_burst.get('upstream_calls_max', '-')} call(s)"),
         (f"nginx {_n(n_burst.get('slowest_ms_median'), 1)} ms; "
         f"{n_burst.get('upstream_calls_max', '-')} call(s)"), "",
         "<= 62 ms, 1 call", burst_ok],
    ]


def events_rows(r: dict[str, Any] | None) -> list[list[str]]:
    if r is None:
        return [["events rows", "events_bench gave no results", "", "", "", "n/a"]]
    tp, lat = r["throughput"], r["write_to_event_latency"]
    runs = tp.get("runs", {})
    pipes = [x["events_per_s"] for x in runs.get("pipeline", [])]
    raws = [x["events_per_s"] for x in runs.get("raw", [])]
    ratios = [a / b for a, b in zip(pipes, raws, strict=False) if b]
    missing = len(lat.get("missing_seqs", []))
    not_ok = lat["writes"] - lat.get("statuses", {}).get("200", lat.get("statuses", {}).get(200, 0))
    lat_ok = verdict(lat.get("p99_ms"), 20, higher=False)
    if lat_ok == "met" and (missing or not_ok):
        lat_ok = "missed"
    return [
        ["events: detector -> outbox -> Kafka / raw aiokafka, same messages",
         f"{_n(tp['pipeline_events_per_s'])} ev/s {_rng(pipes)}",
         f"raw {_n(tp['raw_events_per_s'])} ev/s {_rng(raws)}",
         f"{_n(tp['ratio'], 2)} {_rng(ratios, 2)}", ">= 0.8", verdict(tp["ratio"], 0.8)],
        [(f"write -> event readable p99 at ~{lat.get('target_rate', 0):,.0f} writes/s "
         "(gateway)"), f"p99 {_n(lat.get('p99_ms'), 1)} ms (p50 {_n(lat.get('p50_ms'), 1)})",
         f"achieved {_n(lat.get('achieved_rate'))} writes/s, {lat['writes']} writes",
         f"{missing} missing, {not_ok} not 200", "<= 20 ms, nothing missing", lat_ok],
    ]


def workers_rows(r: dict[str, Any] | None) -> list[list[str]]:
    if r is None:
        return [["history / webhook rows", "workers_bench gave no results", "", "", "", "n/a"]]
    s = r["stages"]
    rows = []
    for key, label in (("history-sqlite", "SQLite"), ("history-postgres", "PostgreSQL")):
        d = s.get(key) or {"error": "not run"}
        ev, ref = d.get("events_per_s"), (d.get("bare_consumer") or {}).get("events_per_s")
        rat = d.get("ratio_to_bare")
        ok = "met" if (not _nan(rat) and rat >= 0.8) or (not _nan(ev) and ev >= 10_000) \
            else ("n/a" if _nan(ev) else "missed")
        rows.append([f"history ingest ({label}) / bare aiokafka consumer, same backlog + broker",
                     f"{_n(ev)} ev/s ({d.get('backlog', '?')} backlog)"
                     + (f" ERROR {d['error'][:60]}" if "error" in d else ""),
                     f"bare {_n(ref)} ev/s", _n(rat, 2), ">= 0.8 or >= 10k ev/s", ok])
    wh = s.get("webhooks") or {"error": "not run"}
    rec = wh.get("receiver") or {}
    dps = wh.get("deliveries_per_s")
    order_kept = rec.get("out_of_order") == 0 and rec.get("unordered_bodies") == 0
    ok = verdict(dps, 4000)
    if ok == "met" and not order_kept:
        ok = "missed"
    rows.append(["webhook deliveries/s to a local receiver, per-endpoint order kept",
                 f"{_n(dps)} /s ({wh.get('backlog', '?')} backlog)"
                 + (f" ERROR {wh['error'][:60]}" if "error" in wh else ""),
                 f"received {rec.get('received', '-')}", (f"out of order {rec.get('out_of_order', '-')}"
                 f", dup {rec.get('duplicates', '-')}"), ">= 4k/s, order kept", ok])
    return rows


def rss_rows(r: dict[str, Any] | None) -> list[list[str]]:
    if r is None:
        return [["gateway RSS with a full cache", "rss_bench gave no results", "", "", "", "n/a"]]
    m, c = r["rss_mib"], r["config"]
    cache = r.get("cache_metrics", {}).get("ampgate_cache_bytes", float("nan")) / 2**20
    return [[f"gateway RSS with a full {c['budget_mib']:,.0f} MiB cache",
             f"{_n(m['full'], 1)} MiB (peak {_n(m['peak_during_fill'], 1)})",
             f"idle {_n(m['idle'], 1)} MiB; cache {_n(cache, 1)} MiB",
             f"(RSS-idle)/budget {_n(r.get('ratio_over_budget'), 2)}",
             f"<= 1.15 x budget + idle = {_n(m['limit'], 1)} MiB",
             verdict(m["full"], m["limit"], higher=False)]]


def print_summary(smoke: bool, where: Path) -> None:
    http, events = read_results("http", where), read_results("events", where)
    workers, rss = read_results("workers", where), read_results("rss", where)
    cluster = read_results("cluster", where)
    rows = http_rows(http) + events_rows(events) + workers_rows(workers) + rss_rows(rss) \
        + cluster_rows(cluster)
    load = [x["machine"]["loadavg_1m"] for x in (http, events, workers, rss, cluster) if x]
    title = ("ampgate performance targets" + (" — SMOKE run: tiny counts, verdicts mean "
                                                 "nothing" if smoke else "")
             + (f"; load average at the starts {', '.join(f'{v:.1f}' for v in load)}"
                if load else ""))
    print_table(title, ["figure", "ampgate (median, min–max)", "reference, same run",
                        "ratio / check", "target", "verdict"], rows)
    if http and (http.get("profile") or {}).get("self_pct"):
        prof = http["profile"]
        print(f"\ngateway cache-hit profile ({prof['samples']} samples), top self %:")
        for name, pct in prof["self_pct"][:15]:
            print(f"  {pct:5.1f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--profile", action="store_true", help="http_bench --profile too")
    parser.add_argument("--only", default="", help="comma-separated subset of the modules")
    args = parser.parse_args()
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    where = RESULTS
    if args.smoke and not os.environ.get("BENCH_RESULTS_DIR"):
        # The children write there too: a smoke run never overwrites a real run's figures.
        where = REPO / "bench" / "results" / "smoke"
        os.environ["BENCH_RESULTS_DIR"] = str(where)
    failed = []
    for module, full, smoke, bound, smoke_bound in BENCHES:
        if only and module not in only:
            continue
        (where / f"{module.removesuffix('_bench')}.json").unlink(missing_ok=True)
        argv = smoke if args.smoke else full + (["--profile"] if args.profile
                                                and module == "http_bench" else [])
        rc = run_module(module, argv, timeout_s=smoke_bound if args.smoke else bound)
        if rc != 0:
            log(f"bench.{module} failed (exit {rc})")
            failed.append(module)
    print_summary(args.smoke, where)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
