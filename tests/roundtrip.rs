//! Client ↔ simulator round trips for every API, in JSON and KV, EUC-KR and UTF-8.

mod support;

use nicebill::domain::{Krw, Moid};
use nicebill::gateway::nicepay::{
    CallError, CancelRequest, Charset, Class, EdiType, Match, TxState,
};
use support::*;

const FORMATS: [(Charset, EdiType); 4] = [
    (Charset::EucKr, EdiType::Json),
    (Charset::EucKr, EdiType::Kv),
    (Charset::Utf8, EdiType::Json),
    (Charset::Utf8, EdiType::Kv),
];

#[tokio::test]
async fn every_api_in_every_format() {
    let sim = sim().await;
    for (i, (charset, edi)) in FORMATS.into_iter().enumerate() {
        let ctx = format!("{charset:?}/{edi:?}");
        let client = client(&sim, charset, edi);
        let bid = issue(&client, "9410123456780000", &format!("rt-issue-{i}")).await;

        // Approve.
        let tid = client.new_tid();
        let moid = format!("rt-S{i}-C1-A1");
        let reply = client
            .approve(&approve_request(&bid, tid.clone(), &moid, 9_900))
            .await
            .expect(&ctx);
        assert_eq!(
            (reply.result_code.as_str(), reply.class),
            ("3001", Class::Approved),
            "{ctx}"
        );
        let approval = reply.data.expect("3001 carries data");
        assert_eq!(approval.tid, tid);
        assert_eq!(approval.amount.value(), 9_900);
        assert!(approval.auth_code.is_some(), "{ctx}: AuthCode");
        assert!(
            !reply.result_msg.is_empty() && !reply.result_msg.contains('\u{FFFD}'),
            "{ctx}: {:?}",
            reply.result_msg
        );

        // Status: approved, naming our order and amount.
        let ours = Krw::positive(9_900).unwrap();
        let status = client.status(&tid).await.expect(&ctx);
        let found = status.data.expect("0000 carries data");
        assert_eq!(found.state, TxState::Approved, "{ctx}");
        assert_eq!(found.moid.as_deref(), Some(moid.as_str()), "{ctx}");
        assert_eq!(found.amount, Some(ours), "{ctx}");
        assert_eq!(found.matches(&moid, ours), Match::Same, "{ctx}");
        assert!(found.auth_code.is_some(), "{ctx}");

        // Partial refund, then the rest.
        let cancel = |amount: i64, partial: bool| CancelRequest {
            tid: tid.clone(),
            moid: Moid::new(moid.clone()).unwrap(),
            amount: Krw::positive(amount).unwrap(),
            reason: "고객요청".into(),
            partial,
            mall_reserved: None,
        };
        let part = client.cancel(&cancel(1_000, true)).await.expect(&ctx);
        assert_eq!(part.class, Class::Approved, "{ctx}: {}", part.result_msg);
        let part = part.data.unwrap();
        assert_eq!(
            (
                part.cancel_amount.value(),
                part.remain_amount.map(Krw::value)
            ),
            (1_000, Some(8_900))
        );
        let status = client.status(&tid).await.expect(&ctx);
        let found = status.data.expect("0000 carries data");
        assert_eq!(
            found.state,
            TxState::Approved,
            "{ctx}: partly cancelled is still approved"
        );
        assert_eq!(
            found.amount,
            Some(ours),
            "{ctx}: Amt is the amount approved, not what is left"
        );
        let rest = client.cancel(&cancel(8_900, false)).await.expect(&ctx);
        assert_eq!(
            rest.data.map(|c| c.remain_amount.map(Krw::value)),
            Some(Some(0)),
            "{ctx}"
        );
        let status = client.status(&tid).await.expect(&ctx);
        assert_eq!(
            status.class,
            Class::Approved,
            "{ctx}: the lookup itself worked"
        );
        let found = status.data.expect("0000 carries data");
        assert_eq!(found.state, TxState::Cancelled, "{ctx}: Status 1");
        // Still our transaction, but cancelled: matching says nothing about the state.
        assert_eq!(found.matches(&moid, ours), Match::Same, "{ctx}");

        // A TID nobody approved: Status 9, nothing to compare.
        let status = client.status(&client.new_tid()).await.expect(&ctx);
        let found = status.data.expect("0000 carries data");
        assert_eq!(found.state, TxState::NotFound, "{ctx}: Status 9");
        assert_eq!((found.moid.as_deref(), found.amount), (None, None), "{ctx}");
        assert!(
            matches!(found.matches(&moid, ours), Match::Unverifiable { .. }),
            "{ctx}"
        );
        // A third refund is refused as a request error.
        let again = client.cancel(&cancel(1, true)).await.expect(&ctx);
        assert_eq!(
            again.class,
            Class::RequestError,
            "{ctx}: {}",
            again.result_code
        );

        // Remove the billkey, then again: already removed still reaches the goal.
        let removed = client
            .remove_billkey(&bid, &Moid::new(format!("rt-remove-{i}")).unwrap())
            .await
            .expect(&ctx);
        assert_eq!(
            (removed.result_code.as_str(), removed.class),
            ("F101", Class::Approved),
            "{ctx}"
        );
        let removed = client
            .remove_billkey(&bid, &Moid::new(format!("rt-remove-{i}b")).unwrap())
            .await
            .expect(&ctx);
        assert_eq!(
            removed.class,
            Class::Approved,
            "{ctx}: {}",
            removed.result_code
        );
        assert!(removed.data.is_none());

        // A charge on the removed billkey is a permanent card failure and charges nothing.
        let reply = client
            .approve(&approve_request(
                &bid,
                client.new_tid(),
                &format!("rt-S{i}-C2-A1"),
                9_900,
            ))
            .await
            .expect(&ctx);
        assert_eq!(
            reply.class,
            Class::PermanentCard,
            "{ctx}: {}",
            reply.result_code
        );
    }
    assert_eq!(sim.ledger().len(), 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn card_behaviours_classify() {
    let sim = sim().await;
    let client = client(&sim, Charset::EucKr, EdiType::Json);
    let cases = [
        ("4000000000000002", vec![Class::Declined, Class::Declined]),
        ("4000000000000003", vec![Class::PermanentCard]),
        ("4000000000000004", vec![Class::PermanentCard]),
        (
            "4000000000000005",
            vec![Class::Declined, Class::Approved, Class::Declined],
        ),
        ("4000000000000001", vec![Class::Approved]),
    ];
    for (n, (card, classes)) in cases.iter().enumerate() {
        let bid = issue(&client, card, &format!("cb-{n}")).await;
        for (a, want) in classes.iter().enumerate() {
            let reply = client
                .approve(&approve_request(
                    &bid,
                    client.new_tid(),
                    &format!("cb-{n}-A{a}"),
                    5_000,
                ))
                .await
                .unwrap();
            assert_eq!(
                reply.class, *want,
                "card {card} attempt {a}: {} {}",
                reply.result_code, reply.result_msg
            );
        }
    }
    let approved: Vec<_> = sim.ledger().into_iter().map(|e| e.moid).collect();
    assert_eq!(approved, vec!["cb-3-A1".to_owned(), "cb-4-A0".to_owned()]);
    sim.shutdown().await;
}

#[tokio::test]
async fn duplicates_are_ambiguous_and_charge_nothing() {
    let sim = sim().await;
    let client = client(&sim, Charset::Utf8, EdiType::Json);
    let bid = issue(&client, "9410123456780000", "dup-issue").await;
    let tid = client.new_tid();
    let first = client
        .approve(&approve_request(&bid, tid.clone(), "dup-1", 1_000))
        .await
        .unwrap();
    assert_eq!(first.class, Class::Approved);
    // Same TID, new Moid.
    let again = client
        .approve(&approve_request(&bid, tid, "dup-2", 1_000))
        .await
        .unwrap();
    assert_eq!(again.class, Class::Duplicate, "{}", again.result_code);
    // New TID, same Moid as the successful approval.
    let again = client
        .approve(&approve_request(&bid, client.new_tid(), "dup-1", 1_000))
        .await
        .unwrap();
    assert_eq!(again.class, Class::Duplicate, "{}", again.result_code);
    assert_eq!(sim.ledger().len(), 1);
    // A TID nobody approved: status 9.
    let unknown = client.status(&client.new_tid()).await.unwrap();
    assert_eq!(unknown.data.map(|s| s.state), Some(TxState::NotFound));
    sim.shutdown().await;
}

/// Somebody else's transaction holds the TID: our approval answers A225, and the lookup that
/// resolves it finds an approval, but of another order and amount.
#[tokio::test]
async fn tid_collision_lookup_names_the_foreign_order() {
    let sim = sim().await;
    for (i, (charset, edi)) in FORMATS.into_iter().enumerate() {
        let ctx = format!("{charset:?}/{edi:?}");
        let client = client(&sim, charset, edi);
        let bid = issue(&client, "9410123456780000", &format!("col-issue-{i}")).await;
        let tid = client.new_tid();
        let foreign_moid = format!("외부-주문-{i}");
        sim.seed_foreign_approval(&tid, &foreign_moid, Krw::positive(5_000).unwrap())
            .expect(&ctx);
        let moid = format!("col-S{i}-C1-A1");
        let ours = Krw::positive(9_900).unwrap();
        let reply = client
            .approve(&approve_request(&bid, tid.clone(), &moid, 9_900))
            .await
            .expect(&ctx);
        assert_eq!(
            (reply.result_code.as_str(), reply.class),
            ("A225", Class::Duplicate),
            "{ctx}: {}",
            reply.result_msg
        );
        assert!(reply.data.is_none(), "{ctx}");
        let status = client.status(&tid).await.expect(&ctx);
        let found = status.data.expect("0000 carries data");
        assert_eq!(found.state, TxState::Approved, "{ctx}: Status 0");
        assert_eq!(found.moid.as_deref(), Some(foreign_moid.as_str()), "{ctx}");
        assert_eq!(found.amount.map(Krw::value), Some(5_000), "{ctx}");
        match found.matches(&moid, ours) {
            Match::Different { what } => {
                assert!(
                    what.contains("Moid") && what.contains("Amt"),
                    "{ctx}: {what}"
                )
            }
            other => panic!("{ctx}: a foreign transaction must not match, got {other:?}"),
        }
        assert!(
            sim.ledger().iter().all(|e| e.moid != moid),
            "{ctx}: our charge never happened"
        );
    }
    let ledger = sim.ledger();
    assert_eq!(ledger.len(), 4);
    assert!(ledger.iter().all(|e| e.seeded));
    sim.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_refused_before_sending() {
    let sim = sim().await;
    let client = client(&sim, Charset::EucKr, EdiType::Json);
    let bid = issue(&client, "9410123456780000", "bad-issue").await;
    let before = sim.request_counts();
    type Mutation = Box<dyn Fn(&mut nicebill::gateway::nicepay::ApproveRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("GoodsName", Box::new(|r| r.goods_name = "가".repeat(21))),
        ("GoodsName", Box::new(|r| r.goods_name = "구독 🎉".into())),
        ("GoodsName", Box::new(|r| r.goods_name = "Café ☕".into())),
        ("GoodsName", Box::new(|r| r.goods_name = " ".into())),
        (
            "BuyerName",
            Box::new(|r| r.buyer.name = Some("가".repeat(16))),
        ),
        (
            "MallReserved",
            Box::new(|r| r.mall_reserved = Some("x".repeat(501))),
        ),
        ("CardQuota", Box::new(|r| r.card_quota = "1".into())),
    ];
    for (field, mutate) in cases {
        let mut req = approve_request(&bid, client.new_tid(), "bad-1", 1_000);
        mutate(&mut req);
        match client.approve(&req).await {
            Err(CallError::Input(e)) => assert_eq!(e.field, field, "{e}"),
            other => panic!("{field}: expected an input error, got {other:?}"),
        }
    }
    let too_long_reason = CancelRequest {
        tid: client.new_tid(),
        moid: Moid::new("bad-cancel").unwrap(),
        amount: Krw::positive(1).unwrap(),
        reason: "취소".repeat(26),
        partial: false,
        mall_reserved: None,
    };
    match client.cancel(&too_long_reason).await {
        Err(CallError::Input(e)) => assert_eq!(e.field, "CancelMsg"),
        other => panic!("expected CancelMsg error, got {other:?}"),
    }
    assert_eq!(
        sim.request_counts(),
        before,
        "nothing may reach the gateway"
    );
    sim.shutdown().await;
}
