-- Every version of every entity, append-only. Times are UTC microseconds since the epoch
-- (exact ordering and comparison; rendered as RFC 3339 by the API).
CREATE TABLE history_versions (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    entity          TEXT    NOT NULL,             -- passport | price
    entity_id       TEXT    NOT NULL,             -- passport id | EVSE id (upper case)
    context         TEXT    NOT NULL DEFAULT '',  -- tariff context name ('' for passports)
    event_id        TEXT    NOT NULL UNIQUE,      -- CloudEvents ce_id: a resend is recorded once
    observed_at_us  INTEGER NOT NULL,
    change          TEXT    NOT NULL,
    detected_by     TEXT    NOT NULL,
    digest          TEXT    NOT NULL,
    previous_digest TEXT    NOT NULL,
    changed_paths   TEXT    NOT NULL,             -- JSON array of RFC 6901 pointers
    document        TEXT,                         -- JSON; NULL when deleted
    recorded_at_us  INTEGER NOT NULL
);

CREATE INDEX history_versions_entity_time
    ON history_versions (entity, entity_id, context, observed_at_us, seq);
CREATE INDEX history_versions_entity_digest
    ON history_versions (entity, entity_id, context, digest);
