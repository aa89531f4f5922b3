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
    sim.shutdown().await;

    let logs = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
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
