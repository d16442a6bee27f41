"""Pub/sub for one replica: one subscribed connection, fanned out to in-process waiters.

Invariants:
- One Redis pub/sub connection per replica, subscribed to a fixed set of channels
  (given at construction). In-process code never subscribes itself: it registers a
  ``waiter(channel, topic)`` or a handler (``on_message``), which costs no Redis call.
- Waiting without a lost wake-up: register the waiter FIRST, then read the state in
  Redis, then wait. A message published after the read wakes the waiter; one published
  before it is already reflected in what was read.
- Messages can be missed only while the subscription is down. So every time the
  subscription is (re)established, every waiter is woken (it re-reads the state) and
  every ``on_resync`` handler is called (e.g. the memory tier drops what an eviction it
  may have missed would have dropped). Nothing relies on a message alone for safety:
  each waiter also has its own deadline.
- The reader reconnects by itself with backoff (``retry_min_s`` … ``retry_max_s``), and
  at once when the store reports it is up again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import structlog

from services.gateway.cluster.store import ClusterStore

log = structlog.get_logger(__name__)

MessageHandler = Callable[[bytes], None]


class Waiter:
    """Woken by a message on (channel, topic), or by a resubscription."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> bool:
        """True when woken within ``timeout_s``; clears itself for the next wait."""
        if timeout_s <= 0 and not self._event.is_set():
            return False
        try:
            async with asyncio.timeout(max(0.0, timeout_s)):
                await self._event.wait()
        except TimeoutError:
            return False
        self._event.clear()
        return True


class Channels:
    def __init__(self, store: ClusterStore, channels: Iterable[str], *,
                 retry_min_s: float = 0.05, retry_max_s: float = 1.0,
                 read_timeout_s: float = 1.0) -> None:
        self._store = store
        self._channels = tuple(dict.fromkeys(channels))
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._read_timeout_s = read_timeout_s
        self._waiters: dict[tuple[str, bytes], set[Waiter]] = {}
        self._handlers: dict[str, list[MessageHandler]] = {}
        self._resync: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._reconnect = asyncio.Event()
        self._subscribed = asyncio.Event()
        store.add_state_listener(self._store_state)

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    async def start(self, wait_s: float = 1.0) -> None:
        """Start the reader; wait up to ``wait_s`` for the first subscription (a store
        that is down leaves it retrying in the background)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cluster-channels")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                await self._subscribed.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- registration -----------------------------------------------------------------

    def on_message(self, channel: str, handler: MessageHandler) -> None:
        self._require(channel)
        self._handlers.setdefault(channel, []).append(handler)

    def on_resync(self, handler: Callable[[], None]) -> None:
        self._resync.append(handler)

    @contextlib.contextmanager
    def waiter(self, channel: str, topic: bytes) -> Iterator[Waiter]:
        """Register before reading the state you wait on (see the module docstring)."""
        self._require(channel)
        waiter = Waiter()
        slot = self._waiters.setdefault((channel, topic), set())
        slot.add(waiter)
        try:
            yield waiter
        finally:
            slot.discard(waiter)
            if not slot:
                self._waiters.pop((channel, topic), None)

    def _require(self, channel: str) -> None:
        if channel not in self._channels:
            raise ValueError(f"channel {channel!r} is not one this replica subscribes to")

    # -- dispatch ---------------------------------------------------------------------

    def _dispatch(self, channel: str, payload: bytes) -> None:
        for waiter in self._waiters.get((channel, payload), ()):
            waiter.wake()
        for handler in self._handlers.get(channel, ()):
            try:
                handler(payload)
            except Exception:
                log.exception("cluster_channel_handler_failed", channel=channel)

    def _wake_everyone(self) -> None:
        for slot in self._waiters.values():
            for waiter in slot:
                waiter.wake()
        for handler in self._resync:
            try:
                handler()
            except Exception:
                log.exception("cluster_channel_resync_failed")

    def _store_state(self, up: bool) -> None:
        if up:
            self._reconnect.set()

    # -- the reader -------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._retry_min_s
        while True:
            pubsub = self._store.redis.pubsub()
            try:
                async with asyncio.timeout(max(self._store.timeout_s * 5, 0.5)):
                    await pubsub.subscribe(*self._channels)
                    confirmed = 0
                    while confirmed < len(self._channels):
                        msg = await pubsub.get_message(timeout=self._read_timeout_s)
                        if msg is not None and msg["type"] == "subscribe":
                            confirmed += 1
                self._reconnect.clear()
                self._subscribed.set()
                delay = self._retry_min_s
                log.info("cluster_channels_subscribed", channels=len(self._channels))
                self._wake_everyone()
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=self._read_timeout_s)
                    if msg is not None and msg["type"] == "message":
                        channel = _text(msg["channel"])
                        self._dispatch(channel, bytes(msg["data"]))
                    if self._reconnect.is_set():
                        break  # the store was down: messages may be lost, resubscribe
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                raise
            except Exception as exc:  # noqa: BLE001 — any failure: resubscribe
                if self._subscribed.is_set():
                    log.warning("cluster_channels_lost", error=type(exc).__name__)
            self._subscribed.clear()
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            self._reconnect.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconnect.wait(), delay)
            delay = min(self._retry_max_s, delay * 2)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
