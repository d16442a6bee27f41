"""Workers benchmark: history ingest on SQLite and PostgreSQL, webhook deliveries to a
local receiver, consumer-lag recovery after a backlog.

    .venv/bin/python -m bench.workers_bench [--backlog 100000 --events 20000]

Each stage gets its own fresh broker (no offsets or groups carried over) and runs the
real worker process (`python -m services history|webhooks`):
  1. start the worker, feed it a small warm-up set, wait until its lag is 0;
  2. stop it (SIGTERM) and produce the backlog with raw aiokafka (valid change events,
     1,000 passports, successive versions);
  3. start it again and poll its /metrics until `ampgate_consumer_lag` is 0 on every
     partition and `ampgate_consumer_messages_total` covers the backlog.
Reported: events/s (backlog / time from the first processed message to lag 0), the
recovery time (worker start to lag 0), and for webhooks the deliveries/s counted at the
receiver. Stages: history on SQLite with --backlog events (the lag recovery figure),
history on PostgreSQL and webhooks with --events. Prints one table and writes
bench/results/workers.json. A stage that cannot run (a worker not finished, no
PostgreSQL) is reported as such; the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import shutil
import tempfile
import time
import traceback
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench._support import (
    PYTHON,
    REPO,
    Child,
    free_port,
    http_json,
    log,
    machine,
    print_table,
    spawn,
    start_service,
    wait_http,
    warn_if_busy,
    write_results,
)
from services.common.events import (
    EVENT_TOPICS,
    PASSPORT_CE_TYPE,
    PASSPORT_TOPIC,
    EventRecord,
    build_event,
    digest_of,
    rfc3339,
)
from services.common.kafka import ensure_topics
from services.common.logging import configure_logging
from services.common.settings import LogSettings
from services.devtools.local_kafka import LocalKafka

PASSPORTS = 1000
# Everything processed but ampgate_consumer_lag still above 0 after this long: a finding.
LAG_GRACE_S = 10.0


# ---------------------------------------------------------------- events


class EventSource:
    """Valid passport-changed events: per passport, successive versions chained by digest
    (previous_digest -> digest), as the gateway would announce them."""

    def __init__(self, passports: int = PASSPORTS) -> None:
        self.passports = passports
        self.version = [0] * passports
        self.last_digest = [""] * passports
        self.i = 0

    def next(self) -> EventRecord:
        k = self.i % self.passports
        self.i += 1
        pid = f"BENCH-{k:05d}"
        v = self.version[k]
        self.version[k] += 1
        doc = {"id": pid, "general_information": {"identification": {"uid": pid}},
               "performance": {"state_of_health": 100 - v % 50, "cycles": v}}
        digest = digest_of(doc)
        data: dict[str, Any] = {"passport_id": pid,
                                "change": "CHANGE_KIND_UPDATED" if v else "CHANGE_KIND_SNAPSHOT",
                                "detected_by": "DETECTION_POLL", "digest": digest,
                                "passport": doc, "observed_at": rfc3339(datetime.now(UTC))}
        if v:
            data["previous_digest"] = self.last_digest[k]
            data["changed_paths"] = ["/performance/state_of_health", "/performance/cycles"]
        self.last_digest[k] = digest
        return build_event(PASSPORT_TOPIC, PASSPORT_CE_TYPE, pid, data)


async def produce(bootstrap: str, source: EventSource, n: int) -> float:
    """n events with a raw producer; returns events/s."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        t0 = time.perf_counter()
        for start in range(0, n, 2000):
            futures = []
            for _ in range(min(2000, n - start)):
                r = source.next()
                futures.append(await producer.send(r.topic, value=r.value, key=r.key,
                                                   headers=list(r.headers)))
            await asyncio.gather(*futures)
        return n / (time.perf_counter() - t0)
    finally:
        await producer.stop()


async def bare_consume(bootstrap: str, expected: int, timeout_s: float) -> dict[str, Any]:
    """The reference for history ingest: a bare aiokafka consumer (its own group, every
    partition assigned) reading the same topic from the earliest offset on the same
    broker, committing after every batch (as a worker does), no decoding. Timed like the worker: first record -> all `expected` read
    (the group join before the first record is left out, as the worker's start-up is)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap,
                                group_id="bench-bare-" + secrets.token_hex(4),
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    consumer.assign([TopicPartition(PASSPORT_TOPIC, p)
                     for p in sorted(consumer.partitions_for_topic(PASSPORT_TOPIC) or ())])
    read = 0
    first = last = None
    try:
        deadline = time.monotonic() + timeout_s
        while read < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            if not batches:
                continue
            now = time.perf_counter()
            first = first or now
            read += sum(len(records) for records in batches.values())
            await consumer.commit()
            last = time.perf_counter()
    finally:
        await consumer.stop()
    span = (last - first) if first is not None and last is not None else 0.0
    return {"read": read, "expected": expected,
            "events_per_s": round(read / span, 1) if span > 0 else None}


# ---------------------------------------------------------------- worker metrics


def scrape(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    messages: dict[str, float] = {}
    lag: dict[str, float] = {}
    deliveries: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "ampgate_consumer_messages_total":
                messages[s.labels.get("outcome", "")] = messages.get(
                    s.labels.get("outcome", ""), 0) + s.value
            elif s.name == "ampgate_consumer_lag":
                lag[f"{s.labels.get('topic')}/{s.labels.get('partition')}"] = s.value
            elif s.name == "ampgate_webhook_deliveries_total":
                deliveries[s.labels.get("outcome", "")] = s.value
    return {"messages": messages, "processed": sum(messages.values()), "lag": lag,
            "lag_total": sum(lag.values()), "deliveries": deliveries}


def wait_caught_up(worker: Child, expected: int, partitions: int, timeout_s: float,
                   receiver: str | None = None, expected_deliveries: int = 0) -> dict[str, Any]:
    """Poll until lag is 0 on every partition and `expected` messages were processed
    (and the receiver has `expected_deliveries`); the timeline of the catch-up."""
    t0 = time.monotonic()
    first = done = None
    peak_lag = 0.0
    last: dict[str, Any] = {}
    deliveries_done = None
    all_processed = None  # when `expected` were processed: lag must reach 0 soon after
    while time.monotonic() - t0 < timeout_s:
        if not worker.alive():
            raise RuntimeError(f"{worker.name} exited: {worker.tail()}")
        try:
            last = scrape(worker.url)
        except OSError:
            time.sleep(0.1)
            continue
        now = time.monotonic()
        peak_lag = max(peak_lag, last["lag_total"])
        if first is None and last["processed"] > 0:
            first = now
        if all_processed is None and last["processed"] >= expected:
            all_processed = now
        if done is None and last["processed"] >= expected and len(last["lag"]) >= partitions \
                and last["lag_total"] == 0:
            done = now
        if receiver is not None and deliveries_done is None:
            got = http_json("GET", receiver + "/count")[1]["received"]
            if got >= expected_deliveries:
                deliveries_done = now
        if done is not None and (receiver is None or deliveries_done is not None):
            break
        if all_processed is not None and done is None and now - all_processed > LAG_GRACE_S \
                and (receiver is None or deliveries_done is not None):
            break  # everything processed, but the lag gauge does not come down: report it
        time.sleep(0.1)
    return {"started_at": t0, "first_processed_s": None if first is None else first - t0,
            "caught_up_s": None if done is None else done - t0,
            "all_processed_s": None if all_processed is None else all_processed - t0,
            "deliveries_done_s": None if deliveries_done is None else deliveries_done - t0,
            "peak_lag": peak_lag, "final": last}


# ---------------------------------------------------------------- one stage


def run_stage(name: str, command: str, env: dict[str, str], backlog: int, warmup: int,
              timeout_s: float, receiver: str | None = None,
              reference: bool = False, passports: int = PASSPORTS) -> dict[str, Any]:
    broker = LocalKafka.tansu().start()
    worker: Child | None = None
    try:
        bootstrap = broker.bootstrap
        asyncio.run(ensure_topics(bootstrap, EVENT_TOPICS, 6, 1))
        partitions = 6 * len(EVENT_TOPICS)
        env = {**env, "AMPGATE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
               "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE": "false", "AMPGATE_LOG__LEVEL": "warning"}
        port = free_port()
        source = EventSource(passports)
        if warmup > 0:  # --warmup 0 (the smoke run): straight to the backlog
            worker = start_service(command, env, port=port, timeout_s=60)
            asyncio.run(produce(bootstrap, source, warmup))
            warm = wait_caught_up(worker, warmup, partitions, 60, receiver, warmup)
            if warm["all_processed_s"] is None:
                raise RuntimeError(f"warm-up did not catch up: {warm['final']}")
            if warm["caught_up_s"] is None:
                log(f"{name}: warm-up processed, but the lag gauge stays at "
                    f"{warm['final']['lag_total']:.0f}: {warm['final']['lag']}")
            worker.stop()
        produce_rate = asyncio.run(produce(bootstrap, source, backlog))
        log(f"{name}: {backlog} events produced at {produce_rate:,.0f}/s while stopped")
        worker = start_service(command, env, port=port, timeout_s=60)
        spawned = time.monotonic()
        run = wait_caught_up(worker, backlog, partitions, timeout_s, receiver, warmup + backlog)
        # The worker answered /healthz before wait_caught_up's clock started: add that.
        startup_s = run["started_at"] - spawned
        result: dict[str, Any] = {"backlog": backlog, "produce_events_per_s": round(produce_rate),
                                  "peak_lag_seen": run["peak_lag"], "outcomes":
                                  run["final"].get("messages"), "deliveries":
                                  run["final"].get("deliveries")}
        if run["caught_up_s"] is None and run["all_processed_s"] is not None:
            busy = run["all_processed_s"] - (run["first_processed_s"] or 0)
            result.update(events_per_s=round(backlog / max(busy, 0.1), 1),
                          all_processed_s=round(run["all_processed_s"] + startup_s, 2),
                          lag_stuck={k: v for k, v in run["final"]["lag"].items() if v},
                          error=f"all {backlog} processed, but ampgate_consumer_lag stays at "
                                f"{run['final']['lag_total']:.0f}")
        elif run["caught_up_s"] is None:
            result["error"] = (f"not caught up within {timeout_s:.0f} s: processed "
                               f"{run['final'].get('processed')}, lag "
                               f"{run['final'].get('lag_total')}")
        else:
            busy = run["caught_up_s"] - (run["first_processed_s"] or 0)
            result.update(events_per_s=round(backlog / max(busy, 0.1), 1),
                          recovery_s=round(run["caught_up_s"] + startup_s, 2))
        if reference:
            worker.stop()  # the reference reads alone, like the worker did
            ref = asyncio.run(bare_consume(bootstrap, warmup + backlog, timeout_s))
            result["bare_consumer"] = ref
            if ref["events_per_s"] and result.get("events_per_s"):
                result["ratio_to_bare"] = round(result["events_per_s"] / ref["events_per_s"], 3)
        if receiver is not None:
            counts = http_json("GET", receiver + "/count")[1]
            result["receiver"] = counts
            if run["deliveries_done_s"] is not None and counts["first_at"]:
                # Deliveries of the backlog: receiver count over the worker's busy time.
                span = run["deliveries_done_s"] - (run["first_processed_s"] or 0)
                result["deliveries_per_s"] = round(backlog / span, 1) if span > 0 else None
        log(f"{name}: {result}")
        return result
    finally:
        if worker is not None:
            worker.stop()
        broker.stop()


def stage(name: str, fn: Any) -> dict[str, Any]:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - one stage failing must not hide the others
        log(f"{name} failed: {exc!r}\n{traceback.format_exc()[-2000:]}")
        return {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=100_000,
                        help="backlog for the lag-recovery stage (history on SQLite)")
    parser.add_argument("--events", type=int, default=20_000,
                        help="backlog for history on PostgreSQL and for webhooks")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=600, help="per stage, seconds")
    parser.add_argument("--stages", default="history-sqlite,history-postgres,webhooks")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra AMPGATE_* setting for every worker (e.g. "
                             "AMPGATE_CONSUMER__BATCH_SIZE=2000), repeatable")
    parser.add_argument("--passports", type=int, default=PASSPORTS,
                        help="distinct passports (keys) the events are spread over")
    parser.add_argument("--smoke", action="store_true",
                        help="every code path, tiny counts (no thresholds)")
    args = parser.parse_args()
    if args.smoke:  # 30 passports: each gets ~10 versions, so the order check has work
        args.backlog, args.events, args.warmup, args.timeout = 300, 300, 0, 60
        args.passports = 30
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    configure_logging(LogSettings(level="warning"))
    load_before = warn_if_busy()
    work = Path(tempfile.mkdtemp(prefix="ampgate-bench-workers-"))
    results: dict[str, Any] = {}
    extra = dict(item.split("=", 1) for item in args.worker_env)

    if "history-sqlite" in stages:
        env = {**extra, "AMPGATE_STATE_DIR": str(work / "h-sqlite"),
               "AMPGATE_HISTORY__DATABASE_URL": f"sqlite:///{work / 'history.sqlite3'}"}
        results["history-sqlite"] = stage("history-sqlite", lambda: run_stage(
            "history-sqlite", "history", env, args.backlog, args.warmup, args.timeout,
            reference=True, passports=args.passports))

    if "history-postgres" in stages:
        def pg() -> dict[str, Any]:
            from services.devtools.local_postgres import acquire_postgres

            handle = acquire_postgres()
            try:
                env = {**extra, "AMPGATE_STATE_DIR": str(work / "h-pg"),
                       "AMPGATE_HISTORY__DATABASE_URL": handle.dsn}
                out = run_stage("history-postgres", "history", env, args.events, args.warmup,
                                args.timeout, reference=True, passports=args.passports)
                out["postgres"] = handle.source
                return out
            finally:
                handle.stop()

        results["history-postgres"] = stage("history-postgres", pg)

    if "webhooks" in stages:
        def hooks() -> dict[str, Any]:
            port = free_port()
            receiver = spawn("receiver", [PYTHON, str(REPO / "bench" / "webhook_receiver.py"),
                                          "--port", str(port)])
            receiver.url = f"http://127.0.0.1:{port}"
            try:
                wait_http(receiver, receiver.url + "/healthz")
                secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
                subs = [{"name": "bench", "url": receiver.url + "/hook/a", "events": ["*"],
                         "secret": secret}]
                env = {**extra, "AMPGATE_STATE_DIR": str(work / "webhooks"),
                       "AMPGATE_WEBHOOKS__SUBSCRIPTIONS": json.dumps(subs)}
                return run_stage("webhooks", "webhooks", env, args.events, args.warmup,
                                 args.timeout, receiver=receiver.url, passports=args.passports)
            finally:
                receiver.stop()

        results["webhooks"] = stage("webhooks", hooks)

    shutil.rmtree(work, ignore_errors=True)
    report = {"machine": machine(),
              "config": {"backlog": args.backlog, "events": args.events, "warmup": args.warmup,
                         "passports": args.passports, "broker": "tansu (fresh per stage)",
                         "worker_env": extra, "loadavg_before": load_before,
                         "smoke": args.smoke},
              "stages": results}
    path = write_results("workers", report)
    print_report(report)
    print(f"\nwritten: {path}")


def _v(d: dict[str, Any], key: str, fmt: str = "{:,.0f}") -> str:
    if "error" in d and key not in d:
        return "failed"
    value = d.get(key)
    return "-" if value is None else fmt.format(value)


def _n(d: dict[str, Any]) -> str:
    return f"{d['backlog']:,}" if "backlog" in d else "?"


def print_report(r: dict[str, Any]) -> None:
    s = r["stages"]
    hs, hp, wh = s.get("history-sqlite"), s.get("history-postgres"), s.get("webhooks")
    rows = []
    if hs is not None:
        rows += [[f"history ingest on SQLite, events/s ({_n(hs)} backlog)",
                  _v(hs, "events_per_s")],
                 ["  bare aiokafka consumer, same backlog, same broker, events/s",
                  _v(hs.get("bare_consumer") or {}, "events_per_s")],
                 ["  ratio history / bare consumer (target >= 0.8 or >= 10k/s)",
                  _v(hs, "ratio_to_bare", "{:.2f}")],
                 ["consumer lag recovery after the backlog, s (start to lag 0)",
                  _v(hs, "recovery_s", "{:.1f}")]]
    if hp is not None:
        rows += [[f"history ingest on PostgreSQL, events/s ({_n(hp)} backlog)",
                  _v(hp, "events_per_s")],
                 ["  bare aiokafka consumer, same backlog, same broker, events/s",
                  _v(hp.get("bare_consumer") or {}, "events_per_s")],
                 ["  ratio history / bare consumer (target >= 0.8 or >= 10k/s)",
                  _v(hp, "ratio_to_bare", "{:.2f}")],
                 ["  recovery, s", _v(hp, "recovery_s", "{:.1f}")]]
    if wh is not None:
        rec = wh.get("receiver") or {}
        rows += [[f"webhook deliveries/s to a local receiver ({_n(wh)} backlog)",
                  _v(wh, "deliveries_per_s")],
                 ["  out of order / duplicates (per endpoint and passport)",
                  f"{rec.get('out_of_order', '-')} / {rec.get('duplicates', '-')}"],
                 ["  webhooks consumer lag recovery, s", _v(wh, "recovery_s", "{:.1f}")]]
    for name, d in s.items():
        if "error" in d:
            rows.append([f"  {name}: NOTE", d["error"][:100]])
    print_table(f"ampgate workers benchmark — {r['machine']['cpus']} CPUs, "
                f"{r['config']['broker']}, {r['config']['passports']} passports",
                ["metric", "value"], rows)


if __name__ == "__main__":
    main()
