//! The engine's rules, each on SQLite and PostgreSQL: bad rows, several instances, catch-up,
//! end conditions, cancellation (also racing a charge in flight), cancel at period end.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel::prelude::*;
use nicebill::billing::engine::{Engine, EngineSettings};
use nicebill::billing::plan::Policy;
use nicebill::clock::{ManualClock, SharedClock};
use nicebill::gateway::nicepay::{Charset, EdiType, NicepayClient};
use nicebill::schedule::CatchUp;
use nicebill::sim::{SimConfig, SimHandle};
use nicebill::storage::Store;
use nicebill::storage::models::NewSubscription;
use nicebill::storage::schema::subscriptions;
use support::*;

struct World {
    sim: SimHandle,
    client: Arc<NicepayClient>,
    clock: ManualClock,
    store: Store,
    label: &'static str,
}

async fn world(db: &TestDb, start: chrono::DateTime<Utc>) -> World {
    let clock = ManualClock::new(start);
    // The simulator keeps real time: the TIDs it mints for billkeys then never share a second
    // (and so never collide) with the TIDs the engine makes under the frozen test clock.
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
        let clock: SharedClock = Arc::new(self.clock.clone());
        Engine::new(self.store.clone(), self.client.clone(), clock, s)
    }

    async fn add(&self, name: &str, card: &str, edit: impl FnOnce(&mut NewSubscription)) -> i64 {
        let bid = issue(&self.client, card, &format!("bk-{name}")).await;
        let mut row = monthly(
            name,
            &bid,
            5_000,
            self.clock_now() - chrono::Duration::minutes(5),
        );
        edit(&mut row);
        self.store.insert_subscription(row).await.unwrap()
    }

    fn clock_now(&self) -> chrono::DateTime<Utc> {
        use nicebill::clock::Clock;
        self.clock.now()
    }

    fn moids(&self) -> Vec<String> {
        let mut m: Vec<String> = self.sim.ledger().into_iter().map(|l| l.moid).collect();
        m.sort();
        m
    }

    async fn status(&self, id: i64) -> (String, Option<String>) {
        let row = self.store.subscription(id).await.unwrap().unwrap();
        (row.status, row.status_reason)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_never_stop_the_daemon() {
    for db in databases("badrows").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        let good1 = w.add("good-1", "9410123456780000", |_| {}).await;
        type Edit = Box<dyn FnOnce(&mut NewSubscription)>;
        let bad: Vec<(&str, &str, Edit)> = vec![
            ("zero-amount", "amount", Box::new(|r| r.amount = 0)),
            ("negative-amount", "amount", Box::new(|r| r.amount = -5)),
            (
                "huge-amount",
                "amount",
                Box::new(|r| r.amount = 10_000_000_000_000),
            ),
            (
                "long-name",
                "goods_name",
                Box::new(|r| r.goods_name = "가".repeat(20) + "a"),
            ),
            (
                "emoji-name",
                "goods_name",
                Box::new(|r| r.goods_name = "구독 🎉".into()),
            ),
            ("empty-bid", "bid", Box::new(|r| r.bid = String::new())),
            (
                "unknown-status",
                "status",
                Box::new(|r| r.status = "frozen".into()),
            ),
            (
                "bad-unit",
                "interval_unit",
                Box::new(|r| r.interval_unit = "fortnight".into()),
            ),
            (
                "bad-cron",
                "cron",
                Box::new(|r| r.cron = Some("every day".into())),
            ),
            (
                "bad-timezone",
                "timezone",
                Box::new(|r| r.timezone = Some("Mars/Olympus".into())),
            ),
            (
                "zero-count",
                "interval_count",
                Box::new(|r| r.interval_count = 0),
            ),
            (
                "negative-count",
                "interval_count",
                Box::new(|r| r.interval_count = -1),
            ),
            (
                "bad-quota",
                "card_quota",
                Box::new(|r| r.card_quota = "1".into()),
            ),
            (
                "bad-interest",
                "card_interest",
                Box::new(|r| r.card_interest = "yes".into()),
            ),
            (
                "zero-max-cycles",
                "max_cycles",
                Box::new(|r| r.max_cycles = Some(0)),
            ),
        ];
        let mut bad_ids = Vec::new();
        for (name, column, edit) in bad {
            bad_ids.push((w.add(name, "9410123456780000", edit).await, name, column));
        }
        // Well-formed, but NICEPAY knows no such billkey: a permanent card failure, with the
        // gateway's code as the reason.
        let unknown_bid = w
            .add("unknown-bid", "9410123456780000", |r| {
                r.bid = "BIKYnictest04m2601010000009999".into()
            })
            .await;
        let good2 = w.add("good-2", "9410123456780000", |_| {}).await;
        let engine = w.engine("bad-1", Policy::default());
        engine.pass().await.unwrap();
        let (status, reason) = w.status(unknown_bid).await;
        assert_eq!(status, "card_invalid", "{}: {reason:?}", w.label);
        let attempt = w.store.charges(Some(unknown_bid)).await.unwrap();
        assert_eq!(
            (attempt.len(), attempt[0].result_code.as_deref()),
            (1, Some("A126")),
            "{}",
            w.label
        );
        assert_eq!(
            w.moids(),
            vec![format!("S{good1}-C1-A1"), format!("S{good2}-C1-A1")],
            "{}",
            w.label
        );
        for (id, name, column) in bad_ids {
            let (status, reason) = w.status(id).await;
            let reason = reason.unwrap_or_default();
            assert_eq!(status, "invalid", "{}: {name}", w.label);
            assert!(
                reason.starts_with(&format!("{column}:")),
                "{}: {name}: {reason}",
                w.label
            );
            let events = w.store.events(Some(id)).await.unwrap();
            assert!(
                events
                    .iter()
                    .any(|e| e.kind == "invalid" && e.detail == reason),
                "{}: {name}: {events:?}",
                w.label
            );
        }
        // A second pass changes nothing and charges nothing more.
        engine.pass().await.unwrap();
        assert_eq!(w.sim.ledger().len(), 2, "{}", w.label);
        w.sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_work() {
    for db in databases("instances").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        w.sim.set_latency(Duration::from_millis(5));
        let mut ids = Vec::new();
        for i in 0..90 {
            ids.push(
                w.add(&format!("multi-{i}"), "9410123456780000", |_| {})
                    .await,
            );
        }
        // Three engines, each with its own pool and its own client (its own TID generator).
        let mut engines = Vec::new();
        for n in 0..3 {
            let store = Store::open(nicebill::storage::DbUrl::parse(&db.url).unwrap(), 4).unwrap();
            let client = Arc::new(
                NicepayClient::new(
                    settings(&w.sim.base_url(), Charset::EucKr, EdiType::Kv),
                    Arc::new(w.clock.clone()),
                )
                .unwrap(),
            );
            let mut s = EngineSettings::new(
                format!("instance-{n}"),
                Policy::default(),
                Duration::from_secs(4),
            );
            s.concurrency = 4;
            s.batch = 4;
            engines.push(Engine::new(store, client, Arc::new(w.clock.clone()), s));
        }
        // The new rows are noticed first (by one instance: the others skip what it has locked),
        // so that the three passes below compete for the same claims.
        w.store.notice(w.clock_now()).await.unwrap();
        let (a, b, c) = tokio::join!(engines[0].pass(), engines[1].pass(), engines[2].pass());
        let reports = [a.unwrap(), b.unwrap(), c.unwrap()];
        let moids = w.moids();
        let expected: Vec<String> = {
            let mut e: Vec<String> = ids.iter().map(|id| format!("S{id}-C1-A1")).collect();
            e.sort();
            e
        };
        assert_eq!(moids, expected, "{}: every cycle charged once", w.label);
        let charged: usize = reports.iter().map(|r| r.charged).sum();
        assert_eq!(charged, 90, "{}: {reports:?}", w.label);
        if w.label == "postgres" {
            assert!(
                reports.iter().filter(|r| r.charged > 0).count() >= 2,
                "{}: work was not shared: {reports:?}",
                w.label
            );
        }
        w.sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_and_end_conditions() {
    for db in databases("catchup").await {
        let w = world(&db, kst("2027-05-01 10:00")).await;
        // Anchored four months back: only the latest due cycle is charged.
        let latest = w
            .add("latest", "9410123456780000", |r| {
                r.anchor_at = kst("2027-01-15 09:00").naive_utc()
            })
            .await;
        let two_cycles = w
            .add("two-cycles", "9410123456780000", |r| {
                r.anchor_at = kst("2027-04-20 09:00").naive_utc();
                r.max_cycles = Some(2);
            })
            .await;
        let engine = w.engine("catchup-1", Policy::default());
        engine.pass().await.unwrap();
        assert_eq!(
            w.moids(),
            vec![format!("S{latest}-C4-A1"), format!("S{two_cycles}-C1-A1")],
            "{}",
            w.label
        );
        let skipped: Vec<String> = w
            .store
            .events(Some(latest))
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "cycle_skipped")
            .map(|e| e.detail)
            .collect();
        // Cycles 1 to 3 passed over: one event for the range.
        assert_eq!(skipped.len(), 1, "{}: {skipped:?}", w.label);
        assert!(
            skipped[0].starts_with("cycles 1-3 (3 cycles, first due "),
            "{}: {skipped:?}",
            w.label
        );
        // Cycle 2 of the two-cycle plan, then it ends.
        w.clock.set(kst("2027-05-21 10:00"));
        engine.pass().await.unwrap();
        w.clock.set(kst("2027-06-21 10:00"));
        engine.pass().await.unwrap();
        assert_eq!(w.status(two_cycles).await.0, "ended", "{}", w.label);
        let two: Vec<_> = w
            .moids()
            .into_iter()
            .filter(|m| m.starts_with(&format!("S{two_cycles}-")))
            .collect();
        assert_eq!(
            two,
            vec![
                format!("S{two_cycles}-C1-A1"),
                format!("S{two_cycles}-C2-A1")
            ],
            "{}",
            w.label
        );

        // Catch-up "all": every missed cycle, one per pass, never two in one go.
        let all = w
            .add("all", "9410123456780000", |r| {
                r.anchor_at = kst("2027-04-21 09:00").naive_utc()
            })
            .await;
        let policy = Policy {
            catch_up: CatchUp::All,
            ..Policy::default()
        };
        let engine = w.engine("catchup-2", policy);
        engine.pass().await.unwrap();
        let of_all = |m: &Vec<String>| {
            m.iter()
                .filter(|x| x.starts_with(&format!("S{all}-")))
                .count()
        };
        assert_eq!(of_all(&w.moids()), 1, "{}", w.label);
        w.clock.set(kst("2027-06-21 10:02"));
        engine.pass().await.unwrap();
        assert_eq!(of_all(&w.moids()), 2, "{}", w.label);
        w.clock.set(kst("2027-06-21 10:04"));
        engine.pass().await.unwrap();
        assert_eq!(of_all(&w.moids()), 3, "{}: cycles 1-3 by now", w.label);
        w.sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_removes_the_billkey_even_while_a_charge_is_in_flight() {
    for db in databases("cancel").await {
        let w = world(&db, kst("2027-03-01 10:00")).await;
        // Cancelled before it is due: nothing charged, billkey removed.
        let early = w.add("early", "9410123456780000", |_| {}).await;
        w.store.set_status(early, "cancelled").await.unwrap();
        // Cancelled while its approval is in flight: the charge completes and is recorded,
        // then the billkey is removed; nothing after.
        let racing = w.add("racing", "9410123456780000", |_| {}).await;
        w.sim.set_latency(Duration::from_millis(400));
        let engine = w.engine("cancel-1", Policy::default());
        let pass = tokio::spawn({
            let engine = engine.clone();
            async move { engine.pass().await }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        w.store.set_status(racing, "cancelled").await.unwrap();
        pass.await.unwrap().unwrap();
        w.sim.set_latency(Duration::ZERO);
        engine.pass().await.unwrap();
        assert_eq!(w.moids(), vec![format!("S{racing}-C1-A1")], "{}", w.label);
        let removals = w.store.removals().await.unwrap();
        let done: Vec<(i64, &str)> = removals
            .iter()
            .map(|r| (r.subscription_id, r.state.as_str()))
            .collect();
        assert_eq!(done, vec![(early, "done"), (racing, "done")], "{}", w.label);
        // A month later nothing more is charged.
        w.clock.set(kst("2027-04-02 10:00"));
        engine.pass().await.unwrap();
        assert_eq!(w.sim.ledger().len(), 1, "{}", w.label);

        // Cancel at period end: cycle 1 is charged, cycle 2 is not; the billkey goes.
        let period = w.add("period", "9410123456780000", |_| {}).await;
        engine.pass().await.unwrap();
        w.store
            .run(move |c| {
                diesel::update(subscriptions::table.find(period))
                    .set(subscriptions::cancel_at_period_end.eq(true))
                    .execute(c)
                    .map_err(Into::into)
            })
            .await
            .unwrap();
        w.clock.set(kst("2027-05-03 10:00"));
        engine.pass().await.unwrap();
        let (status, reason) = w.status(period).await;
        assert_eq!(status, "cancelled", "{}: {reason:?}", w.label);
        let of_period: Vec<_> = w
            .moids()
            .into_iter()
            .filter(|m| m.starts_with(&format!("S{period}-")))
            .collect();
        assert_eq!(of_period, vec![format!("S{period}-C1-A1")], "{}", w.label);
        let removed = w
            .store
            .removals()
            .await
            .unwrap()
            .into_iter()
            .any(|r| r.subscription_id == period && r.state == "done");
        assert!(removed, "{}", w.label);
        w.sim.shutdown().await;
    }
}
