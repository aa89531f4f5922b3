//! NICEPAY's limits, on SQLite and PostgreSQL: the simulator refuses requests above a rate (as
//! NICEPAY answers V003 or HTTP 429 when overloaded).
//!
//! - Unthrottled by nicebill, the engine meets the refusals, halves its concurrency
//!   (AIMD), grows it back, and still charges every subscription exactly once.
//! - With `[nicepay] max_requests_per_second` under the simulator's limit, nothing is ever
//!   refused, and everything is charged once.

mod support;

use std::sync::Arc;
use std::time::Duration;

use nicebill::billing::engine::{Engine, EngineSettings};
use nicebill::billing::plan::Policy;
use nicebill::clock::SystemClock;
use nicebill::gateway::nicepay::{Charset, EdiType, NicepayClient};
use nicebill::retry::RetryPolicy;
use nicebill::sim::{SimConfig, SimHandle, Throttle, ThrottleAnswer};
use support::campaign::{card_numbers, insert_due, issue_billkeys, verdict};
use support::*;

/// An engine with `concurrency` approvals in flight, short windows (an attempt refused by
/// the throttle is looked up, concluded not charged and sent again within seconds), and the
/// client `max_rps` requests per second at most.
fn engine(db: &TestDb, sim: &SimHandle, concurrency: usize, max_rps: Option<u32>) -> Engine {
    let mut client = settings(&sim.base_url(), Charset::Utf8, EdiType::Json);
    client.connect_timeout = Duration::from_secs(1);
    client.read_timeout = Duration::from_secs(1);
    client.max_requests_per_second = max_rps.and_then(std::num::NonZeroU32::new);
    let clock = Arc::new(SystemClock);
    let client = Arc::new(NicepayClient::new(client, clock.clone()).unwrap());
    let policy = Policy {
        resend_after: Duration::from_secs(1),
        request_error_retry: Duration::from_secs(1),
        ..Policy::default()
    };
    let mut s = EngineSettings::new("limits".into(), policy, Duration::from_secs(2));
    s.concurrency = concurrency;
    s.batch = concurrency as i64 * 2;
    s.settle_margin = Duration::from_secs(1);
    s.transient = RetryPolicy::new(
        Duration::from_millis(10),
        Duration::from_millis(50),
        Duration::from_millis(200),
    );
    s.lookup_retry = RetryPolicy::new(
        Duration::from_millis(200),
        Duration::from_secs(1),
        Duration::ZERO,
    );
    s.throttle_pause = Duration::from_millis(200);
    Engine::new(db.store.clone(), client, clock, s)
}

/// Passes until `n` charges are approved (or a minute and a half has gone by).
async fn charge_all(label: &str, engine: &Engine, db: &TestDb, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        engine.pass().await.unwrap();
        let approved = support::campaign::approved_count(&db.store).await;
        if approved >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{label}: {approved} of {n} charged; {}",
            support::campaign::describe_uncharged(&db.store).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_nicepay_cuts_concurrency_and_everything_is_charged_once() {
    const N: usize = 120;
    let answers = [ThrottleAnswer::V003, ThrottleAnswer::Http429];
    for (db, answer) in databases("limits_aimd").await.into_iter().zip(answers) {
        let label = db.label;
        let mut config = SimConfig::new(([127, 0, 0, 1], 0).into());
        config.latency = Duration::from_millis(20);
        let sim = SimHandle::start(config).await.unwrap();
        let bids = issue_billkeys(
            &sim.base_url(),
            &card_numbers(510 + u32::from(answer == ThrottleAnswer::Http429), N),
            label,
        )
        .await;
        // At most 40 requests in any second; the engine would send about 1,600.
        sim.set_throttle(Some(Throttle {
            per_second: 40,
            answer,
        }));
        insert_due(&db.store, "aimd", &bids).await;
        let engine = engine(&db, &sim, 32, None);
        charge_all(label, &engine, &db, N).await;

        let tally = verdict(label, &db.store, &sim.ledger()).await;
        assert_eq!(tally.approved, N, "{label}: {tally:?}");
        let throttled = sim.request_counts().get("throttled").copied().unwrap_or(0);
        let figures = engine.concurrency();
        let stats = engine.stats();
        let seen = stats.throttled.load(std::sync::atomic::Ordering::Relaxed);
        assert!(throttled > 0, "{label}: the simulator never throttled");
        assert!(seen > 0, "{label}: the engine never saw a throttle answer");
        assert!(figures.cuts >= 1, "{label}: {figures:?}");
        assert!(
            figures.limit <= figures.ceiling && figures.ceiling == 32,
            "{label}: {figures:?}"
        );
        eprintln!(
            "{label} ({answer:?}): {throttled} requests throttled; {} cuts, limit now {} of {}",
            figures.cuts, figures.limit, figures.ceiling
        );
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_max_requests_per_second_nothing_is_throttled() {
    const N: usize = 60;
    for db in databases("limits_rate").await {
        let label = db.label;
        let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let bids = issue_billkeys(&sim.base_url(), &card_numbers(520, N), label).await;
        sim.set_throttle(Some(Throttle {
            per_second: 40,
            answer: ThrottleAnswer::V003,
        }));
        insert_due(&db.store, "rate", &bids).await;
        // A token bucket of 30 a second (holding a tenth of a second's worth): at most 33 in
        // any second, under the simulator's 40, however many are in flight.
        let engine = engine(&db, &sim, 32, Some(30));
        charge_all(label, &engine, &db, N).await;
        let tally = verdict(label, &db.store, &sim.ledger()).await;
        assert_eq!(tally.approved, N, "{label}: {tally:?}");
        assert_eq!(
            sim.request_counts().get("throttled"),
            None,
            "{label}: a request was throttled"
        );
        assert_eq!(engine.concurrency().cuts, 0, "{label}");
        sim.shutdown().await;
    }
}
