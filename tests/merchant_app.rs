//! The merchant's own application against nicebill (issue 8, items 1 and 5; reproduced cases 1
//! and 3): stale full-row saves, billkeys shared by several subscriptions, card changes, and
//! the upgrade of a database made by the first schema. Each on SQLite and (when
//! `NICEBILL_TEST_POSTGRES_URL` is set) on a fresh PostgreSQL schema.
//!
//! Where a process matters (the reproduced cases and the upgrade) the real binary runs
//! (`nicebill run --once`, `nicebill migrate`) against `nicebill sim` in its own process, on the
//! database's clock; the rest drives an in-process engine on a `ManualClock`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;
use nicebill::billing::engine::{Engine, EngineSettings};
use nicebill::billing::model::SubscriptionId;
use nicebill::billing::plan::Policy;
use nicebill::clock::{Clock, ManualClock, SharedClock};
use nicebill::domain::Mid;
use nicebill::gateway::nicepay::{Api, Charset, EdiType, NicepayClient, tid};
use nicebill::retry::RetryPolicy;
use nicebill::schedule::Cycle;
use nicebill::sim::{FaultMode, FaultRule, LedgerEntry, SimConfig, SimHandle};
use nicebill::storage::models::{BillingStateRow, NewSubscription, RemovalRow};
use nicebill::storage::schema::{billing_state, subscription_changes};
use nicebill::storage::{AnyConnection, DbUrl, Store};
use support::*;

// ---------------------------------------------------------------------------------------------
// Helpers: raw SQL as a merchant application (or a migration) would write it.

fn is_pg(store: &Store) -> bool {
    matches!(store.url(), DbUrl::Postgres(_))
}

async fn try_exec(store: &Store, sql: String) -> Result<(), String> {
    store
        .run(move |c| {
            use diesel::connection::SimpleConnection;
            c.batch_execute(&sql).map_err(Into::into)
        })
        .await
        .map_err(|e| e.to_string())
}

async fn exec(store: &Store, sql: impl Into<String>) {
    let sql = sql.into();
    if let Err(e) = try_exec(store, sql.clone()).await {
        panic!("{sql}: {e}");
    }
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

/// The one text column `name` of every row `sql` returns.
async fn texts(store: &Store, sql: &str) -> Vec<String> {
    let sql = sql.to_owned();
    store
        .run(move |c| {
            let rows: Vec<Name> = match c {
                AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
                AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
            };
            Ok(rows.into_iter().map(|r| r.name).collect())
        })
        .await
        .unwrap()
}

fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What an ORM keeps of rows it loaded: a copy of every column, as read.
async fn orm_load(store: &Store, ids: &[i64]) {
    exec(
        store,
        format!(
            "CREATE TABLE merchant_orm_copy AS SELECT * FROM subscriptions WHERE id IN ({})",
            id_list(ids)
        ),
    )
    .await;
}

/// What an ORM does when it saves those rows later (ActiveRecord, Django, JPA, SQLAlchemy):
/// every column but the key written back with the value it read, and the one attribute the
/// application changed.
async fn orm_save(store: &Store, ids: &[i64], buyer_email: &str) {
    let columns = texts(
        store,
        if is_pg(store) {
            "SELECT CAST(column_name AS TEXT) AS name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = 'subscriptions' \
             ORDER BY ordinal_position"
        } else {
            "SELECT name FROM pragma_table_info('subscriptions') ORDER BY cid"
        },
    )
    .await;
    for needed in ["bid", "status", "amount", "anchor_at", "updated_at"] {
        assert!(columns.iter().any(|c| c == needed), "{columns:?}");
    }
    let sets: Vec<String> = columns
        .iter()
        .filter(|c| *c != "id" && *c != "buyer_email")
        .map(|c| {
            format!("{c} = (SELECT o.{c} FROM merchant_orm_copy o WHERE o.id = subscriptions.id)")
        })
        .collect();
    exec(
        store,
        format!(
            "UPDATE subscriptions SET {}, buyer_email = '{buyer_email}' WHERE id IN ({})",
            sets.join(", "),
            id_list(ids)
        ),
    )
    .await;
}

async fn set_bid(store: &Store, id: i64, bid: &str) {
    exec(
        store,
        format!("UPDATE subscriptions SET bid = '{bid}' WHERE id = {id}"),
    )
    .await;
}

async fn status_of(store: &Store, id: i64) -> (String, Option<String>) {
    let row = store.subscription(id).await.unwrap().unwrap();
    (row.status, row.status_reason)
}

async fn removals_of(store: &Store, id: i64) -> Vec<RemovalRow> {
    store.removal(id).await.unwrap()
}

async fn unresolved_left(store: &Store) -> Vec<String> {
    store
        .charges(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.state == "pending" || c.state == "unknown")
        .map(|c| format!("{} {}", c.moid, c.state))
        .collect()
}

/// The last `n` characters of `text`.
fn tail(text: &str, n: usize) -> &str {
    &text[text.len().saturating_sub(n)..]
}

/// An event about billkeys names each only by its last four characters.
fn assert_only_suffixes(detail: &str, bids: &[&str], what: &str) {
    for bid in bids {
        assert!(
            detail.contains(tail(bid, 4)),
            "{what}: {detail:?} does not name …{}",
            tail(bid, 4)
        );
        assert!(
            !detail.contains(tail(bid, 5)),
            "{what}: {detail:?} shows more of billkey {bid} than its last 4 characters"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The real binary.

fn write_config(dir: &Path, sim_url: &str, db_url: &str) -> PathBuf {
    // One decline ends dunning (past_due at once); a held billkey removal is looked at again
    // after a second.
    ConfigFile::new(sim_url)
        .nicepay(config::TIMEOUTS_1S)
        .database(db_url)
        .sections(
            r#"[scheduler]
tick = "* * * * * *"
settle_margin = "1s"
lease = "2s"

[retry]
retry_after = []
resend_after = "1s"
transient_max_elapsed = "1s"
lookup_max_interval = "1s"
removal_max_interval = "1s"
"#,
        )
        .write(dir)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The binary with `args --config config`, killed (and the test failed) if it has not ended
/// after three minutes: a pass that never ends is a bug this file looks for.
fn cli(config: &Path, args: &[&str]) -> Output {
    let mut cmd = nicebill(Some("warn"));
    cmd.args(args).arg("--config").arg(config);
    process::output_within(cmd, Duration::from_secs(180))
}

fn run_once(config: &Path, label: &str) {
    let out = cli(config, &["run", "--once"]);
    assert!(
        out.status.success(),
        "{label}: nicebill run --once: {}",
        text(&out)
    );
}

fn moids_of(ledger: &[LedgerEntry], id: i64) -> Vec<String> {
    let mut m: Vec<String> = ledger
        .iter()
        .filter(|l| l.moid.starts_with(&format!("S{id}-")))
        .map(|l| l.moid.clone())
        .collect();
    m.sort();
    m
}

// ---------------------------------------------------------------------------------------------
// Reproduced case 1: an ordinary stale save.

/// The merchant application loads two rows before nicebill charges them; nicebill charges one
/// (approved) and stops the other (declined: past_due); the application then saves both whole
/// rows back with a new buyer_email. The next `run --once` charges nothing: cycle 1 is approved
/// once at NICEPAY, nothing stays pending, and nicebill's past_due stands. Then nicebill's own
/// bookkeeping is wound back by hand (a bug, simulated): the database refuses the attempt at
/// commit, nothing is sent, and the bookkeeping moves past the approved cycle again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_full_row_save_never_charges_a_cycle_again() {
    for db in databases("stale_save").await {
        stale_save_story(db).await;
    }
}

async fn stale_save_story(db: TestDb) {
    let label = db.label;
    let store = &db.store;
    let (_sim, sim_url) = spawn_sim(&[]);
    let client = client_at(&sim_url);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim_url, &db.url);
    let anchor = Utc::now() - chrono::Duration::hours(1);
    let good = issue(&client, "9410123456780000", &format!("stale-{label}-1")).await;
    let s = store
        .insert_subscription(monthly("stale-1", &good, 9_900, anchor))
        .await
        .unwrap();
    let poor = issue(&client, "4000000000000002", &format!("stale-{label}-2")).await;
    let p = store
        .insert_subscription(monthly("stale-past-due", &poor, 4_900, anchor))
        .await
        .unwrap();
    // Two months and more behind: the catch-up charges cycle 3 only.
    let late = issue(&client, "9410123456780000", &format!("stale-{label}-3")).await;
    let q = store
        .insert_subscription(monthly(
            "stale-caught-up",
            &late,
            2_900,
            Utc::now() - chrono::Duration::days(65),
        ))
        .await
        .unwrap();
    // The application loads the rows before anything is charged.
    orm_load(store, &[s, p, q]).await;

    run_once(&config, label);
    let first = vec![format!("S{s}-C1-A1")];
    let caught_up = vec![format!("S{q}-C3-A1")];
    assert_eq!(moids_of(&ledger(&sim_url).await, s), first, "{label}");
    assert_eq!(moids_of(&ledger(&sim_url).await, q), caught_up, "{label}");
    let state = store
        .billing_state(SubscriptionId(s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.next_cycle, Some(Cycle(2)), "{label}");
    assert_eq!(status_of(store, p).await.0, "past_due", "{label}");

    // The stale save: every column as read before the charge, and a new e-mail address.
    orm_save(store, &[s, p, q], "new-address@example.com").await;
    let row = store.subscription(s).await.unwrap().unwrap();
    assert_eq!(
        (row.buyer_email.as_deref(), row.merchant_status.as_str()),
        (Some("new-address@example.com"), "active"),
        "{label}"
    );
    run_once(&config, label);
    let after = ledger(&sim_url).await;
    assert_eq!(
        moids_of(&after, s),
        first,
        "{label}: the stale save got cycle 1 charged again"
    );
    assert!(moids_of(&after, p).is_empty(), "{label}");
    assert_eq!(
        unresolved_left(store).await,
        Vec::<String>::new(),
        "{label}"
    );
    assert_eq!(store.charges(Some(s)).await.unwrap().len(), 1, "{label}");
    assert_eq!(
        store.charges(Some(p)).await.unwrap().len(),
        1,
        "{label}: the stale 'active' undid nicebill's past_due and the row was charged again"
    );
    assert_eq!(status_of(store, p).await.0, "past_due", "{label}");
    let state = store
        .billing_state(SubscriptionId(s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.next_cycle, Some(Cycle(2)), "{label}");

    // The database's own guarantee: a second live attempt of an approved cycle is refused,
    // whatever nicebill's bookkeeping says.
    let refused = try_exec(
        store,
        format!(
            "INSERT INTO charges (subscription_id, cycle, attempt, moid, tid, amount, bid, state, \
             created_at) VALUES ({s}, 1, 9, 'by-hand-{s}', 'by-hand-tid-{s}', 9900, '{good}', \
             'pending', '2027-01-01 00:00:00')"
        ),
    )
    .await;
    let why = refused.expect_err("a pending attempt beside the cycle's approval was accepted");
    assert!(
        why.contains("charges_one_live_attempt_per_cycle")
            || why.contains("UNIQUE constraint failed: charges.subscription_id, charges.cycle"),
        "{label}: {why}"
    );

    // nicebill's bookkeeping wound back (as a bug would): cycle 1 again, as attempt 1 (its Moid
    // is taken), as attempt 5 (a new Moid: only the live-attempt index refuses it), and with
    // no cycle at all (what the old schema's stale save wrote). For the caught-up row, cycle 1
    // is behind the approved cycle 3 the catch-up picks again.
    for (next_cycle, attempts) in [("1", 0), ("1", 4), ("NULL", 0)] {
        exec(
            store,
            format!(
                "UPDATE billing_state SET next_cycle = {next_cycle}, cycle_attempts = {attempts}, \
                 next_charge_at = NULL WHERE subscription_id IN ({s}, {q})"
            ),
        )
        .await;
        run_once(&config, label);
        let what =
            format!("{label}: bookkeeping wound back to cycle {next_cycle}, {attempts} attempts");
        let l = ledger(&sim_url).await;
        assert_eq!(moids_of(&l, s), first, "{what}");
        assert_eq!(moids_of(&l, q), caught_up, "{what}");
        assert_eq!(store.charges(Some(s)).await.unwrap().len(), 1, "{what}");
        assert_eq!(store.charges(Some(q)).await.unwrap().len(), 1, "{what}");
        assert_eq!(unresolved_left(store).await, Vec::<String>::new(), "{what}");
        for (id, next) in [(s, 2), (q, 4)] {
            let state = store
                .billing_state(SubscriptionId(id))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (state.next_cycle, state.cycle_attempts),
                (Some(Cycle(next)), 0),
                "{what}: the refused attempt did not move the bookkeeping past the approved cycle"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reproduced case 3: one card, two products.

/// Two active subscriptions share a billkey. Cancelling one keeps the billkey at NICEPAY (its
/// removal is held for the other, with an event), and the other goes on being charged with it;
/// cancelling the second removes it. A third subscription with a billkey of its own, cancelled
/// beside the first, shows that removals do run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_billkey_stays_until_its_last_subscription_is_cancelled() {
    for db in databases("shared_billkey").await {
        shared_billkey_story(db).await;
    }
}

async fn shared_billkey_story(db: TestDb) {
    let label = db.label;
    let store = &db.store;
    let (_sim, sim_url) = spawn_sim(&[]);
    let client = client_at(&sim_url);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim_url, &db.url);
    let now = Utc::now();
    let shared = issue(&client, "9410123456780000", &format!("shared-{label}")).await;
    let own = issue(&client, "9410123456780000", &format!("own-{label}")).await;
    let a = store
        .insert_subscription(monthly(
            "shared-a",
            &shared,
            10_000,
            now - chrono::Duration::hours(1),
        ))
        .await
        .unwrap();
    // The second product bills every two seconds, so that it is due again while the test
    // waits (the binary runs on the database's clock).
    let mut b_row = monthly(
        "shared-b",
        &shared,
        3_000,
        now - chrono::Duration::seconds(5),
    );
    b_row.cron = Some("*/2 * * * * *".into());
    let b = store.insert_subscription(b_row).await.unwrap();
    let c = store
        .insert_subscription(monthly(
            "own-c",
            &own,
            5_000,
            now - chrono::Duration::hours(1),
        ))
        .await
        .unwrap();

    run_once(&config, label);
    let l = ledger(&sim_url).await;
    assert_eq!(moids_of(&l, a), vec![format!("S{a}-C1-A1")], "{label}");
    assert_eq!(moids_of(&l, c), vec![format!("S{c}-C1-A1")], "{label}");
    assert!(!moids_of(&l, b).is_empty(), "{label}: b was not charged");

    store.set_status(a, "cancelled").await.unwrap();
    store.set_status(c, "cancelled").await.unwrap();
    run_once(&config, label);
    let own_removal = removals_of(store, c).await;
    assert_eq!(
        own_removal
            .iter()
            .map(|r| (r.bid.as_str(), r.state.as_str(), r.result_code.as_deref()))
            .collect::<Vec<_>>(),
        vec![(own.as_str(), "done", Some("F101"))],
        "{label}"
    );
    let held = removals_of(store, a).await;
    assert_eq!(held.len(), 1, "{label}: {held:?}");
    assert_eq!(
        (
            held[0].bid.as_str(),
            held[0].state.as_str(),
            held[0].held_by
        ),
        (shared.as_str(), "pending", Some(b)),
        "{label}: {held:?}"
    );
    assert_eq!(
        requests(&sim_url, "billkey_remove").await,
        1,
        "{label}: the shared billkey was sent for removal"
    );
    let events = store.events(Some(a)).await.unwrap();
    let held_events: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "billkey_removal_held")
        .collect();
    assert_eq!(held_events.len(), 1, "{label}: {events:?}");
    assert_only_suffixes(&held_events[0].detail, &[shared.as_str()], label);
    assert!(
        held_events[0].detail.contains(&b.to_string()),
        "{label}: {:?}",
        held_events[0].detail
    );

    // The other subscription goes on being charged with the billkey.
    let charged_before = moids_of(&ledger(&sim_url).await, b).len();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        run_once(&config, label);
        if moids_of(&ledger(&sim_url).await, b).len() > charged_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: b was not charged again"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let b_charges = store.charges(Some(b)).await.unwrap();
    assert!(
        b_charges.iter().all(|ch| ch.state == "approved"),
        "{label}: {b_charges:?}"
    );
    assert_eq!(status_of(store, b).await.0, "active", "{label}");
    assert_eq!(removals_of(store, a).await[0].state, "pending", "{label}");
    assert_eq!(requests(&sim_url, "billkey_remove").await, 1, "{label}");

    // Cancelling the last subscription that uses it removes it.
    store.set_status(b, "cancelled").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let removals = loop {
        run_once(&config, label);
        let mut all = removals_of(store, a).await;
        all.extend(removals_of(store, b).await);
        if all.len() == 2 && all.iter().all(|r| r.state == "done") {
            break all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: removals not done: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let codes: Vec<&str> = removals
        .iter()
        .map(|r| r.result_code.as_deref().unwrap_or(""))
        .collect();
    assert!(
        removals.iter().all(|r| r.bid == shared.as_str()),
        "{label}: {removals:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == "F101").count(),
        1,
        "{label}: {codes:?}"
    );
    // The second one finds it gone already: fine.
    assert!(
        codes.iter().all(|c| *c == "F101" || *c == "A124"),
        "{label}: {codes:?}"
    );
    for id in [a, b] {
        let events = store.events(Some(id)).await.unwrap();
        let removed: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "billkey_removed")
            .collect();
        assert_eq!(removed.len(), 1, "{label}: {events:?}");
        assert_only_suffixes(&removed[0].detail, &[shared.as_str()], label);
    }
    assert_eq!(
        unresolved_left(store).await,
        Vec::<String>::new(),
        "{label}"
    );
}

// ---------------------------------------------------------------------------------------------
// In-process engines on a manual clock.

struct World {
    sim: SimHandle,
    client: Arc<NicepayClient>,
    clock: ManualClock,
    store: Store,
    label: &'static str,
}

async fn world(db: &TestDb, start: DateTime<Utc>) -> World {
    let clock = ManualClock::new(start);
    let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    let client = Arc::new(
        NicepayClient::new(
            settings(&sim.base_url(), Charset::Utf8, EdiType::Json),
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    World {
        sim,
        client,
        clock,
        store: db.store.clone(),
        label: db.label,
    }
}

impl World {
    fn engine(&self, owner: &str, policy: Policy) -> Engine {
        let mut s = EngineSettings::new(owner.into(), policy, Duration::from_secs(4));
        s.concurrency = 8;
        s.batch = 8;
        s.transient = RetryPolicy::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
            Duration::from_millis(200),
        );
        let clock: SharedClock = Arc::new(self.clock.clone());
        Engine::new(self.store.clone(), self.client.clone(), clock, s)
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    async fn billkey(&self, card: &str, name: &str) -> String {
        issue(&self.client, card, &format!("bk-{name}"))
            .await
            .as_str()
            .to_owned()
    }

    /// A monthly row anchored five minutes ago (due now) with billkey `bid`.
    async fn add(&self, name: &str, bid: &str, amount: i64) -> i64 {
        self.add_at(name, bid, amount, self.now() - chrono::Duration::minutes(5))
            .await
    }

    async fn add_at(&self, name: &str, bid: &str, amount: i64, anchor: DateTime<Utc>) -> i64 {
        let row = NewSubscription::monthly(name, bid, amount, "월간 구독", anchor.naive_utc());
        self.store.insert_subscription(row).await.unwrap()
    }

    fn ledger_of(&self, id: i64) -> Vec<LedgerEntry> {
        self.sim
            .ledger()
            .into_iter()
            .filter(|l| l.moid.starts_with(&format!("S{id}-")))
            .collect()
    }

    fn removal_requests(&self) -> u64 {
        self.sim
            .request_counts()
            .get(Api::BillkeyRemove.as_str())
            .copied()
            .unwrap_or(0)
    }
}

/// A billkey is not removed while an attempt with it is unresolved, even when that attempt
/// belongs to another subscription: both subscriptions sharing it are cancelled while one's
/// charge has lost its answer and cannot be looked up; the removals wait, and go once the
/// lookup has found the charge approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billkey_waits_for_its_unresolved_attempts() {
    for db in databases("removal_waits").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let l = w.label;
        let shared = w.billkey("9410123456780000", &format!("wait-{l}")).await;
        let m = w.add("wait-m", &shared, 5_000).await;
        let n = w
            .add_at(
                "wait-n",
                &shared,
                6_000,
                w.now() + chrono::Duration::hours(1),
            )
            .await;
        let engine = w.engine("wait-1", Policy::default());
        engine.pass().await.unwrap();
        assert_eq!(w.ledger_of(m).len(), 1, "{l}");

        // n's first charge is approved, its answer lost, and lookups fail.
        w.clock.set(kst("2027-03-01 11:01"));
        w.sim.set_faults(vec![
            FaultRule {
                mode: FaultMode::DropAfter,
                api: Some(Api::Approve),
                count: Some(1),
                probability: 1.0,
            },
            FaultRule {
                mode: FaultMode::Http500,
                api: Some(Api::Status),
                count: None,
                probability: 1.0,
            },
        ]);
        engine.pass().await.unwrap();
        let open = unresolved_left(&w.store).await;
        assert_eq!(open.len(), 1, "{l}: {open:?}");
        assert!(
            open[0].starts_with(&format!("S{n}-C1-A1 ")),
            "{l}: {open:?}"
        );

        w.store.set_status(m, "cancelled").await.unwrap();
        w.store.set_status(n, "cancelled").await.unwrap();
        w.clock.set(kst("2027-03-01 11:03"));
        engine.pass().await.unwrap();
        assert_eq!(
            w.removal_requests(),
            0,
            "{l}: the billkey was removed while an attempt with it was unresolved"
        );
        for id in [m, n] {
            let r = removals_of(&w.store, id).await;
            assert_eq!(
                r.iter()
                    .map(|r| (r.bid.as_str(), r.state.as_str()))
                    .collect::<Vec<_>>(),
                vec![(shared.as_str(), "pending")],
                "{l}"
            );
        }

        // The lookup works again: the attempt is approved, then the billkey goes.
        w.sim.set_faults(vec![]);
        w.clock.set(kst("2027-03-01 11:20"));
        engine.pass().await.unwrap();
        let charge = &w.store.charges(Some(n)).await.unwrap()[0];
        assert_eq!(charge.state, "approved", "{l}: {charge:?}");
        let mut removals = removals_of(&w.store, m).await;
        removals.extend(removals_of(&w.store, n).await);
        assert!(
            removals.iter().all(|r| r.state == "done"),
            "{l}: {removals:?}"
        );
        for r in &removals {
            assert!(
                r.done_at >= charge.resolved_at,
                "{l}: removed before the attempt was resolved: {r:?} {charge:?}"
            );
        }
        w.sim.shutdown().await;
    }
}

/// New cards: a changed `bid` is noticed (`billkey_changed`, billkeys shown by their last four
/// characters only); the old billkey is removed unless another chargeable subscription uses it;
/// a card_invalid or past_due subscription given a new card is charged again with it; a
/// subscription reactivated with a new billkey and cancelled again gets the new one removed; a
/// `bid` with white space around it makes the row invalid, naming `bid`, and is never trimmed
/// into another row's billkey except to keep that billkey (see the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_changes_are_noticed_and_old_billkeys_removed_by_the_same_rule() {
    for db in databases("card_changes").await {
        card_change_story(db).await;
    }
}

async fn card_change_story(db: TestDb) {
    let w = world(&db, kst("2027-03-01 10:00")).await;
    let l = w.label;
    let store = &w.store;
    // One decline ends dunning: past_due at once.
    let engine = w.engine(
        "cards-1",
        Policy {
            retry_after: vec![],
            ..Policy::default()
        },
    );
    let x = w.billkey("9410123456780000", &format!("x-{l}")).await;
    let c = w.add("card-c", &x, 5_000).await;
    let d = w.add("card-d", &x, 7_000).await;
    let z = w.billkey("9410123456780000", &format!("z-{l}")).await;
    let e = w.add("card-e", &z, 5_000).await;
    let expired = w.billkey("4000000000000003", &format!("expired-{l}")).await;
    let f = w.add("card-f", &expired, 5_000).await;
    let poor = w.billkey("4000000000000002", &format!("poor-{l}")).await;
    let g = w.add("card-g", &poor, 5_000).await;
    let h1 = w.billkey("9410123456780000", &format!("h1-{l}")).await;
    let h = w.add("card-h", &h1, 5_000).await;
    // White space around a billkey: invalid, naming the column.
    let k = w.billkey("9410123456780000", &format!("k-{l}")).await;
    let j = w.add("card-j", &k, 5_000).await;
    let spaced = w.add("card-spaced", &format!(" {k}"), 5_000).await;
    engine.pass().await.unwrap();
    assert_eq!(status_of(store, f).await.0, "card_invalid", "{l}");
    assert_eq!(status_of(store, g).await.0, "past_due", "{l}");
    let (status, reason) = status_of(store, spaced).await;
    assert_eq!(status, "invalid", "{l}");
    assert!(
        reason.as_deref().is_some_and(|r| r.starts_with("bid:")),
        "{l}: {reason:?}"
    );
    assert!(w.ledger_of(spaced).is_empty(), "{l}");
    for id in [c, d, e, h, j] {
        assert_eq!(w.ledger_of(id).len(), 1, "{l}: {id}");
    }

    // New cards for four of them.
    let y = w.billkey("9410123456780000", &format!("y-{l}")).await;
    let z2 = w.billkey("9410123456780000", &format!("z2-{l}")).await;
    let f2 = w.billkey("9410123456780000", &format!("f2-{l}")).await;
    let g2 = w.billkey("9410123456780000", &format!("g2-{l}")).await;
    for (id, bid) in [(c, &y), (e, &z2), (f, &f2), (g, &g2)] {
        set_bid(store, id, bid).await;
    }
    w.clock.set(kst("2027-03-01 10:02"));
    engine.pass().await.unwrap();
    for (id, old, new) in [
        (c, &x, &y),
        (e, &z, &z2),
        (f, &expired, &f2),
        (g, &poor, &g2),
    ] {
        let events = store.events(Some(id)).await.unwrap();
        let changed: Vec<_> = events
            .iter()
            .filter(|ev| ev.kind == "billkey_changed")
            .collect();
        assert_eq!(changed.len(), 1, "{l}: {id}: {events:?}");
        assert_only_suffixes(&changed[0].detail, &[old.as_str(), new.as_str()], l);
    }
    // c's old billkey is d's too: held. The others are nobody's now: removed.
    let rc = removals_of(store, c).await;
    assert_eq!(
        rc.iter()
            .map(|r| (
                r.bid.as_str(),
                r.reason.as_str(),
                r.state.as_str(),
                r.held_by
            ))
            .collect::<Vec<_>>(),
        vec![(x.as_str(), "billkey_changed", "pending", Some(d))],
        "{l}"
    );
    assert!(
        store
            .events(Some(c))
            .await
            .unwrap()
            .iter()
            .any(|ev| ev.kind == "billkey_removal_held"),
        "{l}"
    );
    for (id, old) in [(e, &z), (f, &expired), (g, &poor)] {
        let r = removals_of(store, id).await;
        assert_eq!(
            r.iter()
                .map(|r| (r.bid.as_str(), r.state.as_str(), r.result_code.as_deref()))
                .collect::<Vec<_>>(),
            vec![(old.as_str(), "done", Some("F101"))],
            "{l}: {id}"
        );
    }
    // The stopped ones were charged again, with the new card.
    for (id, new) in [(f, &f2), (g, &g2)] {
        let charged = w.ledger_of(id);
        assert_eq!(
            charged
                .iter()
                .map(|e| (e.moid.clone(), e.bid.clone()))
                .collect::<Vec<_>>(),
            vec![(format!("S{id}-C1-A2"), new.to_string())],
            "{l}"
        );
        assert_eq!(status_of(store, id).await.0, "active", "{l}");
        assert!(
            store
                .events(Some(id))
                .await
                .unwrap()
                .iter()
                .any(|ev| ev.kind == "reactivated"),
            "{l}"
        );
    }

    // A month later each is charged with its current card; the shared one is still there.
    w.clock.set(kst("2027-04-01 10:05"));
    engine.pass().await.unwrap();
    for (id, bid) in [(c, &y), (d, &x), (e, &z2)] {
        let last = w.ledger_of(id).pop().unwrap();
        assert_eq!(
            (last.moid, last.bid),
            (format!("S{id}-C2-A1"), bid.to_string()),
            "{l}"
        );
    }
    assert_eq!(removals_of(store, c).await[0].state, "pending", "{l}");

    // Cancelled, reactivated with a new billkey in the same write, cancelled again: the new
    // billkey is removed too.
    store.set_status(h, "cancelled").await.unwrap();
    engine.pass().await.unwrap();
    let h2 = w.billkey("9410123456780000", &format!("h2-{l}")).await;
    exec(
        store,
        format!("UPDATE subscriptions SET status = 'active', bid = '{h2}' WHERE id = {h}"),
    )
    .await;
    engine.pass().await.unwrap();
    assert_eq!(status_of(store, h).await.0, "active", "{l}");
    store.set_status(h, "cancelled").await.unwrap();
    engine.pass().await.unwrap();
    let rh = removals_of(store, h).await;
    assert_eq!(
        rh.iter()
            .map(|r| (r.bid.as_str(), r.state.as_str(), r.result_code.as_deref()))
            .collect::<Vec<_>>(),
        vec![
            (h1.as_str(), "done", Some("F101")),
            (h2.as_str(), "done", Some("F101"))
        ],
        "{l}"
    );

    // White space, continued. j's billkey is also the one the invalid row names (with a space
    // in front): cancelling j keeps it, because the merchant may fix that row; nothing is ever
    // sent for the spaced text itself.
    store.set_status(j, "cancelled").await.unwrap();
    engine.pass().await.unwrap();
    let rj = removals_of(store, j).await;
    assert_eq!(
        rj.iter()
            .map(|r| (r.bid.as_str(), r.state.as_str(), r.held_by))
            .collect::<Vec<_>>(),
        vec![(k.as_str(), "pending", Some(spaced))],
        "{l}"
    );
    // The merchant fixes the row: it is charged with the card it meant, which is still there.
    set_bid(store, spaced, &k).await;
    engine.pass().await.unwrap();
    let charged = w.ledger_of(spaced);
    assert_eq!(
        charged.iter().map(|e| e.bid.clone()).collect::<Vec<_>>(),
        vec![k.clone()],
        "{l}"
    );
    assert_eq!(status_of(store, spaced).await.0, "active", "{l}");
    store.set_status(spaced, "cancelled").await.unwrap();
    w.clock.set(kst("2027-04-01 10:30"));
    engine.pass().await.unwrap();
    w.clock.set(kst("2027-04-01 10:35"));
    engine.pass().await.unwrap();
    let mut rk = removals_of(store, j).await;
    rk.extend(removals_of(store, spaced).await);
    assert_eq!(
        rk.iter()
            .map(|r| (r.bid.as_str(), r.state.as_str()))
            .collect::<Vec<_>>(),
        vec![(k.as_str(), "done"), (k.as_str(), "done")],
        "{l}: a removal of a billkey with white space around it was queued: {rk:?}"
    );
    let all_removals = store.removals().await.unwrap();
    assert!(
        all_removals.iter().all(|r| r.bid.trim() == r.bid),
        "{l}: {all_removals:?}"
    );
    let failed: Vec<_> = store
        .events(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|ev| ev.kind == "billkey_removal_failed")
        .collect();
    assert!(failed.is_empty(), "{l}: {failed:?}");
    w.sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The upgrade from the first schema (the previous main).

const OLD_SQLITE: &str = include_str!("../migrations/sqlite/2026-11-26-000001_init/up.sql");
const OLD_POSTGRES: &str = include_str!("../migrations/postgres/2026-11-26-000001_init/up.sql");

struct OldDb {
    label: &'static str,
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

/// Databases as the previous main left them: only the first migration applied (and recorded
/// where diesel looks).
async fn old_databases(test: &str) -> Vec<OldDb> {
    let mut out = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    out.push(OldDb {
        label: "sqlite",
        store: Store::open(DbUrl::parse(&url).unwrap(), 2).unwrap(),
        url,
        _dir: Some(dir),
    });
    if let Some(base) = postgres_url(test) {
        let schema = format!("t_{test}_{:08x}", rand::random::<u32>());
        let admin = Store::open(DbUrl::parse(&base).unwrap(), 1).unwrap();
        exec(&admin, format!("CREATE SCHEMA {schema}")).await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        out.push(OldDb {
            label: "postgres",
            store: Store::open(DbUrl::parse(&url).unwrap(), 2).unwrap(),
            url,
            _dir: None,
        });
    }
    for db in &out {
        let pg = is_pg(&db.store);
        exec(&db.store, if pg { OLD_POSTGRES } else { OLD_SQLITE }).await;
        exec(
            &db.store,
            "CREATE TABLE __diesel_schema_migrations (\
                version VARCHAR(50) PRIMARY KEY NOT NULL, \
                run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
             INSERT INTO __diesel_schema_migrations (version) VALUES ('20261126000001');",
        )
        .await;
    }
    out
}

fn ts(t: NaiveDateTime) -> String {
    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S"))
}

fn opt_ts(t: Option<NaiveDateTime>) -> String {
    t.map_or("NULL".into(), ts)
}

fn opt_text(t: Option<&str>) -> String {
    t.map_or("NULL".into(), |s| format!("'{}'", s.replace('\'', "''")))
}

/// A row of the first schema's `subscriptions`, with nicebill's columns in it.
struct OldRow {
    id: i64,
    name: &'static str,
    bid: String,
    amount: i64,
    anchor: NaiveDateTime,
    max_cycles: Option<i32>,
    status: &'static str,
    next_cycle: Option<i32>,
    next_charge_at: Option<NaiveDateTime>,
    attempts: i32,
    declines: i32,
    paused_since: Option<NaiveDateTime>,
    seen_status: Option<&'static str>,
    reason: Option<&'static str>,
}

impl OldRow {
    fn insert(&self) -> String {
        format!(
            "INSERT INTO subscriptions (id, external_id, bid, amount, goods_name, anchor_at, \
             max_cycles, status, next_cycle, next_charge_at, cycle_attempts, cycle_declines, \
             paused_since, seen_status, status_reason) VALUES ({}, '{}', '{}', {}, '월간 구독', \
             {}, {}, '{}', {}, {}, {}, {}, {}, {}, {});",
            self.id,
            self.name,
            self.bid,
            self.amount,
            ts(self.anchor),
            self.max_cycles.map_or("NULL".into(), |m| m.to_string()),
            self.status,
            self.next_cycle.map_or("NULL".into(), |c| c.to_string()),
            opt_ts(self.next_charge_at),
            self.attempts,
            self.declines,
            opt_ts(self.paused_since),
            opt_text(self.seen_status),
            opt_text(self.reason),
        )
    }
}

/// A charge attempt of the first schema; `at_gateway`: NICEPAY approved it.
struct OldCharge {
    sub: i64,
    cycle: i32,
    attempt: i32,
    state: &'static str,
    result_code: Option<&'static str>,
    at_gateway: bool,
}

/// A database made by the previous main, with data in every shape it could hold, upgraded by
/// `nicebill migrate`: nothing is lost, nicebill's verdicts move to billing_state and the
/// merchant's column gets 'active' back, the pending attempt the old schema let through beside
/// an approval becomes not_charged with a late check due, the pending billkey removal survives.
/// A `run --once` right after charges nothing twice (the old double is recorded as such).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_first_schema_upgrades_and_loses_nothing() {
    for db in old_databases("upgrade").await {
        upgrade_story(db).await;
    }
}

async fn upgrade_story(db: OldDb) {
    let label = db.label;
    let store = &db.store;
    let (_sim, sim_url) = spawn_sim(&[]);
    let client = client_at(&sim_url);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim_url, &db.url);

    let now = Utc::now().naive_utc();
    let t = now - chrono::Duration::nanoseconds(now.and_utc().timestamp_subsec_nanos() as i64);
    let h = chrono::Duration::hours;
    let d = chrono::Duration::days;
    let mut bids = std::collections::HashMap::new();
    for id in 101..=112 {
        let bid = issue(&client, "9410123456780000", &format!("up-{label}-{id}")).await;
        bids.insert(id, bid.as_str().to_owned());
    }
    let row = |id: i64, name: &'static str, status: &'static str| OldRow {
        id,
        name,
        bid: bids[&id].clone(),
        amount: 1_000 + id,
        anchor: t - h(1),
        max_cycles: None,
        status,
        next_cycle: Some(1),
        next_charge_at: Some(t - h(1)),
        attempts: 0,
        declines: 0,
        paused_since: None,
        seen_status: Some(status),
        reason: None,
    };
    let rows = vec![
        OldRow {
            anchor: t - d(10),
            next_cycle: Some(2),
            next_charge_at: Some(t + d(20)),
            ..row(101, "up-active", "active")
        },
        OldRow {
            anchor: t - d(1),
            next_charge_at: Some(t + d(2)),
            attempts: 1,
            declines: 1,
            ..row(102, "up-dunning", "active")
        },
        OldRow {
            anchor: t - d(5),
            next_cycle: Some(2),
            next_charge_at: Some(t + d(25)),
            paused_since: Some(t - d(3)),
            ..row(103, "up-paused", "paused")
        },
        OldRow {
            next_cycle: Some(2),
            next_charge_at: None,
            ..row(104, "up-cancelled", "cancelled")
        },
        OldRow {
            attempts: 4,
            declines: 4,
            reason: Some("cycle 1 declined 4 times; dunning exhausted"),
            ..row(105, "up-past-due", "past_due")
        },
        OldRow {
            attempts: 1,
            reason: Some("cycle 1: the card cannot be charged again; a new billkey is needed"),
            ..row(106, "up-card-invalid", "card_invalid")
        },
        OldRow {
            max_cycles: Some(1),
            next_cycle: Some(2),
            next_charge_at: None,
            reason: Some("last cycle (1) charged"),
            ..row(107, "up-ended", "ended")
        },
        OldRow {
            amount: 0,
            next_cycle: None,
            next_charge_at: None,
            reason: Some("amount: must be at least 1 KRW"),
            ..row(108, "up-invalid", "invalid")
        },
        OldRow {
            next_cycle: None,
            next_charge_at: None,
            seen_status: None,
            ..row(109, "up-unseen", "active")
        },
        OldRow {
            attempts: 1,
            ..row(110, "up-pending", "active")
        },
        OldRow {
            attempts: 2,
            ..row(111, "up-old-bug", "active")
        },
        // The old bug's starting point: a stale save wound the bookkeeping back.
        OldRow {
            next_cycle: None,
            next_charge_at: None,
            ..row(112, "up-old-bug-rewound", "active")
        },
    ];
    let charges = [
        OldCharge {
            sub: 101,
            cycle: 1,
            attempt: 1,
            state: "approved",
            result_code: Some("3001"),
            at_gateway: true,
        },
        OldCharge {
            sub: 102,
            cycle: 1,
            attempt: 1,
            state: "declined",
            result_code: Some("3095"),
            at_gateway: false,
        },
        OldCharge {
            sub: 110,
            cycle: 1,
            attempt: 1,
            state: "pending",
            result_code: None,
            at_gateway: true,
        },
        OldCharge {
            sub: 111,
            cycle: 1,
            attempt: 1,
            state: "approved",
            result_code: Some("3001"),
            at_gateway: true,
        },
        OldCharge {
            sub: 111,
            cycle: 1,
            attempt: 2,
            state: "pending",
            result_code: None,
            at_gateway: true,
        },
        OldCharge {
            sub: 112,
            cycle: 1,
            attempt: 1,
            state: "approved",
            result_code: Some("3001"),
            at_gateway: true,
        },
        OldCharge {
            sub: 112,
            cycle: 1,
            attempt: 2,
            state: "pending",
            result_code: None,
            at_gateway: false,
        },
    ];
    let mut sql = String::new();
    for r in &rows {
        sql.push_str(&r.insert());
    }
    let mid = Mid::new("nictest04m").unwrap();
    let mut tids = std::collections::HashMap::new();
    for (i, ch) in charges.iter().enumerate() {
        let tid = tid::build(&mid, (t - d(2)).and_utc(), i as u32);
        let moid = format!("S{}-C{}-A{}", ch.sub, ch.cycle, ch.attempt);
        let amount = 1_000 + ch.sub;
        if ch.at_gateway {
            let bid = nicebill::domain::Bid::new(bids[&ch.sub].clone()).unwrap();
            let reply = client
                .approve(&approve_request(&bid, tid.clone(), &moid, amount))
                .await
                .unwrap();
            assert_eq!(reply.result_code, "3001", "{}", reply.result_msg);
        }
        let unresolved = ch.state == "pending";
        sql.push_str(&format!(
            "INSERT INTO charges (subscription_id, cycle, attempt, moid, tid, amount, state, \
             result_code, check_after, created_at, resolved_at) VALUES \
             ({}, {}, {}, '{moid}', '{}', {amount}, '{}', {}, {}, {}, {});",
            ch.sub,
            ch.cycle,
            ch.attempt,
            tid.as_str(),
            ch.state,
            opt_text(ch.result_code),
            opt_ts(unresolved.then_some(t - chrono::Duration::minutes(1))),
            ts(t - chrono::Duration::minutes(50)),
            opt_ts((!unresolved).then_some(t - chrono::Duration::minutes(49))),
        ));
        tids.insert(moid, tid.as_str().to_owned());
    }
    sql.push_str(&format!(
        "INSERT INTO billkey_removals (subscription_id, bid, state, attempts, result_msg, \
         next_attempt_at, created_at) VALUES (104, '{}', 'pending', 2, 'connection reset', {}, {});",
        bids[&104],
        ts(t - chrono::Duration::minutes(1)),
        ts(t - h(1)),
    ));
    for (sub, kind) in [(101, "cycle_skipped"), (103, "paused"), (108, "invalid")] {
        sql.push_str(&format!(
            "INSERT INTO events (at, subscription_id, kind, detail) VALUES ({}, {sub}, '{kind}', 'from the old main');",
            ts(t - h(2))
        ));
    }
    if is_pg(store) {
        sql.push_str("SELECT setval(pg_get_serial_sequence('subscriptions', 'id'), 200);");
    }
    exec(store, sql).await;
    // Every migration since the first schema is pending (ownership first, then the webhook
    // outbox, then upcoming notices, then NICEPAY v1's charges (a table rebuild on SQLite),
    // then TID lanes, then one index fewer on charges): the upgrade below goes through all of
    // them.
    assert_eq!(
        store.pending_migrations().await.unwrap(),
        vec![
            "2026-12-04-000001_ownership".to_owned(),
            "2026-12-05-000001_webhooks".to_owned(),
            "2026-12-06-000001_upcoming".to_owned(),
            "2026-12-07-000001_v1".to_owned(),
            "2026-12-08-000001_tid_lanes".to_owned(),
            "2026-12-09-000001_fewer_charge_indexes".to_owned(),
        ],
        "{label}: not a database of the previous main"
    );
    let ledger_before = ledger(&sim_url).await;

    // The upgrade, by the operator's command.
    let out = cli(&config, &["migrate"]);
    assert!(out.status.success(), "{label}: migrate: {}", text(&out));
    assert!(
        store.pending_migrations().await.unwrap().is_empty(),
        "{label}"
    );

    // nicebill's state, row by row.
    let states: std::collections::HashMap<i64, BillingStateRow> = store
        .run(|c| {
            Ok(billing_state::table
                .select(BillingStateRow::as_select())
                .load(c)?)
        })
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.subscription_id, s))
        .collect();
    for r in &rows {
        let what = format!("{label}: {}", r.name);
        let merchant = store.subscription(r.id).await.unwrap().unwrap();
        assert_eq!(
            (merchant.bid.as_str(), merchant.amount, merchant.anchor_at),
            (r.bid.as_str(), Some(r.amount), Some(r.anchor)),
            "{what}"
        );
        let expected_merchant = match r.status {
            "past_due" | "card_invalid" | "ended" => "active",
            other => other,
        };
        assert_eq!(merchant.merchant_status, expected_merchant, "{what}");
        let Some(state) = states.get(&r.id) else {
            assert_eq!(r.seen_status, None, "{what}: no billing_state");
            continue;
        };
        assert_eq!(
            (
                state.status.as_str(),
                state.status_reason.as_deref(),
                state.next_cycle,
                state.next_charge_at,
                state.cycle_attempts,
                state.cycle_declines,
                state.paused_since,
            ),
            (
                r.status,
                r.reason,
                r.next_cycle,
                r.next_charge_at,
                r.attempts,
                r.declines,
                r.paused_since,
            ),
            "{what}"
        );
        assert_eq!(
            (state.seen_status.as_deref(), state.seen_bid.as_deref()),
            (Some(expected_merchant), Some(r.bid.as_str())),
            "{what}"
        );
        assert_eq!(state.claimed_by, None, "{what}");
    }
    assert!(!states.contains_key(&109), "{label}");
    // Only the row nicebill had not looked at yet waits to be noticed.
    let queued: Vec<i64> = store
        .run(|c| {
            Ok(subscription_changes::table
                .select(subscription_changes::subscription_id)
                .load(c)?)
        })
        .await
        .unwrap();
    assert_eq!(queued, vec![109], "{label}");
    // The charges: each with the billkey it used; the old bug's pending attempt beside an
    // approval is not_charged with a late check due; the other pending ones stay.
    let all = store.charges(None).await.unwrap();
    assert_eq!(all.len(), charges.len(), "{label}");
    for ch in &all {
        let what = format!("{label}: {}", ch.moid);
        assert_eq!(
            ch.bid.as_deref(),
            Some(bids[&ch.subscription_id].as_str()),
            "{what}"
        );
        assert_eq!(ch.tid.as_deref(), Some(tids[&ch.moid].as_str()), "{what}");
        let old = charges
            .iter()
            .find(|o| format!("S{}-C{}-A{}", o.sub, o.cycle, o.attempt) == ch.moid)
            .unwrap();
        let beside_approval = old.state == "pending" && old.attempt == 2;
        if beside_approval {
            assert_eq!(ch.state, "not_charged", "{what}");
            assert!(ch.late_check_at.is_some(), "{what}: no late check due");
            assert_eq!(ch.check_after, None, "{what}");
            assert!(
                ch.error.as_deref().is_some_and(|e| e.contains("upgrade")),
                "{what}: {:?}",
                ch.error
            );
        } else {
            assert_eq!(ch.state, old.state, "{what}");
            assert_eq!(ch.late_check_at, None, "{what}");
        }
    }
    // The pending removal, as it was.
    let removals = store.removals().await.unwrap();
    assert_eq!(
        removals
            .iter()
            .map(|r| (
                r.subscription_id,
                r.bid.as_str(),
                r.reason.as_str(),
                r.state.as_str(),
                r.attempts,
                r.result_msg.as_deref(),
                r.held_by,
                r.created_at
            ))
            .collect::<Vec<_>>(),
        vec![(
            104,
            bids[&104].as_str(),
            "cancelled",
            "pending",
            2,
            Some("connection reset"),
            None,
            t - h(1)
        )],
        "{label}"
    );
    let events = store.events(None).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| (e.subscription_id, e.kind.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (Some(101), "cycle_skipped"),
            (Some(103), "paused"),
            (Some(108), "invalid")
        ],
        "{label}"
    );

    // A pass right after the upgrade: the new row is charged, the lost answer is found
    // approved, the old double is recorded as one, and nothing is charged twice.
    run_once(&config, label);
    let after = ledger(&sim_url).await;
    let mut new: Vec<String> = after
        .iter()
        .filter(|e| !ledger_before.contains(e))
        .map(|e| e.moid.clone())
        .collect();
    new.sort();
    assert_eq!(new, vec!["S109-C1-A1".to_owned()], "{label}");
    let by_moid = |moid: &'static str| async move {
        store
            .charges(None)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.moid == moid)
            .unwrap_or_else(|| panic!("no charge {moid}"))
    };
    assert_eq!(by_moid("S110-C1-A1").await.state, "approved", "{label}");
    let double = by_moid("S111-C1-A2").await;
    assert_eq!(double.state, "double", "{label}: {double:?}");
    let double_events: Vec<_> = store
        .events(Some(111))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "double_charge")
        .collect();
    assert_eq!(double_events.len(), 1, "{label}");
    for moid in ["S111-C1-A1", "S111-C1-A2"] {
        assert!(
            double_events[0].detail.contains(&tids[moid]),
            "{label}: {:?}",
            double_events[0].detail
        );
    }
    let rewound = by_moid("S112-C1-A2").await;
    assert_eq!(
        (rewound.state.as_str(), rewound.late_check_at),
        ("not_charged", None),
        "{label}: {rewound:?}"
    );
    assert_eq!(
        unresolved_left(store).await,
        Vec::<String>::new(),
        "{label}"
    );
    for (id, status, next_cycle) in [
        (101, "active", 2),
        (102, "active", 1),
        (103, "paused", 2),
        (104, "cancelled", 2),
        (105, "past_due", 1),
        (106, "card_invalid", 1),
        (107, "ended", 2),
        (109, "active", 2),
        (110, "active", 2),
        (111, "active", 2),
        (112, "active", 2),
    ] {
        let s = store
            .billing_state(SubscriptionId(id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (s.status.as_str(), s.next_cycle),
            (status, Some(Cycle(next_cycle))),
            "{label}: {id}"
        );
    }
    let removal = &store.removals().await.unwrap()[0];
    assert_eq!(
        (
            removal.state.as_str(),
            removal.result_code.as_deref(),
            removal.attempts
        ),
        ("done", Some("F101"), 3),
        "{label}"
    );
}
