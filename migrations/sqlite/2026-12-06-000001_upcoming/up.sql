-- `charge.upcoming` notices (README "Webhooks"): per subscription, the notice plan of its next
-- cycle. `notice_cycle` and `notice_due` are the cycle and due time the plan was made for (when
-- either differs from next_cycle/next_charge_at, the plan is made again); `notice_lead` is the
-- shortest lead (seconds) already told for that cycle; `notice_at` is when the next notice is
-- due (NULL: none left). Each (cycle, lead) is told once: the outbox's dedupe key
-- `upcoming:<subscription>:<cycle>:<lead>` makes sure of it.
ALTER TABLE billing_state ADD COLUMN notice_cycle INTEGER;
ALTER TABLE billing_state ADD COLUMN notice_due TIMESTAMP;
ALTER TABLE billing_state ADD COLUMN notice_lead BIGINT CHECK (notice_lead IS NULL OR notice_lead > 0);
ALTER TABLE billing_state ADD COLUMN notice_at TIMESTAMP;
-- Notices due (small: only rows with a notice still to tell).
CREATE INDEX billing_state_notice_at ON billing_state (notice_at)
    WHERE notice_at IS NOT NULL AND status = 'active';
-- Plans to make again (small: rows whose cycle or due time moved since their plan). The
-- queries repeat this expression exactly, so that SQLite uses the index.
CREATE INDEX billing_state_notice_stale ON billing_state (subscription_id)
    WHERE notice_cycle IS NOT next_cycle OR notice_due IS NOT next_charge_at;
