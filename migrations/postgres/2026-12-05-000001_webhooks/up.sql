-- The webhook outbox: one row per event the merchant hears about, written in the same
-- transaction as the change it describes (so no event exists without its change, and no change
-- without its event), then delivered at least once by the daemon's webhook workers with the same
-- `event_id` (the `webhook-id` header) on every try. See README "Webhooks".
CREATE TABLE webhook_outbox (
    id              BIGSERIAL PRIMARY KEY,
    event_id        TEXT      NOT NULL UNIQUE,
    -- Events that must exist once (an upcoming notice per cycle and lead, …) carry a key.
    dedupe_key      TEXT      UNIQUE,
    subscription_id BIGINT,
    kind            TEXT      NOT NULL,
    -- The exact body sent (and signed) on every try.
    body            TEXT      NOT NULL,
    created_at      TIMESTAMP NOT NULL,
    state           TEXT      NOT NULL DEFAULT 'pending'
                              CHECK (state IN ('pending', 'delivered', 'dead', 'filtered')),
    attempts        INTEGER   NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at TIMESTAMP NOT NULL,
    claimed_by      TEXT,
    claimed_until   TIMESTAMP,
    last_status     INTEGER,
    last_error      TEXT,
    last_attempt_at TIMESTAMP,
    delivered_at    TIMESTAMP
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);
CREATE INDEX webhook_outbox_subscription ON webhook_outbox (subscription_id, id);
