"""The claimer (cluster mode, DESIGN.md §12): decides unclaimed outbox rows against the
cluster's shared digests, so each transition is announced once cluster-wide.

The detector's transaction wrote each row UNCLAIMED with its transition (entity,
previous, new, event id). The claimer runs ``SharedDigests.compare_and_set_many`` over
the unclaimed rows, oldest first, then in ONE local transaction:

- WON / ALREADY_WON → promote the row (the relay may send it);
- LOST, the cluster already holds ``new`` → drop the row: announced elsewhere;
- LOST, the cluster holds another digest ``current`` → ``current → new`` is a transition
  nobody has announced: the row is rewritten for it (a new event id) and decided again;
- a write's row (``always``) is promoted whatever the claim says (a write always
  announces); when lost, the digest is moved to ``new`` afterwards, best effort;
- ``ClusterUnavailable`` → promote: while Redis is down writes and reads still announce
  (duplicates are possible then; consumers are idempotent). Pollers are paused then.

At start-up ``run_once()`` decides every unclaimed row before the relay starts.

Why the outbox row and the claim cannot disagree after a restart: the row is committed
(step 1, in the detector's transaction) before its compare-and-set is even sent, and
the claim Redis stores is keyed by the row's own event id, written in the same Lua
script as the digest it moves. So a claim never exists without its row, and re-running
the script for a row is idempotent: it answers ALREADY_WON exactly when this row won
before a crash — whatever moved the digest since. Crash before the CAS: the re-run
decides now. Crash after the CAS, before the local transaction: ALREADY_WON → promoted,
published once. Crash after the transaction: the row is already promoted or gone. A
rewritten row gets a new event id in the same transaction that records the loss, so
its old id (which holds no claim) is never asked again.

``seed(items)``: what a poll pass saw unchanged, recorded with ``SET NX`` (never
overwrites, announces nothing), so a flushed Redis fills again without a storm. The app
also seeds every local last-seen digest at start and each time the store comes back up
(it may come back empty), so a poller whose own state is empty does not announce again
what other replicas knew.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import suppress

import structlog
from aiohttp import web

from services.common.outbox import ClaimSpec, Outbox
from services.gateway.changes import reannounce
from services.gateway.cluster import ClusterUnavailable, SharedDigests, Transition
from services.gateway.cluster.digests import Claim

log = structlog.get_logger(__name__)

FaultHook = Callable[[], Awaitable[None]]

# Tests only: awaited between the compare-and-set and the local transaction that
# records its outcome (a test makes it hang, then throws the replica away: "killed
# between claim and outbox mark"). Never set by the service itself.
CLAIM_FAULT_KEY: web.AppKey[FaultHook] = web.AppKey("test_claim_fault_hook")

_MAX_SEED = 50_000  # unchanged digests waiting to be seeded (a pass's worth, bounded)


class Claimer:
    def __init__(self, outbox: Outbox, digests: SharedDigests, *, batch_size: int = 500,
                 idle_s: float = 1.0, after_claim: FaultHook | None = None) -> None:
        self._outbox = outbox
        self._digests = digests
        self._batch_size = batch_size
        self._idle_s = idle_s
        self._after_claim = after_claim
        self._seeds: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    # -- the detector's side ------------------------------------------------------------

    def seed(self, items: list[tuple[str, str]]) -> None:
        if len(self._seeds) < _MAX_SEED:
            self._seeds.update(items)
            self._outbox.claim_wakeup.set()

    async def seed_now(self, items: list[tuple[str, str]]) -> None:
        """Seed at once (start-up, the store back up): before any poll pass here."""
        if items:
            with suppress(ClusterUnavailable):
                await self._digests.seed_many(items)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Decide every row a previous run left unclaimed, then keep deciding."""
        await self.run_once()
        self._task = asyncio.create_task(self._forever(), name="outbox-claimer")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    async def _forever(self) -> None:
        wakeup = self._outbox.claim_wakeup
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), self._idle_s)
            wakeup.clear()  # before reading: a commit after this read sets it again
            try:
                await self._seed()
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the rows stay unclaimed: decided on the next round
                log.exception("outbox_claim_failed")
                await asyncio.sleep(self._idle_s)

    # -- the work -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Decide the unclaimed rows there are now; returns how many were promoted."""
        promoted = 0
        for _ in range(5):  # rewritten rows are decided again; another round after that
            after, rewritten = 0, 0
            while rows := self._outbox.unclaimed(self._batch_size, after_id=after):
                after = rows[-1].id
                n, r = await self._decide(rows)
                promoted += n
                rewritten += r
            if not rewritten:
                break
        else:
            self._outbox.claim_wakeup.set()
        return promoted

    async def _decide(self, rows: list) -> tuple[int, int]:
        try:
            results = await self._digests.compare_and_set_many([
                Transition(r.claim.entity, r.claim.previous, r.claim.new, r.claim.event_id)
                for r in rows])
        except ClusterUnavailable:
            # Redis down: announce anyway (duplicates possible; consumers are idempotent).
            self._outbox.decide([r.id for r in rows], [])
            log.info("outbox_claims_unavailable", rows=len(rows))
            return len(rows), 0
        if self._after_claim is not None:
            await self._after_claim()
        promote: list[int] = []
        drop: list[int] = []
        rewrite: list[tuple[int, object, ClaimSpec]] = []
        moves: list[Transition] = []
        for row, res in zip(rows, results, strict=True):
            c = row.claim
            if res.publish:
                promote.append(row.id)
            elif c.always:
                promote.append(row.id)
                if res.current != c.new:
                    moves.append(Transition(c.entity, res.current, c.new, c.event_id))
            elif res.current is None or res.current == c.new:
                drop.append(row.id)  # the cluster knows it already
            else:
                record, event_id = reannounce(row.record, res.current, c.new)
                rewrite.append((row.id, record,
                                ClaimSpec(c.entity, res.current, c.new, event_id)))
        self._outbox.decide(promote, drop, rewrite)  # type: ignore[arg-type]
        if drop or rewrite:
            log.debug("outbox_claims_lost", dropped=len(drop), reannounced=len(rewrite))
        if moves:  # a write lost a race: still move the digest to what it wrote
            with suppress(ClusterUnavailable):
                await self._digests.compare_and_set_many(moves)
        return len(promote), len(rewrite)

    async def _seed(self) -> None:
        if not self._seeds:
            return
        items, self._seeds = list(self._seeds.items()), {}
        with suppress(ClusterUnavailable):
            await self._digests.seed_many(items)


__all__ = ["CLAIM_FAULT_KEY", "Claim", "Claimer"]
