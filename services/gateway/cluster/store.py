"""The connection to the shared store (Redis ≥ 6.2 or Valkey) and its up/down state.

Invariants:
- Every Redis call goes through ``ClusterStore.call`` (or a ``ClusterScript``, which uses
  it). Each call is bounded by ``timeout_s`` (connect included) — a Redis call never hangs
  a request — and every redis-py or socket error is translated there, once, into
  ``ClusterUnavailable``; then the caller falls back.
- ``is_up`` is False from the moment a call fails for a connection reason (refused,
  reset), or after ``down_after_timeouts`` consecutive calls timed out (one slow moment
  under load fails only its own call), until a health ping succeeds again. While down, calls fail at once without
  touching the network, so an outage costs requests nothing but a branch. The only
  retry is one immediate reconnect after a connection error (a pooled connection that
  a Redis restart left dead), inside the same bound.
- A background health loop pings every ``health_interval_s`` while up (so an idle replica
  notices an outage too) and, while down, with exponential backoff from
  ``retry_min_s`` to ``retry_max_s``. Recovery needs no restart and no new objects:
  the pool reconnects, and scripts reload themselves (EVALSHA → NOSCRIPT → SCRIPT LOAD).
- ``on_state(up)`` is called on every transition (and once at start); ``on_call(op,
  seconds, outcome)`` after every call. Both are plain callbacks (metrics hooks; see
  ``services.gateway.cluster.metrics``) and must not raise or block.
- A server-side error to a well-formed command (``ResponseError``: WRONGTYPE, a script
  error, OOM) also raises ``ClusterUnavailable`` but does not mark the store down.
- Keys are namespaced: ``store.key("lease", name)`` → ``"<namespace>:lease:<name>"``, so
  several deployments (or tests) can share one Redis; the gateway's namespace is
  ``AMPGATE_CLUSTER__KEY_PREFIX`` (default ``ampgate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rexc
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.gateway.cluster.errors import ClusterUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

StateHook = Callable[[bool], None]
CallHook = Callable[[str, float, str], None]  # operation, seconds, outcome (ok, error, down)

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, rexc.ReadOnlyError,
    OSError, TimeoutError, ConnectionError,
)


def _redact_url(url: str) -> str:
    """Scheme, host, port, path: never the password of ``redis://user:pass@host``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparsable url>"
    _, at, hostpart = rest.rpartition("@")
    return f"{scheme}://{'<credentials>@' if at else ''}{hostpart.split('?')[0]}"


class ClusterScript:
    """A Lua script registered once with the store; calling it is one bounded call."""

    def __init__(self, store: ClusterStore, name: str, source: str) -> None:
        self.name = name
        self._store = store
        self._script = store.redis.register_script(source)

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self._store.call(self.name, lambda: self._script(keys=list(keys),
                                                                      args=list(args)))

    async def in_pipeline(self, pipe: Any, keys: Sequence[Any] = (),
                          args: Sequence[Any] = ()) -> None:
        """Queue the script in a pipeline (no I/O; run the pipeline inside one
        ``store.call``, which loads missing scripts first)."""
        await self._script(keys=list(keys), args=list(args), client=pipe)


class ClusterStore:
    """One Redis client for a gateway replica: bounded calls, up/down state, scripts."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "ampgate",
        timeout_s: float = 0.1,
        connect_timeout_s: float | None = None,
        health_interval_s: float = 1.0,
        retry_min_s: float = 0.05,
        retry_max_s: float = 2.0,
        on_state: StateHook | None = None,
        on_call: CallHook | None = None,
        client_name: str | None = None,
        max_connections: int = 16,
        down_after_timeouts: int = 3,
        connection_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("cluster redis_url must start with redis://, rediss:// or unix://")
        self.url = url
        self.namespace = namespace
        self.timeout_s = timeout_s
        self._health_interval_s = health_interval_s
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._on_state = on_state
        self._on_call = on_call
        # A bounded pool: a burst of concurrent calls queues (inside each call's bound)
        # for one of ``max_connections`` instead of opening a connection per call; the
        # pub/sub reader holds one more.
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections + 1,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=connect_timeout_s or timeout_s,
            # one immediate retry on a connection error only: a pooled connection that a
            # Redis restart left dead reconnects at once; the call stays bounded as a whole
            retry=Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
            retry_on_timeout=False,
            health_check_interval=0,
            client_name=client_name,
            decode_responses=False,
            # ACL user, password, TLS (services.common.redis_security.redis_options)
            **dict(connection_options or {}),
        )
        self.redis: aioredis.Redis = aioredis.Redis(connection_pool=self._pool)
        self._up = False
        self._up_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._state_listeners: list[StateHook] = []
        self._last_error: str | None = None
        self._timeouts = 0  # consecutive timed-out calls
        self._down_after_timeouts = down_after_timeouts

    def __repr__(self) -> str:
        return f"ClusterStore(url={_redact_url(self.url)!r}, up={self._up})"

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Ping once (a Redis that is down at start-up does not stop the gateway: the
        store starts down and comes up by itself), then start the health loop."""
        if not await self._probe():
            log.warning("cluster_store_down_at_start", url=_redact_url(self.url),
                        error=self._last_error)
        if self._on_state is not None:
            self._on_state(self._up)
        if self._task is None:
            self._task = asyncio.create_task(self._health(), name="cluster-store-health")

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self._pool.disconnect()

    # -- state ---------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self._up

    async def wait_up(self) -> None:
        await self._up_event.wait()

    def add_state_listener(self, listener: StateHook) -> None:
        """Called on every up/down transition (e.g. pub/sub resubscribes on up)."""
        self._state_listeners.append(listener)

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    def script(self, name: str, source: str) -> ClusterScript:
        """Register a Lua script once; keep the returned object and call it."""
        return ClusterScript(self, name, source)

    # -- calls -----------------------------------------------------------------------

    async def call(self, operation: str, fn: Callable[[], Awaitable[T]], *,
                   timeout_s: float | None = None) -> T:
        """Run one Redis command (``fn`` builds it), bounded by ``timeout_s`` (the store's
        by default; batch work off the request path may pass a longer one); every error
        becomes ``ClusterUnavailable``. ``operation`` is a bounded label (metrics, logs)."""
        if not self._up:
            self._observe(operation, 0.0, "down")
            raise ClusterUnavailable(operation, "store is down")
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s or self.timeout_s):
                result = await fn()
        except rexc.ResponseError as exc:
            self._observe(operation, time.perf_counter() - started, "error")
            log.warning("cluster_store_error", operation=operation, error=type(exc).__name__,
                        detail=str(exc)[:200])
            raise ClusterUnavailable(operation, type(exc).__name__) from None
        except (TimeoutError, rexc.TimeoutError) as exc:
            # slow, not refused: down only after a run of them (a loaded moment must not
            # flip the whole replica to degraded), but this call gives up now
            self._observe(operation, time.perf_counter() - started, "error")
            self._timeouts += 1
            if self._timeouts >= self._down_after_timeouts:
                self._mark_down(operation, exc)
            raise ClusterUnavailable(operation, "TimeoutError") from None
        except (*_CONNECTION_ERRORS, rexc.RedisError) as exc:
            self._observe(operation, time.perf_counter() - started, "error")
            self._mark_down(operation, exc)
            raise ClusterUnavailable(operation, type(exc).__name__) from None
        self._timeouts = 0
        self._observe(operation, time.perf_counter() - started, "ok")
        return result

    def _observe(self, operation: str, seconds: float, outcome: str) -> None:
        if self._on_call is not None:
            self._on_call(operation, seconds, outcome)

    def _set_state(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            self._up_event.set()
            log.info("cluster_store_up", url=_redact_url(self.url))
        else:
            self._up_event.clear()
        if self._on_state is not None:
            self._on_state(up)
        for listener in self._state_listeners:
            listener(up)

    def _mark_down(self, operation: str, exc: BaseException) -> None:
        if self._up:
            log.warning("cluster_store_down", operation=operation, error=type(exc).__name__,
                        url=_redact_url(self.url))
            self._set_state(False)
            self._wake.set()

    # -- health --------------------------------------------------------------------

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.redis.ping()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 — any failure means: down
            self._last_error = type(exc).__name__
            self._mark_down("ping", exc)
            return False
        self._timeouts = 0
        self._set_state(True)
        return True

    async def _health(self) -> None:
        delay = self._retry_min_s
        while not self._closed:
            if self._up:
                delay = self._retry_min_s
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._health_interval_s)
                if self._up:
                    await self._probe()
                continue
            await asyncio.sleep(delay)
            if not await self._probe():
                delay = min(self._retry_max_s, delay * 2)
