//! Billing TIDs: `MID(10) + "01" (card) + "16" (billing) + yyMMddHHmmss (Korea time) + 4 digits`.
//!
//! NICEPAY's sample picks the 4 digits at random, which collides within a busy second. The
//! generator here hands out every 4-digit suffix of a second once (from a random start, so
//! that instances sharing a MID rarely meet), and moves on to the next second when a second is
//! used up. The database's unique index on TID is the final guard across instances.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::domain::{Mid, Tid};

const PER_SECOND: u32 = 10_000;

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
    start: u32,
    used: u32,
}

/// Hands out TIDs that are unique within this process.
#[derive(Debug)]
pub struct TidGenerator {
    mid: Mid,
    state: Mutex<State>,
}

impl TidGenerator {
    pub fn new(mid: Mid) -> Self {
        Self {
            mid,
            state: Mutex::new(State {
                second: i64::MIN,
                start: 0,
                used: 0,
            }),
        }
    }

    pub fn next(&self, now: DateTime<Utc>) -> Tid {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now_second = now.timestamp();
        // The clock may step back; never reuse a second that was already handed out.
        if now_second > s.second {
            s.second = now_second;
            s.start = rand::random_range(0..PER_SECOND);
            s.used = 0;
        } else if s.used == PER_SECOND {
            s.second += 1;
            s.start = rand::random_range(0..PER_SECOND);
            s.used = 0;
        }
        let suffix = (s.start + s.used) % PER_SECOND;
        s.used += 1;
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
        }
    }
}
