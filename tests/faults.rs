//! Each simulator fault lands in the right class. Lost responses must come out `Unknown`, and
//! a status lookup must then tell the truth.

mod support;

use std::time::Duration;

use nicebill::domain::{Krw, Moid};
use nicebill::gateway::nicepay::{
    Api, CallError, CancelRequest, Charset, Class, EdiType, NicepayClient, Transport, TxState,
};
use nicebill::sim::{FaultMode, FaultRule};
use support::*;

fn once(mode: FaultMode, api: Api) -> Vec<FaultRule> {
    vec![FaultRule {
        mode,
        api: Some(api),
        count: Some(1),
        probability: 1.0,
    }]
}

/// (fault, whether the charge is recorded at the simulator, expected class)
const APPROVE_FAULTS: &[(FaultMode, bool, Class)] = &[
    (FaultMode::Http500, false, Class::Unknown),
    (FaultMode::DropBefore, false, Class::Unknown),
    (FaultMode::DropAfter, true, Class::Unknown),
    (FaultMode::HangAfter, true, Class::Unknown),
    (FaultMode::Garbage, true, Class::Unknown),
];

#[tokio::test]
async fn approval_faults_are_unknown_and_status_resolves_them() {
    let sim = sim().await;
    let mut settings = settings(&sim.base_url(), Charset::EucKr, EdiType::Json);
    settings.read_timeout = Duration::from_millis(400);
    let client =
        NicepayClient::new(settings, std::sync::Arc::new(nicebill::clock::SystemClock)).unwrap();
    let bid = issue(&client, "9410123456780000", "fault-issue").await;
    for (i, (mode, charged, class)) in APPROVE_FAULTS.iter().enumerate() {
        sim.set_faults(once(*mode, Api::Approve));
        let tid = client.new_tid();
        let result = client
            .approve(&approve_request(
                &bid,
                tid.clone(),
                &format!("fault-{i}"),
                1_000,
            ))
            .await;
        let got = nicebill::gateway::nicepay::client::class_of(&result);
        assert_eq!(got, *class, "{mode:?}: {result:?}");
        // The lookup tells whether the charge happened.
        let status = client.status(&tid).await.expect("status after fault");
        let want = if *charged {
            TxState::Approved
        } else {
            TxState::NotFound
        };
        assert_eq!(status.data.map(|s| s.state), Some(want), "{mode:?}");
    }
    assert_eq!(sim.ledger().len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_cancel_signature_is_never_a_refund() {
    let sim = sim().await;
    let client = client(&sim, Charset::EucKr, EdiType::Kv);
    let bid = issue(&client, "9410123456780000", "sig-issue").await;
    let tid = client.new_tid();
    let reply = client
        .approve(&approve_request(&bid, tid.clone(), "sig-1", 1_004))
        .await
        .unwrap();
    assert_eq!(reply.class, Class::Approved);
    sim.set_faults(once(FaultMode::BadCancelSignature, Api::Cancel));
    let result = client
        .cancel(&CancelRequest {
            tid,
            moid: Moid::new("sig-1").unwrap(),
            amount: Krw::positive(1_004).unwrap(),
            reason: "고객요청".into(),
            partial: false,
            mall_reserved: None,
        })
        .await;
    match result {
        Err(CallError::Transport {
            failure: Transport::Untrusted,
            detail,
            ..
        }) => {
            assert!(detail.contains("Signature"), "{detail}")
        }
        other => panic!("a bad Signature must be an error, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn nothing_listening_is_not_sent() {
    let port = support::process::free_port();
    let client = NicepayClient::new(
        settings(
            &format!("http://127.0.0.1:{port}"),
            Charset::EucKr,
            EdiType::Json,
        ),
        std::sync::Arc::new(nicebill::clock::SystemClock),
    )
    .unwrap();
    let result = client.status(&client.new_tid()).await;
    assert!(
        matches!(result, Err(ref e) if e.class() == Class::NotSent),
        "{result:?}"
    );
}

#[tokio::test]
async fn faults_on_other_apis() {
    let sim = sim().await;
    let client = client(&sim, Charset::Utf8, EdiType::Json);
    let bid = issue(&client, "9410123456780000", "other-issue").await;
    sim.set_faults(once(FaultMode::Http500, Api::BillkeyRemove));
    let result = client
        .remove_billkey(&bid, &Moid::new("other-rm").unwrap())
        .await;
    assert!(
        matches!(result, Err(ref e) if e.class() == Class::Unknown),
        "{result:?}"
    );
    sim.set_faults(once(FaultMode::Garbage, Api::Status));
    let result = client.status(&client.new_tid()).await;
    assert!(
        matches!(result, Err(ref e) if e.class() == Class::Unknown),
        "{result:?}"
    );
    // The fault was used up: the next call goes through.
    let result = client
        .remove_billkey(&bid, &Moid::new("other-rm2").unwrap())
        .await
        .unwrap();
    assert_eq!(result.class, Class::Approved);
    sim.shutdown().await;
}
