//! Issue 8's review findings (a), (c), (d), (e), (f), each on SQLite and PostgreSQL, with
//! in-process engines on a `ManualClock` and the in-process simulator:
//!
//! - (a) two instances racing for one subscription (one stalled past its lease between claim
//!   and commit; a claim made on a stale view of the ledger) send exactly one attempt, and the
//!   database itself refuses a second unresolved attempt of a subscription and a second live
//!   attempt of a cycle;
//! - (c) a duplicate-TID answer counts only when the status lookup shows our Moid and amount;
//! - (d) a lookup answering "approved, then cancelled" is recorded `cancelled`, never approved,
//!   and the cycle is charged by the next attempt;
//! - (e) a pause noticed while an attempt is in flight survives the attempt's outcome write,
//!   and the cycles due during the pause are skipped on resume;
//! - (f) an unresolved attempt whose row later fails validation is still looked up and
//!   recorded, and the subscription then becomes `invalid` naming the column;
//! - a new card saved while an instance is between claim and commit: the old billkey is
//!   removed, and the attempt planned with it is never committed or sent.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use nicebill::billing::engine::futures_hook::Hook;
use nicebill::billing::engine::{ChargeNow, Engine, EngineSettings, Hooks};
use nicebill::billing::model::{NoticeLeads, SubscriptionId, SubscriptionStatus};
use nicebill::billing::plan::Policy;
use nicebill::clock::{Clock, ManualClock, SharedClock};
use nicebill::domain::{Krw, Moid, Tid};
use nicebill::gateway::nicepay::{Api, CancelRequest, Charset, EdiType, NicepayClient};
use nicebill::retry::RetryPolicy;
use nicebill::schedule::Cycle;
use nicebill::sim::{FaultMode, FaultRule, LedgerState, SimConfig, SimHandle};
use nicebill::storage::models::{ChargeRow, NewCharge};
use nicebill::storage::schema::{billing_state, charges, subscriptions};
use nicebill::storage::{StartAttempt, Store, StoreError};
use support::*;
use tokio::sync::Notify;

/// How long a test waits for a condition before it fails (never reached when all is well).
const PATIENCE: Duration = Duration::from_secs(60);

struct World {
    sim: SimHandle,
    client: Arc<NicepayClient>,
    clock: ManualClock,
    store: Store,
    label: &'static str,
}

async fn world(db: &TestDb, start: chrono::DateTime<Utc>) -> World {
    world_with(db, start, Duration::from_secs(2)).await
}

/// A world whose client waits `read_timeout` for an answer.
async fn world_with(db: &TestDb, start: chrono::DateTime<Utc>, read_timeout: Duration) -> World {
    let clock = ManualClock::new(start);
    // The simulator keeps real time: the TIDs it mints for billkeys never share a second with
    // the TIDs the engine makes under the frozen test clock.
    let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    let mut s = settings(&sim.base_url(), Charset::Utf8, EdiType::Json);
    s.read_timeout = read_timeout;
    let client = Arc::new(NicepayClient::new(s, Arc::new(clock.clone())).unwrap());
    World {
        sim,
        client,
        clock,
        store: db.store.clone(),
        label: db.label,
    }
}

impl World {
    /// An engine on the world's clock and client. In-process retries are quick (a failing
    /// status lookup gives up at once), everything else as in service.
    fn engine(&self, owner: &str, hooks: Hooks) -> Engine {
        let mut s = EngineSettings::new(owner.into(), Policy::default(), Duration::from_secs(4));
        s.concurrency = 4;
        s.batch = 8;
        s.transient = RetryPolicy::new(
            Duration::from_millis(10),
            Duration::from_millis(20),
            Duration::from_millis(100),
        );
        s.hooks = hooks;
        let clock: SharedClock = Arc::new(self.clock.clone());
        Engine::new(self.store.clone(), self.client.clone(), clock, s)
    }

    /// An active monthly subscription of 5,000 KRW, due since five minutes ago.
    async fn add(&self, name: &str) -> i64 {
        let bid = issue(&self.client, "9410123456780000", &format!("bk-{name}")).await;
        let row = monthly(name, &bid, 5_000, self.now() - chrono::Duration::minutes(5));
        self.store.insert_subscription(row).await.unwrap()
    }

    fn now(&self) -> chrono::DateTime<Utc> {
        self.clock.now()
    }

    fn advance(&self, secs: i64) {
        self.clock.advance(chrono::Duration::seconds(secs));
    }

    /// Moids of the approvals NICEPAY made for subscription `id` (seeded foreign ones and
    /// cancelled ones left out), in order.
    fn approved(&self, id: i64) -> Vec<String> {
        let prefix = format!("S{id}-");
        self.sim
            .ledger()
            .into_iter()
            .filter(|l| !l.seeded && l.state != LedgerState::Cancelled)
            .map(|l| l.moid)
            .filter(|m| m.starts_with(&prefix))
            .collect()
    }

    /// Every approval request NICEPAY processed for subscription `id`, cancelled or not.
    fn sent(&self, id: i64) -> Vec<String> {
        let prefix = format!("S{id}-");
        self.sim
            .ledger()
            .into_iter()
            .filter(|l| !l.seeded)
            .map(|l| l.moid)
            .filter(|m| m.starts_with(&prefix))
            .collect()
    }

    async fn charges(&self, id: i64) -> Vec<ChargeRow> {
        self.store.charges(Some(id)).await.unwrap()
    }

    /// `(cycle, attempt, state)` of every attempt of subscription `id`.
    async fn attempts(&self, id: i64) -> Vec<(i32, i32, String)> {
        self.charges(id)
            .await
            .into_iter()
            .map(|c| (c.cycle, c.attempt, c.state))
            .collect()
    }

    async fn events(&self, id: i64, kind: &str) -> Vec<String> {
        self.store
            .events(Some(id))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.detail)
            .collect()
    }

    async fn state(&self, id: i64) -> nicebill::billing::model::BillingState {
        self.store
            .billing_state(SubscriptionId(id))
            .await
            .unwrap()
            .expect("the subscription has been noticed")
    }

    /// Loses the answer to the next `n` approvals (each is charged, the answer never comes)
    /// and fails every status lookup: the attempts stay unresolved until `heal`.
    fn lose_answers(&self, n: u32) {
        self.sim.set_faults(vec![
            FaultRule {
                mode: FaultMode::DropAfter,
                api: Some(Api::Approve),
                count: Some(n),
                probability: 1.0,
            },
            FaultRule {
                mode: FaultMode::Http500,
                api: Some(Api::Status),
                count: None,
                probability: 1.0,
            },
        ]);
    }

    fn heal(&self) {
        self.sim.set_faults(vec![]);
    }

    /// The TID the client will hand out next, while the clock stays in this second: the
    /// generator gives out the suffixes of a second in order from a random start, so peeking
    /// at one tells the next.
    /// The TID the engine of `owner` will mint next: its TID lanes leased first (as its pass
    /// will renew them), then the walk peeked one ahead.
    async fn next_tid(&self, owner: &str) -> Tid {
        let lanes = self
            .store
            .lease_tid_lanes(owner, self.clock.now(), Duration::from_secs(300), 1)
            .await
            .unwrap();
        self.client.set_tid_lanes(&lanes);
        let peeked = self.client.new_tid();
        let text = peeked.as_str();
        let suffix: u32 = text[26..].parse().unwrap();
        Tid::new(format!("{}{:04}", &text[..26], (suffix + 1) % 10_000)).unwrap()
    }

    /// A merchant write of one column, as the merchant's application would make it.
    async fn merchant_write<F>(&self, write: F)
    where
        F: Fn(&mut nicebill::storage::AnyConnection) -> QueryResult<usize> + Send + 'static,
    {
        let n = self
            .store
            .write(move |c| write(c).map_err(StoreError::from))
            .await
            .unwrap();
        assert_eq!(n, 1, "{}: the merchant write changed one row", self.label);
    }
}

/// A hook that stalls its engine after its first claim until released.
struct Stall {
    claimed: Arc<Notify>,
    release: Arc<Notify>,
}

impl Stall {
    fn new() -> (Stall, Hooks) {
        let claimed = Arc::new(Notify::new());
        let release = Arc::new(Notify::new());
        let armed = Arc::new(AtomicBool::new(true));
        let hooks = Hooks {
            after_claim: Some(Arc::new({
                let (claimed, release) = (Arc::clone(&claimed), Arc::clone(&release));
                move || -> Hook {
                    let (claimed, release) = (Arc::clone(&claimed), Arc::clone(&release));
                    let first = armed.swap(false, Ordering::SeqCst);
                    Box::pin(async move {
                        if first {
                            claimed.notify_one();
                            release.notified().await;
                        }
                    })
                }
            })),
            ..Hooks::default()
        };
        (Stall { claimed, release }, hooks)
    }

    async fn until_claimed(&self, who: &str) {
        tokio::time::timeout(PATIENCE, self.claimed.notified())
            .await
            .unwrap_or_else(|_| panic!("{who} never claimed"));
    }

    fn release(&self) {
        self.release.notify_one();
    }
}

async fn finish<T>(task: tokio::task::JoinHandle<T>, who: &str) -> T {
    tokio::time::timeout(PATIENCE, task)
        .await
        .unwrap_or_else(|_| panic!("{who} never finished"))
        .unwrap()
}

// ---- (a) the PostgreSQL race ----

/// Instance A claims a due subscription and stalls before committing its attempt, past its
/// lease. Instance B takes the subscription over, commits, sends and records. When A goes
/// on, it must not send: exactly one attempt for the cycle, at NICEPAY and in `charges`.
/// And the other order: B stalls after its claim, A goes on first (and must not commit, B
/// holds the claim now), then B charges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_instance_past_its_lease_sends_nothing() {
    for db in databases("race_stall").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        // The lease every engine here takes its claims for (the service default).
        let lease = w
            .engine("probe", Hooks::default())
            .settings()
            .lease
            .as_secs() as i64;

        // B runs to the end while A is stalled.
        let id = w.add("race-1").await;
        w.store.notice(w.now()).await.unwrap();
        let (stall_a, hooks_a) = Stall::new();
        let a = w.engine("instance-a", hooks_a);
        let b = w.engine("instance-b", Hooks::default());
        let pass_a = tokio::spawn({
            let a = a.clone();
            async move { a.pass().await }
        });
        stall_a.until_claimed("instance A").await;
        assert_eq!(
            w.state(id).await.status,
            SubscriptionStatus::Active,
            "{}",
            w.label
        );
        // A's lease runs out on the engines' clock.
        w.advance(lease + 1);
        let report_b = b.pass().await.unwrap();
        assert_eq!(
            (report_b.attempts, report_b.charged),
            (1, 1),
            "{}: B took over the expired claim and charged: {report_b:?}",
            w.label
        );
        stall_a.release();
        let report_a = finish(pass_a, "instance A").await.unwrap();
        assert_eq!(
            (report_a.attempts, report_a.charged),
            (0, 0),
            "{}: A lost its claim; it must not commit or send: {report_a:?}",
            w.label
        );
        assert_eq!(w.sent(id), vec![format!("S{id}-C1-A1")], "{}", w.label);
        assert_eq!(
            w.attempts(id).await,
            vec![(1, 1, "approved".to_owned())],
            "{}",
            w.label
        );

        // A goes on while B, which took over, is stalled after its claim.
        let id = w.add("race-2").await;
        w.store.notice(w.now()).await.unwrap();
        let (stall_a, hooks_a) = Stall::new();
        let (stall_b, hooks_b) = Stall::new();
        let a = w.engine("instance-a2", hooks_a);
        let b = w.engine("instance-b2", hooks_b);
        let pass_a = tokio::spawn({
            let a = a.clone();
            async move { a.pass().await }
        });
        stall_a.until_claimed("instance A").await;
        w.advance(lease + 1);
        let pass_b = tokio::spawn({
            let b = b.clone();
            async move { b.pass().await }
        });
        stall_b.until_claimed("instance B").await;
        stall_a.release();
        let report_a = finish(pass_a, "instance A").await.unwrap();
        assert_eq!(
            (report_a.attempts, report_a.charged),
            (0, 0),
            "{}: B holds the claim; A must not commit: {report_a:?}",
            w.label
        );
        assert!(w.charges(id).await.is_empty(), "{}", w.label);
        stall_b.release();
        let report_b = finish(pass_b, "instance B").await.unwrap();
        assert_eq!(
            (report_b.attempts, report_b.charged),
            (1, 1),
            "{}: {report_b:?}",
            w.label
        );
        assert_eq!(w.sent(id), vec![format!("S{id}-C1-A1")], "{}", w.label);
        assert_eq!(
            w.attempts(id).await,
            vec![(1, 1, "approved".to_owned())],
            "{}",
            w.label
        );
        w.sim.shutdown().await;
    }
}

/// The race the review describes: B's claim reads a view of the ledger older than A's
/// commit, so B holds the claim although A's attempt is in flight (unresolved). Emulated
/// exactly: A's attempt is committed and sent (its answer lost), then B's claim is written as
/// B's stale claim would have written it, and B charges the subscription. The database must
/// refuse B's attempt before it is sent; A's attempt is then resolved as the cycle's one
/// charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_a_stale_view_cannot_commit_a_second_attempt() {
    for db in databases("race_stale").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let id = w.add("stale").await;
        let a = w.engine("instance-a", Hooks::default());
        let b = w.engine("instance-b", Hooks::default());
        w.lose_answers(1);
        let report = a.pass().await.unwrap();
        assert_eq!(report.unresolved, 1, "{}: {report:?}", w.label);
        assert_eq!(w.sent(id), vec![format!("S{id}-C1-A1")], "{}", w.label);

        // B's claim, as a claim on a snapshot without A's attempt writes it.
        let until = (w.now() + chrono::Duration::seconds(30)).naive_utc();
        w.store
            .write(move |c| {
                diesel::update(billing_state::table.find(id))
                    .set((
                        billing_state::claimed_by.eq(Some("instance-b")),
                        billing_state::claimed_until.eq(Some(until)),
                    ))
                    .execute(c)
                    .map_err(Into::into)
            })
            .await
            .unwrap();
        let row = w
            .store
            .claimed_rows(&[SubscriptionId(id)])
            .await
            .unwrap()
            .pop()
            .unwrap();
        w.heal();
        match b.charge_now(row).await.unwrap() {
            ChargeNow::Nothing(_) => {}
            other => panic!("{}: B's attempt was committed: {other:?}", w.label),
        }
        assert_eq!(
            w.sent(id),
            vec![format!("S{id}-C1-A1")],
            "{}: B must not send",
            w.label
        );
        assert_eq!(
            w.attempts(id).await,
            vec![(1, 1, "unknown".to_owned())],
            "{}",
            w.label
        );
        // A's attempt is looked up and is the cycle's one charge.
        w.advance(10);
        let report = b.pass().await.unwrap();
        assert_eq!(
            (report.resolved, report.charged, report.attempts),
            (1, 1, 0),
            "{}: {report:?}",
            w.label
        );
        assert_eq!(
            w.attempts(id).await,
            vec![(1, 1, "approved".to_owned())],
            "{}",
            w.label
        );
        assert_eq!(w.approved(id), vec![format!("S{id}-C1-A1")], "{}", w.label);
        assert_eq!(w.state(id).await.next_cycle, Some(Cycle(2)), "{}", w.label);
        w.sim.shutdown().await;
    }
}

/// The invariant lives in the database, not in code paths: `Store::start_attempts` given two
/// attempts of one subscription commits one, and plain INSERTs of a second unresolved attempt
/// of a subscription, or of a second live attempt of a cycle, fail with a unique violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_refuses_a_second_live_attempt() {
    for db in databases("race_db").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let id = w.add("db-rules").await;
        w.store.notice(w.now()).await.unwrap();
        let now = w.now();
        let lease = Duration::from_secs(30);
        assert!(
            w.store
                .claim_one(SubscriptionId(id), "tester", now, lease)
                .await
                .unwrap()
                .is_some(),
            "{}",
            w.label
        );
        let bid_text = w.store.subscription(id).await.unwrap().unwrap().bid;
        let attempt = |cycle: u32, attempt: u32| StartAttempt {
            subscription_id: SubscriptionId(id),
            cycle: Cycle(cycle),
            attempt,
            moid: format!("S{id}-C{cycle}-A{attempt}"),
            amount: 5_000,
            bid: bid_text.clone(),
            due_at: now,
            check_after: now + chrono::Duration::seconds(90),
            events: vec![],
        };
        let client = Arc::clone(&w.client);
        let started = w
            .store
            .start_attempts(
                "tester",
                now,
                vec![attempt(1, 1), attempt(1, 2), attempt(2, 1)],
                &NoticeLeads::default(),
                "webapi",
                move |_| Some(client.new_tid().to_string()),
            )
            .await
            .unwrap();
        assert_eq!(
            started.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(),
            vec![0],
            "{}: one attempt of the three committed",
            w.label
        );
        assert_eq!(
            w.attempts(id).await,
            vec![(1, 1, "pending".to_owned())],
            "{}",
            w.label
        );

        // Plain INSERTs, as a bug (or another program) would make them.
        let insert = |cycle: i32, attempt: i32, state: &str| {
            let new = NewCharge {
                subscription_id: id,
                cycle,
                attempt,
                moid: format!("raw-{id}-{cycle}-{attempt}"),
                tid: Some(w.client.new_tid().to_string()),
                amount: 5_000,
                bid: Some(bid_text.clone()),
                state: state.to_owned(),
                check_after: None,
                created_at: now.naive_utc(),
                api: "webapi".into(),
            };
            let store = w.store.clone();
            async move {
                store
                    .write(move |c| {
                        diesel::insert_into(charges::table)
                            .values(&new)
                            .execute(c)
                            .map_err(Into::into)
                    })
                    .await
            }
        };
        let refused_by = |result: Result<usize, StoreError>| -> String {
            match result {
                Err(StoreError::Query(DieselError::DatabaseError(
                    DatabaseErrorKind::UniqueViolation,
                    info,
                ))) => info
                    .constraint_name()
                    .map(str::to_owned)
                    .unwrap_or_else(|| info.message().to_owned()),
                other => panic!("{}: not refused as a unique violation: {other:?}", w.label),
            }
        };
        let per_subscription = |by: &str| {
            by == "charges_one_unresolved_per_subscription"
                || by == "UNIQUE constraint failed: charges.subscription_id"
        };
        let per_cycle = |by: &str| {
            by == "charges_one_live_attempt_per_cycle"
                || by == "UNIQUE constraint failed: charges.subscription_id, charges.cycle"
        };
        // A second unresolved attempt of the subscription, for another cycle: only the
        // per-subscription rule applies.
        for state in ["pending", "unknown"] {
            let by = refused_by(insert(2, 7, state).await);
            assert!(per_subscription(&by), "{}: {state}: {by}", w.label);
        }
        // The first attempt approved; another live attempt of its cycle: only the per-cycle
        // rule applies.
        w.store
            .write(move |c| {
                diesel::update(charges::table.filter(charges::subscription_id.eq(id)))
                    .set(charges::state.eq("approved"))
                    .execute(c)
                    .map_err(Into::into)
            })
            .await
            .unwrap();
        for state in ["pending", "unknown", "approved"] {
            let by = refused_by(insert(1, 8, state).await);
            assert!(per_cycle(&by), "{}: {state}: {by}", w.label);
        }
        // What the rules allow still goes in: settled attempts of the cycle, and one
        // unresolved attempt of the next cycle, but not two.
        insert(1, 9, "declined").await.unwrap();
        insert(1, 10, "not_charged").await.unwrap();
        insert(2, 1, "pending").await.unwrap();
        let by = refused_by(insert(3, 1, "unknown").await);
        assert!(per_subscription(&by), "{}: {by}", w.label);
        w.sim.shutdown().await;
    }
}

// ---- (c) duplicate-TID lookups ----

/// The engine's TID collides with somebody else's approval: NICEPAY answers A225 and the
/// status lookup shows the other transaction's Moid and amount. The attempt is `not_charged`
/// with a `lookup_mismatch` event, never approved; the next attempt, with a new TID, charges
/// the cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_tid_of_a_foreign_transaction_is_not_our_charge() {
    for db in databases("dup_foreign").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let id = w.add("dup-foreign").await;
        let engine = w.engine("dup-1", Hooks::default());
        let collides = w.next_tid("dup-1").await;
        w.sim
            .seed_foreign_approval(&collides, "OTHER-SHOP-0001", Krw::positive(9_900).unwrap())
            .unwrap();
        let report = engine.pass().await.unwrap();
        assert_eq!(
            (report.attempts, report.charged, report.not_charged),
            (1, 0, 1),
            "{}: {report:?}",
            w.label
        );
        let charges = w.charges(id).await;
        assert_eq!(charges.len(), 1, "{}", w.label);
        assert_eq!(
            charges[0].tid.as_deref(),
            Some(collides.as_str()),
            "{}: the peek was right",
            w.label
        );
        assert_eq!(
            (charges[0].state.as_str(), charges[0].result_code.as_deref()),
            ("not_charged", None),
            "{}: {:?}",
            w.label,
            charges[0]
        );
        assert!(
            charges[0].error.as_deref().unwrap_or("").contains("A225"),
            "{}: {:?}",
            w.label,
            charges[0]
        );
        let mismatch = w.events(id, "lookup_mismatch").await;
        assert_eq!(mismatch.len(), 1, "{}", w.label);
        assert!(
            mismatch[0].contains(collides.as_str()) && mismatch[0].contains("OTHER-SHOP-0001"),
            "{}: {mismatch:?}",
            w.label
        );
        assert!(w.approved(id).is_empty(), "{}", w.label);
        assert_eq!(w.state(id).await.next_cycle, Some(Cycle(1)), "{}", w.label);

        // The cycle is still due: the next attempt (after resend_after) gets a new TID.
        w.advance(61);
        let report = engine.pass().await.unwrap();
        assert_eq!(report.charged, 1, "{}: {report:?}", w.label);
        assert_eq!(w.approved(id), vec![format!("S{id}-C1-A2")], "{}", w.label);
        assert_eq!(
            w.attempts(id).await,
            vec![
                (1, 1, "not_charged".to_owned()),
                (1, 2, "approved".to_owned())
            ],
            "{}",
            w.label
        );
        let charges = w.charges(id).await;
        assert_ne!(
            charges[1].tid.as_deref(),
            Some(collides.as_str()),
            "{}",
            w.label
        );
        assert_eq!(w.state(id).await.next_cycle, Some(Cycle(2)), "{}", w.label);
        w.sim.shutdown().await;
    }
}

/// A duplicate-TID answer whose lookup shows our own Moid and amount (our approval went
/// through under that TID before): recorded approved, once; nothing charged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_tid_of_our_own_transaction_is_our_charge() {
    for db in databases("dup_ours").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let id = w.add("dup-ours").await;
        let engine = w.engine("dup-2", Hooks::default());
        let ours = w.next_tid("dup-2").await;
        let bid = nicebill::domain::Bid::new(w.store.subscription(id).await.unwrap().unwrap().bid)
            .unwrap();
        let moid = format!("S{id}-C1-A1");
        let reply = w
            .client
            .approve(&approve_request(&bid, ours.clone(), &moid, 5_000))
            .await
            .unwrap();
        assert_eq!(reply.result_code, "3001", "{}", w.label);
        let report = engine.pass().await.unwrap();
        assert_eq!(
            (report.attempts, report.charged),
            (1, 1),
            "{}: {report:?}",
            w.label
        );
        let charges = w.charges(id).await;
        assert_eq!(charges.len(), 1, "{}", w.label);
        assert_eq!(
            (
                charges[0].tid.as_deref().unwrap(),
                charges[0].state.as_str()
            ),
            (ours.as_str(), "approved"),
            "{}: {:?}",
            w.label,
            charges[0]
        );
        assert!(
            charges[0].error.as_deref().unwrap_or("").contains("A225"),
            "{}: the duplicate answer came first: {:?}",
            w.label,
            charges[0]
        );
        assert!(
            w.events(id, "lookup_mismatch").await.is_empty(),
            "{}",
            w.label
        );
        assert_eq!(w.sent(id), vec![moid], "{}: charged once", w.label);
        assert_eq!(w.state(id).await.next_cycle, Some(Cycle(2)), "{}", w.label);
        // Nothing more is due this month.
        w.advance(3600);
        engine.pass().await.unwrap();
        assert_eq!(w.charges(id).await.len(), 1, "{}", w.label);
        assert_eq!(w.sent(id).len(), 1, "{}", w.label);
        w.sim.shutdown().await;
    }
}

// ---- (d) cancelled lookups ----

/// An attempt's answer is lost, and before the engine's lookup gets through the transaction
/// is cancelled at NICEPAY. The lookup answers Status 1: the attempt is `cancelled` with a
/// `charge_cancelled` event, never approved; the cycle stays due and the next attempt
/// charges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_lookup_is_not_an_approval() {
    for db in databases("cancelled_lookup").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let id = w.add("cancelled").await;
        let engine = w.engine("cancel-1", Hooks::default());
        w.lose_answers(1);
        let report = engine.pass().await.unwrap();
        assert_eq!(report.unresolved, 1, "{}: {report:?}", w.label);
        let charge = w.charges(id).await.pop().unwrap();
        assert_eq!(charge.state, "unknown", "{}", w.label);
        // Approved at NICEPAY (the answer was lost); cancelled there before nicebill looks.
        let cancelled = w
            .client
            .cancel(&CancelRequest {
                tid: Tid::new(charge.tid.clone().unwrap()).unwrap(),
                moid: Moid::new(charge.moid.clone()).unwrap(),
                amount: Krw::positive(5_000).unwrap(),
                reason: "고객 요청 환불".into(),
                partial: false,
                mall_reserved: None,
            })
            .await
            .unwrap();
        assert_eq!(cancelled.result_code, "2001", "{}", w.label);
        w.heal();
        w.advance(10);
        let report = engine.pass().await.unwrap();
        assert_eq!(
            (report.resolved, report.charged, report.attempts),
            (1, 0, 0),
            "{}: resolved as not charged; the resend waits: {report:?}",
            w.label
        );
        let charge = w.charges(id).await.pop().unwrap();
        assert_eq!(
            charge.state, "cancelled",
            "{}: Status 1 is not an approval: {charge:?}",
            w.label
        );
        let events = w.events(id, "charge_cancelled").await;
        assert_eq!(events.len(), 1, "{}", w.label);
        assert!(events[0].contains("cycle 1"), "{}: {events:?}", w.label);
        let state = w.state(id).await;
        assert_eq!(
            (state.next_cycle, state.status),
            (Some(Cycle(1)), SubscriptionStatus::Active),
            "{}: the cycle stays due",
            w.label
        );
        // The next attempt charges the cycle.
        w.advance(61);
        let report = engine.pass().await.unwrap();
        assert_eq!(report.charged, 1, "{}: {report:?}", w.label);
        assert_eq!(
            w.attempts(id).await,
            vec![
                (1, 1, "cancelled".to_owned()),
                (1, 2, "approved".to_owned())
            ],
            "{}",
            w.label
        );
        assert_eq!(w.approved(id), vec![format!("S{id}-C1-A2")], "{}", w.label);
        assert_eq!(w.state(id).await.next_cycle, Some(Cycle(2)), "{}", w.label);
        w.sim.shutdown().await;
    }
}

// ---- (e) a pause during an attempt in flight ----

/// Checks what (e) requires once the attempt's outcome is written with the pause noticed
/// meanwhile: still paused; on resume after two more cycles came due, both are skipped, not
/// charged; the cycle after is charged when due.
async fn pause_is_kept_and_honoured(w: &World, engine: &Engine, id: i64) {
    let state = w.state(id).await;
    assert_eq!(
        (state.status, state.next_cycle),
        (SubscriptionStatus::Paused, Some(Cycle(2))),
        "{}: the outcome was recorded and the pause kept: {state:?}",
        w.label
    );
    assert!(state.paused_since.is_some(), "{}: {state:?}", w.label);
    assert_eq!(w.approved(id), vec![format!("S{id}-C1-A1")], "{}", w.label);
    // Cycles 2 (April 1) and 3 (May 1) come due during the pause.
    w.clock.set(kst("2027-05-15 10:00"));
    engine.pass().await.unwrap();
    assert_eq!(
        w.sent(id).len(),
        1,
        "{}: nothing charged while paused",
        w.label
    );
    w.store.set_status(id, "active").await.unwrap();
    let report = engine.pass().await.unwrap();
    assert_eq!(report.attempts, 0, "{}: {report:?}", w.label);
    assert_eq!(
        w.sent(id).len(),
        1,
        "{}: cycles due in the pause not charged",
        w.label
    );
    // One event for the range of cycles passed over.
    let skipped = w.events(id, "cycle_skipped").await;
    assert_eq!(skipped.len(), 1, "{}: {skipped:?}", w.label);
    assert!(
        skipped[0].starts_with("cycles 2-3 (2 cycles,"),
        "{}: {skipped:?}",
        w.label
    );
    assert!(
        skipped.iter().all(|s| s.ends_with("paused")),
        "{}: {skipped:?}",
        w.label
    );
    let state = w.state(id).await;
    assert_eq!(
        (state.status, state.next_cycle, state.paused_since),
        (SubscriptionStatus::Active, Some(Cycle(4)), None),
        "{}: {state:?}",
        w.label
    );
    // Cycle 4 is charged when due (June 1).
    w.clock.set(kst("2027-06-01 10:00"));
    engine.pass().await.unwrap();
    assert_eq!(
        w.approved(id),
        vec![format!("S{id}-C1-A1"), format!("S{id}-C4-A1")],
        "{}",
        w.label
    );
}

/// The merchant pauses while the approval request is on the wire (NICEPAY holds the answer),
/// and the pause is noticed before the outcome is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_while_the_request_is_on_the_wire_is_kept() {
    for db in databases("pause_wire").await {
        // The answer never comes: the engine waits its read timeout, then looks it up.
        let w = world_with(&db, kst("2027-03-01 10:00"), Duration::from_secs(5)).await;
        let id = w.add("pause-wire").await;
        let engine = w.engine("pause-1", Hooks::default());
        w.sim.set_faults(vec![FaultRule {
            mode: FaultMode::HangAfter,
            api: Some(Api::Approve),
            count: Some(1),
            probability: 1.0,
        }]);
        let pass = tokio::spawn({
            let engine = engine.clone();
            async move { engine.pass().await }
        });
        // Wait (bounded) until the attempt is committed and NICEPAY has charged it.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while w.sent(id).is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: never sent",
                w.label
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        w.store.set_status(id, "paused").await.unwrap();
        let noticed = w.store.notice(w.now()).await.unwrap();
        assert_eq!(noticed.paused, 1, "{}", w.label);
        assert_eq!(
            w.attempts(id).await,
            vec![(1, 1, "pending".to_owned())],
            "{}: the pause was noticed with the attempt in flight",
            w.label
        );
        let report = finish(pass, "the pass").await.unwrap();
        assert_eq!(report.charged, 1, "{}: {report:?}", w.label);
        pause_is_kept_and_honoured(&w, &engine, id).await;
        w.sim.shutdown().await;
    }
}

/// The same with the answer lost: the attempt stays unresolved over passes, the pause is
/// noticed by another instance's pass, and the outcome is written by the lookup later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_while_the_outcome_is_unknown_is_kept() {
    for db in databases("pause_unknown").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let id = w.add("pause-unknown").await;
        let engine = w.engine("pause-2", Hooks::default());
        let other = w.engine("pause-3", Hooks::default());
        w.lose_answers(1);
        let report = engine.pass().await.unwrap();
        assert_eq!(report.unresolved, 1, "{}: {report:?}", w.label);
        w.store.set_status(id, "paused").await.unwrap();
        // Another instance notices the pause; its lookup still fails.
        w.advance(6);
        other.pass().await.unwrap();
        assert_eq!(
            w.state(id).await.status,
            SubscriptionStatus::Paused,
            "{}",
            w.label
        );
        assert_eq!(
            w.attempts(id).await,
            vec![(1, 1, "unknown".to_owned())],
            "{}",
            w.label
        );
        w.heal();
        w.advance(20);
        let report = engine.pass().await.unwrap();
        assert_eq!(
            (report.resolved, report.charged),
            (1, 1),
            "{}: {report:?}",
            w.label
        );
        pause_is_kept_and_honoured(&w, &engine, id).await;
        w.sim.shutdown().await;
    }
}

// ---- (f) an unresolved attempt whose row later fails validation ----

/// Attempts whose answers were lost; then the merchant writes a bad amount into one row and a
/// bad time zone into the other. Each attempt is still looked up and recorded (billing moves
/// to cycle 2), and then the subscription becomes `invalid`, naming the column. Once the
/// merchant fixes the row, nothing is charged before cycle 2 is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolved_attempt_of_a_row_gone_bad_is_still_resolved() {
    for db in databases("invalid_unresolved").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let amount = w.add("bad-amount").await;
        let zone = w.add("bad-zone").await;
        let engine = w.engine("invalid-1", Hooks::default());
        w.lose_answers(2);
        let report = engine.pass().await.unwrap();
        assert_eq!(report.unresolved, 2, "{}: {report:?}", w.label);
        w.merchant_write(move |c| {
            diesel::update(subscriptions::table.find(amount))
                .set(subscriptions::amount.eq(0i64))
                .execute(c)
        })
        .await;
        w.merchant_write(move |c| {
            diesel::update(subscriptions::table.find(zone))
                .set(subscriptions::timezone.eq(Some("Mars/Olympus")))
                .execute(c)
        })
        .await;
        w.heal();
        w.advance(10);
        let report = engine.pass().await.unwrap();
        assert_eq!(
            (report.resolved, report.charged, report.attempts),
            (2, 2, 0),
            "{}: {report:?}",
            w.label
        );
        for (id, column) in [(amount, "amount"), (zone, "timezone")] {
            assert_eq!(
                w.attempts(id).await,
                vec![(1, 1, "approved".to_owned())],
                "{}: {column}",
                w.label
            );
            assert_eq!(w.approved(id), vec![format!("S{id}-C1-A1")], "{}", w.label);
            let state = w.state(id).await;
            assert_eq!(
                (state.next_cycle, state.status),
                (Some(Cycle(2)), SubscriptionStatus::Invalid),
                "{}: {column}: {state:?}",
                w.label
            );
            let reason = state.status_reason.unwrap_or_default();
            assert!(
                reason.starts_with(&format!("{column}:")),
                "{}: {column}: {reason}",
                w.label
            );
            let invalid = w.events(id, "invalid").await;
            assert!(invalid.contains(&reason), "{}: {invalid:?}", w.label);
        }
        // Fixed by the merchant: checked again, and nothing is charged before cycle 2.
        w.merchant_write(move |c| {
            diesel::update(subscriptions::table.find(amount))
                .set(subscriptions::amount.eq(5_000i64))
                .execute(c)
        })
        .await;
        w.advance(3600);
        let report = engine.pass().await.unwrap();
        assert_eq!(report.attempts, 0, "{}: {report:?}", w.label);
        let state = w.state(amount).await;
        assert_eq!(
            (state.status, state.next_cycle),
            (SubscriptionStatus::Active, Some(Cycle(2))),
            "{}: {state:?}",
            w.label
        );
        w.clock.set(kst("2027-04-01 10:00"));
        engine.pass().await.unwrap();
        assert_eq!(
            w.approved(amount),
            vec![format!("S{amount}-C1-A1"), format!("S{amount}-C2-A1")],
            "{}",
            w.label
        );
        assert_eq!(w.sent(zone).len(), 1, "{}: still invalid", w.label);
        w.sim.shutdown().await;
    }
}

// ---- a new card between claim and commit ----

/// Instance A claims a due subscription and stalls before committing its attempt. Meanwhile
/// the merchant gives the subscription a new card, and instance B notices the change and
/// removes the old billkey at NICEPAY (no attempt with it is unresolved, no other
/// subscription uses it). When A goes on, it must not commit the attempt it planned with the
/// removed billkey: the cycle is charged once, with the new card, and the subscription stays
/// active.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_card_between_claim_and_commit_is_charged_not_the_removed_one() {
    for db in databases("race_card").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let id = w.add("card-1").await;
        w.store.notice(w.now()).await.unwrap();
        let old = w.store.subscription(id).await.unwrap().unwrap().bid;

        let (stall_a, hooks_a) = Stall::new();
        let a = w.engine("instance-a", hooks_a);
        let b = w.engine("instance-b", Hooks::default());
        let pass_a = tokio::spawn({
            let a = a.clone();
            async move { a.pass().await }
        });
        stall_a.until_claimed("instance A").await;

        // The merchant's application saves a new card; B notices it and removes the old one.
        let new = issue(&w.client, "9410123456780001", "bk-card-1-new").await;
        let new_text = new.to_string();
        w.merchant_write(move |c| {
            diesel::update(subscriptions::table.find(id))
                .set(subscriptions::bid.eq(new_text.clone()))
                .execute(c)
        })
        .await;
        let report_b = b.pass().await.unwrap();
        assert_eq!(
            report_b.attempts, 0,
            "{}: A holds the claim: {report_b:?}",
            w.label
        );
        let removed: Vec<String> = w.sim.removals().into_iter().map(|r| r.bid).collect();
        assert_eq!(removed, vec![old.clone()], "{}", w.label);

        stall_a.release();
        let report_a = finish(pass_a, "instance A").await.unwrap();
        assert_eq!(
            report_a.attempts, 0,
            "{}: A planned with the removed billkey; it must not commit: {report_a:?}",
            w.label
        );
        // The next pass charges the cycle with the new card.
        b.pass().await.unwrap();
        let sent: Vec<(String, Option<String>, Option<String>)> = w
            .charges(id)
            .await
            .into_iter()
            .map(|c| (c.moid, c.bid, c.result_code))
            .collect();
        assert_eq!(
            sent,
            vec![(
                format!("S{id}-C1-A1"),
                Some(new.to_string()),
                Some("3001".to_owned())
            )],
            "{}",
            w.label
        );
        assert_eq!(w.approved(id), vec![format!("S{id}-C1-A1")], "{}", w.label);
        assert_eq!(
            w.state(id).await.status,
            SubscriptionStatus::Active,
            "{}",
            w.label
        );
        assert_eq!(
            w.events(id, "billkey_changed").await.len(),
            1,
            "{}",
            w.label
        );
        w.sim.shutdown().await;
    }
}
