"""Shared last-seen digests: each transition of an entity is announced once cluster-wide.

Redis holds ``<ns>:digest:<entity>`` = ``"<digest>|<event id of the claim>"`` (no expiry)
and, per won event, ``<ns>:claim:<event id>`` (PX = ``claim_ttl_s``). ``<entity>`` is the
detector's own key (e.g. ``passport:P-1``, ``price:<context>:<evse>``); a digest is the
detector's ``sha256:…`` string, ``""`` for a tombstone (deleted).

``compare_and_set(entity, previous, new, event_id)`` is one Lua script:
- a claim for ``event_id`` exists → ALREADY_WON (this replica won it before a crash);
- the entity is absent (never seen, or Redis was flushed) → WON: store ``new`` + claim;
- the stored digest equals ``previous`` → WON: store ``new`` + claim;
- otherwise → LOST(current): another replica moved it first. If ``current == new`` the
  transition is already announced; if not, ``current → new`` is a transition nobody
  has announced yet: the caller re-evaluates it with ``previous = current`` (a new event
  id), so nothing is lost. ``previous=None`` means "I have never seen it" (a snapshot
  candidate): it wins only when the entity is absent — a joining replica announces
  nothing the cluster already knows.

The outbox protocol (DESIGN.md §12) that keeps "announce once" and "lose nothing":
1. In the local transaction that records the observation, write the outbox row
   UNCLAIMED, carrying (event id, entity, previous, new). The relay never sends an
   unclaimed row.
2. After the commit, run ``compare_and_set`` with the row's event id.
3. WON or ALREADY_WON → mark the row publishable. LOST → delete the row (and adopt
   ``current`` as the local last digest; see above when ``current != new``).
   ``ClusterUnavailable`` → mark it publishable anyway: while Redis is down, writes and
   reads still announce (duplicates are possible then; consumers are idempotent), and
   pollers are paused because they cannot hold their lease.
4. On start-up, before the relay runs, re-run step 2–3 for every unclaimed row.

Why the row and the claim cannot disagree after a restart: the row is durable before
the claim can exist (step 1 commits before step 2 is sent), and the claim is keyed by
the row's own event id and written atomically with the digest it moves. Re-running the
script for a row is idempotent: it answers ALREADY_WON exactly when this row won
before, whatever happened to the digest since. Crash before the CAS → the re-run
decides now; crash after the CAS, before the mark → ALREADY_WON → published; crash
after the mark → the row is already decided. A claim without a row cannot happen.
(``claim_ttl_s`` must exceed the longest time a replica stays down with unclaimed rows;
if Redis loses a claim — flush, failover without persistence — the re-run finds the
entity absent or moved and decides as for a new row: at most one announcement.)

Redis flushed or replaced: every entity is absent, so the first replica to see a change
wins it and the others lose — at most one announcement per entity, no storm. Pollers
``seed_many`` what each pass saw unchanged (``SET NX``: never overwrites), so a flushed
Redis is filled again without announcing anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from services.gateway.cluster.store import ClusterStore

_CAS = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  local cur = redis.call('GET', KEYS[1])
  if cur then cur = string.sub(cur, 1, string.find(cur, '|', 1, true) - 1) end
  return {'ALREADY_WON', cur or false}
end
local cur = redis.call('GET', KEYS[1])
local digest = nil
if cur then digest = string.sub(cur, 1, string.find(cur, '|', 1, true) - 1) end
if (not cur) or (ARGV[5] == '1' and digest == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2] .. '|' .. ARGV[3])
  redis.call('SET', KEYS[2], KEYS[1], 'PX', ARGV[4])
  return {'WON', ARGV[2]}
end
return {'LOST', digest or false}
"""


class Claim(StrEnum):
    WON = "won"
    LOST = "lost"
    ALREADY_WON = "already_won"


@dataclass(frozen=True, slots=True)
class CasResult:
    claim: Claim
    current: str | None  # the digest Redis holds now (None: absent)

    @property
    def publish(self) -> bool:
        return self.claim is not Claim.LOST


@dataclass(frozen=True, slots=True)
class Transition:
    entity: str
    previous: str | None
    new: str
    event_id: str


class SharedDigests:
    """The cluster's last-seen digests (see the module docstring)."""

    def __init__(self, store: ClusterStore, *, claim_ttl_s: float = 7 * 86400.0,
                 batch_timeout_s: float = 2.0) -> None:
        if not claim_ttl_s > 0:
            raise ValueError("claim_ttl_s must be positive")
        self._store = store
        self._claim_ttl_ms = int(claim_ttl_s * 1000)
        self._batch_timeout_s = batch_timeout_s  # poll passes: off the request path
        self._cas = store.script("digest.cas", _CAS)

    def _keys(self, entity: str, event_id: str) -> list[str]:
        return [self._store.key("digest", entity), self._store.key("claim", event_id)]

    def _args(self, t: Transition) -> list[str | int]:
        if "|" in t.new or (t.previous is not None and "|" in t.previous):
            raise ValueError("a digest must not contain '|'")
        return [t.previous or "", t.new, t.event_id, self._claim_ttl_ms,
                "1" if t.previous is not None else "0"]

    async def compare_and_set(self, entity: str, previous: str | None, new: str,
                              event_id: str) -> CasResult:
        """One atomic step; raises ClusterUnavailable when Redis cannot answer."""
        t = Transition(entity, previous, new, event_id)
        return _result(await self._cas(keys=self._keys(entity, event_id), args=self._args(t)))

    async def compare_and_set_many(self, transitions: Sequence[Transition]) -> list[CasResult]:
        """Many transitions in one round trip (a poll pass); each is atomic on its own."""
        if not transitions:
            return []
        redis = self._store.redis

        async def run() -> list[object]:
            pipe = redis.pipeline(transaction=False)
            for t in transitions:
                await self._cas.in_pipeline(pipe, self._keys(t.entity, t.event_id), self._args(t))
            return await pipe.execute()

        return [_result(r) for r in await self._store.call(
            "digest.cas_many", run, timeout_s=self._batch_timeout_s)]

    async def seed(self, entity: str, digest: str) -> bool:
        """Record ``digest`` only if the cluster knows nothing of ``entity`` (never
        overwrites, announces nothing). True when it was recorded."""
        key = self._store.key("digest", entity)
        return bool(await self._store.call(
            "digest.seed", lambda: self._store.redis.set(key, f"{digest}|", nx=True)))

    async def seed_many(self, items: Iterable[tuple[str, str]]) -> int:
        items = list(items)
        if not items:
            return 0
        redis = self._store.redis

        async def run() -> list[object]:
            pipe = redis.pipeline(transaction=False)
            for entity, digest in items:
                pipe.set(self._store.key("digest", entity), f"{digest}|", nx=True)
            return await pipe.execute()

        return sum(1 for r in await self._store.call(
            "digest.seed_many", run, timeout_s=self._batch_timeout_s) if r)

    async def current(self, entity: str) -> str | None:
        raw = await self._store.call("digest.get", lambda: self._store.redis.get(
            self._store.key("digest", entity)))
        return None if raw is None else raw.decode().split("|", 1)[0]


def _result(raw: object) -> CasResult:
    claim, current = raw  # type: ignore[misc]
    text = current.decode() if isinstance(current, bytes) else None
    return CasResult(Claim(claim.decode().lower()), text)
