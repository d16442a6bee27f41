"""The shared second cache tier: ready-to-send entries in Redis, one fill cluster-wide.

Layout (``<ns>`` = the store's namespace; keys and tags are strings chosen by the wiring):
- ``<ns>:cache:<key>``        the entry (``encode_entry``), PX = its longest window;
- ``<ns>:cache-fill:<key>``   the fill lock (``SET NX PX``; value = the filler's token);
- ``<ns>:cache-tag:<tag>``    the set of entry keys carrying a tag (PX ≥ its members');
- ``<ns>:cache-epoch:k:<key>`` / ``…:t:<tag>`` / ``…:all``  eviction epochs;
- channel ``fill_channel(store)``  payload = key: "a fill of <key> ended, look again";
- channel ``evict_channel(store)`` payload = an ``Eviction`` (JSON of names, never bodies).

Invariants:
- An entry is stored as bytes with a compact binary header (the content digest, status,
  content type, ETag, stored_at, headers, and the absolute fresh / stale-while-revalidate /
  stale-if-error ends in unix seconds): no JSON work on the body, ever. The digest (the one
  change events carry, ``""`` when unknown) comes right after the magic, so the eviction
  script reads it with one GETRANGE (``digest_prefix``).
- A key cold everywhere makes ONE upstream call cluster-wide: only the holder of the
  fill lock calls ``fetch``; everyone else waits for the fill channel, each with its own
  deadline (``wait_s``), waking at the latest when the lock would expire, and then tries
  the lock itself: a filler that died is replaced after ``lock_ttl_s``. A caller whose
  deadline passes fetches by itself (FALLBACK) rather than fail. An answer that is not
  stored (not cacheable, or evicted meanwhile) releases the waiters too: one of them
  takes the lock next, so such keys cost one call per turn, never a stampede.
- The locked fetch runs in a task of its own: a cancelled caller does not cancel it,
  and the lock is always released (with a publish) when it ends, so waiters never wait
  for an expiry after a fill that merely failed.
- An eviction cannot be undone by a fill that was in flight when it happened: ``put``
  stores only if the epochs of its key, its tags and the global epoch are unchanged
  since the fill read them (the shared tier's version of the memory tier's "detached
  fill").
- ``evict(keys, tags)`` deletes in Redis and publishes one message; every replica's
  memory tier applies it through ``on_evict``. ``evict(..., keep_digest=d)`` (a change
  event announcing version ``d``) spares the entries that hold ``d`` already — in Redis
  and, by the message, in every memory tier: they ARE that version. The epochs are bumped
  all the same (a fill in flight may bring any version: it does not store). Messages missed while a replica's
  subscription was down are covered by a resync: ``on_evict`` then receives
  ``Eviction(everything=True)`` and the memory tier drops everything.

Contract for the wiring (``services.gateway.cache``): the memory tier stays first (a hit
there never calls Redis). On a memory miss its fill task — which belongs to no caller —
calls ``SharedCache.fill(key, fetch, …)``; ``fetch`` returns the response and the
``SharedEntry`` to store (None when not cacheable). ``ClusterUnavailable`` from ``fill``
or ``get`` means: fetch locally as in single-replica mode. Stale-if-error for a shared
entry: ``get(key)`` returns entries past their fresh window while any window is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

import orjson
import structlog

from services.gateway.cluster.channels import Channels
from services.gateway.cluster.errors import ClusterUnavailable
from services.gateway.cluster.store import ClusterStore

log = structlog.get_logger(__name__)

T = TypeVar("T")

_MAGIC = b"AGC2"  # AGC1 (no digest) decodes as None: a miss, refilled in this format
_PREFIX = struct.Struct(">4sB")  # magic, digest length; the digest follows
_HEAD = struct.Struct(">HddddHHH")  # status, stored_at, fresh, swr, stale, lens
_MAX_DIGEST = 255
_PAIR = struct.Struct(">HH")


def fill_channel(store: ClusterStore) -> str:
    return store.key("cache-filled")


def evict_channel(store: ClusterStore) -> str:
    return store.key("cache-evict")


def channels(store: ClusterStore) -> list[str]:
    """The channels a replica's ``Channels`` must subscribe to for the shared cache."""
    return [fill_channel(store), evict_channel(store)]


@dataclass(frozen=True, slots=True)
class SharedEntry:
    """A ready-to-send response with its windows as absolute unix times."""

    status: int
    body: bytes = field(repr=False)
    content_type: str
    etag: str
    stored_at: float
    headers: tuple[tuple[str, str], ...]
    fresh_until: float
    swr_until: float
    stale_until: float  # stale-if-error
    digest: str = ""  # the content's digest as change events carry it; "" when unknown

    @classmethod
    def of(cls, status: int, body: bytes, content_type: str, etag: str, stored_at: float,
           headers: tuple[tuple[str, str], ...] = (), *, ttl_s: float, swr_s: float = 0.0,
           stale_if_error_s: float = 0.0, now: float | None = None,
           digest: str = "") -> SharedEntry:
        now = time.time() if now is None else now
        fresh = now + ttl_s
        return cls(status, body, content_type, etag, stored_at, tuple(headers),
                   fresh, fresh + swr_s, fresh + stale_if_error_s, digest)

    def is_fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def remaining(self, now: float) -> tuple[float, float, float]:
        """Seconds left of (fresh, stale-while-revalidate, stale-if-error) from ``now``;
        what the memory tier needs to store this entry with the same windows."""
        return (max(0.0, self.fresh_until - now), max(0.0, self.swr_until - now),
                max(0.0, self.stale_until - now))

    @property
    def expires_at(self) -> float:
        return max(self.fresh_until, self.swr_until, self.stale_until)


def _stored_digest(digest: str) -> bytes:
    """A digest as stored; one too long to store is stored as unknown (always evicted)."""
    raw = digest.encode()
    return raw if len(raw) <= _MAX_DIGEST else b""


def digest_prefix(digest: str) -> bytes:
    """The first bytes of an encoded entry holding ``digest``: what the eviction script
    compares an entry's start with to spare it."""
    raw = _stored_digest(digest)
    return _PREFIX.pack(_MAGIC, len(raw)) + raw


def encode_entry(entry: SharedEntry) -> bytes:
    ct, etag = entry.content_type.encode(), entry.etag.encode()
    parts = [digest_prefix(entry.digest),
             _HEAD.pack(entry.status, entry.stored_at, entry.fresh_until, entry.swr_until,
                        entry.stale_until, len(ct), len(etag), len(entry.headers)), ct, etag]
    for name, value in entry.headers:
        n, v = name.encode(), value.encode()
        parts += (_PAIR.pack(len(n), len(v)), n, v)
    parts.append(entry.body)
    return b"".join(parts)


def decode_entry(raw: bytes) -> SharedEntry | None:
    """None for anything that is not an entry of this format (a foreign or old value)."""
    try:
        magic, ldigest = _PREFIX.unpack_from(raw)
        if magic != _MAGIC:
            return None
        pos = _PREFIX.size
        digest = raw[pos:pos + ldigest].decode()
        pos += ldigest
        status, stored, fresh, swr, stale, lct, letag, nh = _HEAD.unpack_from(raw, pos)
        pos += _HEAD.size
        ct = raw[pos:pos + lct].decode()
        pos += lct
        etag = raw[pos:pos + letag].decode()
        pos += letag
        headers = []
        for _ in range(nh):
            ln, lv = _PAIR.unpack_from(raw, pos)
            pos += _PAIR.size
            headers.append((raw[pos:pos + ln].decode(), raw[pos + ln:pos + ln + lv].decode()))
            pos += ln + lv
        return SharedEntry(status, raw[pos:], ct, etag, stored, tuple(headers), fresh, swr, stale,
                           digest)
    except (struct.error, UnicodeDecodeError):
        return None


class FillResult(StrEnum):
    SHARED_HIT = "shared_hit"  # a fresh entry was in Redis
    FILLED = "filled"  # this call held the lock and fetched
    WAITED = "waited"  # another replica (or call) fetched; we took its entry
    FALLBACK = "fallback"  # our deadline passed: fetched without the lock


@dataclass(frozen=True, slots=True)
class Fill(Generic[T]):
    result: FillResult
    entry: SharedEntry | None  # what Redis holds (or what we stored)
    value: T | None = None  # fetch's own answer, when this call fetched


@dataclass(frozen=True, slots=True)
class Eviction:
    keys: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    everything: bool = False
    origin: str = ""  # the evicting replica's id ("" for a resync)
    keep_digest: str = ""  # entries holding this digest stay (they are that version)


EvictHandler = Callable[[Eviction], None]
Fetch = Callable[[], Awaitable[tuple[T, SharedEntry | None]]]

_TRY_LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
return redis.call('PTTL', KEYS[1])
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

# KEYS: entry, epoch(all), epoch(key), epoch(tag)*n, tagset*n
# ARGV: entry bytes, px, n, expected epoch(all), expected epoch(key), expected epoch(tag)*n
_PUT = """
local n = tonumber(ARGV[3])
for i = 0, n + 1 do
  if (redis.call('GET', KEYS[2 + i]) or '0') ~= ARGV[4 + i] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local px = tonumber(ARGV[2])
for i = 1, n do
  local set = KEYS[3 + n + i]
  redis.call('SADD', set, KEYS[1])
  if redis.call('PTTL', set) < px then redis.call('PEXPIRE', set, px) end
end
return 1
"""

# KEYS: entry*nk, epoch(key)*nk, tagset*nt, epoch(tag)*nt
# ARGV: nk, nt, channel, message, epoch ttl ms, keep ('' or digest_prefix: entries that
# start with it stay, and so does their membership of the tag set)
_EVICT = """
local nk, nt = tonumber(ARGV[1]), tonumber(ARGV[2])
local keep = ARGV[6]
local function kept(name)
  return keep ~= '' and redis.call('GETRANGE', name, 0, #keep - 1) == keep
end
local removed = 0
for i = 1, nk do
  if not kept(KEYS[i]) then removed = removed + redis.call('DEL', KEYS[i]) end
  redis.call('INCR', KEYS[nk + i])
  redis.call('PEXPIRE', KEYS[nk + i], ARGV[5])
end
for j = 1, nt do
  local set = KEYS[2 * nk + j]
  if keep == '' then
    for _, member in ipairs(redis.call('SMEMBERS', set)) do
      removed = removed + redis.call('DEL', member)
    end
    redis.call('DEL', set)
  else
    for _, member in ipairs(redis.call('SMEMBERS', set)) do
      if not kept(member) then
        removed = removed + redis.call('DEL', member)
        redis.call('SREM', set, member)
      end
    end
  end
  redis.call('INCR', KEYS[2 * nk + nt + j])
  redis.call('PEXPIRE', KEYS[2 * nk + nt + j], ARGV[5])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return removed
"""


class SharedCache:
    """One replica's handle on the shared tier (see the module docstring)."""

    def __init__(self, store: ClusterStore, channels_: Channels, *, replica_id: str,
                 epoch_ttl_s: float = 86400.0, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._channels = channels_
        self.replica_id = replica_id
        self._clock = clock
        self._epoch_ttl_ms = int(epoch_ttl_s * 1000)
        self._fill_channel = fill_channel(store)
        self._evict_channel = evict_channel(store)
        self._try_lock = store.script("cache.try_lock", _TRY_LOCK)
        self._unlock = store.script("cache.unlock", _UNLOCK)
        self._put = store.script("cache.put", _PUT)
        self._evict = store.script("cache.evict", _EVICT)
        self._handlers: list[EvictHandler] = []
        self._fills: set[asyncio.Task[object]] = set()
        channels_.on_message(self._evict_channel, self._on_evict_message)
        channels_.on_resync(self._on_resync)
        self.fetches = 0  # upstream calls made through this handle (tests, logs)

    # -- keys ------------------------------------------------------------------------

    def _entry_key(self, key: str) -> str:
        return self._store.key("cache", key)

    def _epoch_keys(self, key: str, tags: Collection[str]) -> list[str]:
        return [self._store.key("cache-epoch", "all"), self._store.key("cache-epoch", "k", key),
                *(self._store.key("cache-epoch", "t", t) for t in tags)]

    # -- reads and writes --------------------------------------------------------------

    async def get(self, key: str) -> SharedEntry | None:
        """The stored entry while any of its windows is open, else None."""
        raw = await self._store.call("cache.get",
                                     lambda: self._store.redis.get(self._entry_key(key)))
        if raw is None:
            return None
        entry = decode_entry(raw)
        if entry is None or self._clock() >= entry.expires_at:
            return None
        return entry

    async def epochs(self, key: str, tags: Collection[str] = ()) -> list[bytes]:
        """Read before a fetch, pass to ``put``: an eviction in between wins."""
        names = self._epoch_keys(key, tags)
        values = await self._store.call("cache.epochs", lambda: self._store.redis.mget(names))
        return [v or b"0" for v in values]

    async def put(self, key: str, entry: SharedEntry, tags: Collection[str] = (), *,
                  epochs: list[bytes] | None = None) -> bool:
        """Store ``entry`` with PX = its longest window. False when it was not stored:
        already expired, or evicted since ``epochs`` were read."""
        tags = tuple(tags)
        px = int((entry.expires_at - self._clock()) * 1000)
        if px <= 0:
            return False
        if epochs is None:
            epochs = await self.epochs(key, tags)
        keys = [self._entry_key(key), *self._epoch_keys(key, tags),
                *(self._store.key("cache-tag", t) for t in tags)]
        stored = await self._put(keys=keys, args=[encode_entry(entry), px, len(tags), *epochs])
        return bool(stored)

    @property
    def store_up(self) -> bool:
        return self._store.is_up

    async def evict(self, keys: Collection[str] = (), tags: Collection[str] = (), *,
                    keep_digest: str = "") -> int:
        """Evict keys and every key carrying a tag, in Redis and (by the message) in every
        replica's memory tier; with ``keep_digest``, entries holding that digest stay (a
        change event announcing that very version). Returns the shared entries deleted."""
        keys, tags = tuple(keys), tuple(tags)
        doc: dict[str, object] = {"o": self.replica_id, "k": keys, "t": tags}
        keep = b""
        if _stored_digest(keep_digest):  # "" (or unstorable) spares nothing
            doc["d"] = keep_digest
            keep = digest_prefix(keep_digest)
        message = orjson.dumps(doc)
        redis_keys = [*(self._entry_key(k) for k in keys),
                      *(self._store.key("cache-epoch", "k", k) for k in keys),
                      *(self._store.key("cache-tag", t) for t in tags),
                      *(self._store.key("cache-epoch", "t", t) for t in tags)]
        return int(await self._evict(keys=redis_keys, args=[
            len(keys), len(tags), self._evict_channel, message, self._epoch_ttl_ms, keep]))

    async def evict_all(self) -> int:
        """Admin purge: bump the global epoch (fills in flight will not store), delete
        every shared entry, tell every replica to drop its memory tier."""
        redis = self._store.redis
        await self._store.call("cache.epoch_all", lambda: redis.incr(
            self._store.key("cache-epoch", "all")))
        removed = 0
        for pattern in (self._store.key("cache", "*"), self._store.key("cache-tag", "*")):
            cursor = 0
            while True:
                cursor, names = await self._store.call(
                    "cache.scan", lambda c=cursor, p=pattern: redis.scan(c, match=p, count=500))
                if names:
                    removed += await self._store.call("cache.delete",
                                                      lambda n=names: redis.unlink(*n))
                if not cursor:
                    break
        await self._store.call("cache.publish", lambda: redis.publish(
            self._evict_channel, orjson.dumps({"o": self.replica_id, "a": True})))
        return removed

    # -- eviction messages -------------------------------------------------------------

    def on_evict(self, handler: EvictHandler) -> None:
        """``handler`` runs for every eviction anywhere (this replica's own included:
        check ``origin``) and with ``everything=True`` after a resubscription."""
        self._handlers.append(handler)

    def _emit(self, eviction: Eviction) -> None:
        for handler in self._handlers:
            try:
                handler(eviction)
            except Exception:
                log.exception("shared_cache_evict_handler_failed")

    def _on_evict_message(self, payload: bytes) -> None:
        try:
            doc = orjson.loads(payload)
            eviction = Eviction(tuple(doc.get("k", ())), tuple(doc.get("t", ())),
                                bool(doc.get("a", False)), str(doc.get("o", "")),
                                str(doc.get("d") or ""))
        except (orjson.JSONDecodeError, TypeError, AttributeError):
            log.warning("shared_cache_bad_evict_message")
            return
        self._emit(eviction)

    def _on_resync(self) -> None:
        self._emit(Eviction(everything=True))

    # -- the fill ----------------------------------------------------------------------

    async def fill(self, key: str, fetch: Fetch[T], *, tags: Collection[str] = (),
                   lock_ttl_s: float = 10.0, wait_s: float = 5.0) -> Fill[T]:
        """The entry for ``key`` with at most one ``fetch`` cluster-wide (see the module
        docstring). Raises ClusterUnavailable before any fetch when Redis fails (fetch
        locally then); once this call has fetched, Redis errors no longer raise."""
        tags = tuple(tags)
        deadline = time.monotonic() + wait_s
        waited = False
        topic = key.encode()
        while True:
            with self._channels.waiter(self._fill_channel, topic) as waiter:
                # waiter first, then read: a publish after the read still wakes us
                entry = await self.get(key)
                if entry is not None and entry.is_fresh(self._clock()):
                    return Fill(FillResult.WAITED if waited else FillResult.SHARED_HIT, entry)
                token = secrets.token_hex(8)
                pttl = await self._try_lock(keys=[self._store.key("cache-fill", key)],
                                            args=[token, max(1, int(lock_ttl_s * 1000))])
                if int(pttl) == -1:
                    return await self._detached(self._fetch_locked(key, token, fetch, tags))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.info("shared_cache_fill_wait_expired", waited_s=wait_s)
                    return await self._detached(self._fetch_unlocked(key, fetch, tags))
                lock_left = (int(pttl) / 1000) if int(pttl) > 0 else 0.0
                await waiter.wait(min(remaining, lock_left + 0.01))
                waited = True

    async def close(self) -> None:
        for task in list(self._fills):
            task.cancel()
        if self._fills:
            await asyncio.wait(self._fills)

    async def _detached(self, coro: Awaitable[Fill[T]]) -> Fill[T]:
        task: asyncio.Task[Fill[T]] = asyncio.ensure_future(coro)
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)
        return await asyncio.shield(task)

    async def _fetch_locked(self, key: str, token: str, fetch: Fetch[T],
                            tags: tuple[str, ...]) -> Fill[T]:
        try:
            epochs: list[bytes] | None = None
            with contextlib.suppress(ClusterUnavailable):
                epochs = await self.epochs(key, tags)
            self.fetches += 1
            value, entry = await fetch()
            stored: SharedEntry | None = None
            if entry is not None and epochs is not None:  # no epochs read: no safe store
                with contextlib.suppress(ClusterUnavailable):
                    if await self.put(key, entry, tags, epochs=epochs):
                        stored = entry  # else evicted meanwhile: answer, do not keep
            return Fill(FillResult.FILLED, stored, value)
        finally:
            with contextlib.suppress(ClusterUnavailable):
                await self._unlock(keys=[self._store.key("cache-fill", key)],
                                   args=[token, self._fill_channel, key])

    async def _fetch_unlocked(self, key: str, fetch: Fetch[T],
                              tags: tuple[str, ...]) -> Fill[T]:
        self.fetches += 1
        value, entry = await fetch()
        return Fill(FillResult.FALLBACK, entry, value)
