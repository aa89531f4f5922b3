//! Where NICEPAY's protocol has sharp edges: strict EUC-KR (KS X 1001, not CP949), result codes
//! nicebill does not know, the manual's tables against its samples, and answers too long to
//! read. Database cases run on SQLite and (with `NICEBILL_TEST_POSTGRES_URL`) PostgreSQL.

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nicebill::billing::engine::{Engine, EngineSettings};
use nicebill::billing::model::SubscriptionId;
use nicebill::billing::plan::{FinalState, Policy};
use nicebill::clock::{Clock, ManualClock, SharedClock};
use nicebill::domain::{CardDetails, Krw, Moid, Tid};
use nicebill::gateway::nicepay::{
    Api, Buyer, CallError, CancelRequest, Charset, Class, EdiType, IssueRequest, NicepayClient,
    Transport,
};
use nicebill::health::Counters;
use nicebill::sim::{FaultMode, FaultRule, SimConfig, SimHandle};
use nicebill::storage::Store;
use nicebill::storage::models::NewSubscription;
use support::*;

/// CP949-only syllables: encoding_rs's "EUC-KR" encodes them, NICEPAY would garble them.
const OUTSIDE: [&str; 4] = ["똠", "햏", "뷁", "쀍"];
/// KS X 1001: Hangul, Hanja, full-width forms.
const INSIDE: [&str; 4] = ["가", "한글", "漢字", "ＡＢＣ"];

struct World {
    sim: SimHandle,
    client: Arc<NicepayClient>,
    clock: ManualClock,
    store: Store,
    label: &'static str,
}

async fn world(db: &TestDb) -> World {
    let clock = ManualClock::new(kst("2027-03-01 10:00"));
    let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    let client = Arc::new(
        NicepayClient::new(
            settings(&sim.base_url(), Charset::EucKr, EdiType::Json),
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
    fn engine(&self, policy: Policy) -> Engine {
        let s = EngineSettings::new("edges".into(), policy, Duration::from_secs(4));
        let clock: SharedClock = Arc::new(self.clock.clone());
        Engine::new(self.store.clone(), self.client.clone(), clock, s)
    }

    async fn add(&self, name: &str, card: &str, edit: impl FnOnce(&mut NewSubscription)) -> i64 {
        let bid = issue(&self.client, card, &format!("bk-{name}")).await;
        let mut row = monthly(
            name,
            &bid,
            5_000,
            self.clock.now() - chrono::Duration::minutes(5),
        );
        edit(&mut row);
        self.store.insert_subscription(row).await.unwrap()
    }

    async fn status(&self, id: i64) -> (String, String) {
        let row = self.store.subscription(id).await.unwrap().unwrap();
        (row.status, row.status_reason.unwrap_or_default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goods_names_outside_ks_x_1001_make_the_row_invalid() {
    for db in databases("edges_goods").await {
        let w = world(&db).await;
        let mut bad = Vec::new();
        for (i, c) in OUTSIDE.iter().enumerate() {
            let name = format!("월간 {c} 구독");
            bad.push((
                w.add(&format!("bad-{i}"), "9410123456780000", |r| {
                    r.goods_name = name
                })
                .await,
                "goods_name:",
            ));
        }
        // The buyer columns are sent too, so they are held to the same rule.
        bad.push((
            w.add("bad-buyer", "9410123456780000", |r| {
                r.buyer_name = Some("뷁".into())
            })
            .await,
            "buyer_name:",
        ));
        // The installment choice (gateway::nicepay::limits): 00 or 02..36.
        bad.push((
            w.add("bad-quota", "9410123456780000", |r| {
                r.card_quota = "37".into()
            })
            .await,
            "card_quota:",
        ));
        let mut good = Vec::new();
        for (i, text) in INSIDE.iter().enumerate() {
            let name = format!("구독 {text}");
            good.push(
                w.add(&format!("good-{i}"), "9410123456780000", |r| {
                    r.goods_name = name;
                    r.card_quota = "36".into();
                })
                .await,
            );
        }
        // BuyerEmail and BuyerTel are sent when the row has them, and only then.
        let with_buyer = w
            .add("with-buyer", "9410123456780000", |r| {
                r.buyer_name = Some("홍길동".into());
                r.buyer_email = Some("buyer@example.com".into());
                r.buyer_tel = Some("010-1234-5678".into());
            })
            .await;
        w.engine(Policy::default()).pass().await.unwrap();
        for (id, column) in bad {
            let (status, reason) = w.status(id).await;
            assert_eq!(status, "invalid", "{}: {id} {reason}", w.label);
            assert!(reason.starts_with(column), "{}: {reason}", w.label);
            if column != "card_quota:" {
                assert!(reason.contains("KS X 1001"), "{}: {reason}", w.label);
            }
        }
        let ledger = w.sim.ledger();
        let mut names: Vec<String> = ledger.iter().map(|l| l.goods_name.clone()).collect();
        names.sort();
        let mut want: Vec<String> = INSIDE.iter().map(|t| format!("구독 {t}")).collect();
        want.push("월간 구독".into());
        want.sort();
        assert_eq!(
            names, want,
            "{}: only KS X 1001 names were charged",
            w.label
        );
        assert_eq!(ledger.len(), good.len() + 1, "{}", w.label);
        let moid = format!("S{with_buyer}-C1-A1");
        let entry = ledger.iter().find(|l| l.moid == moid).unwrap();
        assert_eq!(
            (
                entry.buyer_name.as_deref(),
                entry.buyer_email.as_deref(),
                entry.buyer_tel.as_deref()
            ),
            (
                Some("홍길동"),
                Some("buyer@example.com"),
                Some("010-1234-5678")
            ),
            "{}",
            w.label
        );
        for l in ledger.iter().filter(|l| l.moid != moid) {
            assert_eq!(
                (&l.buyer_name, &l.buyer_email, &l.buyer_tel),
                (&None, &None, &None),
                "{}: absent columns are not sent",
                w.label
            );
        }
    }
}

#[tokio::test]
async fn the_client_refuses_before_sending() {
    let sim = sim().await;
    // Nothing here is about timeouts: a patient client, so that a fully loaded machine (the
    // whole suite on two cores) cannot turn a slow answer into a failure.
    let mut s = settings(&sim.base_url(), Charset::EucKr, EdiType::Json);
    s.read_timeout = Duration::from_secs(30);
    let client = NicepayClient::new(s, Arc::new(nicebill::clock::SystemClock)).unwrap();
    let bid = issue(&client, "9410123456780000", "bk-client").await;
    for (i, c) in OUTSIDE.iter().enumerate() {
        let mut req = approve_request(&bid, client.new_tid(), &format!("o-{i}"), 100);
        req.goods_name = format!("월간 {c}");
        match client.approve(&req).await {
            Err(CallError::Input(e)) => assert_eq!(e.field, "GoodsName", "{c}"),
            other => panic!("{c}: {other:?}"),
        }
        let mut req = approve_request(&bid, client.new_tid(), &format!("o-{i}"), 100);
        req.buyer.name = Some((*c).into());
        match client.approve(&req).await {
            Err(CallError::Input(e)) => assert_eq!(e.field, "BuyerName", "{c}"),
            other => panic!("{c}: {other:?}"),
        }
        let issued = client
            .issue_billkey(&IssueRequest {
                moid: Moid::new(format!("bk-x{i}")).unwrap(),
                card: card("9410123456780000"),
                buyer: Buyer {
                    name: Some((*c).into()),
                    ..Buyer::default()
                },
            })
            .await;
        assert!(matches!(issued, Err(CallError::Input(ref e)) if e.field == "BuyerName"));
        let cancelled = client
            .cancel(&CancelRequest {
                tid: Tid::new("nictest04m01162612250900001234").unwrap(),
                moid: Moid::new("o-1").unwrap(),
                amount: Krw::positive(100).unwrap(),
                reason: format!("고객 {c}"),
                partial: false,
                mall_reserved: None,
            })
            .await;
        assert!(matches!(cancelled, Err(CallError::Input(ref e)) if e.field == "CancelMsg"));
    }
    // The installment choice: 37 months is refused before sending.
    let mut req = approve_request(&bid, client.new_tid(), "o-q", 100);
    req.card_quota = "37".into();
    assert!(
        matches!(client.approve(&req).await, Err(CallError::Input(ref e)) if e.field == "CardQuota")
    );
    let counts = sim.request_counts();
    for api in [Api::Approve, Api::Cancel] {
        assert_eq!(counts.get(api.as_str()).copied().unwrap_or(0), 0, "{api:?}");
    }
    assert_eq!(counts.get("billkey_issue").copied(), Some(1), "{counts:?}");
    for (i, text) in INSIDE.iter().enumerate() {
        let mut req = approve_request(&bid, client.new_tid(), &format!("ok-{i}"), 100);
        req.goods_name = (*text).into();
        req.buyer.name = Some((*text).into());
        req.card_quota = "36".into();
        let reply = client.approve(&req).await.unwrap();
        assert_eq!(reply.class, Class::Approved, "{text}: {}", reply.result_msg);
    }
    let names: Vec<String> = sim.ledger().into_iter().map(|l| l.goods_name).collect();
    assert_eq!(names, INSIDE);
}

#[test]
fn card_numbers_are_14_to_16_digits() {
    // The manual's CardNo is 16 long (gateway::nicepay::limits).
    for ok in ["12345678901234", "123456789012345", "1234567890123456"] {
        assert!(CardDetails::new(ok, "30", "01", "", "").is_ok(), "{ok}");
    }
    for bad in ["12345678901234567", "1234567890123456789"] {
        let e = CardDetails::new(bad, "30", "01", "", "").unwrap_err();
        assert_eq!(e.field, "CardNo");
        assert!(e.problem.contains("14 to 16"), "{e}");
    }
}

fn write_config(dir: &Path, base_url: &str, db_url: Option<&str>) -> PathBuf {
    let key = dir.join("merchant.key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join("nicebill.toml");
    let database = db_url
        .map(|u| format!("\n[database]\nurl = \"{u}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_file = \"{}\"\nbase_url = \"{base_url}\"\n{database}",
            key.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    config
}

fn run(config: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    support::process::run_fed(Some("warn"), config, args, stdin)
}

#[tokio::test]
async fn the_cli_refuses_with_exit_2_and_sends_nothing() {
    let (_sim, base_url) = spawn_sim(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &base_url, None);
    let bid = "BIKYnictest04m2611251200001234";
    let tid = "nictest04m01162612250900001234";
    let card = "CardNo=9410123456780000\nExpYear=30\nExpMonth=01\nIDNo=880229\nCardPw=37\n";
    for c in OUTSIDE {
        let goods = format!("월간 {c}");
        let reason = format!("고객 {c}");
        let cases: [(Vec<&str>, &str, &str); 3] = [
            (
                vec![
                    "approve",
                    "--bid",
                    bid,
                    "--amount",
                    "100",
                    "--goods-name",
                    &goods,
                ],
                "",
                "GoodsName",
            ),
            (
                vec!["billkey", "issue", "--buyer-name", c],
                card,
                "BuyerName",
            ),
            (
                vec!["refund", tid, "--amount", "100", "--reason", &reason],
                "",
                // The CLI checks its --reason itself, naming the option.
                "reason",
            ),
        ];
        for (args, stdin, field) in cases {
            let out = run(&config, &args, stdin);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains(field), "{args:?}: {err}");
            assert!(err.contains("KS X 1001"), "{args:?}: {err}");
        }
    }
    let body = reqwest::get(format!("{base_url}/_sim/requests"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let counts: std::collections::BTreeMap<String, u64> = serde_json::from_slice(&body).unwrap();
    assert!(
        counts.values().all(|n| *n == 0),
        "nothing was sent: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_codes_are_retried_and_never_cancel() {
    for db in databases("edges_unlisted").await {
        let w = world(&db).await;
        // One dunning retry, then cancellation (and billkey removal) for real declines.
        let policy = Policy {
            retry_after: vec![Duration::from_secs(86_400)],
            final_state: FinalState::Cancelled,
            ..Policy::default()
        };
        let retry = chrono::Duration::from_std(policy.request_error_retry).unwrap();
        // Card 0006: the simulator answers 3999, which NICEPAY does not publish.
        let unlisted = w.add("unlisted", "9410123456780006", |_| {}).await;
        // Card 0002: 3095, the issuer decline NICEPAY's list names.
        let declined = w.add("declined", "9410123456780002", |_| {}).await;
        let engine = w.engine(policy.clone());
        engine.pass().await.unwrap();
        assert_eq!(
            w.status(declined).await.0,
            "active",
            "{}: one decline is dunned",
            w.label
        );
        let charges = w.store.charges(Some(declined)).await.unwrap();
        assert_eq!(charges[0].state, "declined", "{}", w.label);
        let state = w
            .store
            .billing_state(SubscriptionId(unlisted))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            state.next_charge_at,
            Some(w.clock.now() + retry),
            "{}: retried on the request-error schedule",
            w.label
        );
        // Three more hours: three more attempts, far past what dunning allows.
        for _ in 0..3 {
            w.clock.advance(retry + chrono::Duration::seconds(1));
            engine.pass().await.unwrap();
        }
        // A day on: the decline's retry is declined again, dunning is exhausted.
        w.clock.advance(chrono::Duration::days(1));
        engine.pass().await.unwrap();
        engine.pass().await.unwrap();
        assert_eq!(w.status(declined).await.0, "cancelled", "{}", w.label);
        let (status, reason) = w.status(unlisted).await;
        assert_eq!(status, "active", "{}: {reason}", w.label);
        let charges = w.store.charges(Some(unlisted)).await.unwrap();
        assert!(charges.len() >= 4, "{}: {}", w.label, charges.len());
        for c in &charges {
            assert_eq!(
                (
                    c.state.as_str(),
                    c.result_code.as_deref(),
                    c.error_class.as_deref()
                ),
                ("unlisted_code", Some("3999"), Some("unlisted_code")),
                "{}",
                w.label
            );
        }
        let unlisted_bid = charges[0].bid.clone().unwrap();
        let removed: Vec<String> = w.sim.removals().into_iter().map(|r| r.bid).collect();
        assert!(!removed.contains(&unlisted_bid), "{}: {removed:?}", w.label);
        assert_eq!(removed.len(), 1, "{}: the declined card's billkey", w.label);
        let rows = w.store.removals().await.unwrap();
        assert!(
            rows.iter().all(|r| r.subscription_id != unlisted),
            "{}",
            w.label
        );
        // Counted for health and metrics.
        let counters = Counters::from_stats(engine.stats());
        assert_eq!(counters.unlisted_code, charges.len() as u64, "{}", w.label);
        // Listed for the operator.
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &w.sim.base_url(), Some(&db.url));
        // The operator's `subscription add` refuses what the daemon would: exit 2, no row.
        let before = w.store.subscriptions().await.unwrap().len();
        let out = run(
            &config,
            &[
                "subscription",
                "add",
                "--external-id",
                "cli-ttom",
                "--bid",
                &unlisted_bid,
                "--amount",
                "9900",
                "--goods-name",
                "월간 똠",
            ],
            "",
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", w.label);
        assert!(
            err.contains("goods_name") && err.contains("KS X 1001"),
            "{}: {err}",
            w.label
        );
        assert_eq!(w.store.subscriptions().await.unwrap().len(), before);
        let out = run(
            &config,
            &["charges", "list", "--state", "unlisted_code", "--json"],
            "",
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(listed.len(), charges.len(), "{}", w.label);
        assert!(
            listed
                .iter()
                .all(|c| c["state"] == "unlisted_code" && c["subscription_id"] == unlisted),
            "{}: {listed:?}",
            w.label
        );
    }
}

fn fault(mode: FaultMode) -> FaultRule {
    FaultRule {
        mode,
        api: Some(Api::Approve),
        count: Some(1),
        probability: 1.0,
    }
}

#[tokio::test]
async fn an_oversized_answer_is_not_read() {
    let sim = sim().await;
    let client = client(&sim, Charset::EucKr, EdiType::Json);
    let bid = issue(&client, "9410123456780000", "bk-big").await;
    sim.set_faults(vec![fault(FaultMode::Oversized)]);
    let tid = client.new_tid();
    let result = client
        .approve(&approve_request(&bid, tid.clone(), "o-big", 100))
        .await;
    match result {
        Err(ref e @ CallError::Transport { failure, .. }) => {
            assert_eq!(failure, Transport::Oversized, "{e}");
            assert_eq!(e.class(), Class::Unknown);
        }
        other => panic!("{other:?}"),
    }
    // It was processed: the lookup finds it.
    let looked = client.status(&tid).await.unwrap().data.unwrap();
    assert_eq!(
        looked.matches("o-big", Krw::positive(100).unwrap()),
        nicebill::gateway::nicepay::Match::Same
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_answer_is_looked_up_and_resolved() {
    for db in databases("edges_oversized").await {
        let w = world(&db).await;
        let id = w.add("big", "9410123456780000", |_| {}).await;
        w.sim.set_faults(vec![fault(FaultMode::Oversized)]);
        let engine = w.engine(Policy::default());
        engine.pass().await.unwrap();
        // Resolved by lookup now or in a later pass, never charged twice.
        for _ in 0..3 {
            w.clock.advance(chrono::Duration::minutes(10));
            engine.pass().await.unwrap();
        }
        let charges = w.store.charges(Some(id)).await.unwrap();
        assert_eq!(
            charges[0].state, "approved",
            "{}: {:?}",
            w.label, charges[0]
        );
        assert!(charges[0].lookups >= 1, "{}: {:?}", w.label, charges[0]);
        let counts = w.sim.request_counts();
        assert!(
            counts.get("status").copied().unwrap_or(0) >= 1,
            "{counts:?}"
        );
        let ledger = w.sim.ledger();
        assert_eq!(
            ledger
                .iter()
                .filter(|l| l.moid.starts_with(&format!("S{id}-C1-")))
                .count(),
            1,
            "{}: charged once",
            w.label
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_result_msg_is_stored_as_200_characters() {
    for db in databases("edges_longmsg").await {
        let w = world(&db).await;
        let id = w.add("long", "9410123456780002", |_| {}).await;
        w.sim.set_faults(vec![fault(FaultMode::LongResultMsg)]);
        w.engine(Policy::default()).pass().await.unwrap();
        let charges = w.store.charges(Some(id)).await.unwrap();
        let msg = charges[0].result_msg.clone().unwrap();
        assert_eq!(charges[0].state, "declined", "{}", w.label);
        assert_eq!(msg.chars().count(), 200, "{}: {msg}", w.label);
        assert!(msg.starts_with("잔액부족"), "{}: {msg}", w.label);
        let events = w.store.events(Some(id)).await.unwrap();
        for e in events {
            assert!(e.detail.chars().count() < 300, "{}: {}", w.label, e.detail);
        }
    }
}

/// A log sink for one thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn an_unlisted_code_is_logged_at_warn_with_code_and_message() {
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    // A current-thread runtime: the engine's tasks run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let dbs = databases("edges_unlisted_log").await;
            let w = world(&dbs[0]).await;
            w.add("unlisted-log", "9410123456780006", |_| {}).await;
            w.engine(Policy::default()).pass().await.unwrap();
        });
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("does not list"))
        .unwrap_or_else(|| panic!("no warning: {text}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("3999"), "{line}");
    assert!(line.contains("알 수 없는 응답"), "{line}");
}
