"""Events benchmark: the gateway's change pipeline against raw aiokafka, same broker,
same messages, same run.

    .venv/bin/python -m bench.events_bench [--events 5000 --runs 3 --writes 300]

1. Throughput, in-process: N passport updates through the gateway's own
   ChangeDetector -> SQLite outbox -> OutboxPublisher -> Kafka, timed from the first
   detector call until a consumer (subscribed before) has read all N; then the very
   same N messages (key, value, headers, read back from the topic) produced with a raw
   AIOKafkaProducer (acks=all, same idempotence), timed the same way. Runs interleaved,
   median; target ratio pipeline/raw >= 0.8.
2. Latency, end to end through `ampgate gateway`: PUT /v1/passports/{id} writes at a
   fixed rate, open loop (bench/_open_loop.py; sandbox upstream); per write, the time
   from its HTTP answer to its event being read from `passport-changed` by a consumer,
   in a process of its own, positioned at the end before the writes. Target p99 <= 20 ms
   at ~1,000 writes/s.
Prints one table and writes bench/results/events.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import multiprocessing
import os
import random
import secrets
import shutil
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from bench._open_loop import OpenLoopClient
from bench._support import (
    Child,
    check,
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
from services.common.events import EVENT_TOPICS, PASSPORT_TOPIC
from services.common.kafka import ensure_topics
from services.common.logging import configure_logging
from services.common.outbox import PUBLISHER_BATCH_BYTES, Outbox, OutboxPublisher
from services.common.runner import run as run_loop
from services.common.settings import KafkaSettings, LogSettings
from services.gateway.changes import ChangeDetector, ChangeKind, Detection
from services.gateway.metrics import GatewayMetrics
from services.sandbox import seed


class TopicTail:
    """A consumer of every partition of one topic, positioned at the end before the
    benchmark writes; it records each message and when it became readable here."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.messages: list[tuple[float, Any]] = []
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        # fetch_max_wait_ms bounds how long an empty fetch is held by the broker, so a
        # record produced meanwhile is seen promptly even by brokers that do not
        # answer a waiting fetch early.
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    fetch_max_wait_ms=5, max_partition_fetch_bytes=8 << 20)
        await consumer.start()
        partitions = consumer.partitions_for_topic(self.topic) or set()
        if not partitions:
            await consumer.stop()
            raise RuntimeError(f"topic {self.topic} has no partitions")
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, not lazily after the writes
            await consumer.position(tp)
        self._consumer = consumer
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=50, max_records=5000)
            now = time.perf_counter()
            for records in batches.values():
                for r in records:
                    self.messages.append((now, r))
            if batches:
                self._arrived.set()

    def reset(self) -> None:
        self.messages = []

    async def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"only {len(self.messages)} of {count} messages arrived")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))
            except TimeoutError:
                pass

    async def wait_until(self, done: Any, timeout_s: float) -> bool:
        """Until ``done(messages)`` is true (False after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while not done(self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))
            except TimeoutError:
                pass
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._consumer is not None:
            await self._consumer.stop()


def documents(n: int, passports: int, run: int) -> list[tuple[str, dict[str, Any]]]:
    """n successive versions of `passports` seeded documents: each differs from the
    previous version of the same passport in one measured value."""
    rng = random.Random(run)
    base = {f"BENCH-{k:04d}": seed.passport(rng, f"BENCH-{k:04d}") for k in range(passports)}
    out = []
    for i in range(n):
        pid = f"BENCH-{i % passports:04d}"
        doc = copy.deepcopy(base[pid])
        doc["bench_version"] = {"run": run, "seq": i}
        out.append((pid, doc))
    return out


async def pipeline_run(detector: ChangeDetector, tail: TopicTail, docs: list[tuple[str, dict]],
                       timeout_s: float) -> dict[str, Any]:
    tail.reset()
    detect_s = 0.0
    previous: asyncio.Future[None] | None = None
    t0 = time.perf_counter()
    for i, (pid, doc) in enumerate(docs):
        d0 = time.perf_counter()
        detector.passport(pid, doc, Detection.WRITE, ChangeKind.UPDATED)
        detect_s += time.perf_counter() - d0
        if i % 50 == 49:
            # Writes arrive 50 at a time between other work, like requests do, and each
            # is answered once its event is committed (as the gateway's PUT handler
            # does): a group waits for the commit of the one before it, so at most 100
            # writes are in flight (with the commit inline, as before, none are).
            group = asyncio.ensure_future(detector.settled())
            if previous is not None:
                await previous
            previous = group
            await asyncio.sleep(0)
    if previous is not None:
        await previous
    await tail.wait_for(len(docs), timeout_s)
    elapsed = time.perf_counter() - t0
    return {"events": len(docs), "seconds": round(elapsed, 3),
            "events_per_s": round(len(docs) / elapsed, 1),
            "detector_ms_per_event": round(1000 * detect_s / len(docs), 3)}


async def drain_run(detector: ChangeDetector, outbox: Outbox, tail: TopicTail,
                    docs: list[tuple[str, dict]], timeout_s: float) -> dict[str, Any]:
    """outbox -> Kafka alone: the outbox is filled without yielding to the event loop (the
    publisher cannot run meanwhile), then timed until the consumer has read every event."""
    tail.reset()
    for pid, doc in docs:
        detector.passport(pid, doc, Detection.WRITE, ChangeKind.UPDATED)
    if outbox.writer is not None:  # committed (by the writer thread), still not yielding
        outbox.writer.idle()
    t0 = time.perf_counter()
    await tail.wait_for(len(docs), timeout_s)
    elapsed = time.perf_counter() - t0
    return {"events": len(docs), "seconds": round(elapsed, 3),
            "events_per_s": round(len(docs) / elapsed, 1)}


async def raw_run(bootstrap: str, idempotence: bool, tail: TopicTail,
                  messages: list[Any], timeout_s: float, **options: Any) -> dict[str, Any]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=idempotence, **options)
    await producer.start()
    try:
        tail.reset()
        t0 = time.perf_counter()
        futures = [await producer.send(m.topic, value=m.value, key=m.key,
                                       headers=list(m.headers)) for m in messages]
        await asyncio.gather(*futures)
        await tail.wait_for(len(messages), timeout_s)
        elapsed = time.perf_counter() - t0
    finally:
        await producer.stop()
    return {"events": len(messages), "seconds": round(elapsed, 3),
            "events_per_s": round(len(messages) / elapsed, 1)}


async def one_run(bootstrap: str, idempotence: bool, args: argparse.Namespace, run: int,
                  work: Path) -> dict[str, Any]:
    """pipeline, raw (the same messages), publisher drain: one run on one broker."""
    await ensure_topics(bootstrap, EVENT_TOPICS, 6, 1)
    tail = TopicTail(bootstrap, PASSPORT_TOPIC)
    await tail.start()
    outbox = Outbox(work / f"gateway-{run}.sqlite3")
    outbox.open()
    outbox.start_writer()  # as the gateway runs it (services/gateway/app.py)
    detector = ChangeDetector(outbox, GatewayMetrics(CollectorRegistry()))
    publisher = OutboxPublisher(outbox, KafkaSettings(bootstrap_servers=bootstrap,
                                                      enable_idempotence=idempotence),
                                GatewayMetrics(CollectorRegistry()))
    await publisher.start()
    try:
        deadline = time.monotonic() + 30
        while not publisher.connected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"publisher not connected: {publisher.status()}")
            await asyncio.sleep(0.05)
        # Warm-up: first sightings, connections, metadata.
        await pipeline_run(detector, tail, documents(200, args.passports, -1), args.timeout)
        p = await pipeline_run(detector, tail, documents(args.events, args.passports, run),
                               args.timeout)
        messages = [r for _, r in tail.messages]
        r = await raw_run(bootstrap, idempotence, tail, messages, args.timeout)
        # ... and with the publisher's batch size (its one producer option beyond acks
        # and idempotence): our code against the client tuned the same way.
        rb = await raw_run(bootstrap, idempotence, tail, messages, args.timeout,
                           max_batch_size=PUBLISHER_BATCH_BYTES)
        d = await drain_run(detector, outbox, tail, documents(args.events, args.passports, 1000 + run),
                            args.timeout)
    finally:
        await publisher.stop()
        outbox.close()
        await tail.stop()
    log(f"run {run + 1}: pipeline {p['events_per_s']} ev/s "
        f"(detector {p['detector_ms_per_event']} ms/event), outbox drain "
        f"{d['events_per_s']} ev/s, raw {r['events_per_s']} ev/s, raw with the "
        f"publisher's batch size {rb['events_per_s']} ev/s")
    return {"pipeline": p, "raw": r, "raw_batched": rb, "drain": d,
            "value_bytes_median": median([len(m.value) for m in messages])}


def throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """--runs runs, each on a FRESH broker: tansu keeps records in memory and slows down
    as they pile up, which would penalise whatever runs last."""
    runs: dict[str, list[dict[str, Any]]] = {"pipeline": [], "drain": [], "raw": [],
                                             "raw_batched": []}
    value_bytes = 0.0
    for run in range(args.runs):
        bootstrap, broker = start_broker(required=True)
        try:
            idempotence = bool(getattr(broker, "idempotence_supported", True))
            out = asyncio.run(one_run(bootstrap, idempotence, args, run, work))
        finally:
            stop_broker(broker)
        for k, results in runs.items():
            results.append(out[k])
        value_bytes = out["value_bytes_median"]
    pipe = median([r["events_per_s"] for r in runs["pipeline"]])
    raw = median([r["events_per_s"] for r in runs["raw"]])
    drain = median([r["events_per_s"] for r in runs["drain"]])
    raw_batched = median([r["events_per_s"] for r in runs["raw_batched"]])
    return {"pipeline_events_per_s": pipe, "raw_events_per_s": raw,
            "raw_batched_events_per_s": raw_batched,
            "ratio_raw_batched": ratio(pipe, raw_batched),
            "ratio_per_run": [ratio(p["events_per_s"], r["events_per_s"])
                              for p, r in zip(runs["pipeline"], runs["raw"], strict=True)],
            "drain_events_per_s": drain, "ratio": ratio(pipe, raw),
            "drain_ratio": ratio(drain, raw), "value_bytes_median": value_bytes,
            "detector_ms_per_event": median([r["detector_ms_per_event"]
                                             for r in runs["pipeline"]]),
            "runs": runs}


async def _loop_lag(out: list[float], every_s: float = 0.005) -> None:
    while True:
        t = time.perf_counter()
        await asyncio.sleep(every_s)
        out.append(1000 * (time.perf_counter() - t - every_s))


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """user + system CPU seconds of each process so far (/proc/<pid>/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            out[name] = 0.0
    return out


def _tail_process(bootstrap: str, topic: str, token: str, pipe: Connection) -> None:
    """The topic tail in a process of its own, so its read times are not late by the
    writing client's load: sends "ready" once positioned at the end, then, given the seqs
    answered 200, ({seq: perf_counter time first read}, duplicates) once it has read them
    all or 15 s after. perf_counter is CLOCK_MONOTONIC: one clock for both processes."""
    configure_logging(LogSettings(level="warning"))
    run_loop(_tail(bootstrap, topic, token, pipe))


async def _tail(bootstrap: str, topic: str, token: str, pipe: Connection) -> None:
    tail = TopicTail(bootstrap, topic)
    await tail.start()
    pipe.send("ready")
    seen: dict[int, float] = {}
    duplicates = read = 0
    expected: set[int] | None = None
    deadline = float("inf")
    try:
        while True:
            await asyncio.sleep(0.02)
            for at, record in tail.messages[read:]:
                mark = (orjson.loads(record.value).get("passport") or {}).get("bench_write") or {}
                if mark.get("token") != token:
                    continue
                if mark.get("seq") in seen:
                    duplicates += 1
                else:
                    seen[mark["seq"]] = at
            read = len(tail.messages)
            if expected is None and pipe.poll():
                expected, deadline = pipe.recv(), time.monotonic() + 15
            if expected is not None and (expected <= seen.keys() or time.monotonic() > deadline):
                break
    finally:
        await tail.stop()
    pipe.send((seen, duplicates))


async def write_latency(gateway: Child, bootstrap: str, api_key: str,
                        args: argparse.Namespace, procs: dict[str, int]) -> dict[str, Any]:
    token = secrets.token_hex(4)
    n = max(1, round(args.write_rate * args.write_seconds))
    rng = random.Random(7)
    base = {f"BP-{1 + k:04d}": seed.passport(rng, f"BP-{1 + k:04d}") for k in range(200)}
    host, port = "127.0.0.1", int(gateway.url.rsplit(":", 1)[1])
    requests = []  # built before the clock starts: the client's CPU goes to the sending
    for i in range(n):
        pid = f"BP-{1 + i % 200:04d}"
        body = orjson.dumps({**base[pid], "bench_write": {"token": token, "seq": i}})
        requests.append(b"PUT /v1/passports/%s HTTP/1.1\r\nHost: %s:%d\r\n"
                        b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s"
                        % (pid.encode(), host.encode(), port, api_key.encode(), len(body), body))
    spawn = multiprocessing.get_context("spawn")
    pipe, child_end = spawn.Pipe()
    tail = spawn.Process(target=_tail_process, args=(bootstrap, PASSPORT_TOPIC, token, child_end),
                         daemon=True)
    tail.start()
    client = OpenLoopClient(host, port, connections=128)
    try:
        if not pipe.poll(60) or pipe.recv() != "ready":
            raise RuntimeError("the topic tail did not start")
        procs = {**procs, "tail": tail.pid}
        await client.open()
        lags: list[float] = []
        lag_task = asyncio.create_task(_loop_lag(lags))
        cpu_start = _cpu_seconds(procs)
        t_start = time.perf_counter()
        for i, raw in enumerate(requests):
            delay = t_start + i / args.write_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            client.send(i, raw)
        await client.wait(30)
        t_end = time.perf_counter()
        cpu_end = _cpu_seconds(procs)
        lag_task.cancel()
        answered = {i: at for i, (status, at) in client.answers.items() if status == 200}
        pipe.send(set(answered))
        if not await asyncio.to_thread(pipe.poll, 60):
            raise RuntimeError("the topic tail did not answer")
        seen, duplicates = pipe.recv()
    finally:
        client.close()
        tail.join(10)
        if tail.is_alive():
            tail.kill()
    statuses: dict[int, int] = {}
    for status, _ in client.answers.values():
        statuses[status] = statuses.get(status, 0) + 1
    lat = [1000 * (seen[i] - answered[i]) for i in answered if i in seen]
    missing = sorted(set(answered) - set(seen))
    if missing:
        log(f"latency: {len(missing)} of {len(answered)} events not read within 15 s")
        found = await _scan_topic(bootstrap, PASSPORT_TOPIC, token)
        log(f"latency: no event read for writes {missing[:20]}; a scan of the whole topic "
            f"finds {sorted(set(missing) & found)[:20]} of them")
    # CPU of each process over the write phase, in % of one core.
    cpu = {name: round(100 * (cpu_end[name] - cpu_start[name]) / (t_end - t_start), 1)
           for name in procs}
    return {
        "cpu_percent": cpu,
        # How late a 5 ms timer fires in the client's loop during the writes: how late
        # the answers' time stamps can be (the events' are taken in the tail process).
        "client_loop_lag_p50_ms": round(percentile(lags, 50), 2),
        "client_loop_lag_p99_ms": round(percentile(lags, 99), 2),
        "missing_seqs": missing,
        "writes": n, "statuses": statuses, "events_matched": len(lat),
        "duplicate_events": duplicates,
        "target_rate": args.write_rate,
        "achieved_rate": round(n / (t_end - t_start), 1),
        "p50_ms": round(percentile(lat, 50), 2), "p99_ms": round(percentile(lat, 99), 2),
        "max_ms": round(max(lat), 2) if lat else None,
        "min_ms": round(min(lat), 2) if lat else None,
    }


async def _scan_topic(bootstrap: str, topic: str, token: str) -> set[int]:
    """Every bench_write seq of this run on the topic, read from the beginning."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    found: set[int] = set()
    try:
        idle = 0
        while idle < 3:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            idle = 0 if batches else idle + 1
            for records in batches.values():
                for r in records:
                    mark = (json.loads(r.value).get("passport") or {}).get("bench_write") or {}
                    if mark.get("token") == token:
                        found.add(mark["seq"])
    finally:
        await consumer.stop()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000, help="events per throughput run")
    parser.add_argument("--passports", type=int, default=100, help="distinct passport ids")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write-rate", type=float, default=1000,
                        help="PUTs/s through the gateway for the latency part (open loop)")
    parser.add_argument("--write-seconds", type=float, default=3, help="seconds of PUTs")
    parser.add_argument("--timeout", type=float, default=120, help="per run, seconds")
    parser.add_argument("--smoke", action="store_true",
                        help="every code path, tiny counts (no thresholds)")
    args = parser.parse_args()
    if args.smoke:
        args.events, args.runs, args.write_rate, args.write_seconds = 200, 1, 50, 1

    configure_logging(LogSettings(level="warning"))
    load_before = warn_if_busy()
    work = Path(tempfile.mkdtemp(prefix="ampgate-bench-events-"))
    tp = throughput(args, work)
    # The latency part gets its own fresh broker too.
    bootstrap, broker = start_broker(required=True)
    idempotence = bool(getattr(broker, "idempotence_supported", True))
    started: list[Child] = []
    try:
        log(f"broker {bootstrap} ({getattr(broker, 'kind', 'external')}), "
            f"idempotence {idempotence}")

        sandbox = start_service("sandbox", {"AMPGATE_LOG__LEVEL": "warning"})
        started.append(sandbox)
        api_key = "bench-" + secrets.token_urlsafe(24)
        env = gateway_env(sandbox.url, api_key, work / "state", kafka=bootstrap,
                          log_level="warning")
        env["AMPGATE_KAFKA__ENABLE_IDEMPOTENCE"] = str(idempotence).lower()
        gateway = start_service("gateway", env)
        started.append(gateway)
        _wait_publisher(gateway)
        procs = {"client": os.getpid(), "gateway": gateway.pid, "sandbox": sandbox.pid}
        if getattr(broker, "pid", None):
            procs["broker"] = broker.pid
        lat = asyncio.run(write_latency(gateway, bootstrap, api_key, args, procs))
        log(f"latency: {lat}")
    finally:
        for child in reversed(started):
            child.stop()
        stop_broker(broker)
        shutil.rmtree(work, ignore_errors=True)

    report = {
        "machine": machine(),
        "config": {"events_per_run": args.events, "passports": args.passports, "runs": args.runs,
                   "write_rate": args.write_rate, "write_seconds": args.write_seconds,
                   "smoke": args.smoke,
                   "broker": getattr(broker, "kind", "external"), "idempotence": idempotence,
                   "loadavg_before": load_before},
        "throughput": tp,
        "write_to_event_latency": lat,
    }
    path = write_results("events", report)
    print_report(report)
    print(f"\nwritten: {path}")


def _wait_publisher(gateway: Child, timeout_s: float = 30) -> None:
    """The gateway answers before its publisher has connected: wait for it."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(gateway.url + "/readyz", timeout=2) as resp:
            body = orjson.loads(resp.read())
        if (body.get("checks", {}).get("publisher") or {}).get("state") == "connected":
            return
        time.sleep(0.1)
    log("warning: the gateway's publisher did not report connected")


def print_report(r: dict[str, Any]) -> None:
    tp, lat = r["throughput"], r["write_to_event_latency"]
    rows = [
        ["events/s detector -> outbox -> Kafka (median)", f"{tp['pipeline_events_per_s']:,.0f}",
         "", ""],
        ["events/s raw aiokafka, same messages (median)", f"{tp['raw_events_per_s']:,.0f}", "", ""],
        ["ratio pipeline / raw", f"{tp['ratio']:.2f}", ">= 0.8", check(tp["ratio"], 0.8)],
        ["events/s raw aiokafka, the publisher's batch size (median)",
         f"{tp['raw_batched_events_per_s']:,.0f}", "", ""],
        ["ratio pipeline / raw with the publisher's batch size",
         f"{tp['ratio_raw_batched']:.2f}", "", ""],
        ["events/s outbox -> Kafka alone (publisher drain)", f"{tp['drain_events_per_s']:,.0f}",
         "", ""],
        ["ratio publisher drain / raw", f"{tp['drain_ratio']:.2f}", "", ""],
        ["detector cost per event ms (in the request path)", f"{tp['detector_ms_per_event']:.3f}",
         "", ""],
        ["write response -> event readable, p50 ms", f"{lat['p50_ms']:.1f}", "", ""],
        ["write response -> event readable, p99 ms", f"{lat['p99_ms']:.1f}", "<= 20",
         check(lat["p99_ms"], 20, higher_is_better=False)],
        ["writes/s achieved (open loop, target rate)",
         f"{lat['achieved_rate']:,.0f} ({lat['target_rate']:,.0f})", "~1,000", ""],
        ["client loop lag during the writes, p50 / p99 ms",
         f"{lat.get('client_loop_lag_p50_ms', 0):.1f} / {lat.get('client_loop_lag_p99_ms', 0):.1f}",
         "", ""],
        ["CPU % of one core during the writes, per process",
         ", ".join(f"{k} {v:.0f}" for k, v in lat.get("cpu_percent", {}).items()), "", ""],
        ["writes answered 200 / events missing",
         f"{lat['statuses'].get(200, 0)} / {len(lat['missing_seqs'])}", "0 missing",
         "met" if not lat["missing_seqs"] and lat["statuses"].get(200, 0) == lat["writes"]
         else "missed"],
    ]
    c = r["config"]
    print_table(f"ampgate events benchmark — {r['machine']['cpus']} CPUs, broker {c['broker']} "
                f"(idempotence {c['idempotence']}), {c['events_per_run']} events x {c['runs']} "
                f"runs, value ~{tp['value_bytes_median']:.0f} B; PUTs at "
                f"{c['write_rate']:.0f}/s for {c['write_seconds']:.0f} s",
                ["metric", "value", "target", "verdict"], rows)


if __name__ == "__main__":
    main()
