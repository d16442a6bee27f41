"""Managed Kafka and Redis settings → the clients' arguments (the one mapping every client uses).

SASL cannot be exercised against the test broker (tansu has no SASL), so its mapping is
tested here; TLS is also proven over a real handshake in tests/integration/test_kafka_tls.py.
"""

from __future__ import annotations

import ssl

import pytest
import trustme
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from services.common.kafka import make_producer
from services.common.kafka_security import client_options
from services.common.redis_security import redis_options
from services.common.settings import (
    ClusterSettings,
    ConfigError,
    KafkaSettings,
    load_settings,
)


@pytest.fixture
def pki(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("kafka.example.com")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "client.pem",
             "key": tmp_path / "client.key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    return paths


def test_plaintext_is_the_default_and_adds_nothing():
    assert client_options(KafkaSettings(bootstrap_servers="b:9092")) == {
        "bootstrap_servers": "b:9092", "security_protocol": "PLAINTEXT"}


def test_ssl_verifies_the_broker_against_the_given_ca_and_presents_the_client_cert(pki):
    options = client_options(KafkaSettings(
        security_protocol="SSL", ssl_ca_file=pki["ca"], ssl_cert_file=pki["cert"],
        ssl_key_file=pki["key"]))
    context = options["ssl_context"]
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()]  # our CA, loaded
    relaxed = client_options(KafkaSettings(security_protocol="SSL", ssl_ca_file=pki["ca"],
                                           ssl_check_hostname=False))["ssl_context"]
    assert relaxed.check_hostname is False and relaxed.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
async def test_sasl_mechanisms_map_to_aiokafka_arguments(protocol, mechanism):
    options = client_options(KafkaSettings(
        security_protocol=protocol, sasl_mechanism=mechanism, sasl_username="svc-ampgate",
        sasl_password="s3cret"))
    assert options["sasl_mechanism"] == mechanism
    assert options["sasl_plain_username"] == "svc-ampgate"
    assert options["sasl_plain_password"] == "s3cret"
    assert ("ssl_context" in options) == (protocol == "SASL_SSL")
    # Every client kind the project builds accepts them as they are, and passes them on to
    # the connection layer.
    producer = make_producer(KafkaSettings(security_protocol=protocol, sasl_mechanism=mechanism,
                                           sasl_username="u", sasl_password="p"))
    consumer = AIOKafkaConsumer(**options)
    admin = AIOKafkaAdminClient(**options)
    try:
        for client in (producer.client, consumer._client, admin._client):
            assert client._security_protocol == protocol
            assert client._sasl_mechanism == mechanism
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


def test_environment_names_reach_the_mapping(monkeypatch, pki):
    for key, value in {
        "AMPGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "AMPGATE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "AMPGATE_KAFKA__SASL_USERNAME": "svc",
        "AMPGATE_KAFKA__SASL_PASSWORD": "pw",
        "AMPGATE_KAFKA__SSL_CA_FILE": str(pki["ca"]),
        "AMPGATE_KAFKA__CREATE_TOPICS": "false",
    }.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.kafka.create_topics is False
    assert "pw" not in repr(settings.kafka)  # a SecretStr
    options = client_options(settings.kafka)
    assert options["sasl_mechanism"] == "SCRAM-SHA-512" and "ssl_context" in options


@pytest.mark.parametrize(("env", "words"), [
    ({"AMPGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}, "needs sasl_mechanism"),
    ({"AMPGATE_KAFKA__SECURITY_PROTOCOL": "SSL", "AMPGATE_KAFKA__SASL_MECHANISM": "PLAIN"},
     "needs security_protocol SASL"),
    ({"AMPGATE_KAFKA__SECURITY_PROTOCOL": "TLS"}, "AMPGATE_KAFKA__SECURITY_PROTOCOL"),
    ({"AMPGATE_KAFKA__SASL_MECHANISM": "GSSAPI", "AMPGATE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"},
     "AMPGATE_KAFKA__SASL_MECHANISM"),
    ({"AMPGATE_KAFKA__SSL_CA_FILE": "/nonexistent/ca.pem"}, "no such file"),
])
def test_incomplete_security_settings_stop_start_up_with_one_line(monkeypatch, env, words):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=words) as info:
        load_settings()
    assert "\n" not in str(info.value) and "AMPGATE_KAFKA" in str(info.value)


def test_redis_acl_user_password_and_private_ca_for_rediss(pki):
    cluster = ClusterSettings(redis_url="rediss://redis.example.com:6380/0",
                              redis_username="ampgate", redis_password="pw", ca_file=pki["ca"],
                              cert_file=pki["cert"], key_file=pki["key"])
    options = redis_options(cluster)
    assert options == {"username": "ampgate", "password": "pw", "ssl_cert_reqs": "required",
                       "ssl_check_hostname": True, "ssl_ca_certs": str(pki["ca"]),
                       "ssl_certfile": str(pki["cert"]), "ssl_keyfile": str(pki["key"])}
    # redis-py takes them as they are and builds a TLS connection pool.
    import redis.asyncio as redis

    client = redis.from_url(cluster.redis_url, **options)
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert kwargs["ssl_ca_certs"] == str(pki["ca"]) and kwargs["username"] == "ampgate"
    # Plain redis:// gets no TLS arguments (redis-py would reject them).
    plain = redis_options(ClusterSettings(redis_url="redis://h:6379", redis_password="pw",
                                          ca_file=pki["ca"]))
    assert plain == {"password": "pw"}
    with pytest.raises(ValueError, match="go together"):
        ClusterSettings(redis_url="rediss://h", cert_file=pki["cert"])
