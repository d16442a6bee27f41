"""The shared token cell: one upstream token per credential for the whole cluster.

Redis holds, per credential, ``<ns>:token:<credential>`` = ``"<usable_until_ms>:
<refresh_at_ms>:<token>"`` (unix ms) with PX = the time it stays usable, and a
generation counter ``<ns>:token:<credential>:gen``. Each replica keeps a local copy and
reads Redis only when that copy reaches its refresh point, so a request costs no Redis
call on the common path.

Invariants:
- One IdP call per refresh period cluster-wide: a replica calls ``fetch`` only while it
  holds the refresh lease ``<ns>:lease:token:<credential>`` (ACQUIRED), and only after
  re-reading the cell under the lease (someone may have stored a token meanwhile).
- Replicas that find the lease HELD and have no usable token wait for the holder's
  publish on the token channel (``channel(store)``, payload = credential), each with its
  own deadline (``wait_s``); never by sleeping in fixed steps. A waiter wakes at the
  latest when the holder's lease would expire, and then tries the lease itself: a
  refresher that died is replaced within the lease ttl.
- A refresh in flight cannot repopulate the cell after a ``purge()``: the store script
  writes only if the generation is still the one read before the fetch (wso2#281).
- ``invalidate(token)`` (the upstream answered 401) deletes the cell only if it still
  holds that very token (compare-and-delete in Lua): 200 concurrent 401s on any number of
  replicas drop it once, and a 401 for an old token never drops the fresh one. The next
  ``token()`` anywhere then refreshes once, under the lease.
- A token this replica saw rejected is never adopted again, even while the cell in Redis
  still holds it (the compare-and-delete lands after the local copy is cleared, and a
  request in between would replay with it: 401 twice, a 502 for its caller).
- Tokens are secrets: no repr, log line or exception carries one.

Contract for the wiring (``services.gateway.tokens``): ``token()`` and ``invalidate()``
raise ``ClusterUnavailable`` when Redis cannot be used (down, or a refresher elsewhere
did not deliver within ``wait_s``); the caller then uses its local ``TokenManager``
(at most one extra token request per replica during an outage). Errors from ``fetch``
(the IdP) propagate unchanged, so the local manager's backoff rules still apply.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from services.gateway.cluster.channels import Channels
from services.gateway.cluster.errors import ClusterUnavailable
from services.gateway.cluster.lease import Lease, Outcome
from services.gateway.cluster.store import ClusterStore

log = structlog.get_logger(__name__)


class Grant(Protocol):
    """What ``fetch`` returns (``services.gateway.tokens.TokenGrant`` fits)."""

    @property
    def access_token(self) -> str: ...

    @property
    def expires_in(self) -> float: ...


GrantFetcher = Callable[[], Awaitable[Grant]]


def channel(store: ClusterStore) -> str:
    """The pub/sub channel new tokens are announced on (payload: credential name)."""
    return store.key("tokens")


_STORE = """
local gen = redis.call('GET', KEYS[2]) or '0'
if gen ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

_INVALIDATE = """
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local a = string.find(cur, ':', 1, true)
local b = a and string.find(cur, ':', a + 1, true)
if b and string.sub(cur, b + 1) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

_PURGE = """
redis.call('INCR', KEYS[2])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class _Cell:
    token: str = field(repr=False)
    usable_until: float  # unix seconds
    refresh_at: float

    @classmethod
    def parse(cls, raw: bytes | None) -> _Cell | None:
        if not raw:
            return None
        try:
            usable, refresh, token = raw.decode().split(":", 2)
            return cls(token, int(usable) / 1000, int(refresh) / 1000)
        except ValueError:
            return None

    def encode(self) -> str:
        return f"{int(self.usable_until * 1000)}:{int(self.refresh_at * 1000)}:{self.token}"


class SharedToken:
    """One credential's token, shared by every replica (see the module docstring)."""

    def __init__(
        self,
        store: ClusterStore,
        channels: Channels,
        credential: str,
        fetch: GrantFetcher,
        *,
        holder_id: str,
        lock_ttl_s: float = 10.0,
        wait_s: float | None = None,
        refresh_ratio: float = 0.75,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credential = credential
        self._store = store
        self._channels = channels
        self._channel = channel(store)
        self._topic = credential.encode()
        self._fetch = fetch
        self._lease = Lease(store, f"token:{credential}", holder_id, lock_ttl_s)
        self._wait_s = wait_s if wait_s is not None else lock_ttl_s + 1.0
        self._refresh_ratio = refresh_ratio
        self._clock = clock
        self._cell_key = store.key("token", credential)
        self._gen_key = store.key("token", credential, "gen")
        self._store_script = store.script("token.store", _STORE)
        self._invalidate_script = store.script("token.invalidate", _INVALIDATE)
        self._purge_script = store.script("token.purge", _PURGE)
        self._local: _Cell | None = None
        self._flight: asyncio.Task[str] | None = None
        self._background: asyncio.Task[str] | None = None
        self._invalidations: dict[str, asyncio.Task[bool]] = {}
        self._rejected: deque[str] = deque(maxlen=4)  # the last tokens answered 401
        self.fetches = 0  # IdP calls made by this replica (tests, logs)

    def __repr__(self) -> str:
        return f"SharedToken(credential={self.credential!r}, token=<redacted>)"

    __str__ = __repr__

    async def token(self) -> str:
        """A token usable now. Without a Redis call while the local copy is before its
        refresh point; refreshed behind the caller between refresh point and expiry."""
        local, now = self._local, self._clock()
        if local is not None and now < local.usable_until:
            if now >= local.refresh_at and self._background is None and self._flight is None:
                self._background = asyncio.create_task(self._obtain())
                self._background.add_done_callback(self._background_done)
            return local.token
        for _ in range(2):  # a flight begun before a 401 may bring back the rejected token
            if self._flight is None:
                self._flight = asyncio.create_task(self._obtain())
                self._flight.add_done_callback(self._flight_done)
            # shield: a caller that gives up must not cancel the refresh others wait for
            token = await asyncio.shield(self._flight)
            if token not in self._rejected:
                break
        return token

    async def invalidate(self, token: str) -> bool:
        """The upstream rejected ``token`` (401): drop it here and, if Redis still holds
        that very token, there. True when this call deleted it from Redis. Concurrent
        calls for one token on this replica share one Redis call."""
        if token not in self._rejected:
            self._rejected.append(token)
        if self._local is not None and self._local.token == token:
            self._local = None
        task = self._invalidations.get(token)
        if task is None:
            task = asyncio.create_task(self._invalidate(token))
            self._invalidations[token] = task
            task.add_done_callback(lambda _: self._invalidations.pop(token, None))
        return await asyncio.shield(task)

    async def _invalidate(self, token: str) -> bool:
        deleted = await self._invalidate_script(keys=[self._cell_key], args=[token])
        if deleted:
            log.info("shared_token_invalidated", credential=self.credential)
        return bool(deleted)

    async def purge(self) -> None:
        """Forget the token everywhere (credentials rotated); a refresh in flight
        anywhere will not store what it fetches."""
        self._local = None
        await self._purge_script(keys=[self._cell_key, self._gen_key],
                                 args=[self._channel, self.credential])

    async def close(self) -> None:
        for task in (self._flight, self._background):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        await self._lease.release()

    # -- internals -----------------------------------------------------------------

    def _flight_done(self, task: asyncio.Task[str]) -> None:
        if self._flight is task:
            self._flight = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up

    def _background_done(self, task: asyncio.Task[str]) -> None:
        self._background = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.info("shared_token_background_refresh_failed", credential=self.credential,
                     error=type(exc).__name__)

    async def _read(self) -> _Cell | None:
        """The cell in Redis; None also when it holds a token rejected here (its
        compare-and-delete is still on the way)."""
        raw = await self._store.call("token.get", lambda: self._store.redis.get(self._cell_key))
        cell = _Cell.parse(raw)
        return None if cell is None or cell.token in self._rejected else cell

    def _adopt(self, cell: _Cell) -> str:
        self._local = cell
        return cell.token

    async def _obtain(self) -> str:
        deadline = time.monotonic() + self._wait_s
        while True:
            with self._channels.waiter(self._channel, self._topic) as waiter:
                # waiter first, then read: a publish after the read still wakes us
                cell = await self._read()
                now = self._clock()
                if cell is not None and now < cell.usable_until and now < cell.refresh_at:
                    return self._adopt(cell)
                generation = await self._store.call(
                    "token.generation", lambda: self._store.redis.get(self._gen_key))
                acquisition = await self._lease.acquire()
                if acquisition.outcome is Outcome.ERROR:
                    raise ClusterUnavailable("token.lease", "store is down")
                if acquisition.outcome is Outcome.ACQUIRED:
                    return await self._refresh_holding_lease(generation or b"0")
                if cell is not None and now < cell.usable_until:
                    return self._adopt(cell)  # still usable; its refresh is under way
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ClusterUnavailable(
                        "token.wait", "the refresh by another replica did not land in time")
                await waiter.wait(min(remaining, (acquisition.held_for_s or 0.0) + 0.01))

    async def _refresh_holding_lease(self, generation: bytes) -> str:
        try:
            token = await self._refresh(generation)
        except BaseException:
            await self._lease.release()
            # a failed fetch must not leave other replicas waiting for the lease expiry
            try:
                await self._store.call("token.wake", lambda: self._store.redis.publish(
                    self._channel, self._topic))
            except ClusterUnavailable:
                pass
            raise
        await self._lease.release()
        return token

    async def _refresh(self, generation: bytes) -> str:
        cell = await self._read()
        now = self._clock()
        if cell is not None and now < cell.usable_until and now < cell.refresh_at:
            return self._adopt(cell)  # stored while we were acquiring
        self.fetches += 1
        grant = await self._fetch()
        now = self._clock()
        lifetime = float(grant.expires_in)
        fresh = _Cell(grant.access_token,
                      usable_until=now + lifetime - min(60.0, 0.1 * lifetime),
                      refresh_at=now + lifetime * self._refresh_ratio)
        px = max(1, int((fresh.usable_until - now) * 1000))
        try:
            # stores and publishes in one script: waiters wake and find the new cell
            stored = await self._store_script(
                keys=[self._cell_key, self._gen_key],
                args=[generation, fresh.encode(), px, self._channel, self.credential])
        except ClusterUnavailable:
            stored = 1  # Redis went away after the fetch: the token is still good here
        if not stored:
            log.info("shared_token_not_stored_after_purge", credential=self.credential)
            return grant.access_token  # answers this replica's callers, kept nowhere
        log.info("shared_token_refreshed", credential=self.credential, expires_in=lifetime)
        return self._adopt(fresh)
