//! The billing engine: the IO around [`super::plan`].
//!
//! One pass: notice status changes; resolve attempts whose outcome is unknown (status lookup by
//! TID); claim due subscriptions in batches, commit each attempt (Moid, TID, `pending`) before
//! sending it, send approvals with bounded concurrency and group-commit their outcomes; remove
//! billkeys of cancelled subscriptions.
//!
//! Exactly-once rests on three rules: an attempt is in the database before its request leaves;
//! a subscription with an unresolved attempt is never claimed; an unresolved attempt is
//! concluded "not charged" only by a status lookup made after it can no longer be in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use super::aimd::{Aimd, AimdFigures};
use super::model::{
    ChargeId, ChargeState, EventKind, MerchantRow, NoticeLeads, SubscriptionId, SubscriptionStatus,
};
use super::plan::{self, Advance, Decision, Policy, Position, Settled, Valid};
use crate::clock::SharedClock;
use crate::config::{self, defaults};
use crate::domain::{Bid, Moid, Tid};
use crate::gateway::nicepay::{Approval, CallError, Class, Reply, TxState, TxStatus};
use crate::gateway::{AttemptRef, ChargeRequest, Gateway, TidFor};
use crate::retry::{Attempt, RetryPolicy, retry};
use crate::schedule::{Cycle, Skipped};
use crate::storage::models::ChargeRow;
use crate::storage::recording::LateRecorded;
use crate::storage::{
    Bookkeeping, ChargeResult, Claimed, Event, LateFinding, NewTid, Outcome, Reschedule,
    StartAttempt, Store, StoreError, later,
};

/// How the engine behaves; built from `[scheduler]` and `[retry]`.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// This instance's name in claims (`host-pid-random`).
    pub owner: String,
    /// Approvals in flight at once.
    pub concurrency: usize,
    /// Subscriptions claimed per batch.
    pub batch: i64,
    /// How long a claim holds before another instance may take it over.
    pub lease: Duration,
    pub policy: Policy,
    /// An attempt not sent within this long of its commit is not sent at all; part of
    /// [`EngineSettings::settle`].
    pub settle_margin: Duration,
    /// The longest one HTTP call may take (connect + read timeout).
    pub call_timeout: Duration,
    /// In-process retries of calls that never reached NICEPAY, and of failed lookups.
    pub transient: RetryPolicy,
    /// Between lookups of an unresolved attempt across passes.
    pub lookup_retry: RetryPolicy,
    /// Between billkey removal attempts.
    pub removal_retry: RetryPolicy,
    /// How long to stop sending after NICEPAY signals overload.
    pub throttle_pause: Duration,
    /// After a "not found" conclusion, look the attempt up once more this much later: an
    /// approval found then is recorded (and a double charge, if its cycle was charged again).
    pub late_check_after: Duration,
    /// `charge.upcoming` notices this long before each cycle comes due (`[webhook]
    /// upcoming_lead`).
    pub upcoming_lead: NoticeLeads,
    /// Hooks for tests that must stop the engine at a precise point.
    #[doc(hidden)]
    pub hooks: Hooks,
}

/// Points where a test can hold the engine (a deterministic race needs one instance stalled
/// between its claim and its commit). Empty in service.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Awaited after a batch of subscriptions is claimed, before its attempts are committed.
    pub after_claim: Option<Arc<dyn Fn() -> futures_hook::Hook + Send + Sync>>,
    /// Called in a sender task after its attempt is committed, before it is sent (a test
    /// makes it panic).
    pub before_send: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Called in the outcome writer before each group commit (a test makes it panic).
    pub before_write: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("after_claim", &self.after_claim.is_some())
            .field("before_send", &self.before_send.is_some())
            .field("before_write", &self.before_write.is_some())
            .finish()
    }
}

/// The future a hook returns.
pub mod futures_hook {
    pub type Hook = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

impl EngineSettings {
    /// The configuration's defaults ([`config::defaults`]).
    pub fn new(owner: String, policy: Policy, call_timeout: Duration) -> Self {
        Self {
            owner,
            concurrency: defaults::CONCURRENCY,
            batch: defaults::CONCURRENCY as i64,
            lease: defaults::LEASE,
            policy,
            settle_margin: defaults::SETTLE_MARGIN,
            call_timeout,
            transient: RetryPolicy::new(
                Duration::from_millis(200),
                Duration::from_secs(2),
                defaults::TRANSIENT_MAX_ELAPSED,
            ),
            lookup_retry: RetryPolicy::new(
                Duration::from_secs(5),
                defaults::LOOKUP_MAX_INTERVAL,
                Duration::ZERO,
            ),
            removal_retry: RetryPolicy::new(
                Duration::from_secs(60),
                defaults::REMOVAL_MAX_INTERVAL,
                Duration::ZERO,
            ),
            throttle_pause: defaults::THROTTLE_PAUSE,
            late_check_after: defaults::LATE_CHECK_AFTER,
            upcoming_lead: NoticeLeads::new(defaults::UPCOMING_LEAD),
            hooks: Hooks::default(),
        }
    }

    /// After this long from its commit, an attempt can no longer be in flight anywhere, so a
    /// status lookup answering "no such transaction" proves it was never approved
    /// ([`config::settle_window`] of these settings).
    pub fn settle(&self) -> Duration {
        config::settle_window(
            self.call_timeout,
            self.transient.max_elapsed,
            self.settle_margin,
        )
    }

    /// A unique owner name for this process.
    pub fn default_owner() -> String {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "host".into());
        format!(
            "{host}-{}-{:04x}",
            std::process::id(),
            rand::random::<u16>()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Store(#[from] StoreError),
    /// A task of the pass panicked (a bug). Its attempts stay `pending`/`unknown` in the
    /// database and are looked up by a later pass or instance.
    #[error("{count} task(s) of the pass panicked (first: {first}); restart needed")]
    TaskPanicked { count: usize, first: String },
}

/// Counters since start, for health and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub charged: AtomicU64,
    pub declined: AtomicU64,
    pub failed: AtomicU64,
    pub not_charged: AtomicU64,
    pub unresolved: AtomicU64,
    pub removed: AtomicU64,
    pub invalid: AtomicU64,
    /// Approvals answered with a result code the gateway does not list.
    pub unlisted_codes: AtomicU64,
    /// Double charges found by late lookups.
    pub doubles: AtomicU64,
    /// Approvals found by late lookups (concluded not charged before).
    pub approved_late: AtomicU64,
    pub gateway_failures_in_a_row: AtomicU64,
    /// Claims of due subscriptions: how many, and their total and longest duration (ns).
    pub claims: AtomicU64,
    pub claim_nanos_total: AtomicU64,
    pub claim_nanos_max: AtomicU64,
    /// Unix time of the last NICEPAY answer that was not an overload signal (0: none yet).
    pub gateway_last_success: std::sync::atomic::AtomicI64,
    /// Tasks of a pass (senders, the outcome writer, lookups) that panicked.
    pub task_panics: AtomicU64,
    /// Approvals NICEPAY answered with an overload signal (V003, A246, HTTP 429/503, …).
    pub throttled: AtomicU64,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PassReport {
    pub claimed: usize,
    pub attempts: usize,
    pub charged: usize,
    pub declined: usize,
    pub failed: usize,
    pub not_charged: usize,
    pub unresolved: usize,
    pub resolved: usize,
    pub removed: usize,
    pub invalid: usize,
    pub skipped_cycles: usize,
    pub late_checked: usize,
    pub doubles: usize,
    /// Of `failed`: answered with a result code NICEPAY's lists do not name (retried).
    pub unlisted_codes: usize,
    /// `charge.upcoming` notices told ahead of their cycle (those told in the transaction of
    /// a first attempt are not counted here).
    pub notices: usize,
}

impl PassReport {
    pub fn merge(&mut self, other: &PassReport) {
        self.claimed += other.claimed;
        self.attempts += other.attempts;
        self.charged += other.charged;
        self.declined += other.declined;
        self.failed += other.failed;
        self.not_charged += other.not_charged;
        self.unresolved += other.unresolved;
        self.resolved += other.resolved;
        self.removed += other.removed;
        self.invalid += other.invalid;
        self.skipped_cycles += other.skipped_cycles;
        self.late_checked += other.late_checked;
        self.doubles += other.doubles;
        self.unlisted_codes += other.unlisted_codes;
        self.notices += other.notices;
    }
}

/// The engine. Cheap to clone; clones share counters and the shutdown flag.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    gateway: Arc<Gateway>,
    clock: SharedClock,
    settings: Arc<EngineSettings>,
    stats: Arc<Stats>,
    stopping: Arc<AtomicBool>,
    throttled_until: Arc<Mutex<Option<Instant>>>,
    /// Approvals in flight at once: `concurrency`, cut when NICEPAY signals overload.
    aimd: Aimd,
    /// When this engine last leased its TID lanes.
    lanes_leased: Arc<Mutex<Option<Instant>>>,
}

/// How long a TID lane lease lasts, and how often it is renewed while passes run.
const LANE_LEASE: Duration = Duration::from_secs(300);
const LANE_RENEW: Duration = Duration::from_secs(60);

/// One attempt on its way: what is needed to send it and to settle it.
struct InFlight {
    valid: Arc<Valid>,
    charge_id: ChargeId,
    cycle: Cycle,
    due_at: DateTime<Utc>,
    attempt: u32,
    prior_declines: u32,
    moid: Moid,
    /// Ours on the legacy API; on v1 NICEPAY makes it and it is learnt with the answer.
    tid: Option<Tid>,
    committed_at: DateTime<Utc>,
    /// The same moment on this host's monotonic clock (taken before the commit began): how
    /// long the attempt has waited is judged on it, never on a wall clock that may jump.
    committed: Instant,
}

impl Engine {
    pub fn new(
        store: Store,
        gateway: impl Into<Gateway>,
        clock: SharedClock,
        mut settings: EngineSettings,
    ) -> Self {
        let gateway: Gateway = gateway.into();
        // Rows are checked against the limits of the API they will be sent on.
        settings.policy.api = gateway.api();
        Self {
            store,
            gateway: Arc::new(gateway),
            clock,
            stats: Arc::new(Stats::default()),
            stopping: Arc::new(AtomicBool::new(false)),
            throttled_until: Arc::new(Mutex::new(None)),
            aimd: Aimd::new(settings.concurrency),
            lanes_leased: Arc::new(Mutex::new(None)),
            settings: Arc::new(settings),
        }
    }

    /// The adaptive concurrency limit (health and metrics).
    pub fn concurrency(&self) -> AimdFigures {
        self.aimd.figures()
    }

    /// The NICEPAY API this engine charges through.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The clock the engine runs on (the database's, in service).
    pub fn clock(&self) -> SharedClock {
        Arc::clone(&self.clock)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// Stops claiming new work; attempts already sent finish and are recorded.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn stopping(&self) -> bool {
        self.is_stopping()
    }

    /// Looks up every attempt a previous run left unresolved, without waiting for its lookup
    /// time: an approval found settles at once; "not found" still waits until the attempt
    /// cannot be in flight.
    pub async fn resolve_left_in_flight(&self) -> Result<PassReport, EngineError> {
        self.resolve_by(later(self.clock.now(), self.settings.settle()))
            .await
    }

    /// Takes in what the merchant wrote since the last look: new rows, status and card changes
    /// (the first step of every pass; `charge-now` takes it too, so a row no pass has seen yet
    /// can be charged). Returns how many rows were found invalid.
    pub async fn notice(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        let noticed = self.store.notice(now).await?;
        for (id, reason) in &noticed.invalid {
            tracing::error!(subscription = id.0, %reason, "subscription marked invalid");
        }
        Ok(noticed.invalid.len())
    }

    /// One full pass over everything due now.
    pub async fn pass(&self) -> Result<PassReport, EngineError> {
        let mut report = PassReport::default();
        let now = self.clock.now();
        report.invalid += self.notice(now).await?;
        report.merge(&self.resolve_unresolved().await?);
        report.merge(&self.charge_due().await?);
        // After charging: a subscription planned in this pass hears of its cycle in it too.
        report.notices += self.tell_upcoming(now).await?;
        report.merge(&self.check_late().await?);
        report.merge(&self.remove_billkeys().await?);
        Ok(report)
    }

    /// `charge.upcoming` notices due by `now` (and plans made again where a cycle moved).
    /// A row is announced only if it would be charged as it stands.
    async fn tell_upcoming(&self, now: DateTime<Utc>) -> Result<usize, EngineError> {
        let s = &self.settings;
        let policy = s.policy.clone();
        let amount_of = Arc::new(move |row: &MerchantRow| {
            plan::validate(row, &policy)
                .map(|v| v.amount.value())
                .map_err(|e| e.to_string())
        });
        let told = self
            .store
            .tell_upcoming(now, &s.upcoming_lead, amount_of)
            .await?;
        if told.told > 0 {
            tracing::info!(
                notices = told.told,
                planned = told.planned,
                "charge.upcoming notices written"
            );
        }
        Ok(told.told)
    }

    // ---- charging ----

    /// `nicebill charge-now`: charges the subscription's current cycle now if it is due,
    /// skipping a dunning wait, under the same rules as a pass (committed before sent, looked
    /// up when the answer is lost). `row` must be claimed by this engine's owner.
    pub async fn charge_now(&self, mut row: Claimed) -> Result<ChargeNow, EngineError> {
        let now = self.clock.now();
        // Skip a dunning wait: the cycle's own due time decides.
        row.state.next_charge_at = None;
        let mut report = PassReport::default();
        let mut in_flight = self.start(vec![row], now, &mut report).await?;
        let Some(attempt) = in_flight.pop() else {
            return Ok(ChargeNow::Nothing(report));
        };
        let (tid, moid, cycle) = (attempt.tid.clone(), attempt.moid.clone(), attempt.cycle);
        let (outcome, settledness) = self.send(attempt, self.aimd.epoch()).await;
        // On v1 the tid is NICEPAY's, learnt with the answer (if one came).
        let tid = tid.or_else(|| {
            self.gateway
                .parse_tid(outcome.result.tid.clone())
                .ok()
                .flatten()
        });
        let state = outcome.result.state;
        let code = outcome.result.result_code.clone();
        let msg = outcome
            .result
            .result_msg
            .clone()
            .or(outcome.result.error.clone());
        let settled = match settledness {
            Settledness::Settled(s) => Some(s),
            Settledness::Unresolved => None,
        };
        let counted = tally(&[(outcome.clone(), settledness)]);
        self.store
            .record_outcomes(
                self.clock.now(),
                vec![outcome],
                &self.settings.upcoming_lead,
            )
            .await?;
        // Counted once the outcome is in the database.
        counted.add_to(&self.stats);
        Ok(ChargeNow::Attempted {
            cycle,
            tid,
            moid,
            state,
            settled,
            result_code: code,
            result_msg: msg,
        })
    }

    /// Leases this instance's TID lanes (web API only), or renews them once a minute: enough
    /// lanes for three claim batches a second (one to three: a claim takes at most 500 rows;
    /// two lanes at 500-row claims measured 0.92 on the four-instance bench, three 0.93). A
    /// hint against TID collisions between instances sharing a MID (each costs an insert that
    /// waits for the other instance's uncommitted batch), never needed for correctness: on an
    /// error, or with no lane free, TIDs are minted from the whole second as before.
    async fn lease_tid_lanes(&self) {
        if !self.gateway.mints_tids() {
            return;
        }
        let mut last = self.lanes_leased.lock().await;
        if last.is_some_and(|at| at.elapsed() < LANE_RENEW) {
            return;
        }
        let s = &self.settings;
        let per_lane = i64::from(crate::gateway::nicepay::tid::LANE_WIDTH);
        // A claim takes at most MAX_IDS_PER_STATEMENT rows, whatever the batch says.
        let claimed = s
            .batch
            .clamp(1, crate::storage::MAX_IDS_PER_STATEMENT as i64);
        let wanted = ((3 * claimed + per_lane - 1) / per_lane).clamp(1, 3) as u32;
        match self
            .store
            .lease_tid_lanes(&s.owner, self.clock.now(), LANE_LEASE, wanted)
            .await
        {
            Ok(lanes) => {
                if lanes.is_empty() {
                    tracing::warn!(
                        "no TID lane is free (more instances than lanes?): TIDs are minted from                          the whole second, and may collide with another instance's"
                    );
                } else {
                    tracing::debug!(?lanes, "TID lanes leased");
                }
                self.gateway.set_tid_lanes(&lanes);
                *last = Some(Instant::now());
            }
            Err(e) => tracing::warn!("could not lease TID lanes ({e}); minting without"),
        }
    }

    /// Claims, commits and sends everything due, as a pipeline: a claimer commits attempts
    /// into a queue of about two rounds ahead, a sender keeps `concurrency` requests in flight,
    /// and a writer group-commits outcomes. The database work thus overlaps the network wait.
    async fn charge_due(&self) -> Result<PassReport, EngineError> {
        let s = &self.settings;
        let concurrency = s.concurrency.max(1);
        let (out_tx, out_rx) = mpsc::channel::<(Outcome, Settledness)>(concurrency * 4);
        let writer = tokio::spawn(write_outcomes(
            self.store.clone(),
            self.clock.clone(),
            Arc::clone(&self.stats),
            s.upcoming_lead.clone(),
            s.hooks.before_write.clone(),
            out_rx,
        ));
        let (queue_tx, mut queue_rx) = mpsc::channel::<InFlight>(concurrency * 2);
        let claimer = async move {
            let mut report = PassReport::default();
            // While NICEPAY is unreachable, claiming more only piles up attempts that fail: the
            // first batch of a pass probes it, and if it is still down the next tick tries again.
            let mut probed = false;
            let mut seen = std::collections::HashSet::new();
            loop {
                if self.stopping() || (probed && self.gateway_down()) {
                    break;
                }
                probed = true;
                self.lease_tid_lanes().await;
                let now = self.clock.now();
                let timer = Instant::now();
                let rows = self
                    .store
                    .claim_due(&s.owner, now, s.lease, s.batch)
                    .await?;
                if let Some(hook) = &s.hooks.after_claim
                    && !rows.is_empty()
                {
                    hook().await;
                }
                let nanos = timer.elapsed().as_nanos() as u64;
                self.stats.claims.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .claim_nanos_total
                    .fetch_add(nanos, Ordering::Relaxed);
                self.stats
                    .claim_nanos_max
                    .fetch_max(nanos, Ordering::Relaxed);
                if rows.is_empty() {
                    break;
                }
                // Each subscription is decided at most once per pass: one claimed again (a
                // decision that left it due, an attempt the database refused) waits for the
                // next pass instead of spinning this one.
                let (fresh, again): (Vec<Claimed>, Vec<Claimed>) =
                    rows.into_iter().partition(|r| seen.insert(r.id));
                if !again.is_empty() {
                    let ids: Vec<SubscriptionId> = again.iter().map(|r| r.id).collect();
                    tracing::debug!(
                        count = ids.len(),
                        "claimed again within one pass; left for the next"
                    );
                    self.store.release_claims(&s.owner, &ids).await?;
                }
                if fresh.is_empty() {
                    break;
                }
                report.claimed += fresh.len();
                let in_flight = self.start(fresh, now, &mut report).await?;
                report.attempts += in_flight.len();
                for attempt in in_flight {
                    // The sender stops only when this queue closes.
                    if queue_tx.send(attempt).await.is_err() {
                        break;
                    }
                }
            }
            Ok::<PassReport, EngineError>(report)
        };
        let sender = async {
            let mut tasks = JoinSet::new();
            let mut panics = Panics::default();
            while let Some(attempt) = queue_rx.recv().await {
                let slot = self.aimd.acquire().await;
                let engine = self.clone();
                let tx = out_tx.clone();
                tasks.spawn(async move {
                    if let Some(hook) = &engine.settings.hooks.before_send {
                        hook();
                    }
                    let outcome = engine.send(attempt, slot.epoch()).await;
                    drop(slot);
                    // The writer only stops when every sender is gone.
                    let _ = tx.send(outcome).await;
                });
                while let Some(done) = tasks.try_join_next() {
                    panics.note(&self.stats, "sender", done);
                }
            }
            while let Some(done) = tasks.join_next().await {
                panics.note(&self.stats, "sender", done);
            }
            panics
        };
        let (claimed, mut panics) = tokio::join!(claimer, sender);
        drop(out_tx);
        let written = writer.await;
        let written = panics.note(&self.stats, "outcome writer", written);
        // A panic outranks a database error: the daemon must exit on it.
        panics.check()?;
        let mut report = claimed?;
        report.merge(&written.unwrap_or_default());
        Ok(report)
    }

    /// Plans claimed rows; commits the attempts (and the non-charging decisions).
    async fn start(
        &self,
        rows: Vec<Claimed>,
        now: DateTime<Utc>,
        report: &mut PassReport,
    ) -> Result<Vec<InFlight>, EngineError> {
        let s = &self.settings;
        let mut starts = Vec::new();
        let mut planned = Vec::new();
        let mut reschedules = Vec::new();
        for claimed in rows {
            let id = claimed.id;
            let state = &claimed.state;
            let valid = claimed
                .row
                .clone()
                .and_then(|row| plan::validate(&row, &s.policy));
            let (decision, valid) = match valid {
                Ok(v) => (plan::decide(&v, state, now, &s.policy), Some(v)),
                Err(e) => (
                    Decision::Invalid {
                        reason: e.to_string(),
                    },
                    None,
                ),
            };
            let current_cycle = state.next_cycle.unwrap_or(Cycle::FIRST);
            let keep = |cycle: Cycle, at: Option<DateTime<Utc>>| Bookkeeping {
                next_cycle: cycle,
                next_charge_at: at,
                cycle_attempts: state.cycle_attempts,
                cycle_declines: state.cycle_declines,
                status: None,
            };
            // One event per skipped range, however long.
            let skipped_events = |skipped: &Skipped, why: &str| -> Vec<Event> {
                if skipped.is_empty() {
                    return Vec::new();
                }
                vec![Event::sub(
                    id,
                    EventKind::CycleSkipped,
                    format!("{skipped}: {why}"),
                )]
            };
            match decision {
                Decision::Invalid { reason } => {
                    tracing::error!(subscription = id.0, %reason, "subscription row is invalid; not charged");
                    report.invalid += 1;
                    self.stats.invalid.fetch_add(1, Ordering::Relaxed);
                    reschedules.push(Reschedule {
                        subscription_id: id,
                        bookkeeping: Bookkeeping {
                            status: Some((SubscriptionStatus::Invalid, reason.clone())),
                            ..keep(current_cycle, state.next_charge_at)
                        },
                        consumed_pause: None,
                        events: vec![Event::sub(id, EventKind::Invalid, reason)],
                        remove_billkey: None,
                    });
                }
                Decision::Ended { skipped } => {
                    report.skipped_cycles += skipped.len();
                    let mut events = skipped_events(&skipped, "paused");
                    events.push(Event::sub(
                        id,
                        EventKind::Ended,
                        "no cycle left (max_cycles or ends_at)",
                    ));
                    reschedules.push(Reschedule {
                        subscription_id: id,
                        bookkeeping: Bookkeeping {
                            status: Some((SubscriptionStatus::Ended, "no cycle left".into())),
                            ..keep(current_cycle, None)
                        },
                        consumed_pause: state.paused_since,
                        events,
                        remove_billkey: None,
                    });
                }
                Decision::CancelAtPeriodEnd { cycle } => {
                    let reason =
                        format!("cancelled at the end of the period, before cycle {cycle}");
                    reschedules.push(Reschedule {
                        subscription_id: id,
                        bookkeeping: Bookkeeping {
                            status: Some((SubscriptionStatus::Cancelled, reason.clone())),
                            ..keep(cycle, None)
                        },
                        consumed_pause: None,
                        events: vec![Event::sub(id, EventKind::Cancelled, reason)],
                        remove_billkey: valid.as_ref().map(|v| v.bid.to_string()),
                    });
                }
                Decision::Wait {
                    next_cycle,
                    next_charge_at,
                    skipped,
                    reason,
                } => {
                    report.skipped_cycles += skipped.len();
                    // A pause whose skipping is unfinished (a cron schedule that waits with a
                    // time already come) stays a pause for the next pass.
                    let consumed_pause = if reason == Some("paused") && next_charge_at > now {
                        state.paused_since
                    } else {
                        None
                    };
                    let events = skipped_events(&skipped, reason.unwrap_or("catch-up"));
                    // A new cycle starts its count afresh.
                    let mut bookkeeping = keep(next_cycle, Some(next_charge_at));
                    if Some(next_cycle) != state.next_cycle {
                        bookkeeping.cycle_attempts = 0;
                        bookkeeping.cycle_declines = 0;
                    }
                    reschedules.push(Reschedule {
                        subscription_id: id,
                        bookkeeping,
                        consumed_pause,
                        events,
                        remove_billkey: None,
                    });
                }
                Decision::Charge {
                    cycle,
                    due_at,
                    attempt,
                    moid,
                    skipped,
                } => {
                    let Some(valid) = valid else { continue };
                    report.skipped_cycles += skipped.len();
                    let prior_declines = if state.next_cycle == Some(cycle) {
                        state.cycle_declines
                    } else {
                        0
                    };
                    starts.push(StartAttempt {
                        subscription_id: id,
                        cycle,
                        attempt,
                        moid: moid.to_string(),
                        amount: valid.amount.value(),
                        bid: valid.bid.to_string(),
                        due_at,
                        check_after: later(now, s.settle()),
                        events: skipped_events(
                            &skipped,
                            "catch-up policy charges only the latest due cycle",
                        ),
                    });
                    planned.push((
                        Arc::new(valid),
                        cycle,
                        due_at,
                        attempt,
                        prior_declines,
                        moid,
                    ));
                }
            }
        }
        if !reschedules.is_empty() {
            self.store.reschedule(&s.owner, now, reschedules).await?;
        }
        if starts.is_empty() {
            return Ok(Vec::new());
        }
        let gateway = Arc::clone(&self.gateway);
        // Taken before the commit begins: the database's commit time is no earlier.
        let committed = Instant::now();
        let started = self
            .store
            .start_attempts(
                &s.owner,
                now,
                starts,
                &s.upcoming_lead,
                self.gateway.api().as_str(),
                move |why| {
                    gateway
                        .new_tid(match why {
                            NewTid::First => TidFor::First,
                            NewTid::AfterCollision => TidFor::AfterCollision,
                        })
                        .map(|t| t.to_string())
                },
            )
            .await?;
        let mut in_flight = Vec::with_capacity(started.len());
        for (i, charge_id, tid) in started {
            let (valid, cycle, due_at, attempt, prior_declines, moid) = planned[i].clone();
            let Ok(tid) = self.gateway.parse_tid(tid) else {
                continue;
            };
            in_flight.push(InFlight {
                valid,
                charge_id,
                cycle,
                due_at,
                attempt,
                prior_declines,
                moid,
                tid,
                committed_at: now,
                committed,
            });
        }
        Ok(in_flight)
    }

    /// Sends one committed attempt and works out its outcome. `epoch` is the concurrency
    /// limit's when its slot was taken.
    async fn send(&self, a: InFlight, epoch: u64) -> (Outcome, Settledness) {
        let started = Instant::now();
        self.wait_if_throttled().await;
        // An attempt may be looked up by another instance from `committed_at + settle`; it must
        // be over by then, so one that waited too long is not sent at all. Waiting is measured
        // on the monotonic clock from before the commit: no wall-clock jump can stretch it.
        let send_window = self.settings.settle_margin;
        let request = ChargeRequest {
            bid: a.valid.bid.clone(),
            tid: a.tid.clone(),
            moid: a.moid.clone(),
            amount: a.valid.amount,
            goods_name: a.valid.goods_name.clone(),
            card_quota: a.valid.card_quota.clone(),
            interest_free: a.valid.interest_free,
            buyer: a.valid.buyer.clone(),
        };
        let not_sent = |why: &str| {
            Err(CallError::Transport {
                api: crate::gateway::nicepay::Api::Approve,
                failure: crate::gateway::nicepay::Transport::ConnectFailed,
                detail: format!("not sent: {why}"),
            })
        };
        let result = if self.stopping() {
            not_sent("shutting down")
        } else if a.committed.elapsed() > send_window {
            not_sent("the attempt waited too long for a free slot")
        } else {
            let gateway = &self.gateway;
            let request = &request;
            // A wait for the request rate ends with the send window.
            let send_by = a.committed + send_window;
            retry(self.transient_policy(), || async move {
                match gateway.approve_by(request, Some(send_by)).await {
                    Err(e) if e.class() == Class::NotSent => Err(Attempt::Transient(e)),
                    Err(e) => Err(Attempt::Permanent(e)),
                    Ok(reply) => Ok(reply),
                }
            })
            .await
        };
        let class = match &result {
            Ok(r) => r.class,
            Err(e) => e.class(),
        };
        self.note_gateway(class);
        match class {
            Class::Throttled => {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                self.aimd.throttled(epoch);
            }
            Class::NotSent | Class::Unknown => {}
            _ => self.aimd.answered(),
        }
        let (outcome, settledness) = match Settled::from_class(class) {
            Some(settled) => self.settle(&a, settled, &result),
            None => {
                if class == Class::Throttled {
                    self.throttle().await;
                }
                // Ambiguous: the status lookup decides, now if it can. Boxed: the lookups'
                // state is rarely needed, and every attempt in flight would otherwise carry
                // room for it (each send task: 7,040 bytes with it inline, 5,488 boxed).
                let first = describe(&result);
                Box::pin(self.resolve(
                    &charge_facts(&a, self.settings.settle(), class == Class::Duplicate),
                    0,
                    Some(first),
                ))
                .await
            }
        };
        let (code, msg) = match &result {
            Ok(r) => (r.result_code.clone(), r.result_msg.clone()),
            Err(e) => (String::new(), e.to_string()),
        };
        tracing::info!(
            subscription = a.valid.id.0,
            external_id = %a.valid.external_id,
            cycle = a.cycle.0,
            attempt = a.attempt,
            moid = %a.moid,
            tid = shown(a.tid.as_ref()),
            amount = a.valid.amount.value(),
            result_code = %code,
            result_msg = %msg,
            class = class.as_str(),
            state = %outcome.result.state,
            duration_ms = started.elapsed().as_millis() as u64,
            "charge attempt"
        );
        (outcome, settledness)
    }

    /// The outcome of an attempt whose class settles it.
    fn settle(
        &self,
        a: &InFlight,
        settled: Settled,
        result: &Result<Reply<Approval>, CallError>,
    ) -> (Outcome, Settledness) {
        let mut r = ChargeResult {
            error_class: Some(class_of(result).as_str().into()),
            ..ChargeResult::new(state_of(settled))
        };
        match result {
            Ok(reply) => {
                r.result_code = Some(reply.result_code.clone());
                r.result_msg = Some(reply.result_msg.clone());
                if let Some(d) = &reply.data {
                    r.auth_code = d.auth_code.clone();
                    r.auth_date = d.auth_date.clone();
                    r.card_no = d.card_no.clone();
                    r.tid = Some(d.tid.to_string());
                }
            }
            Err(e) => r.error = Some(e.to_string()),
        }
        let facts = charge_facts(a, self.settings.settle(), false);
        self.outcome_for(&facts, settled, r)
    }

    fn outcome_for(
        &self,
        f: &ChargeFacts,
        settled: Settled,
        result: ChargeResult,
    ) -> (Outcome, Settledness) {
        let now = self.clock.now();
        let declines = f.prior_declines + u32::from(settled == Settled::Declined);
        let position = Position {
            cycle: f.cycle,
            due_at: f.due_at,
            attempts: f.attempt,
            declines,
        };
        let adv: Advance = plan::advance(
            f.valid.as_ref().map(|v| &v.schedule),
            position,
            settled,
            now,
            &self.settings.policy,
        );
        let mut events = Vec::new();
        let id = f.subscription_id;
        let what = |result: &ChargeResult| {
            format!(
                "cycle {} attempt {}: {} {}{}",
                f.cycle,
                f.attempt,
                result.result_code.as_deref().unwrap_or("-"),
                result.result_msg.as_deref().unwrap_or(""),
                result
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            )
        };
        // An approval is recorded in `charges`; the event log is for what needs a reason.
        match (settled, result.state) {
            (Settled::Approved, _) => {}
            (Settled::Declined, _) => events.push(Event::sub(
                id,
                EventKind::Declined,
                format!(
                    "cycle {} attempt {}: {} {}; {}",
                    f.cycle,
                    f.attempt,
                    result.result_code.as_deref().unwrap_or("-"),
                    result.result_msg.as_deref().unwrap_or(""),
                    match adv.next_charge_at {
                        Some(at) if adv.status.is_none() => format!("next try {at}"),
                        _ => "dunning exhausted".into(),
                    }
                ),
            )),
            (_, ChargeState::Cancelled) => events.push(Event::sub(
                id,
                EventKind::ChargeCancelled,
                format!("{}; not approved now, the cycle stays due", what(&result)),
            )),
            (Settled::PermanentCard, _) => {
                events.push(Event::sub(id, EventKind::CardInvalid, what(&result)))
            }
            (Settled::RequestError, _) => {
                events.push(Event::sub(id, EventKind::RequestError, what(&result)))
            }
            (Settled::UnlistedCode, _) => {
                tracing::warn!(subscription = id.0, tid = shown(f.tid.as_ref()), code = ?result.result_code, msg = ?result.result_msg, "NICEPAY answered with a result code nicebill does not list; not a decline, retried on the request-error schedule");
                events.push(Event::sub(id, EventKind::UnlistedCode, what(&result)))
            }
            (Settled::NotCharged, _) => {
                events.push(Event::sub(id, EventKind::NotCharged, what(&result)))
            }
        }
        if settled == Settled::RequestError {
            tracing::error!(subscription = id.0, tid = shown(f.tid.as_ref()), code = ?result.result_code, error = ?result.error, "NICEPAY refused the request as malformed; check configuration");
        }
        if result.state == ChargeState::Cancelled {
            tracing::warn!(
                subscription = id.0,
                tid = shown(f.tid.as_ref()),
                cycle = f.cycle.0,
                "status lookup: approved, then cancelled; the cycle stays due"
            );
        }
        let remove_billkey = match &adv.status {
            Some((status, reason)) => {
                events.push(Event::sub(
                    id,
                    EventKind::of_status(*status),
                    reason.clone(),
                ));
                (*status == SubscriptionStatus::Cancelled)
                    .then(|| f.bid.clone())
                    .flatten()
            }
            None => None,
        };
        let bookkeeping = Bookkeeping {
            next_cycle: adv.next_cycle,
            next_charge_at: adv.next_charge_at,
            cycle_attempts: adv.cycle_attempts,
            cycle_declines: adv.cycle_declines,
            status: adv.status,
        };
        (
            Outcome {
                charge_id: f.charge_id,
                subscription_id: id,
                cycle: f.cycle,
                result,
                bookkeeping: Some(bookkeeping),
                events,
                remove_billkey,
            },
            Settledness::Settled(settled),
        )
    }

    /// Looks the attempt up by TID; settles it if the lookup can, else leaves it unresolved
    /// with the time of the next lookup.
    async fn resolve(
        &self,
        f: &ChargeFacts,
        lookups: i32,
        first_error: Option<String>,
    ) -> (Outcome, Settledness) {
        let looked = self
            .look_up_attempt(&AttemptRef {
                tid: f.tid.as_ref(),
                moid: &f.moid,
                amount: f.amount,
                committed_at: f.committed_at,
            })
            .await;
        let now = self.clock.now();
        let lookups = lookups + 1;
        let unresolved = |check_after: DateTime<Utc>, why: String| {
            (
                Outcome {
                    charge_id: f.charge_id,
                    subscription_id: f.subscription_id,
                    cycle: f.cycle,
                    result: ChargeResult {
                        error_class: Some(Class::Unknown.as_str().into()),
                        // The first error stays; the latest note goes to result_msg.
                        error: first_error.clone(),
                        result_msg: Some(bounded(&why)),
                        check_after: Some(check_after),
                        lookups,
                        ..ChargeResult::new(ChargeState::Unknown)
                    },
                    bookkeeping: None,
                    events: vec![],
                    remove_billkey: None,
                },
                Settledness::Unresolved,
            )
        };
        let status = match looked {
            Ok(status) => status,
            Err(e) => {
                let delay = self.settings.lookup_retry.delay(lookups.max(1) as u32 - 1);
                return unresolved(later(now, delay), format!("status lookup failed: {e}"));
            }
        };
        let verdict = match status.state {
            TxState::NotFound => None,
            TxState::Approved | TxState::Cancelled => Some(verify(&status, &f.moid, f.amount)),
        };
        match (status.state, verdict) {
            (_, Some(LookupMatch::Different(what))) => {
                // The TID is another transaction's: ours was refused under it, so it was not
                // charged. A new attempt gets a new TID.
                tracing::error!(subscription = f.subscription_id.0, tid = shown(f.tid.as_ref()), %what, "status lookup answered for another transaction; this attempt was not charged");
                let result = ChargeResult {
                    result_msg: Some(bounded(&format!(
                        "the TID belongs to another transaction ({what}); not charged under it"
                    ))),
                    error_class: Some(Class::Unknown.as_str().into()),
                    error: first_error,
                    lookups,
                    ..ChargeResult::new(ChargeState::NotCharged)
                };
                let (mut outcome, settledness) = self.outcome_for(f, Settled::NotCharged, result);
                outcome.events.push(Event::sub(
                    f.subscription_id,
                    EventKind::LookupMismatch,
                    format!("TID {}: {what}", shown(f.tid.as_ref())),
                ));
                (outcome, settledness)
            }
            (_, Some(LookupMatch::Unverifiable)) if f.duplicate => {
                // A duplicate-TID answer counts only when the lookup proves the transaction is
                // ours; this one cannot. Looked up again later; an operator is told.
                tracing::error!(
                    subscription = f.subscription_id.0,
                    tid = shown(f.tid.as_ref()),
                    "duplicate TID, and the status lookup does not say whose transaction it is; left unresolved"
                );
                let delay = self.settings.lookup_retry.delay(lookups.max(1) as u32 - 1);
                let (mut outcome, settledness) = unresolved(
                    later(now, delay),
                    "duplicate TID; the lookup carries no Moid/amount to prove it is ours".into(),
                );
                // Said once in the event log, at the first lookup that could not tell.
                if lookups == 1 {
                    outcome.events.push(Event::sub(
                        f.subscription_id,
                        EventKind::LookupMismatch,
                        format!(
                            "TID {}: duplicate TID, and the status lookup does not show whose transaction it is; left unresolved until it does or an operator decides",
                            shown(f.tid.as_ref())
                        ),
                    ));
                }
                (outcome, settledness)
            }
            (TxState::Approved, _) => {
                let result = ChargeResult {
                    result_code: Some(self.gateway.approval_code().into()),
                    result_msg: Some("approved (found by status lookup)".into()),
                    tid: status.tid.as_ref().map(Tid::to_string),
                    auth_code: status.auth_code,
                    auth_date: status.auth_date,
                    error_class: Some(Class::Approved.as_str().into()),
                    error: first_error,
                    lookups,
                    ..ChargeResult::new(ChargeState::Approved)
                };
                self.outcome_for(f, Settled::Approved, result)
            }
            (TxState::Cancelled, _) => {
                // Approved once, cancelled since: not approved now. The cycle stays due.
                let result = ChargeResult {
                    result_msg: Some("approved, then cancelled (status lookup)".into()),
                    tid: status.tid.as_ref().map(Tid::to_string),
                    auth_code: status.auth_code,
                    auth_date: status.auth_date,
                    error_class: Some(Class::Unknown.as_str().into()),
                    error: first_error,
                    lookups,
                    ..ChargeResult::new(ChargeState::Cancelled)
                };
                self.outcome_for(f, Settled::NotCharged, result)
            }
            (TxState::NotFound, _) if now >= f.settles_at => {
                let result = ChargeResult {
                    result_msg: Some(
                        "no approved transaction with this TID (status lookup)".into(),
                    ),
                    error_class: Some(Class::Unknown.as_str().into()),
                    error: first_error,
                    lookups,
                    // Looked up once more later: an approval that lands late is found then.
                    late_check_at: Some(later(now, self.settings.late_check_after)),
                    ..ChargeResult::new(ChargeState::NotCharged)
                };
                self.outcome_for(f, Settled::NotCharged, result)
            }
            (TxState::NotFound, _) => unresolved(
                f.settles_at,
                "not found yet; looked up again once it cannot be in flight".into(),
            ),
        }
    }

    /// One status lookup, with in-process retries of transient failures.
    async fn look_up_attempt(&self, attempt: &AttemptRef<'_>) -> Result<TxStatus, String> {
        let gateway = &self.gateway;
        let looked = retry(self.transient_policy(), || async move {
            match gateway.look_up(attempt).await {
                Ok(reply) => match reply.data {
                    Some(status) => Ok(status),
                    None if matches!(reply.class, Class::Throttled) => Err(Attempt::Transient(
                        format!("{} {}", reply.result_code, reply.result_msg),
                    )),
                    None => Err(Attempt::Permanent(format!(
                        "{} {}",
                        reply.result_code, reply.result_msg
                    ))),
                },
                Err(e) => Err(Attempt::Transient(e.to_string())),
            }
        })
        .await;
        match &looked {
            Ok(_) => self.note_gateway(Class::Approved),
            Err(_) => {
                self.note_gateway(Class::Unknown);
            }
        }
        looked.map_err(|e| e.to_string())
    }

    async fn resolve_unresolved(&self) -> Result<PassReport, EngineError> {
        self.resolve_by(self.clock.now()).await
    }

    /// What settling a stored attempt needs, from its row and its subscription's.
    async fn facts_of(&self, charge: &ChargeRow) -> Result<Option<ChargeFacts>, EngineError> {
        let s = &self.settings;
        let id = SubscriptionId(charge.subscription_id);
        if charge.api != self.gateway.api().as_str() {
            tracing::error!(charge = charge.id, api = %charge.api, configured = %self.gateway.api(), "this attempt went out on another NICEPAY API than the one configured; it can only be looked up there (configure that API until it is resolved)");
            return Ok(None);
        }
        let Ok(tid) = self.gateway.parse_tid(charge.tid.clone()) else {
            tracing::error!(charge = charge.id, tid = ?charge.tid, "stored TID is malformed; the attempt cannot be looked up");
            return Ok(None);
        };
        let state = self.store.billing_state(id).await?;
        // The merchant's row may have changed since the attempt, or no longer validate: the
        // attempt is still resolved (the lookup needs only its TID); the subscription moves on
        // by the schedule as it reads now, or, without one, to the next cycle.
        let rows = self.store.claimed_rows(&[id]).await?;
        let valid = rows
            .into_iter()
            .next()
            .and_then(|c| c.row.ok())
            .and_then(|row| plan::validate(&row, &s.policy).ok());
        let cycle = Cycle::from_column(charge.cycle).unwrap_or(Cycle::FIRST);
        let due_at = valid
            .as_ref()
            .and_then(|v| v.schedule.due_at(cycle))
            .unwrap_or(charge.created_at.and_utc());
        let prior_declines = match &state {
            Some(st) if st.next_cycle == Some(cycle) => st.cycle_declines,
            _ => 0,
        };
        Ok(Some(ChargeFacts {
            charge_id: ChargeId(charge.id),
            subscription_id: id,
            valid: valid.map(Arc::new),
            bid: charge.bid.clone(),
            cycle,
            due_at,
            attempt: u32::try_from(charge.attempt).unwrap_or(1).max(1),
            prior_declines,
            tid,
            moid: charge.moid.clone(),
            amount: charge.amount,
            committed_at: charge.created_at.and_utc(),
            duplicate: charge.error_class.as_deref() == Some(Class::Duplicate.as_str())
                || charge
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains(&format!("[{}]", Class::Duplicate.as_str()))),
            settles_at: later(charge.created_at.and_utc(), s.settle()),
        }))
    }

    /// Looks up one unresolved attempt; `None` when it cannot be looked up at all.
    async fn look_up(
        &self,
        charge: ChargeRow,
    ) -> Result<Option<(Outcome, Settledness)>, EngineError> {
        let Some(facts) = self.facts_of(&charge).await? else {
            return Ok(None);
        };
        let (outcome, settledness) = self
            .resolve(&facts, charge.lookups, charge.error.clone())
            .await;
        tracing::info!(
            subscription = charge.subscription_id,
            cycle = charge.cycle,
            attempt = charge.attempt,
            moid = %charge.moid,
            tid = charge.tid.as_deref().unwrap_or("-"),
            amount = charge.amount,
            state = %outcome.result.state,
            "unresolved attempt looked up"
        );
        Ok(Some((outcome, settledness)))
    }

    async fn resolve_by(&self, horizon: DateTime<Utc>) -> Result<PassReport, EngineError> {
        let mut report = PassReport::default();
        let s = &self.settings;
        // Each attempt is looked up at most once per call: the cursor only moves forward.
        let mut after_id = 0;
        let mut panics = Panics::default();
        let mut stopped_early = false;
        let mut looked_up = std::collections::HashSet::new();
        loop {
            if self.stopping() {
                stopped_early = true;
                break;
            }
            let now = self.clock.now();
            // A lookup lease only needs to outlast the lookups themselves; a dead resolver's
            // lease must not hold an attempt for long.
            let lookup_lease = s.call_timeout.saturating_add(s.transient.max_elapsed);
            // One batch of lookups at a time, `concurrency` wide, recorded as soon as the batch
            // is done: a process killed during recovery keeps what it already learned.
            let rows = self
                .store
                .claim_unresolved(
                    after_id,
                    now,
                    horizon.max(now),
                    lookup_lease,
                    s.concurrency.max(1) as i64,
                )
                .await?;
            let Some(last) = rows.last() else { break };
            after_id = last.id;
            looked_up.extend(rows.iter().map(|r| r.id));
            let mut lookups = JoinSet::new();
            for charge in rows {
                let engine = self.clone();
                lookups.spawn(async move { engine.look_up(charge).await });
            }
            let mut outcomes = Vec::new();
            while let Some(done) = lookups.join_next().await {
                match panics.note(&self.stats, "status lookup", done) {
                    Some(Ok(Some(outcome))) => outcomes.push(outcome),
                    Some(Ok(None)) | None => {}
                    Some(Err(e)) => return Err(e),
                }
            }
            let counted = tally(&outcomes);
            let resolved = outcomes
                .iter()
                .filter(|(_, s)| matches!(s, Settledness::Settled(_)))
                .count();
            let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(o, _)| o).collect();
            self.store
                .record_outcomes(self.clock.now(), outcomes, &self.settings.upcoming_lead)
                .await?;
            // Counted once the outcomes are in the database.
            counted.add_to(&self.stats);
            report.merge(&counted);
            report.resolved += resolved;
        }
        self.log_not_looked_up(horizon, &looked_up, stopped_early)
            .await?;
        panics.check()?;
        Ok(report)
    }

    /// Says which unresolved attempts this call did not look up, and why: shutting down, not
    /// due yet (or held by another instance's lookup until then), or claimed by another
    /// instance first. One line per reason at info, one per attempt at debug.
    async fn log_not_looked_up(
        &self,
        horizon: DateTime<Utc>,
        looked_up: &std::collections::HashSet<i64>,
        stopped_early: bool,
    ) -> Result<(), EngineError> {
        let left: Vec<ChargeRow> = self
            .store
            .unresolved()
            .await?
            .into_iter()
            .filter(|c| !looked_up.contains(&c.id))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        let mut by_reason: std::collections::BTreeMap<&str, (Vec<i64>, Option<DateTime<Utc>>)> =
            Default::default();
        for c in &left {
            let next = c.check_after.map(|t| t.and_utc());
            let reason = if stopped_early {
                "shutting down"
            } else if next.is_some_and(|t| t > horizon) {
                "its next lookup is not due yet (or another instance holds it for its lookup until then)"
            } else {
                "another instance claimed it for its lookup first"
            };
            tracing::debug!(charge = c.id, subscription = c.subscription_id, tid = c.tid.as_deref().unwrap_or("-"), next_lookup_at = ?next, reason, "unresolved attempt not looked up in this pass");
            let entry = by_reason.entry(reason).or_default();
            entry.0.push(c.id);
            entry.1 = match (entry.1, next) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        for (reason, (ids, earliest)) in by_reason {
            let shown: Vec<i64> = ids.iter().copied().take(10).collect();
            tracing::info!(
                count = ids.len(),
                charges = ?shown,
                earliest_next_lookup_at = ?earliest,
                reason,
                "unresolved attempts not looked up in this pass"
            );
        }
        Ok(())
    }

    // ---- late checks ----

    /// Looks up once more every attempt concluded `not_charged` on "not found" whose late
    /// check is due. An approval found now is recorded; if its cycle was charged by another
    /// attempt too, that is a double charge: an event, an error in the log, the health file
    /// degraded, and `nicebill charges doubles` lists it. Nothing is refunded automatically.
    async fn check_late(&self) -> Result<PassReport, EngineError> {
        let mut report = PassReport::default();
        let mut panics = Panics::default();
        let s = &self.settings;
        while !self.stopping() {
            let now = self.clock.now();
            let lease = s.call_timeout.saturating_add(s.transient.max_elapsed);
            let rows = self
                .store
                .claim_late_checks(now, lease, s.concurrency.max(1) as i64)
                .await?;
            if rows.is_empty() {
                break;
            }
            let mut lookups = JoinSet::new();
            for charge in rows {
                let engine = self.clone();
                lookups.spawn(async move {
                    let finding = engine.late_finding(&charge).await;
                    (charge, finding)
                });
            }
            while let Some(done) = lookups.join_next().await {
                let Some((charge, finding)) = panics.note(&self.stats, "late lookup", done) else {
                    continue;
                };
                let tid = charge.tid.clone().unwrap_or_else(|| charge.label());
                let (sub, cycle) = (charge.subscription_id, charge.cycle);
                let recorded = self
                    .store
                    .record_late_check(self.clock.now(), charge, finding)
                    .await?;
                report.late_checked += 1;
                match recorded {
                    LateRecorded::Double { other_tid } => {
                        report.doubles += 1;
                        self.stats.doubles.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(subscription = sub, cycle, tid = %tid, other_tid = %other_tid, "double charge: a late lookup found this attempt approved beside another approval of its cycle; refund one (`nicebill charges doubles`)");
                    }
                    LateRecorded::Approved => {
                        self.stats.approved_late.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(subscription = sub, cycle, tid = %tid, "a late lookup found an approval; recorded as the cycle's charge");
                    }
                    LateRecorded::Noted | LateRecorded::Lost => {}
                }
            }
        }
        panics.check()?;
        Ok(report)
    }

    async fn late_finding(&self, charge: &ChargeRow) -> LateFinding {
        let now = self.clock.now();
        if charge.api != self.gateway.api().as_str() {
            return LateFinding::Again {
                at: later(now, self.settings.late_check_after),
                why: format!(
                    "sent on NICEPAY's {} API; this instance speaks {}: looked up when that API is configured again",
                    charge.api,
                    self.gateway.api()
                ),
            };
        }
        let Ok(tid) = self.gateway.parse_tid(charge.tid.clone()) else {
            return LateFinding::NotFound;
        };
        let settles_at = later(charge.created_at.and_utc(), self.settings.settle());
        let attempt = AttemptRef {
            tid: tid.as_ref(),
            moid: &charge.moid,
            amount: charge.amount,
            committed_at: charge.created_at.and_utc(),
        };
        match self.look_up_attempt(&attempt).await {
            Err(e) => LateFinding::Again {
                at: later(now, self.settings.lookup_retry.delay(0)),
                why: bounded(&format!("late status lookup failed: {e}")),
            },
            Ok(status) => match (status.state, verify(&status, &charge.moid, charge.amount)) {
                (TxState::NotFound, _) if now < settles_at => LateFinding::Again {
                    at: settles_at,
                    why: "not found yet; looked up again once it cannot be in flight".into(),
                },
                (TxState::NotFound, _) | (_, LookupMatch::Different(_)) => LateFinding::NotFound,
                (TxState::Cancelled, _) => LateFinding::Cancelled,
                (TxState::Approved, _) => LateFinding::Approved {
                    result_code: self.gateway.approval_code().into(),
                    auth_code: status.auth_code,
                    auth_date: status.auth_date,
                    tid: status.tid.as_ref().map(Tid::to_string),
                },
            },
        }
    }

    // ---- billkey removal ----

    async fn remove_billkeys(&self) -> Result<PassReport, EngineError> {
        let mut report = PassReport::default();
        let s = &self.settings;
        while !self.stopping() {
            let now = self.clock.now();
            let rows = self
                .store
                .claim_removals(&s.owner, now, s.lease, s.removal_retry.delay(0), 64)
                .await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let sub = SubscriptionId(row.subscription_id);
                let moid_text = format!(
                    "{}R{}-A{}",
                    s.policy.moid_prefix,
                    row.id,
                    row.attempts.max(0).saturating_add(1)
                );
                let (done, code, msg) =
                    match (Bid::new(row.bid.clone()), Moid::new(moid_text.clone())) {
                        (Ok(bid), Ok(moid)) => {
                            let gateway = &self.gateway;
                            let (bid, moid) = (&bid, &moid);
                            let result = retry(self.transient_policy(), || async move {
                                match gateway.remove_billkey(bid, moid).await {
                                    Err(e) if e.class() == Class::NotSent => {
                                        Err(Attempt::Transient(e))
                                    }
                                    Err(e) => Err(Attempt::Permanent(e)),
                                    Ok(r) => Ok(r),
                                }
                            })
                            .await;
                            match result {
                                Ok(r) => (
                                    r.class == Class::Approved,
                                    Some(r.result_code),
                                    Some(r.result_msg),
                                ),
                                Err(e) => (false, None, Some(e.to_string())),
                            }
                        }
                        (Err(e), _) | (_, Err(e)) => (false, None, Some(e.to_string())),
                    };
                let retry_at = later(
                    now,
                    s.removal_retry
                        .delay(u32::try_from(row.attempts.max(0)).unwrap_or(u32::MAX)),
                );
                let suffix = crate::storage::bid_suffix(&row.bid);
                let event = if done {
                    report.removed += 1;
                    self.stats.removed.fetch_add(1, Ordering::Relaxed);
                    Event::sub(
                        sub,
                        EventKind::BillkeyRemoved,
                        format!(
                            "billkey {suffix} ({}): {} {}",
                            row.reason,
                            code.as_deref().unwrap_or(""),
                            msg.as_deref().unwrap_or("")
                        ),
                    )
                } else {
                    Event::sub(
                        sub,
                        EventKind::BillkeyRemovalFailed,
                        format!(
                            "billkey {suffix}: {} {}; next try {retry_at}",
                            code.as_deref().unwrap_or("-"),
                            msg.as_deref().unwrap_or("")
                        ),
                    )
                };
                tracing::info!(subscription = row.subscription_id, done, code = ?code, "billkey removal");
                self.store
                    .record_removal(
                        &s.owner,
                        self.clock.now(),
                        row.id,
                        moid_text,
                        done,
                        code,
                        msg,
                        retry_at,
                        event,
                    )
                    .await?;
            }
        }
        Ok(report)
    }

    // ---- gateway health ----

    /// NICEPAY has not answered this many calls in a row: treat it as down for this pass.
    const GATEWAY_DOWN_AFTER: u64 = 10;

    pub fn gateway_down(&self) -> bool {
        self.stats.gateway_failures_in_a_row.load(Ordering::Relaxed) >= Self::GATEWAY_DOWN_AFTER
    }

    /// In-process retries, or none while NICEPAY is known to be unreachable.
    fn transient_policy(&self) -> RetryPolicy {
        if self.gateway_down() {
            RetryPolicy::new(Duration::ZERO, Duration::ZERO, Duration::ZERO)
        } else {
            self.settings.transient
        }
    }

    fn note_gateway(&self, class: Class) {
        match class {
            Class::NotSent | Class::Unknown | Class::Throttled => {
                self.stats
                    .gateway_failures_in_a_row
                    .fetch_add(1, Ordering::Relaxed);
            }
            // NICEPAY answered (approved, declined, refused, duplicate, …): it is reachable.
            _ => {
                self.stats
                    .gateway_failures_in_a_row
                    .store(0, Ordering::Relaxed);
                self.stats
                    .gateway_last_success
                    .fetch_max(self.clock.now().timestamp(), Ordering::Relaxed);
            }
        }
    }

    async fn throttle(&self) {
        let until = Instant::now() + self.settings.throttle_pause;
        let mut t = self.throttled_until.lock().await;
        if t.is_none_or(|current| current < until) {
            tracing::warn!(
                pause_ms = self.settings.throttle_pause.as_millis() as u64,
                "NICEPAY signals overload; slowing down"
            );
            *t = Some(until);
        }
    }

    async fn wait_if_throttled(&self) {
        let until = *self.throttled_until.lock().await;
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

/// What `charge-now` did.
#[derive(Debug)]
pub enum ChargeNow {
    /// Nothing was due (or the row was invalid, ended, …): the report says which.
    Nothing(PassReport),
    Attempted {
        cycle: Cycle,
        /// `None` on v1 while NICEPAY has not told it.
        tid: Option<Tid>,
        moid: Moid,
        state: ChargeState,
        /// `None` while the outcome is unknown (the daemon looks it up).
        settled: Option<Settled>,
        result_code: Option<String>,
        result_msg: Option<String>,
    },
}

/// Whether an outcome settled the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settledness {
    Settled(Settled),
    Unresolved,
}

/// What settling an attempt needs to know about it.
struct ChargeFacts {
    charge_id: ChargeId,
    subscription_id: SubscriptionId,
    /// The merchant's row as it validates now; `None` when it no longer does.
    valid: Option<Arc<Valid>>,
    bid: Option<String>,
    cycle: Cycle,
    due_at: DateTime<Utc>,
    attempt: u32,
    prior_declines: u32,
    /// Ours on the legacy API, NICEPAY's on v1 (`None` until known).
    tid: Option<Tid>,
    moid: String,
    amount: i64,
    committed_at: DateTime<Utc>,
    /// NICEPAY answered "duplicate TID": a lookup counts only if it proves the transaction
    /// is ours.
    duplicate: bool,
    settles_at: DateTime<Utc>,
}

fn charge_facts(a: &InFlight, settle: Duration, duplicate: bool) -> ChargeFacts {
    ChargeFacts {
        charge_id: a.charge_id,
        subscription_id: a.valid.id,
        valid: Some(Arc::clone(&a.valid)),
        bid: Some(a.valid.bid.to_string()),
        cycle: a.cycle,
        due_at: a.due_at,
        attempt: a.attempt,
        prior_declines: a.prior_declines,
        tid: a.tid.clone(),
        moid: a.moid.to_string(),
        amount: a.valid.amount.value(),
        committed_at: a.committed_at,
        duplicate,
        settles_at: later(a.committed_at, settle),
    }
}

/// A tid for the log: `-` where none is known yet (v1 before NICEPAY answers).
fn shown(tid: Option<&Tid>) -> &str {
    tid.map_or("-", Tid::as_str)
}

fn state_of(settled: Settled) -> ChargeState {
    match settled {
        Settled::Approved => ChargeState::Approved,
        Settled::Declined => ChargeState::Declined,
        Settled::PermanentCard => ChargeState::CardInvalid,
        Settled::RequestError => ChargeState::RequestError,
        Settled::UnlistedCode => ChargeState::UnlistedCode,
        Settled::NotCharged => ChargeState::NotCharged,
    }
}

/// Whether a status answer is about our transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LookupMatch {
    Same,
    /// Another transaction's: what differs.
    Different(String),
    /// The answer carries no Moid or amount to compare.
    Unverifiable,
}

fn verify(status: &TxStatus, moid: &str, amount: i64) -> LookupMatch {
    use crate::gateway::nicepay::Match;
    let Ok(amount) = crate::domain::Krw::positive(amount) else {
        return LookupMatch::Unverifiable;
    };
    match status.matches(moid, amount) {
        Match::Same => LookupMatch::Same,
        Match::Different { what } => LookupMatch::Different(what),
        Match::Unverifiable { .. } => LookupMatch::Unverifiable,
    }
}

/// At most 200 characters of a message for the database and the log.
fn bounded(text: &str) -> String {
    let mut out: String = text.chars().take(200).collect();
    if text.chars().count() > 200 {
        out.push('…');
    }
    out
}

fn class_of<T>(result: &Result<Reply<T>, CallError>) -> Class {
    match result {
        Ok(r) => r.class,
        Err(e) => e.class(),
    }
}

fn describe<T>(result: &Result<Reply<T>, CallError>) -> String {
    match result {
        Ok(r) => format!("{} {} [{}]", r.result_code, r.result_msg, r.class),
        Err(e) => format!("{e} [{}]", e.class()),
    }
}

/// What outcomes amount to. Added to the counters ([`PassReport::add_to`]) only once the
/// outcomes are in the database.
fn tally(outcomes: &[(Outcome, Settledness)]) -> PassReport {
    let mut r = PassReport::default();
    for (_, s) in outcomes {
        match s {
            Settledness::Settled(Settled::Approved) => r.charged += 1,
            Settledness::Settled(Settled::Declined) => r.declined += 1,
            Settledness::Settled(Settled::PermanentCard | Settled::RequestError) => r.failed += 1,
            Settledness::Settled(Settled::UnlistedCode) => {
                r.failed += 1;
                r.unlisted_codes += 1;
            }
            Settledness::Settled(Settled::NotCharged) => r.not_charged += 1,
            Settledness::Unresolved => r.unresolved += 1,
        }
    }
    r
}

impl PassReport {
    /// Adds a tally of recorded outcomes to the counters.
    fn add_to(&self, stats: &Stats) {
        for (counter, n) in [
            (&stats.charged, self.charged),
            (&stats.declined, self.declined),
            (&stats.failed, self.failed),
            (&stats.not_charged, self.not_charged),
            (&stats.unresolved, self.unresolved),
            (&stats.unlisted_codes, self.unlisted_codes),
        ] {
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Tasks of a pass that panicked: each is logged at error and counted as it is found; the
/// pass then fails with [`EngineError::TaskPanicked`] (the daemon exits so that systemd
/// restarts it). What the task had in hand stays unresolved in the database.
#[derive(Default)]
struct Panics {
    count: usize,
    first: Option<String>,
}

impl Panics {
    /// The task's result, or `None` after noting its failure.
    fn note<T>(
        &mut self,
        stats: &Stats,
        task: &str,
        done: Result<T, tokio::task::JoinError>,
    ) -> Option<T> {
        match done {
            Ok(x) => Some(x),
            Err(e) => {
                let what = if e.is_panic() {
                    let payload = e.into_panic();
                    let text = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic without a message".into());
                    format!("{task} task panicked: {}", bounded(&text))
                } else {
                    format!("{task} task was cancelled: {e}")
                };
                tracing::error!(
                    task,
                    "{what}; its attempts stay unresolved and are looked up by a later pass"
                );
                stats.task_panics.fetch_add(1, Ordering::Relaxed);
                self.count += 1;
                self.first.get_or_insert(what);
                None
            }
        }
    }

    fn check(self) -> Result<(), EngineError> {
        match self.first {
            None => Ok(()),
            Some(first) => Err(EngineError::TaskPanicked {
                count: self.count,
                first,
            }),
        }
    }
}

/// How long the outcome writer gathers outcomes into one transaction. Each transaction costs
/// the database a handful of statements and a commit whatever its size: at C = 64 and 3,000
/// charges a second, 2 ms made transactions of about 14 outcomes, 10 ms of about 30, with
/// PostgreSQL's CPU per charge about 15 % lower (bench/RESULTS.md, session 9). An outcome not
/// yet written stays `pending`, and is looked up if the process dies meanwhile.
const GROUP_COMMIT_WINDOW: Duration = Duration::from_millis(10);

/// Group commit: every outcome waiting in the channel goes into one transaction. An outcome
/// whose write fails stays `pending`/`unknown` in the database and is resolved by lookup later.
async fn write_outcomes(
    store: Store,
    clock: SharedClock,
    stats: Arc<Stats>,
    leads: NoticeLeads,
    before_write: Option<Arc<dyn Fn() + Send + Sync>>,
    mut rx: mpsc::Receiver<(Outcome, Settledness)>,
) -> PassReport {
    let mut report = PassReport::default();
    while let Some(first) = rx.recv().await {
        // Gather for a few milliseconds: fewer, larger commits (each one an fsync). Nothing
        // is at risk meanwhile: until written, the attempts stay `pending` in the database.
        let mut batch = vec![first];
        let gather_until = tokio::time::Instant::now() + GROUP_COMMIT_WINDOW;
        while batch.len() < 1024 {
            match tokio::time::timeout_at(gather_until, rx.recv()).await {
                Ok(Some(o)) => batch.push(o),
                Ok(None) | Err(_) => break,
            }
        }
        let counted = tally(&batch);
        let outcomes: Vec<Outcome> = batch.into_iter().map(|(o, _)| o).collect();
        if let Some(hook) = &before_write {
            hook();
        }
        match store.record_outcomes(clock.now(), outcomes, &leads).await {
            // Counted once committed.
            Ok(_) => {
                counted.add_to(&stats);
                report.merge(&counted);
            }
            Err(e) => tracing::error!(
                "could not record {} outcomes ({e}); they stay unresolved and will be looked up",
                counted.charged
                    + counted.declined
                    + counted.failed
                    + counted.not_charged
                    + counted.unresolved
            ),
        }
    }
    report
}
