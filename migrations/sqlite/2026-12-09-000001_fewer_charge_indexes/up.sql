-- `charges_unresolved (subscription_id, check_after) WHERE state IN ('pending', 'unknown')`
-- answers nothing that `charges_one_unresolved_per_subscription (subscription_id)`, with the
-- same predicate and at most one row per subscription, does not; the unresolved claim reads
-- by `check_after` across subscriptions, which its leading column cannot serve either. Each
-- attempt written cost it one more index entry (bench/RESULTS.md, session 9).
DROP INDEX charges_unresolved;
