"""TLS to the broker, for real: a TLS-terminating relay in front of a tansu broker that
ADVERTISES the relay's address, so metadata sends every client back through TLS (tansu has no
TLS of its own, and no SASL: SASL is tested as a mapping in tests/unit/common/).

What a user of a managed cluster notices: with `security_protocol=SSL` and the cluster's CA,
topics are checked/created, events are produced and consumed, the gateway's publisher
connects; with the wrong CA nothing connects; with `create_topics=false` a missing topic is
named in /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from services.common.kafka import TopicsMissing, ensure_topics, make_producer
from services.common.kafka_security import client_options
from services.common.settings import KafkaSettings
from services.devtools.local_kafka import KafkaUnavailable, free_port, kafka_answers, tansu_binary
from tests.conftest import server_unavailable
from tests.fixtures.kafka import unique_name

pytestmark = pytest.mark.integration


@dataclass
class Relay:
    """TLS in front, plaintext to the broker behind; counts completed handshakes."""

    port: int
    backend: int
    context: ssl.SSLContext
    handshakes: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                 ssl=self.context)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes.append(writer.get_extra_info("ssl_object").version())
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError, RuntimeError):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


@dataclass
class TlsBroker:
    bootstrap: str  # the relay: what clients are given and what metadata advertises
    ca_file: Path
    relay: Relay


@pytest.fixture
def tansu_behind_relay(tmp_path) -> Iterator[tuple[int, int]]:
    """A tansu broker listening on one port and advertising another (the relay's)."""
    try:
        binary = tansu_binary()
    except KafkaUnavailable as exc:
        server_unavailable("tansu broker", str(exc))
    backend, front = free_port(), free_port()
    log = (tmp_path / "tansu.log").open("wb")
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{backend}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{front}",
         "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not kafka_answers(f"127.0.0.1:{backend}", timeout=0.5):
            assert proc.poll() is None, (tmp_path / "tansu.log").read_text()[-500:]
            assert time.monotonic() < deadline, "tansu did not answer"
            time.sleep(0.05)
        yield backend, front
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture
async def tls_broker(tansu_behind_relay, tmp_path) -> AsyncIterator[TlsBroker]:
    backend, front = tansu_behind_relay
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    relay = Relay(front, backend, context)
    await relay.start()
    try:
        yield TlsBroker(f"127.0.0.1:{front}", ca_file, relay)
    finally:
        await relay.stop()


def tls_settings(broker: TlsBroker, **overrides) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap, enable_idempotence=False,
                         security_protocol="SSL", ssl_ca_file=broker.ca_file, partitions=2,
                         **overrides)


async def test_topics_produce_and_consume_over_tls(tls_broker) -> None:
    settings = tls_settings(tls_broker)
    topic = unique_name("tls")
    assert await ensure_topics(settings, [topic]) == [topic]
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"over": "tls"}', key=b"k1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, **client_options(settings), auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=5000)
        records = [r for rs in batch.values() for r in rs]
        if not records:
            batch = await consumer.getmany(timeout_ms=5000)
            records = [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    assert [(r.key, r.value) for r in records] == [(b"k1", b'{"over": "tls"}')]
    # Every connection went through the relay's TLS (metadata pointed back at it).
    assert tls_broker.relay.handshakes and set(tls_broker.relay.handshakes) <= {"TLSv1.2",
                                                                                 "TLSv1.3"}


async def test_a_broker_signed_by_another_ca_is_refused(tls_broker, tmp_path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    settings = KafkaSettings(bootstrap_servers=tls_broker.bootstrap, security_protocol="SSL",
                             ssl_ca_file=other, enable_idempotence=False)
    with pytest.raises((KafkaError, OSError, ssl.SSLError, TimeoutError)):
        await asyncio.wait_for(ensure_topics(settings, ["never"], request_timeout_s=3), 10)
    # ... and plaintext to a TLS listener gets nowhere either.
    plain = KafkaSettings(bootstrap_servers=tls_broker.bootstrap, enable_idempotence=False)
    with pytest.raises((KafkaError, OSError, TimeoutError)):
        await asyncio.wait_for(ensure_topics(plain, ["never"], request_timeout_s=3), 10)


async def test_create_topics_false_checks_and_names_the_missing_topic(tls_broker) -> None:
    settings = tls_settings(tls_broker)
    present = unique_name("present")
    assert await ensure_topics(settings, [present]) == [present]
    strict = tls_settings(tls_broker, create_topics=False)
    assert await ensure_topics(strict, [present]) == []  # existing: accepted
    absent = unique_name("absent")
    with pytest.raises(TopicsMissing, match=absent):
        await ensure_topics(strict, [present, absent])


async def test_gateway_publishes_over_tls_and_reports_missing_topics(
        tls_broker, make_gateway, sandbox) -> None:
    """The gateway's own publisher over TLS; with create_topics=false on an empty cluster its
    /readyz names the topics to create."""
    strict = tls_settings(tls_broker, create_topics=False)
    gw = await make_gateway(kafka=strict.model_dump())
    deadline = time.monotonic() + 15
    while True:
        body = await (await gw.get("/readyz")).json()
        error = body["checks"]["publisher"].get("last_error", "")
        if "passport-changed" in error and "price-changed" in error:
            assert "AMPGATE_KAFKA__CREATE_TOPICS=false" in error
            assert body["checks"]["publisher"]["degraded"] is True
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)
    assert (await gw.get("/readyz")).status == 200  # degraded, still serving
    await gw.close()

    gw = await make_gateway(kafka=tls_settings(tls_broker).model_dump())
    deadline = time.monotonic() + 15
    while True:
        body = await (await gw.get("/readyz")).json()
        if body["checks"]["publisher"]["state"] == "connected":
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)
