"""Inbound authentication, shared by every service that answers callers (the gateway, the
history service): callers present an API key (Bearer or X-API-Key) configured in
AMPGATE_CLIENTS, of which we keep only the SHA-256, and need the route's scope
(DESIGN.md §4, §11). Missing or unknown key → 401, missing scope → 403."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from aiohttp import web

from services.common.errors import Problem
from services.common.http import CLIENT_NAME_KEY
from services.common.settings import ClientSpec


class Authenticator:
    def __init__(self, clients: Iterable[ClientSpec]) -> None:
        self._by_hash = {c.key_sha256: c for c in clients}
        # Keys seen lately -> client, to skip hashing on every request. Only valid keys
        # enter, so a flood of wrong keys cannot grow it.
        self._recent: dict[str, ClientSpec] = {}

    def client_for(self, request: web.Request) -> ClientSpec | None:
        """The configured client whose key the request presents; None for no or an unknown
        key. Checks nothing else and changes nothing on the request."""
        key = presented_key(request)
        if key is None:
            return None
        return self._client_of(key)

    def _client_of(self, key: str) -> ClientSpec | None:
        client = self._recent.get(key)
        if client is None:
            # Looking up a SHA-256 leaks nothing useful through timing: it is preimage resistant.
            client = self._by_hash.get(hashlib.sha256(key.encode()).hexdigest())
            if client is not None and len(self._recent) < 4096:
                self._recent[key] = client
        return client

    def authenticate(self, request: web.Request) -> ClientSpec:
        key = presented_key(request)
        if key is None:
            raise Problem(401, "Unauthorized", "send Authorization: Bearer <api key> or X-API-Key",
                          headers={"WWW-Authenticate": 'Bearer realm="ampgate"'})
        client = self._client_of(key)
        if client is None:
            raise Problem(401, "Unauthorized", "unknown API key",
                          headers={"WWW-Authenticate": 'Bearer realm="ampgate", error="invalid_token"'})
        request[CLIENT_NAME_KEY] = client.name
        return client

    def authorize(self, request: web.Request, scope: str) -> ClientSpec:
        client = self.authenticate(request)
        if scope not in client.scopes:
            raise Problem(403, "Forbidden", f"this API key lacks the scope {scope}",
                          extra={"required_scope": scope})
        return client


def presented_key(request: web.Request) -> str | None:
    """The API key the caller sent (``Authorization: Bearer`` first, else ``X-API-Key``)."""
    auth = request.headers.get("Authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = request.headers.get("X-API-Key", "").strip()
    return key or None
