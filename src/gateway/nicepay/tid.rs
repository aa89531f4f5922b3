//! Billing TIDs: `MID(10) + "01" (card) + "16" (billing) + yyMMddHHmmss (Korea time) + 4 digits`.
//!
//! NICEPAY's sample picks the 4 digits at random, which collides within a busy second. The
//! generator here hands out every 4-digit suffix of a second at most once, walking them in
//! sequence from a random start, and moves on to the next second when a second is used up.
//! Instances sharing a MID walk from different starts; when one walks into the run another has
//! taken, the database's unique index on TID refuses the insert and the caller asks for a TID
//! [`after a collision`](TidGenerator::next_after_collision): the walk then jumps to a random
//! free suffix, since the next in sequence is most likely taken too.
//!
//! Where the database hands out lanes ([`set_lanes`](TidGenerator::set_lanes): 20 lanes of 500
//! suffixes, leased per instance), the walk takes its own lanes' suffixes first, in order, and
//! only then the rest of the second as above: instances with lanes of their own never meet while
//! each mints no more than its lanes hold in a second.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::domain::{Mid, Tid};

const PER_SECOND: u32 = 10_000;
const WORDS: usize = PER_SECOND.div_ceil(64) as usize;
/// Suffixes per lane (`storage::TID_LANES` lanes cover the second).
pub const LANE_WIDTH: u32 = 500;

/// Builds the TID for `mid` at `at` with the given 4-digit suffix.
pub fn build(mid: &Mid, at: DateTime<Utc>, suffix: u32) -> Tid {
    let stamp = at
        .with_timezone(&chrono_tz::Asia::Seoul)
        .format("%y%m%d%H%M%S");
    let text = format!("{}0116{stamp}{:04}", mid.as_str(), suffix % PER_SECOND);
    Tid::new(text).expect("MID is 10 characters and the rest is 20 digits")
}

/// Whether `tid` has the shape of a billing TID of `mid`.
pub fn is_billing_tid(tid: &str, mid: &str) -> bool {
    tid.len() == Tid::LEN
        && tid.starts_with(mid)
        && tid[10..].starts_with("0116")
        && tid[14..].bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug)]
struct State {
    second: i64,
    /// Suffixes of `second` handed out (a bit each).
    taken: [u64; WORDS],
    used: u32,
    /// Where the walk goes on (outside the lanes).
    cursor: u32,
    /// Leased lanes, and the next suffix to try in each this second.
    lanes: Vec<(u32, u32)>,
    rng: StdRng,
}

impl State {
    fn is_taken(&self, suffix: u32) -> bool {
        self.taken[suffix as usize / 64] & (1 << (suffix % 64)) != 0
    }

    /// Moves to `now`'s second if it is later than the current one (the clock may step back:
    /// a second already handed out is never used again), or to the next second when the
    /// current one is used up.
    fn roll(&mut self, now: DateTime<Utc>) {
        let now_second = now.timestamp();
        if now_second > self.second || self.used == PER_SECOND {
            self.second = now_second.max(self.second.saturating_add(1));
            self.taken = [0; WORDS];
            self.used = 0;
            self.cursor = self.rng.random_range(0..PER_SECOND);
            for (lane, next) in &mut self.lanes {
                *next = *lane * LANE_WIDTH;
            }
        }
    }

    fn mark(&mut self, suffix: u32) {
        self.taken[suffix as usize / 64] |= 1 << (suffix % 64);
        self.used += 1;
    }

    /// The next free suffix of the leased lanes this second, if any is left.
    fn take_in_lanes(&mut self) -> Option<u32> {
        for i in 0..self.lanes.len() {
            let (lane, mut next) = self.lanes[i];
            let end = (lane + 1) * LANE_WIDTH;
            while next < end && self.is_taken(next) {
                next += 1;
            }
            self.lanes[i].1 = next;
            if next < end {
                self.mark(next);
                self.lanes[i].1 = next + 1;
                return Some(next);
            }
        }
        None
    }

    /// The first free suffix: the lanes' first, then from the cursor on (there is one: the
    /// second is not used up).
    fn take(&mut self, in_lanes: bool) -> u32 {
        if in_lanes && let Some(suffix) = self.take_in_lanes() {
            return suffix;
        }
        let mut suffix = self.cursor;
        while self.is_taken(suffix) {
            suffix = (suffix + 1) % PER_SECOND;
        }
        self.mark(suffix);
        self.cursor = (suffix + 1) % PER_SECOND;
        suffix
    }
}

/// Hands out TIDs that are unique within this process.
#[derive(Debug)]
pub struct TidGenerator {
    mid: Mid,
    state: Mutex<State>,
}

impl TidGenerator {
    pub fn new(mid: Mid) -> Self {
        Self::with_rng(mid, StdRng::from_os_rng())
    }

    /// A generator whose random starts and jumps follow `seed` (for tests).
    pub fn seeded(mid: Mid, seed: u64) -> Self {
        Self::with_rng(mid, StdRng::seed_from_u64(seed))
    }

    fn with_rng(mid: Mid, rng: StdRng) -> Self {
        Self {
            mid,
            state: Mutex::new(State {
                second: i64::MIN,
                taken: [0; WORDS],
                used: 0,
                cursor: 0,
                lanes: Vec::new(),
                rng,
            }),
        }
    }

    /// The lanes this instance leased (`storage::Store::lease_tid_lanes`); empty: none. Lanes out
    /// of range are ignored. Takes effect at once; suffixes already handed out stay taken.
    pub fn set_lanes(&self, lanes: &[u32]) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut fresh: Vec<(u32, u32)> = lanes
            .iter()
            .filter(|&&l| (l + 1) * LANE_WIDTH <= PER_SECOND)
            .map(|&l| (l, l * LANE_WIDTH))
            .collect();
        fresh.sort_unstable();
        fresh.dedup_by_key(|(l, _)| *l);
        s.lanes = fresh;
    }

    /// The next TID of the walk.
    pub fn next(&self, now: DateTime<Utc>) -> Tid {
        self.mint(now, false)
    }

    /// A TID to replace one that was already stored: a random free suffix of the second, from
    /// which the walk goes on.
    pub fn next_after_collision(&self, now: DateTime<Utc>) -> Tid {
        self.mint(now, true)
    }

    fn mint(&self, now: DateTime<Utc>, jump: bool) -> Tid {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.roll(now);
        if jump {
            s.cursor = s.rng.random_range(0..PER_SECOND);
        }
        // After a collision inside a lane (another instance on it: a lease that ran out, or
        // more instances than lanes), the replacement comes from outside the lanes.
        let suffix = s.take(!jump);
        let at = DateTime::<Utc>::from_timestamp(s.second, 0).unwrap_or(now);
        build(&self.mid, at, suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone};
    use std::collections::HashSet;

    #[test]
    fn unique_through_a_crowded_second_and_a_clock_step_back() {
        let mid = Mid::new("nictest04m").unwrap();
        let tids = TidGenerator::new(mid.clone());
        let t0 = Utc.with_ymd_and_hms(2026, 12, 25, 0, 0, 0).unwrap();
        let mut seen = HashSet::new();
        for _ in 0..25_000 {
            let tid = tids.next(t0);
            assert!(is_billing_tid(tid.as_str(), "nictest04m"), "{tid}");
            assert!(seen.insert(tid));
        }
        for _ in 0..100 {
            assert!(seen.insert(tids.next(t0 - Duration::seconds(5))));
            assert!(seen.insert(tids.next_after_collision(t0 - Duration::seconds(5))));
        }
    }

    /// Four instances minting in the same second, each retrying a taken TID as the store
    /// does (a few times, after a collision): the jumps find free suffixes where walking on
    /// in sequence would run along another instance's run. Seeded, so it cannot flake.
    #[test]
    fn instances_sharing_a_second_place_every_tid_within_the_retries() {
        let t0 = Utc.with_ymd_and_hms(2026, 12, 25, 0, 0, 0).unwrap();
        for seed in 0..20u64 {
            let mid = Mid::new("nictest04m").unwrap();
            let gens: Vec<_> = (0..4)
                .map(|i| TidGenerator::seeded(mid.clone(), seed * 4 + i))
                .collect();
            let mut stored = HashSet::new();
            let (mut collisions, mut unplaced) = (0, 0);
            // 4 × 800 TIDs of one second, in batches of 64 from each instance in turn.
            for _round in 0..(800 / 64 + 1) {
                for g in &gens {
                    for _ in 0..64 {
                        let mut tid = g.next(t0);
                        let mut tries = 1;
                        while !stored.insert(tid.clone()) {
                            collisions += 1;
                            if tries == 8 {
                                unplaced += 1;
                                break;
                            }
                            tid = g.next_after_collision(t0);
                            tries += 1;
                        }
                    }
                }
            }
            assert_eq!(unplaced, 0, "seed {seed}");
            // Walking on in sequence instead collides along whole runs (hundreds per second).
            assert!(collisions < 300, "seed {seed}: {collisions} collisions");
        }
    }

    fn suffix(tid: &Tid) -> u32 {
        tid.as_str()[26..].parse().unwrap()
    }

    /// With lanes, a second's TIDs come from the lanes, in order, until they are used up; then
    /// from the rest of the second. A new second starts the lanes again.
    #[test]
    fn lanes_first_then_the_rest_of_the_second() {
        let t0 = Utc.with_ymd_and_hms(2026, 12, 25, 0, 0, 0).unwrap();
        let g = TidGenerator::seeded(Mid::new("nictest04m").unwrap(), 7);
        g.set_lanes(&[7, 3, 99]);
        let first: Vec<u32> = (0..2 * LANE_WIDTH).map(|_| suffix(&g.next(t0))).collect();
        let want: Vec<u32> = (1500..2000).chain(3500..4000).collect();
        assert_eq!(first, want);
        let outside = suffix(&g.next(t0));
        assert!(!(1500..2000).contains(&outside) && !(3500..4000).contains(&outside));
        assert_eq!(suffix(&g.next(t0 + Duration::seconds(1))), 1500);
        // A replacement after a collision comes from outside the lanes.
        let replaced = suffix(&g.next_after_collision(t0 + Duration::seconds(1)));
        assert!(!(1500..2000).contains(&replaced) && !(3500..4000).contains(&replaced));
        assert_eq!(suffix(&g.next(t0 + Duration::seconds(1))), 1501);
        // Lanes let go: the walk alone.
        g.set_lanes(&[]);
        let walked = suffix(&g.next(t0 + Duration::seconds(2)));
        let again = suffix(&g.next(t0 + Duration::seconds(2)));
        assert_eq!(again, (walked + 1) % PER_SECOND);
    }

    /// Four instances on lanes of their own (as the database leases them), each minting what
    /// its lanes hold in a second: no TID is offered twice, so no insert ever waits on another
    /// instance's uncommitted batch. The same four without lanes collide.
    #[test]
    fn instances_on_their_own_lanes_never_collide() {
        let t0 = Utc.with_ymd_and_hms(2026, 12, 25, 0, 0, 0).unwrap();
        let mid = Mid::new("nictest04m").unwrap();
        let mut without_lanes = 0;
        for seed in 0..20u64 {
            for lanes in [true, false] {
                let gens: Vec<_> = (0..4u32)
                    .map(|i| {
                        let g = TidGenerator::seeded(mid.clone(), seed * 4 + u64::from(i));
                        if lanes {
                            g.set_lanes(&[3 * i, 3 * i + 1, 3 * i + 2]);
                        }
                        g
                    })
                    .collect();
                let mut stored = HashSet::new();
                let mut collisions = 0;
                for _round in 0..(3 * LANE_WIDTH / 50) {
                    for g in &gens {
                        for _ in 0..50 {
                            if !stored.insert(g.next(t0)) {
                                collisions += 1;
                            }
                        }
                    }
                }
                if lanes {
                    assert_eq!(collisions, 0, "seed {seed}");
                } else {
                    without_lanes += collisions;
                }
            }
        }
        assert!(
            without_lanes > 0,
            "the case without lanes should show what lanes prevent"
        );
    }
}
