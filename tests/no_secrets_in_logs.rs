//! A full flow (issue → approve → status → refund → remove, plus failures) with every log
//! line captured at trace level: no merchant key, card number, IDNo or CardPw may appear.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use nicebill::domain::{Krw, Moid};
use nicebill::gateway::nicepay::{Api, CancelRequest, Charset, Class, EdiType};
use nicebill::sim::{FaultMode, FaultRule};
use support::*;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const CARD: &str = "9410123456780000";

#[tokio::test]
async fn trace_logs_hold_no_secret() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish(),
    )
    .unwrap();

    let sim = sim().await;
    for (charset, edi) in [
        (Charset::EucKr, EdiType::Kv),
        (Charset::Utf8, EdiType::Json),
    ] {
        let client = client(&sim, charset, edi);
        let bid = issue(&client, CARD, &format!("log-issue-{}", edi.as_str())).await;
        let tid = client.new_tid();
        let moid = format!("log-{}", edi.as_str());
        let reply = client
            .approve(&approve_request(&bid, tid.clone(), &moid, 9_900))
            .await
            .unwrap();
        assert_eq!(reply.class, Class::Approved);
        client.status(&tid).await.unwrap();
        let cancel = client
            .cancel(&CancelRequest {
                tid: tid.clone(),
                moid: Moid::new(moid).unwrap(),
                amount: Krw::positive(9_900).unwrap(),
                reason: "고객요청".into(),
                partial: false,
                mall_reserved: None,
            })
            .await
            .unwrap();
        assert_eq!(cancel.class, Class::Approved);
        // A lost response and a refused request log their errors too.
        sim.set_faults(vec![FaultRule {
            mode: FaultMode::DropAfter,
            api: Some(Api::Approve),
            count: Some(1),
            probability: 1.0,
        }]);
        let _ = client
            .approve(&approve_request(&bid, client.new_tid(), "log-lost", 100))
            .await;
        let _ = client
            .approve(&approve_request(&bid, client.new_tid(), "log-emoji", 100))
            .await;
        client
            .remove_billkey(
                &bid,
                &Moid::new(format!("log-rm-{}", edi.as_str())).unwrap(),
            )
            .await
            .unwrap();
    }

    // NICEPAY v1, with Basic and with Bearer: the same flow, a lost answer resolved by lookup
    // and netcancel, and the access token the simulator hands out.
    let (basic, token) = v1_credentials(&sim.base_url()).await;
    for auth in [
        nicebill::gateway::nicepay_v1::Auth::Basic,
        nicebill::gateway::nicepay_v1::Auth::Bearer,
    ] {
        let mut settings = v1_settings(&sim.base_url());
        settings.auth = auth;
        let clock: nicebill::clock::SharedClock = Arc::new(nicebill::clock::SystemClock);
        let gateway = nicebill::gateway::Gateway::v1(settings, clock.clone()).unwrap();
        let tag = auth.as_str();
        let bid = issue_on(&gateway, CARD, &format!("log-v1-issue-{tag}")).await;
        let charge = |moid: &str| nicebill::gateway::ChargeRequest {
            bid: bid.clone(),
            tid: None,
            moid: Moid::new(moid).unwrap(),
            amount: Krw::positive(9_900).unwrap(),
            goods_name: "월간 구독".into(),
            card_quota: "00".into(),
            interest_free: false,
            buyer: Default::default(),
        };
        let moid = format!("log-v1-{tag}");
        let reply = gateway.approve_by(&charge(&moid), None).await.unwrap();
        assert_eq!(reply.class, Class::Approved, "{reply:?}");
        let tid = reply.data.unwrap().tid;
        gateway.status(&tid).await.unwrap();
        gateway
            .status_by_order(&Moid::new(moid.as_str()).unwrap(), clock.now())
            .await
            .unwrap();
        let cancel = gateway
            .cancel(&CancelRequest {
                tid,
                moid: Moid::new(format!("log-v1-c-{tag}")).unwrap(),
                amount: Krw::positive(9_900).unwrap(),
                reason: "고객요청".into(),
                partial: false,
                mall_reserved: None,
            })
            .await
            .unwrap();
        assert_eq!(cancel.class, Class::Approved);
        sim.set_faults(vec![FaultRule {
            mode: FaultMode::DropBefore,
            api: Some(Api::Approve),
            count: Some(1),
            probability: 1.0,
        }]);
        let lost = format!("log-v1-lost-{tag}");
        let _ = gateway.approve_by(&charge(&lost), None).await;
        let looked = gateway
            .look_up(&nicebill::gateway::AttemptRef {
                tid: None,
                moid: &lost,
                amount: 9_900,
                committed_at: clock.now(),
            })
            .await
            .unwrap();
        assert_eq!(
            looked.data.map(|s| s.state),
            Some(nicebill::gateway::nicepay::TxState::NotFound)
        );
        gateway
            .remove_billkey(&bid, &Moid::new(format!("log-v1-rm-{tag}")).unwrap())
            .await
            .unwrap();
    }
    sim.shutdown().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(
        logs.contains("v1_netcancel") || logs.contains("netcancel"),
        "the v1 flow logged nothing"
    );
    for secret in [
        V1_SECRET_KEY,
        &V1_SECRET_KEY[..16],
        basic.trim_start_matches("Basic "),
        token.as_str(),
    ] {
        assert!(
            !logs.contains(secret),
            "log output contains a v1 secret ({} chars)",
            secret.len()
        );
    }
    assert!(
        logs.lines().count() > 20,
        "the flow should log at trace level:\n{logs}"
    );
    for secret in [KEY, &KEY[..16], CARD, "880229", "CardPw=37", "CardNo="] {
        assert!(
            !logs.contains(secret),
            "log output contains a secret ({} chars)",
            secret.len()
        );
    }
}
