//! Every "now" in nicebill comes from a [`Clock`], so tests can fix or move time.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Duration, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Arc::new(Mutex::new(at)))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = at;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// The database's clock, read through this host's monotonic clock: every instance on one
/// database judges leases and settle windows on the same time, and no jump of this host's wall
/// clock (NTP, a wrong setting) moves it. Re-synchronised with the database once per pass.
#[derive(Debug)]
pub struct DbClock {
    state: Mutex<DbClockState>,
}

#[derive(Debug, Clone, Copy)]
struct DbClockState {
    /// The database's time at `at` on this host's monotonic clock.
    db: DateTime<Utc>,
    at: std::time::Instant,
    /// The latest time handed out: the clock never runs backwards.
    last: DateTime<Utc>,
}

impl DbClock {
    /// A clock from one reading of the database's time, taken between `sent` and `received`.
    pub fn new(db: DateTime<Utc>, sent: std::time::Instant, received: std::time::Instant) -> Self {
        let at = midpoint(sent, received);
        Self {
            state: Mutex::new(DbClockState { db, at, last: db }),
        }
    }

    /// Takes a new reading.
    pub fn sync(&self, db: DateTime<Utc>, sent: std::time::Instant, received: std::time::Instant) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.db = db;
        s.at = midpoint(sent, received);
    }

    /// How far this host's wall clock is from the database's (positive: this host is ahead).
    pub fn host_skew(&self) -> Duration {
        Utc::now() - self.now()
    }
}

fn midpoint(sent: std::time::Instant, received: std::time::Instant) -> std::time::Instant {
    sent + received.saturating_duration_since(sent) / 2
}

impl Clock for DbClock {
    fn now(&self) -> DateTime<Utc> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = Duration::from_std(s.at.elapsed()).unwrap_or(Duration::zero());
        let now = s.db.checked_add_signed(elapsed).unwrap_or(s.db).max(s.last);
        s.last = now;
        now
    }
}

/// `t + d`, saturating at the latest time chrono represents instead of panicking: `d` may come
/// from the configuration.
pub fn later(t: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}
