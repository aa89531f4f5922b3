-- NICEPAY v1: NICEPAY makes the tid, so an attempt is committed before sending with its order
-- id (moid) only, and the tid is written with the outcome. Each attempt also records which API
-- it went out on: an unresolved attempt can only be looked up on its own API.
--
-- SQLite cannot drop a NOT NULL constraint: the table is rebuilt, with every index of the
-- earlier migrations (no table references charges, so dropping the old one is safe with
-- foreign keys on).
CREATE TABLE charges_v1 (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription_id BIGINT  NOT NULL REFERENCES subscriptions (id),
    cycle           INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,
    moid            TEXT    NOT NULL UNIQUE,
    tid             TEXT    UNIQUE,
    amount          BIGINT  NOT NULL,
    state           TEXT    NOT NULL,
    result_code     TEXT,
    result_msg      TEXT,
    auth_code       TEXT,
    auth_date       TEXT,
    card_no         TEXT,
    error_class     TEXT,
    error           TEXT,
    lookups         INTEGER NOT NULL DEFAULT 0,
    check_after     TIMESTAMP,
    created_at      TIMESTAMP NOT NULL,
    resolved_at     TIMESTAMP,
    bid             TEXT,
    late_check_at   TIMESTAMP,
    last_lookup_at  TIMESTAMP,
    api             TEXT    NOT NULL DEFAULT 'webapi' CHECK (api IN ('webapi', 'v1')),
    UNIQUE (subscription_id, cycle, attempt),
    -- A v1 attempt has no tid until NICEPAY answers; a webapi attempt always has one.
    CONSTRAINT charges_tid_of_webapi CHECK (api = 'v1' OR tid IS NOT NULL)
);
INSERT INTO charges_v1 (id, subscription_id, cycle, attempt, moid, tid, amount, state,
    result_code, result_msg, auth_code, auth_date, card_no, error_class, error, lookups,
    check_after, created_at, resolved_at, bid, late_check_at, last_lookup_at, api)
SELECT id, subscription_id, cycle, attempt, moid, tid, amount, state,
    result_code, result_msg, auth_code, auth_date, card_no, error_class, error, lookups,
    check_after, created_at, resolved_at, bid, late_check_at, last_lookup_at, 'webapi'
FROM charges;
DROP TABLE charges;
ALTER TABLE charges_v1 RENAME TO charges;
CREATE INDEX charges_unresolved ON charges (subscription_id, check_after) WHERE state IN ('pending', 'unknown');
CREATE UNIQUE INDEX charges_one_live_attempt_per_cycle ON charges (subscription_id, cycle)
    WHERE state IN ('approved', 'pending', 'unknown');
CREATE UNIQUE INDEX charges_one_unresolved_per_subscription ON charges (subscription_id)
    WHERE state IN ('pending', 'unknown');
CREATE INDEX charges_late_check ON charges (late_check_at) WHERE late_check_at IS NOT NULL;
CREATE INDEX charges_by_bid ON charges (bid) WHERE state IN ('pending', 'unknown');
