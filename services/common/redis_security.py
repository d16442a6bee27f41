"""Where the cluster settings become ``redis.asyncio`` arguments: ACL user, password, TLS.

Cluster mode builds its client as
``redis.asyncio.from_url(settings.cluster.redis_url, **redis_options(settings.cluster))``:

==============  =====================================================================
setting         redis-py argument
==============  =====================================================================
redis_username  ``username`` (ACL user; a user in the URL wins when this is unset)
redis_password  ``password``
ca_file         ``ssl_ca_certs`` (``rediss://`` only; empty: the system store)
cert_file       ``ssl_certfile`` / ``key_file`` → ``ssl_keyfile`` (client certificate)
check_hostname  ``ssl_check_hostname``; the certificate is always verified
                (``ssl_cert_reqs="required"``)
==============  =====================================================================
"""

from __future__ import annotations

from typing import Any

from services.common.settings import RedisTlsSettings


def redis_options(settings: RedisTlsSettings, url: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``redis.asyncio.from_url(url, ...)``. TLS arguments are given
    only for a ``rediss://`` URL (redis-py rejects them on a plain connection)."""
    options: dict[str, Any] = {}
    if settings.redis_username:
        options["username"] = settings.redis_username
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    target = url if url is not None else getattr(settings, "redis_url", None)
    if target and target.startswith("rediss://"):
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = settings.check_hostname
        if settings.ca_file:
            options["ssl_ca_certs"] = str(settings.ca_file)
        if settings.cert_file:
            options["ssl_certfile"] = str(settings.cert_file)
            options["ssl_keyfile"] = str(settings.key_file)
    return options
