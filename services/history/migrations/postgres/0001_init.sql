-- Every version of every entity, append-only. JSON (not JSONB) keeps documents byte for
-- byte as received.
CREATE TABLE history_versions (
    seq             BIGSERIAL   PRIMARY KEY,
    entity          TEXT        NOT NULL,             -- passport | price
    entity_id       TEXT        NOT NULL,             -- passport id | EVSE id (upper case)
    context         TEXT        NOT NULL DEFAULT '',  -- tariff context name ('' for passports)
    event_id        TEXT        NOT NULL UNIQUE,      -- CloudEvents ce_id: a resend is recorded once
    observed_at     TIMESTAMPTZ NOT NULL,
    change          TEXT        NOT NULL,
    detected_by     TEXT        NOT NULL,
    digest          TEXT        NOT NULL,
    previous_digest TEXT        NOT NULL,
    changed_paths   JSON        NOT NULL,             -- array of RFC 6901 pointers
    document        JSON,                             -- NULL when deleted
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX history_versions_entity_time
    ON history_versions (entity, entity_id, context, observed_at, seq);
CREATE INDEX history_versions_entity_digest
    ON history_versions (entity, entity_id, context, digest);
