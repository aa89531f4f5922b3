//! The engine on NICEPAY v1, against the simulator, on SQLite and PostgreSQL: every fault an
//! approval can meet ends as exactly one charge for the cycle. An approval whose answer was
//! lost but which NICEPAY made is found by the lookup by orderId and is **never netcancelled**;
//! one that never reached NICEPAY is netcancelled (nothing to cancel), found absent, and the
//! cycle is charged under a new orderId.

mod support;

use std::sync::Arc;
use std::time::Duration;

use nicebill::billing::engine::{Engine, EngineSettings};
use nicebill::billing::plan::Policy;
use nicebill::clock::{Clock, ManualClock};
use nicebill::gateway::nicepay::{Api, TxState};
use nicebill::gateway::nicepay_v1::V1Settings;
use nicebill::gateway::{ApiKind, Gateway};
use nicebill::sim::{FaultMode, FaultRule, LedgerState, SimConfig, SimHandle};
use support::*;

/// (fault on the approval, whether NICEPAY made the approval before the answer went wrong)
const FAULTS: &[(FaultMode, bool)] = &[
    (FaultMode::Http500, false),
    (FaultMode::DropBefore, false),
    (FaultMode::DropAfter, true),
    (FaultMode::HangAfter, true),
    (FaultMode::Garbage, true),
    (FaultMode::BadSignature, true),
    (FaultMode::Oversized, true),
    (FaultMode::LongResultMsg, true),
];

fn netcancels(sim: &SimHandle) -> u64 {
    sim.request_counts()
        .get("v1_netcancel")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_approval_fault_ends_as_one_charge() {
    for db in databases("v1_faults").await {
        let label = db.label;
        let clock = ManualClock::new(kst("2027-03-02 10:00"));
        let mut config = SimConfig::new(([127, 0, 0, 1], 0).into());
        config.clock = Arc::new(clock.clone());
        let sim = SimHandle::start(config).await.unwrap();
        let mut settings: V1Settings = v1_settings(&sim.base_url());
        settings.read_timeout = Duration::from_millis(500);
        let gateway = Gateway::v1(settings, Arc::new(clock.clone())).unwrap();
        let bid = issue_on(&gateway, "9410123456780000", "v1-fault-issue").await;
        let mut engine_settings = EngineSettings::new(
            "v1-faults".into(),
            Policy::default(),
            Duration::from_secs(2),
        );
        engine_settings.concurrency = 1;
        engine_settings.batch = 1;
        let store = db.store.clone();
        let engine = Engine::new(
            store.clone(),
            gateway,
            Arc::new(clock.clone()),
            engine_settings,
        );
        for (mode, made) in FAULTS {
            let first = clock.now();
            let id = store
                .insert_subscription(monthly(
                    &format!("v1-{}", mode.as_str()),
                    &bid,
                    1_000,
                    first,
                ))
                .await
                .unwrap();
            let before = netcancels(&sim);
            sim.set_faults(vec![FaultRule {
                mode: *mode,
                api: Some(Api::Approve),
                count: Some(1),
                probability: 1.0,
            }]);
            engine.pass().await.unwrap();
            // Let every window pass: the attempt settles, a new one goes out if needed.
            for _ in 0..8 {
                clock.advance(chrono::Duration::minutes(10));
                engine.pass().await.unwrap();
            }
            sim.set_faults(vec![]);
            let what = format!("{label}: {mode:?}");
            let ours = format!("S{id}-C1-");
            let ledger: Vec<_> = sim
                .ledger()
                .into_iter()
                .filter(|l| l.moid.starts_with(&ours))
                .collect();
            assert_eq!(ledger.len(), 1, "{what}: {ledger:?}");
            assert_eq!(ledger[0].state, LedgerState::Approved, "{what}: {ledger:?}");
            assert_eq!(ledger[0].mid, V1_SHOP, "{what}");
            let charges: Vec<_> = store
                .charges(Some(id))
                .await
                .unwrap()
                .into_iter()
                .filter(|c| c.cycle == 1)
                .collect();
            let approved: Vec<_> = charges.iter().filter(|c| c.state == "approved").collect();
            assert_eq!(approved.len(), 1, "{what}: {charges:?}");
            assert_eq!(
                approved[0].tid.as_deref(),
                Some(ledger[0].tid.as_str()),
                "{what}"
            );
            assert_eq!(approved[0].moid, ledger[0].moid, "{what}");
            assert!(
                charges
                    .iter()
                    .all(|c| c.state != "pending" && c.state != "unknown" && c.api == "v1"),
                "{what}: {charges:?}"
            );
            let sent_netcancels = netcancels(&sim) - before;
            if *made {
                // The approval was made: the lookup by orderId finds it, nothing is cancelled.
                assert_eq!(ledger[0].moid, format!("{ours}A1"), "{what}");
                assert_eq!(sent_netcancels, 0, "{what}: an approval was netcancelled");
            } else {
                // Never reached NICEPAY: netcancelled (nothing to cancel), then charged anew.
                assert_eq!(ledger[0].moid, format!("{ours}A2"), "{what}");
                assert!(sent_netcancels >= 1, "{what}: no netcancel was sent");
                let a1 = charges.iter().find(|c| c.attempt == 1).unwrap();
                assert_eq!(a1.state, "not_charged", "{what}: {a1:?}");
            }
            store.set_status(id, "cancelled").await.unwrap();
        }
        sim.shutdown().await;
    }
}

/// The story's operator view: on v1 the gateway answers in the same vocabulary.
#[tokio::test]
async fn lookups_by_tid_and_order_tell_the_same_truth() {
    let clock = ManualClock::new(kst("2027-03-02 23:58"));
    let mut config = SimConfig::new(([127, 0, 0, 1], 0).into());
    config.clock = Arc::new(clock.clone());
    let sim = SimHandle::start(config).await.unwrap();
    let gateway = gateway_for(ApiKind::V1, &sim.base_url(), Arc::new(clock.clone()));
    let bid = issue_on(&gateway, "9410123456780000", "v1-look-issue").await;
    let request = nicebill::gateway::ChargeRequest {
        bid,
        tid: None,
        moid: nicebill::domain::Moid::new("v1-look-1").unwrap(),
        amount: nicebill::domain::Krw::positive(2_500).unwrap(),
        goods_name: "월간 구독".into(),
        card_quota: "00".into(),
        interest_free: false,
        buyer: Default::default(),
    };
    let committed_at = clock.now();
    // Sent two minutes later, after KST midnight: NICEPAY files it under the next day.
    clock.advance(chrono::Duration::minutes(3));
    let reply = gateway.approve_by(&request, None).await.unwrap();
    assert_eq!(reply.class, nicebill::gateway::Class::Approved, "{reply:?}");
    let approval = reply.data.unwrap();
    assert_eq!(reply.api, Api::Approve);
    assert_eq!(reply.fields.get("status"), Some("paid"));
    let by_tid = gateway.status(&approval.tid).await.unwrap();
    let by_order = gateway
        .look_up(&nicebill::gateway::AttemptRef {
            tid: None,
            moid: "v1-look-1",
            amount: 2_500,
            committed_at,
        })
        .await
        .unwrap();
    for r in [&by_tid, &by_order] {
        let s = r.data.as_ref().unwrap();
        assert_eq!(s.state, nicebill::gateway::nicepay::TxState::Approved);
        assert_eq!(s.tid.as_ref(), Some(&approval.tid));
        assert_eq!(s.moid.as_deref(), Some("v1-look-1"));
    }
    assert_eq!(
        netcancels(&sim),
        0,
        "found on the next day's date: no netcancel"
    );
    sim.shutdown().await;
}

/// A row that fits the web API's limits but not v1's is refused before anything is sent, the
/// column named; a telephone number with dashes is sent as its digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_held_to_v1_limits_before_sending() {
    for db in databases("v1_limits").await {
        let label = db.label;
        let clock = ManualClock::new(kst("2027-03-02 10:00"));
        let mut config = SimConfig::new(([127, 0, 0, 1], 0).into());
        config.clock = Arc::new(clock.clone());
        let sim = SimHandle::start(config).await.unwrap();
        let gateway = gateway_for(ApiKind::V1, &sim.base_url(), Arc::new(clock.clone()));
        let bid = issue_on(&gateway, "9410123456780000", "v1-limits-issue").await;
        let store = db.store.clone();
        let mut long = monthly("v1-long-name", &bid, 1_000, clock.now());
        // 14 Hangul syllables: 28 bytes in EUC-KR, 42 in UTF-8 (v1 allows 40).
        long.goods_name = "가".repeat(14);
        let long = store.insert_subscription(long).await.unwrap();
        let mut dashed = monthly("v1-dashed-tel", &bid, 1_000, clock.now());
        dashed.buyer_tel = Some("010-1234-5678".into());
        let dashed = store.insert_subscription(dashed).await.unwrap();
        let engine = Engine::new(
            store.clone(),
            gateway,
            Arc::new(clock.clone()),
            EngineSettings::new(
                "v1-limits".into(),
                Policy::default(),
                Duration::from_secs(2),
            ),
        );
        engine.pass().await.unwrap();
        let subs = store.subscriptions().await.unwrap();
        let s = subs.iter().find(|s| s.id == long).unwrap();
        assert_eq!(s.status, "invalid", "{label}: {s:?}");
        assert!(
            s.status_reason
                .as_deref()
                .unwrap_or("")
                .contains("goods_name"),
            "{label}: {s:?}"
        );
        let ledger = sim.ledger();
        assert_eq!(ledger.len(), 1, "{label}: {ledger:?}");
        assert_eq!(ledger[0].moid, format!("S{dashed}-C1-A1"), "{label}");
        assert_eq!(
            ledger[0].buyer_tel.as_deref(),
            Some("01012345678"),
            "{label}"
        );
        assert!(
            store.charges(Some(long)).await.unwrap().is_empty(),
            "{label}"
        );
        sim.shutdown().await;
    }
}

/// Each fault on a v1 approval has its class, and the lookup procedure then tells the truth:
/// approved when NICEPAY made the approval (no netcancel), not found when it did not.
#[tokio::test]
async fn each_fault_has_its_class_and_the_lookup_tells_the_truth() {
    let clock = ManualClock::new(kst("2027-03-02 10:00"));
    let mut config = SimConfig::new(([127, 0, 0, 1], 0).into());
    config.clock = Arc::new(clock.clone());
    let sim = SimHandle::start(config).await.unwrap();
    let mut settings = v1_settings(&sim.base_url());
    settings.read_timeout = Duration::from_millis(400);
    let gateway = Gateway::v1(settings, Arc::new(clock.clone())).unwrap();
    let bid = issue_on(&gateway, "9410123456780000", "v1-class-issue").await;
    for (i, (mode, made)) in FAULTS.iter().enumerate() {
        let moid = format!("v1-class-{i}");
        let request = nicebill::gateway::ChargeRequest {
            bid: bid.clone(),
            tid: None,
            moid: nicebill::domain::Moid::new(moid.as_str()).unwrap(),
            amount: nicebill::domain::Krw::positive(1_000).unwrap(),
            goods_name: "월간 구독".into(),
            card_quota: "00".into(),
            interest_free: false,
            buyer: Default::default(),
        };
        sim.set_faults(vec![FaultRule {
            mode: *mode,
            api: Some(Api::Approve),
            count: Some(1),
            probability: 1.0,
        }]);
        let result = gateway.approve_by(&request, None).await;
        let class = match &result {
            Ok(r) => r.class,
            Err(e) => e.class(),
        };
        // Only a long message leaves the answer whole; everything else is unknown.
        let want = if *mode == FaultMode::LongResultMsg {
            nicebill::gateway::Class::Approved
        } else {
            nicebill::gateway::Class::Unknown
        };
        assert_eq!(class, want, "{mode:?}: {result:?}");
        let before = netcancels(&sim);
        let looked = gateway
            .look_up(&nicebill::gateway::AttemptRef {
                tid: None,
                moid: &moid,
                amount: 1_000,
                committed_at: clock.now(),
            })
            .await
            .unwrap();
        let state = looked.data.map(|s| s.state);
        if *made {
            assert_eq!(state, Some(TxState::Approved), "{mode:?}");
            assert_eq!(netcancels(&sim), before, "{mode:?}: netcancelled");
        } else {
            assert_eq!(state, Some(TxState::NotFound), "{mode:?}");
            assert_eq!(netcancels(&sim), before + 1, "{mode:?}");
        }
    }
    // A lookup whose answer is garbled settles nothing.
    sim.set_faults(vec![FaultRule {
        mode: FaultMode::BadSignature,
        api: Some(Api::Status),
        count: Some(1),
        probability: 1.0,
    }]);
    let looked = gateway
        .look_up(&nicebill::gateway::AttemptRef {
            tid: None,
            moid: "v1-class-2",
            amount: 1_000,
            committed_at: clock.now(),
        })
        .await
        .unwrap();
    assert!(looked.data.is_none(), "{looked:?}");
    assert_eq!(looked.class, nicebill::gateway::Class::Unknown);
    sim.shutdown().await;
}
