"""`ampgate webhooks`: consume change events, deliver signed webhooks."""

from __future__ import annotations

import structlog

from services.common.consumer import run_worker
from services.common.settings import Settings
from services.webhooks.app import create_app
from services.webhooks.subscriptions import safe_endpoint

log = structlog.get_logger("ampgate.webhooks")


def run(settings: Settings) -> None:
    subs = settings.webhooks.subscriptions
    if not subs:
        log.warning("webhook_no_subscriptions",
                    hint="set AMPGATE_WEBHOOKS__SUBSCRIPTIONS; events are consumed and dropped")
    for s in subs:
        log.info("webhook_subscription", subscription=s.name, endpoint=safe_endpoint(str(s.url)),
                 events=s.events, entity_filter=s.entity_ids is not None)
    run_worker(create_app(settings), settings)
