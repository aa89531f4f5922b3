//! A year of monthly billing under a fixed clock, on SQLite and PostgreSQL: a month-end
//! anchor, a decline that recovers in dunning, a permanent card failure, a pause and resume,
//! a cancellation that removes the billkey. The simulator's ledger must equal the expected
//! charges exactly.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Duration;
use nicebill::billing::engine::{Engine, EngineSettings};
use nicebill::billing::plan::Policy;
use nicebill::clock::{Clock, ManualClock};
use nicebill::gateway::ApiKind;
use nicebill::sim::{SimConfig, SimHandle};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_year_of_monthly_billing() {
    for api in apis() {
        for db in databases("story").await {
            story(db, api).await;
        }
    }
}

async fn story(db: TestDb, api: ApiKind) {
    let label = format!("{} on {api}", db.label);
    let clock = ManualClock::new(kst("2027-01-01 10:00"));
    let mut sim_config = SimConfig::new(([127, 0, 0, 1], 0).into());
    sim_config.clock = Arc::new(clock.clone());
    let sim = SimHandle::start(sim_config).await.unwrap();
    let gateway = gateway_for(api, &sim.base_url(), Arc::new(clock.clone()));
    let store = db.store.clone();

    let month_end = issue_on(&gateway, "9410123456780000", "story-a").await;
    let recovers = issue_on(&gateway, "4000000000000005", "story-b").await;
    let lost = issue_on(&gateway, "4000000000000004", "story-c").await;
    let paused = issue_on(&gateway, "4000000000000011", "story-d").await;
    let cancelled = issue_on(&gateway, "4000000000000012", "story-e").await;

    let a = store
        .insert_subscription(monthly(
            "a-month-end",
            &month_end,
            9_900,
            kst("2027-01-31 09:00"),
        ))
        .await
        .unwrap();
    let b = store
        .insert_subscription(monthly(
            "b-recovers",
            &recovers,
            4_900,
            kst("2027-01-05 09:00"),
        ))
        .await
        .unwrap();
    let c = store
        .insert_subscription(monthly(
            "c-lost-card",
            &lost,
            1_000,
            kst("2027-01-07 09:00"),
        ))
        .await
        .unwrap();
    let d = store
        .insert_subscription(monthly("d-paused", &paused, 2_000, kst("2027-01-10 09:00")))
        .await
        .unwrap();
    let e = store
        .insert_subscription(monthly(
            "e-cancelled",
            &cancelled,
            3_000,
            kst("2027-01-15 09:00"),
        ))
        .await
        .unwrap();

    let mut engine_settings = EngineSettings::new(
        "story-1".into(),
        Policy::default(),
        std::time::Duration::from_secs(4),
    );
    engine_settings.concurrency = 3;
    engine_settings.batch = 3;
    let engine = Engine::new(
        store.clone(),
        gateway,
        Arc::new(clock.clone()),
        engine_settings,
    );

    // Daily passes at 10:00 Korea time, through 2027-12-31.
    for day in 0..365 {
        let today = kst("2027-01-01 10:00") + Duration::days(day);
        clock.set(today);
        let date = today
            .with_timezone(&chrono_tz::Asia::Seoul)
            .format("%m-%d")
            .to_string();
        match date.as_str() {
            "03-20" => assert_eq!(store.set_status(d, "paused").await.unwrap(), 1),
            "05-20" => {
                store.set_status(d, "active").await.unwrap();
                store.set_status(e, "cancelled").await.unwrap();
            }
            _ => {}
        }
        engine
            .pass()
            .await
            .unwrap_or_else(|err| panic!("{label}: pass on {date}: {err}"));
    }

    // Expected approvals: (subscription, cycle, attempt) → the sim's ledger by Moid.
    let mut expected: Vec<String> = Vec::new();
    for cycle in 1..=12 {
        expected.push(format!("S{a}-C{cycle}-A1"));
        expected.push(format!("S{b}-C{cycle}-A2"));
    }
    for cycle in [1, 2, 3, 6, 7, 8, 9, 10, 11, 12] {
        expected.push(format!("S{d}-C{cycle}-A1"));
    }
    for cycle in 1..=5 {
        expected.push(format!("S{e}-C{cycle}-A1"));
    }
    let ledger = sim.ledger();
    let mut got: Vec<String> = ledger.iter().map(|l| l.moid.clone()).collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "{label}: the simulator's ledger");

    // Month ends never drift.
    let a_dates: Vec<String> = ledger
        .iter()
        .filter(|l| l.moid.starts_with(&format!("S{a}-")))
        .map(|l| {
            l.approved_at
                .with_timezone(&chrono_tz::Asia::Seoul)
                .format("%m-%d")
                .to_string()
        })
        .collect();
    assert_eq!(
        a_dates,
        [
            "01-31", "02-28", "03-31", "04-30", "05-31", "06-30", "07-31", "08-31", "09-30",
            "10-31", "11-30", "12-31"
        ],
        "{label}"
    );

    // The charges table agrees with the ledger, attempt by attempt.
    let charges = store.charges(None).await.unwrap();
    let approved: Vec<&String> = charges
        .iter()
        .filter(|c| c.state == "approved")
        .map(|c| &c.moid)
        .collect();
    assert_eq!(approved.len(), expected.len(), "{label}");
    for l in &ledger {
        let row = charges
            .iter()
            .find(|c| c.tid.as_deref() == Some(l.tid.as_str()))
            .unwrap_or_else(|| panic!("{label}: ledger TID {} not in charges", l.tid));
        assert_eq!(
            (row.state.as_str(), &row.moid, row.amount),
            ("approved", &l.moid, l.amount),
            "{label}"
        );
    }
    assert!(
        charges
            .iter()
            .all(|c| c.state != "pending" && c.state != "unknown"),
        "{label}: unresolved attempts left"
    );
    let declines = charges
        .iter()
        .filter(|c| c.subscription_id == b && c.state == "declined")
        .count();
    assert_eq!(
        declines, 12,
        "{label}: one decline per cycle for the recovering card"
    );

    // Statuses and billkey removal.
    let status: BTreeMap<i64, String> = store
        .subscriptions()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.status))
        .collect();
    assert_eq!(status[&a], "active", "{label}");
    assert_eq!(status[&c], "card_invalid", "{label}");
    assert_eq!(status[&d], "active", "{label}");
    assert_eq!(status[&e], "cancelled", "{label}");
    let removals = store.removals().await.unwrap();
    assert_eq!(removals.len(), 1, "{label}");
    assert_eq!(
        (removals[0].subscription_id, removals[0].state.as_str()),
        (e, "done"),
        "{label}"
    );
    let removed = match api {
        ApiKind::Webapi => "F101",
        ApiKind::V1 => "0000",
    };
    assert_eq!(removals[0].result_code.as_deref(), Some(removed), "{label}");
    // Every approval went out on the configured API, under that API's shop.
    let shop = match api {
        ApiKind::Webapi => "nictest04m",
        ApiKind::V1 => V1_SHOP,
    };
    assert!(ledger.iter().all(|l| l.mid == shop), "{label}");
    assert!(charges.iter().all(|c| c.api == api.as_str()), "{label}");
    let d_events: Vec<String> = store
        .events(Some(d))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    // Cycles 4 and 5 came due while paused: one event for the range.
    let d_skipped: Vec<String> = store
        .events(Some(d))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "cycle_skipped")
        .map(|e| e.detail)
        .collect();
    assert_eq!(d_skipped.len(), 1, "{label}: {d_skipped:?}");
    assert!(
        d_skipped[0].starts_with("cycles 4-5 (2 cycles, first due "),
        "{label}: {d_skipped:?}"
    );
    assert!(
        d_events.contains(&"paused".to_owned()) && d_events.contains(&"resumed".to_owned()),
        "{label}"
    );
    let _ = clock.now();
    sim.shutdown().await;
}
