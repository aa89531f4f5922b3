-- TID lanes: the 10,000 four-digit TID suffixes of a second are cut into 20 lanes of 500, and
-- each instance leases a few for its own. Instances sharing a MID then mint from disjoint
-- parts of the suffix space instead of walking into each other's runs (where an insert waits
-- on the other instance's uncommitted attempt batch, then is refused by the unique index on
-- `charges.tid`). A hint only: that unique index is still what guarantees a TID is used once,
-- and an instance with no lane (more instances than lanes) mints as before.
CREATE TABLE tid_lanes (
    lane          INTEGER PRIMARY KEY CHECK (lane >= 0 AND lane < 20),
    owner         TEXT,
    leased_until  TIMESTAMP
);
INSERT INTO tid_lanes (lane) VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9),
    (10), (11), (12), (13), (14), (15), (16), (17), (18), (19);
