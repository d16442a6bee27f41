"""The benchmarks never rot: `bench/run.sh --smoke` (what it runs after the bootstrap:
`python -m bench.all --smoke`) drives every benchmark script with tiny counts against
the real servers and prints the target table. No speed thresholds here (speed is
measured in bench/, never as a timed test); what is asserted is that every script ran
its whole path and produced the figures a reader of the table needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = [
    "cache-hit req/s, gateway / bare aiohttp",
    "cache-hit req/s, gateway / nginx proxy_cache",
    "cache-hit p99, gateway / bare",
    "cold burst 20x, 50 ms upstream: slowest; upstream calls",
    "events: detector -> outbox -> Kafka / raw aiokafka, same messages",
    "write -> event readable p99 at ~50 writes/s (gateway)",
    "history ingest (SQLite) / bare aiokafka consumer, same backlog + broker",
    "history ingest (PostgreSQL) / bare aiokafka consumer, same backlog + broker",
    "webhook deliveries/s to a local receiver, per-endpoint order kept",
    "gateway RSS with a full 4 MiB cache",
    "cluster: memory-tier hit req/s, cluster on / off (same run)",
    "cluster: shared-tier hit (filled on A, asked on B) p50 / p99, 10 keys",
    "cluster: cold burst 30x over 3 replicas, 50 ms upstream: slowest; upstream calls",
]


@pytest.mark.timeout(420)
def test_bench_smoke_runs_every_benchmark(tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_RESULTS_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "bench.all", "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=400, check=False)
    out = done.stdout
    assert done.returncode == 0, f"{out[-4000:]}\n{done.stderr[-6000:]}"

    # The summary table: every target row, each with a verdict column.
    table = out[out.index("ampgate performance targets"):]
    for row in ROWS:
        line = next((ln for ln in table.splitlines() if ln.strip().startswith(row)), None)
        assert line is not None, f"row {row!r} missing from:\n{table}"
        assert line.rstrip().split("|")[-1].strip() in ("met", "missed", "n/a"), line

    def results(name: str) -> dict:
        return json.loads((tmp_path / f"{name}.json").read_text())

    http = results("http")
    assert http["config"]["smoke"] is True
    for target in ("gateway", "bare"):
        assert http["cache_hit"][target]["rps_median"] > 0
        assert http["cache_hit"][target]["errors"] == 0
    gw_burst = http["cold_burst"]["gateway"]
    assert gw_burst["upstream_calls_max"] == 1 and gw_burst["non_200"] == 0
    profile = http["profile"]
    assert profile and (profile.get("self_pct") or profile.get("error")), profile

    events = results("events")
    assert events["throughput"]["pipeline_events_per_s"] > 0
    assert events["throughput"]["raw_events_per_s"] > 0
    lat = events["write_to_event_latency"]
    assert lat["events_matched"] == lat["writes"] and not lat["missing_seqs"], lat

    stages = results("workers")["stages"]
    for name in ("history-sqlite", "history-postgres", "webhooks"):
        assert "error" not in stages[name], stages[name]
        assert stages[name]["outcomes"]["ok"] == stages[name]["backlog"]
    for name in ("history-sqlite", "history-postgres"):
        assert stages[name]["bare_consumer"]["read"] == stages[name]["backlog"]
    receiver = stages["webhooks"]["receiver"]
    assert receiver["received"] >= stages["webhooks"]["backlog"]
    assert receiver["order_checked"] >= receiver["received"] // 2  # keys seen again and again
    assert receiver["out_of_order"] == 0 and receiver["unordered_bodies"] == 0

    rss = results("rss")
    assert rss["fill"]["get_statuses"] == {"200": rss["config"]["documents"]}
    assert rss["cache_metrics"]["ampgate_cache_bytes"] > 0.8 * rss["config"]["budget_mib"] * 2**20
    assert rss["rss_mib"]["full"] > rss["rss_mib"]["idle"]

    cluster = results("cluster")
    assert cluster["config"]["smoke"] is True
    for mode in ("cluster_on", "cluster_off"):
        assert cluster["memory_hit"][mode]["rps_median"] > 0
        assert cluster["memory_hit"][mode]["errors"] == 0
    assert cluster["config"]["redis_calls_during"] == 0  # a memory hit never asks Redis
    shared = cluster["shared_tier"]
    assert shared["statuses"] == {"200": 2 * shared["keys"]}
    assert shared["shared_hits_on_b"] == shared["keys"] and shared["upstream_calls_during_b"] == 0
    assert shared["same_body"] == shared["keys"]
    burst = cluster["cold_burst"]
    assert burst["upstream_calls_max"] == 1 and burst["non_200"] == 0
