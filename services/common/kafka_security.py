"""Where the Kafka settings become client arguments: the bootstrap address, TLS and SASL.

Every aiokafka client the project builds (producers, consumers, the admin client, the bare
``AIOKafkaClient``) takes ``**client_options(settings)``, so a managed cluster (MSK,
Confluent Cloud, Aiven) is reached the same way by all of them:

=================  ==================================================================
setting            aiokafka argument
=================  ==================================================================
bootstrap_servers  ``bootstrap_servers``
security_protocol  ``security_protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)
ssl_* (SSL, SASL_  ``ssl_context``: verifies the broker against ``ssl_ca_file`` (else the
SSL only)          system store), checks the host name unless ``ssl_check_hostname`` is
                   false, presents ``ssl_cert_file``/``ssl_key_file`` for mutual TLS
sasl_mechanism     ``sasl_mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
sasl_username      ``sasl_plain_username`` (aiokafka's name for PLAIN and SCRAM alike)
sasl_password      ``sasl_plain_password``
=================  ==================================================================
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context

from services.common.settings import KafkaSettings


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext:
    key_password = settings.ssl_key_password.get_secret_value() if settings.ssl_key_password else None
    context = create_ssl_context(
        cafile=str(settings.ssl_ca_file) if settings.ssl_ca_file else None,
        certfile=str(settings.ssl_cert_file) if settings.ssl_cert_file else None,
        keyfile=str(settings.ssl_key_file) if settings.ssl_key_file else None,
        password=key_password,
    )
    if not settings.ssl_check_hostname:
        context.check_hostname = False
    return context


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client: where the brokers are and how to talk to
    them securely. Callers add their own (client_id, acks, group_id, ...)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    if settings.security_protocol.startswith("SASL_"):
        assert settings.sasl_password is not None  # the settings validator ensures it
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    return options
