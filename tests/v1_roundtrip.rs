//! Every call of NICEPAY v1 through `Gateway`, against the simulator, with Basic and with
//! Bearer authentication: issue, approve, lookups by tid and by orderId, a partial cancel and
//! the rest, billkey removal, and a charge on the removed billkey. With Bearer the simulator's
//! token expires mid-way (its clock moves on while the client still holds the token): the
//! client renews it once on the 401 and goes on.

mod support;

use std::sync::Arc;

use nicebill::clock::{Clock, ManualClock};
use nicebill::domain::{Krw, Moid};
use nicebill::gateway::nicepay::{Api, CancelRequest, TxState};
use nicebill::gateway::nicepay_v1::Auth;
use nicebill::gateway::{ChargeRequest, Class, Gateway};
use nicebill::sim::{LedgerState, SimConfig, SimHandle};
use support::*;

fn charge(bid: &nicebill::domain::Bid, moid: &str, amount: i64) -> ChargeRequest {
    ChargeRequest {
        bid: bid.clone(),
        tid: None,
        moid: Moid::new(moid).unwrap(),
        amount: Krw::positive(amount).unwrap(),
        goods_name: "월간 구독 (프리미엄)".into(),
        card_quota: "00".into(),
        interest_free: false,
        buyer: nicebill::gateway::nicepay::Buyer {
            name: Some("홍길동".into()),
            email: Some("buyer@example.com".into()),
            tel: Some("01012345678".into()),
        },
    }
}

#[tokio::test]
async fn every_call_round_trips_with_basic_and_bearer() {
    for auth in [Auth::Basic, Auth::Bearer] {
        let what = auth.as_str();
        let clock = ManualClock::new(kst("2027-05-10 14:00"));
        let mut config = SimConfig::new(([127, 0, 0, 1], 0).into());
        config.clock = Arc::new(clock.clone());
        let sim = SimHandle::start(config).await.unwrap();
        let mut settings = v1_settings(&sim.base_url());
        settings.auth = auth;
        let gateway = Gateway::v1(settings, Arc::new(clock.clone())).unwrap();

        let bid = issue_on(&gateway, "9410123456780000", &format!("rt-{what}-bk")).await;
        let moid = format!("rt-{what}-1");
        let reply = gateway
            .approve_by(&charge(&bid, &moid, 10_000), None)
            .await
            .unwrap();
        assert_eq!(
            (reply.api, reply.class),
            (Api::Approve, Class::Approved),
            "{what}: {reply:?}"
        );
        let approval = reply.data.unwrap();
        assert_eq!(approval.amount.value(), 10_000);
        assert!(approval.auth_code.is_some(), "{what}: {approval:?}");
        let ledger = sim.ledger();
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger[0].tid, approval.tid.as_str());
        assert_eq!(ledger[0].buyer_tel.as_deref(), Some("01012345678"));

        let by_tid = gateway.status(&approval.tid).await.unwrap();
        let s = by_tid.data.unwrap();
        assert_eq!(
            (s.state, s.moid.as_deref(), s.amount.map(Krw::value)),
            (TxState::Approved, Some(moid.as_str()), Some(10_000)),
            "{what}"
        );
        let by_order = gateway
            .status_by_order(&Moid::new(moid.as_str()).unwrap(), clock.now())
            .await
            .unwrap();
        assert_eq!(
            by_order.data.map(|s| (s.state, s.tid)),
            Some((TxState::Approved, Some(approval.tid.clone()))),
            "{what}"
        );

        // The simulator's clock moves past the token's life; the client's cache does not know.
        clock.advance(chrono::Duration::minutes(31));

        let partial = gateway
            .cancel(&CancelRequest {
                tid: approval.tid.clone(),
                moid: Moid::new(format!("rt-{what}-c1")).unwrap(),
                amount: Krw::positive(3_000).unwrap(),
                reason: "고객 요청".into(),
                partial: true,
                mall_reserved: None,
            })
            .await
            .unwrap();
        assert_eq!(partial.class, Class::Approved, "{what}: {partial:?}");
        let c = partial.data.unwrap();
        assert_eq!(
            (c.cancel_amount.value(), c.remain_amount.map(Krw::value)),
            (3_000, Some(7_000)),
            "{what}"
        );
        let rest = gateway
            .cancel(&CancelRequest {
                tid: approval.tid.clone(),
                moid: Moid::new(format!("rt-{what}-c2")).unwrap(),
                amount: Krw::positive(7_000).unwrap(),
                reason: "고객 요청".into(),
                partial: false,
                mall_reserved: None,
            })
            .await
            .unwrap();
        assert_eq!(rest.class, Class::Approved, "{what}: {rest:?}");
        assert_eq!(rest.data.unwrap().cancel_amount.value(), 7_000, "{what}");
        let after = gateway.status(&approval.tid).await.unwrap();
        assert_eq!(after.data.map(|s| s.state), Some(TxState::Cancelled));
        assert_eq!(sim.ledger()[0].state, LedgerState::Cancelled);

        let removed = gateway
            .remove_billkey(&bid, &Moid::new(format!("rt-{what}-rm")).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (removed.api, removed.class),
            (Api::BillkeyRemove, Class::Approved),
            "{what}: {removed:?}"
        );
        let refused = gateway
            .approve_by(&charge(&bid, &format!("rt-{what}-2"), 10_000), None)
            .await
            .unwrap();
        assert_ne!(refused.class, Class::Approved, "{what}: {refused:?}");
        assert!(refused.data.is_none());
        assert_eq!(
            sim.ledger().len(),
            1,
            "{what}: nothing charged on a removed billkey"
        );

        let tokens = sim.request_counts().get("v1_token").copied().unwrap_or(0);
        match auth {
            Auth::Basic => assert_eq!(tokens, 0, "Basic never asks for a token"),
            // One token, then one renewal after the simulator expired it.
            Auth::Bearer => assert_eq!(tokens, 2, "Bearer: tokens fetched"),
        }
        sim.shutdown().await;
    }
}
