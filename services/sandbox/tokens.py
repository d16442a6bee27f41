"""Token issuers for SiemensID and Cognito.

Tokens are real HS256 JWTs, but validity is decided by the issuer's registry of
live tokens: that is what lets a test revoke every token at once (deleted
credentials stop working at once upstream) and use sub-second lifetimes that a
JWT's integer ``exp`` could not express.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt

ALGORITHM = "HS256"


class TokenIssuer:
    def __init__(
        self,
        name: str,
        *,
        issuer_url: str,
        expires_in: float,
        audience: str | None = None,
        scope: str | None = None,
        claims: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.issuer_url = issuer_url
        self.default_expires_in = expires_in
        self.expires_in = expires_in
        self.audience = audience
        # The ``scope`` claim of tokens issued from now on (None: no scope claim).
        self.default_scope = scope
        self.scope = scope
        self._claims = claims or {}
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._live: dict[str, float] = {}  # jti -> expiry (wall clock, float)
        self.issued = 0

    def issue(self, subject: str) -> tuple[str, float]:
        """A new token and its lifetime in seconds."""
        now = self._clock()
        lifetime = self.expires_in
        jti = uuid.uuid4().hex
        payload: dict[str, Any] = {
            "iss": self.issuer_url,
            "sub": subject,
            "iat": int(now),
            "exp": int(now) + math.ceil(lifetime),
            "jti": jti,
            **self._claims,
        }
        if self.scope is not None:
            payload["scope"] = self.scope
        if self.audience is not None:
            payload["aud"] = self.audience
        self._live[jti] = now + lifetime
        self.issued += 1
        return jwt.encode(payload, self._key, algorithm=ALGORITHM), lifetime

    def valid(self, token: str) -> bool:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                # Expiry is checked below against the float deadline.
                options={"verify_exp": False, "verify_aud": self.audience is not None},
            )
        except jwt.InvalidTokenError:
            return False
        expiry = self._live.get(claims.get("jti", ""))
        if expiry is None:
            return False
        if self._clock() >= expiry:
            del self._live[claims["jti"]]
            return False
        return True

    def revoke_all(self) -> int:
        n = len(self._live)
        self._live.clear()
        return n

    def live(self) -> int:
        return len(self._live)


def bearer(header: str | None, *, bare_ok: bool = False) -> str | None:
    """The token of an Authorization header; ``bare_ok`` also takes a header that is
    the token alone (the CPO quickstart sends ``Authorization: <access_token>``)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() == "bearer" and rest.strip():
        return rest.strip()
    if bare_ok and " " not in header.strip():
        return header.strip()
    return None
