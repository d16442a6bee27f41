"""Leases: at most one holder of a name at a time, cluster-wide, with fencing.

A ``Lease`` is one attempt-level handle: ``acquire()`` answers one of three outcomes
(LESSONS.md "Scaling out") — ACQUIRED (with a fencing number), HELD (by someone else,
with the time it has left) or ERROR (the store is down: the caller decides; pollers
pause, a token refresher falls back to its local manager). ``renew()`` and ``release()``
are compare-the-token Lua scripts: they act only while the stored value is still ours.

Stored value: ``"<fence>:<token>"`` under ``<ns>:lease:<name>`` with PX = ttl, where the
token is ``<holder_id>/<random>`` (unique per acquisition) and the fence is INCR of
``<ns>:lease:<name>:fence``: strictly increasing across holders for as long as Redis
keeps its data (a flushed Redis starts again at 1; compare fences only within one
Redis lifetime). Acquire is one script doing INCR + ``SET NX PX`` atomically.

Invariants:
- Exclusive: the key is set only when absent (NX) and changed only by its token's owner.
- A holder believes it holds the lease only until ``confirmed_at + ttl * safety``, where
  ``confirmed_at`` is the local time the last successful acquire/renew was SENT — never
  longer than Redis keeps the key, even if the process stalls.
- ``LeaseKeeper`` renews every ttl/3. The moment a renewal fails, answers "not yours",
  or the local bound passes, ``held`` turns False and ``lost`` fires: the holder must
  stop at once (``run(work)`` cancels the work task for it).
- Takeover: a non-holder retries at ttl/3 (or when the holder's remaining PTTL runs out,
  if sooner), so a dead holder's lease is taken within ttl + ttl/3 < two lease periods.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from services.gateway.cluster.errors import ClusterUnavailable
from services.gateway.cluster.store import ClusterStore

log = structlog.get_logger(__name__)

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if sep and string.sub(cur, sep + 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, tonumber(string.sub(cur, 1, sep - 1))}
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'NX', 'PX', ARGV[2])
return {1, fence}
"""

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Outcome(StrEnum):
    ACQUIRED = "acquired"
    HELD = "held"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Acquisition:
    outcome: Outcome
    fence: int | None = None  # ACQUIRED: this holder's fencing number
    held_for_s: float | None = None  # HELD: the current holder's remaining time


class Lease:
    """One named lease as seen by one holder (see the module docstring)."""

    def __init__(self, store: ClusterStore, name: str, holder_id: str, ttl_s: float, *,
                 safety: float = 0.9, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0:
            raise ValueError("lease ttl must be positive")
        self.name = name
        self.holder_id = holder_id
        self.ttl_s = ttl_s
        self._store = store
        self._clock = clock
        self._safety = safety
        self._key = store.key("lease", name)
        self._fence_key = store.key("lease", name, "fence")
        self._acquire = store.script("lease.acquire", _ACQUIRE)
        self._renew = store.script("lease.renew", _RENEW)
        self._release = store.script("lease.release", _RELEASE)
        self._token = f"{holder_id}/{secrets.token_hex(8)}"
        self._value: str | None = None  # "<fence>:<token>" while we think we hold it
        self.fence: int | None = None
        self._valid_until = 0.0

    def __repr__(self) -> str:
        return f"Lease(name={self.name!r}, holder_id={self.holder_id!r}, held={self.held})"

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    @property
    def held(self) -> bool:
        """Held as far as this holder can know: confirmed and within the local bound."""
        return self._value is not None and self._clock() < self._valid_until

    @property
    def valid_for_s(self) -> float:
        """Seconds until the local bound passes (0 when not held)."""
        if self._value is None:
            return 0.0
        return max(0.0, self._valid_until - self._clock())

    def abandon(self) -> None:
        """Stop believing we hold it, without telling Redis (it will expire)."""
        self._drop()

    async def acquire(self) -> Acquisition:
        """One attempt. Never raises for the store: a store error is ``ERROR``."""
        sent = self._clock()
        try:
            ok, value = await self._acquire(keys=[self._key, self._fence_key],
                                            args=[self._token, self.ttl_ms])
        except ClusterUnavailable:
            self._drop()
            return Acquisition(Outcome.ERROR)
        if int(ok) == 1:
            self.fence = int(value)
            self._value = f"{self.fence}:{self._token}"
            self._valid_until = sent + self.ttl_s * self._safety
            return Acquisition(Outcome.ACQUIRED, fence=self.fence)
        self._drop()
        pttl = int(value)
        return Acquisition(Outcome.HELD, held_for_s=max(0.0, pttl / 1000) if pttl > 0 else 0.0)

    async def renew(self) -> bool:
        """Extend the lease by a full ttl if still ours. False (and no longer held) when
        it is not; raises ClusterUnavailable (and no longer held) when the store fails."""
        if self._value is None:
            return False
        sent = self._clock()
        try:
            ok = await self._renew(keys=[self._key], args=[self._value, self.ttl_ms])
        except ClusterUnavailable:
            self._drop()
            raise
        if int(ok) != 1:
            self._drop()
            return False
        self._valid_until = sent + self.ttl_s * self._safety
        return True

    async def release(self) -> None:
        """Give the lease up now (others need not wait for the expiry). Best effort."""
        value, self._value = self._value, None
        self._valid_until = 0.0
        if value is None:
            return
        with contextlib.suppress(ClusterUnavailable):
            await self._release(keys=[self._key], args=[value])

    async def holder(self) -> str | None:
        """The current holder's id, or None (for /readyz and tests)."""
        raw = await self._store.call("lease.holder", lambda: self._store.redis.get(self._key))
        if raw is None:
            return None
        token = raw.decode().split(":", 1)[1]
        return token.rsplit("/", 1)[0]

    def _drop(self) -> None:
        self._value = None
        self._valid_until = 0.0


class LeaseKeeper:
    """Keeps trying to hold one lease and renews it while held (see module docstring).

    ``held`` / ``fence`` read the lease; ``acquired`` and ``lost`` are asyncio events
    (set while in that state); ``on_change(name, held)`` is called on every transition
    (the ``ampgate_cluster_leases_held`` gauge)."""

    def __init__(self, lease: Lease, *,
                 on_change: Callable[[str, bool], None] | None = None) -> None:
        self.lease = lease
        self._on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.acquired = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()
        self._was_held = False

    @property
    def held(self) -> bool:
        held = self.lease.held
        if not held and self._was_held:
            self._transition(False)  # the local bound passed before the loop noticed
        return held

    @property
    def fence(self) -> int | None:
        return self.lease.fence if self.held else None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._keep(), name=f"lease-{self.lease.name}")

    async def stop(self) -> None:
        """Stop renewing and release the lease, so another replica takes over at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.lease.release()
        if self._was_held:
            self._transition(False)

    async def run(self, work: Callable[[], Awaitable[object]]) -> None:
        """Run ``work()`` only while the lease is held: start it when acquired, cancel it
        the moment the lease is lost, start it again on the next acquisition. Returns
        (or raises) when ``work`` itself ends while the lease is still held; otherwise
        runs until cancelled. This is how a poller runs in cluster mode."""
        await self.start()
        while True:
            await self.acquired.wait()
            task = asyncio.create_task(work(), name=f"leased-{self.lease.name}")
            lost = asyncio.create_task(self.lost.wait())
            try:
                await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
                task.cancel()
                # asyncio.wait, not ``await task`` under suppress(CancelledError): that
                # would swallow a cancellation of run() itself arriving meanwhile.
                await asyncio.wait({task, lost})
            if not task.cancelled():
                task.result()  # work ended (or failed) by itself: hand that to the caller
                return

    def _transition(self, held: bool) -> None:
        if held == self._was_held:
            return
        self._was_held = held
        if held:
            self.lost.clear()
            self.acquired.set()
            log.info("lease_acquired", lease=self.lease.name, fence=self.lease.fence)
        else:
            self.acquired.clear()
            self.lost.set()
            log.warning("lease_lost", lease=self.lease.name)
        if self._on_change is not None:
            self._on_change(self.lease.name, held)

    async def _keep(self) -> None:
        step = self.lease.ttl_s / 3
        while True:
            if self.lease.held:
                # a renewal may not outlive the local bound, whatever the store timeout
                try:
                    async with asyncio.timeout(self.lease.valid_for_s):
                        ok = await self.lease.renew()
                except (ClusterUnavailable, TimeoutError):
                    self.lease.abandon()
                    ok = False
                if not ok:
                    self._transition(False)
                    continue  # try to re-acquire at once (we may get it back)
                await self._sleep_held(step)
                continue
            result = await self.lease.acquire()
            if result.outcome is Outcome.ACQUIRED:
                self._transition(True)
                await self._sleep_held(step)
                continue
            self._transition(False)
            wait = step
            if result.outcome is Outcome.HELD and result.held_for_s is not None:
                wait = min(step, result.held_for_s + 0.005)
            await asyncio.sleep(wait)

    async def _sleep_held(self, step: float) -> None:
        """Sleep until the next renewal, but wake to flip ``held`` if the local bound
        passes first (a renewal that stalls must not leave us believing we hold it)."""
        await asyncio.sleep(min(step, self.lease.valid_for_s))
        if not self.lease.held:
            self._transition(False)
