"""`ampgate webhooks`: consumes passport-changed / price-changed and delivers signed
webhooks to the subscriptions in ``AMPGATE_WEBHOOKS__SUBSCRIPTIONS``.

    Kafka ──EventConsumer (group ampgate-webhooks)──▶ engine.handle_batch
        one job per (event, matching subscription) into <state_dir>/webhooks.sqlite3,
        one durable transaction, then the offset is committed (never waits for HTTP)
    queue ──SubscriptionWorker per subscription (own task, own connection pool)──▶ endpoint
        per-entity order; retries per AMPGATE_WEBHOOKS__RETRY_SCHEDULE_S (±20 % jitter,
        never sooner than Retry-After); 410 disables; last failure → webhooks-dead-letter

Modules: ``envelope`` (the body), ``signing`` (Standard Webhooks), ``delivery`` (one
attempt, Retry-After, backoff), ``store`` (the queue and its effect-once rules),
``worker`` (ordering, retries, disabling), ``dead_letter``, ``engine`` (ties them
together), ``app`` / ``main`` (wiring). Details in each module's docstring.
"""
