-- NICEPAY v1: NICEPAY makes the tid, so an attempt is committed before sending with its order
-- id (moid) only, and the tid is written with the outcome. Each attempt also records which API
-- it went out on: an unresolved attempt can only be looked up on its own API.
ALTER TABLE charges ALTER COLUMN tid DROP NOT NULL;
ALTER TABLE charges ADD COLUMN api TEXT NOT NULL DEFAULT 'webapi'
    CHECK (api IN ('webapi', 'v1'));
-- A v1 attempt has no tid until NICEPAY answers; a webapi attempt always has one.
ALTER TABLE charges ADD CONSTRAINT charges_tid_of_webapi CHECK (api = 'v1' OR tid IS NOT NULL);
