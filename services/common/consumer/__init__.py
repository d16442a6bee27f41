"""The consumer runtime every worker uses, so no worker writes its own loop.

Delivery is at least once, effect exactly once (the rules: ``runtime``). The work is
handed to one module per job:

* ``runtime``: the group loop — poll, hand a batch to the handler, commit; pause and
  retry on ``TransientError``; rebalances and graceful stop;
* ``lag``: end offsets and processed positions, the ``ampgate_consumer_lag`` gauge;
* ``dead_letter``: the ``dlq_*`` headers (built once) and sending a dead letter;
* ``metrics``: the consumer's Prometheus collectors;
* ``_broker_quirks``: tansu workarounds, in one place;
* ``worker_app``: the worker's HTTP app and how it is run.

THE HANDLER'S RULE (idempotent effect): the same transition delivered twice (two gateway
replicas, an outbox resend, a replay after a crash) is applied once; a value that flips
back and forth (A→B→A→B) is recorded every time. Handlers decide "same transition" by the
event id (``ce_id``) and by (entity, previous_digest, digest) — never by digest alone.

Use::

    consumer = EventConsumer("history", "ampgate-history", [PASSPORT_TOPIC, PRICE_TOPIC],
                             settings, handle_batch, registry,
                             dead_letter_topic="history-dead-letter")
    app = worker_app(registry, consumer)        # /healthz /readyz /metrics + start/stop
    run_worker(app, settings)                   # SIGTERM: graceful stop
"""

from services.common.consumer.dead_letter import dead_letter_headers, without_dead_letter_headers
from services.common.consumer.lag import LAG_REFRESH_S
from services.common.consumer.metrics import CONSUMER_OUTCOMES, ConsumerMetrics, consumer_metrics
from services.common.consumer.runtime import (
    COMMIT_TIMEOUT_S,
    MAX_RECONNECT_DELAY_S,
    POLL_TIMEOUT_MS,
    EventConsumer,
    HandleBatch,
    TransientError,
)
from services.common.consumer.worker_app import (
    CONSUMER_KEY,
    attach_consumer,
    run_worker,
    worker_app,
)

__all__ = [
    "COMMIT_TIMEOUT_S",
    "CONSUMER_KEY",
    "CONSUMER_OUTCOMES",
    "LAG_REFRESH_S",
    "MAX_RECONNECT_DELAY_S",
    "POLL_TIMEOUT_MS",
    "ConsumerMetrics",
    "EventConsumer",
    "HandleBatch",
    "TransientError",
    "attach_consumer",
    "consumer_metrics",
    "dead_letter_headers",
    "run_worker",
    "without_dead_letter_headers",
    "worker_app",
]
