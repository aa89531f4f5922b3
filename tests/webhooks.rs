//! Webhooks end to end, on SQLite and PostgreSQL: in-process engines on a `ManualClock`, the
//! in-process simulator, and a receiver (hyper, here) that checks every signature with its own
//! HMAC-SHA256 (built from `sha2`, not the `hmac` crate nicebill signs with) and the Standard
//! Webhooks test vector.
//!
//! - every event type a billing run produces arrives, signed, with its fields;
//! - a receiver that fails (5xx, or no answer within `[webhook] timeout`) gets each event
//!   again, under the same `webhook-id`, on the `retry_after` schedule; after the last try the
//!   event is dead, and `retry` brings it back;
//! - a subscription's events arrive in order: a later one waits for an earlier one;
//! - three deliverers share one outbox without sending an event twice; the daemon SIGKILLed
//!   before delivering delivers everything after its restart; an attempt unresolved for long
//!   is told once; and the published Python library (`standardwebhooks`) verifies a delivery.

mod support;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use diesel::prelude::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nicebill::billing::engine::{Engine, EngineSettings, Hooks};
use nicebill::billing::model::{DeliveryState, NoticeLeads};
use nicebill::billing::plan::Policy;
use nicebill::clock::{Clock, ManualClock, SharedClock};
use nicebill::config::WebhookConfig;
use nicebill::gateway::nicepay::{Charset, EdiType, NicepayClient};
use nicebill::retry::RetryPolicy;
use nicebill::sim::{SimConfig, SimHandle};
use nicebill::storage::schema::subscriptions;
use nicebill::webhook::{Deliverer, WebhookSecret};
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

// ---- the receiver ----

/// HMAC-SHA256 from its definition (RFC 2104), independent of the `hmac` crate.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Standard Webhooks verification: any `v1,` signature of the space-separated list matches.
fn verify(secret: &str, id: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let want = STANDARD.encode(hmac_sha256(&key, &signed));
    header
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|sig| sig == want)
}

#[test]
fn the_receivers_check_agrees_with_the_specification() {
    // The specification's vector (its Python library's `test_sign_function`).
    assert!(verify(
        SECRET,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    ));
    assert!(!verify(
        SECRET,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265331",
        br#"{"test": 2432232314}"#,
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    ));
    // And nicebill's signer, on a message computed here.
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let body = br#"{"type":"ping","timestamp":"2027-01-01T00:00:00.000Z","data":{}}"#;
    let header = secret.sign("msg_abc", 1_798_761_600, body);
    assert!(verify(SECRET, "msg_abc", "1798761600", body, &header));
    assert!(!verify(SECRET, "msg_abd", "1798761600", body, &header));
}

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
    verified: bool,
    status: u16,
    json: Value,
}

impl Received {
    fn kind(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }
    fn subscription(&self) -> i64 {
        self.json["data"]["subscription_id"].as_i64().unwrap_or(-1)
    }
}

#[derive(Clone, Default)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    /// Statuses to answer the next requests with (then 200).
    answers: Arc<Mutex<VecDeque<u16>>>,
    /// Statuses to answer the next requests about one subscription with.
    answers_for: Arc<Mutex<Vec<(i64, u16)>>>,
    /// How long to wait before answering the next requests.
    delays: Arc<Mutex<VecDeque<Duration>>>,
    /// Requests that arrived (counted before any delay, whether answered or not).
    arrived: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(addr: &str) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let me = Receiver {
            url: format!("http://{}/hooks", listener.local_addr().unwrap()),
            ..Receiver::default()
        };
        let state = me.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let state = state.clone();
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_owned()
                            };
                            let (id, ts, sig) = (
                                header("webhook-id"),
                                header("webhook-timestamp"),
                                header("webhook-signature"),
                            );
                            let json_type = header("content-type");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            state
                                .arrived
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let delay = state.delays.lock().unwrap().pop_front();
                            if let Some(delay) = delay {
                                tokio::time::sleep(delay).await;
                            }
                            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let about = json["data"]["subscription_id"].as_i64();
                            let status = {
                                let mut for_one = state.answers_for.lock().unwrap();
                                match for_one.iter().position(|(s, _)| Some(*s) == about) {
                                    Some(i) => for_one.remove(i).1,
                                    None => {
                                        state.answers.lock().unwrap().pop_front().unwrap_or(200)
                                    }
                                }
                            };
                            state.got.lock().unwrap().push(Received {
                                verified: verify(SECRET, &id, &ts, &body, &sig)
                                    && json_type == "application/json",
                                id,
                                timestamp: ts,
                                signature: sig,
                                body: body.to_vec(),
                                status,
                                json,
                            });
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        me
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    fn arrived(&self) -> usize {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn delivered(&self) -> Vec<Received> {
        self.got().into_iter().filter(|r| r.status == 200).collect()
    }

    fn fail_next(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend(statuses);
    }

    fn delay_next(&self, delays: &[Duration]) {
        self.delays.lock().unwrap().extend(delays);
    }

    fn fail_next_about(&self, subscription: i64, statuses: &[u16]) {
        let mut for_one = self.answers_for.lock().unwrap();
        for_one.extend(statuses.iter().map(|s| (subscription, *s)));
    }
}

// ---- the world ----

struct World {
    sim: SimHandle,
    client: Arc<NicepayClient>,
    clock: ManualClock,
    db: TestDb,
    receiver: Receiver,
}

impl World {
    async fn new(db: TestDb) -> World {
        let clock = ManualClock::new(kst("2027-03-01 10:00"));
        let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let s = settings(&sim.base_url(), Charset::Utf8, EdiType::Json);
        let client = Arc::new(NicepayClient::new(s, Arc::new(clock.clone())).unwrap());
        World {
            sim,
            client,
            clock,
            db,
            receiver: Receiver::start().await,
        }
    }

    /// An engine that writes no upcoming notices: the delivery tests count other events.
    fn engine(&self) -> Engine {
        self.engine_with(NoticeLeads::default())
    }

    /// An engine telling `charge.upcoming` at `leads`.
    fn engine_with(&self, leads: NoticeLeads) -> Engine {
        self.engine_named("webhooks", leads)
    }

    fn engine_named(&self, owner: &str, leads: NoticeLeads) -> Engine {
        let policy = Policy {
            retry_after: vec![Duration::from_secs(86_400)],
            ..Policy::default()
        };
        let mut s = EngineSettings::new(owner.into(), policy, Duration::from_secs(4));
        s.upcoming_lead = leads;
        s.transient = RetryPolicy::new(
            Duration::from_millis(10),
            Duration::from_millis(20),
            Duration::from_millis(100),
        );
        s.hooks = Hooks::default();
        let clock: SharedClock = Arc::new(self.clock.clone());
        Engine::new(self.db.store.clone(), self.client.clone(), clock, s)
    }

    fn deliverer(&self, retry_after: Vec<Duration>) -> Deliverer {
        self.deliverer_with(retry_after, Duration::from_secs(5))
    }

    fn deliverer_with(&self, retry_after: Vec<Duration>, timeout: Duration) -> Deliverer {
        let config = WebhookConfig {
            timeout,
            retry_after,
            ..self.webhook_config()
        };
        self.deliverer_on(config, Arc::new(self.clock.clone()), "webhooks")
    }

    /// `[webhook]` pointing at the receiver, the rest as configured by default.
    fn webhook_config(&self) -> WebhookConfig {
        WebhookConfig {
            url: Some(reqwest::Url::parse(&self.receiver.url).unwrap()),
            secret: Some(WebhookSecret::parse(SECRET).unwrap()),
            ..WebhookConfig::default()
        }
    }

    /// A deliverer (an instance called `owner`) on `clock`.
    fn deliverer_on(&self, config: WebhookConfig, clock: SharedClock, owner: &str) -> Deliverer {
        Deliverer::new(self.db.store.clone(), &config, clock, owner.into())
            .unwrap()
            .unwrap()
    }

    /// The merchant cancels subscription `id`.
    async fn cancel(&self, id: i64) {
        self.db
            .store
            .write(move |c| {
                Ok(diesel::update(subscriptions::table.find(id))
                    .set(subscriptions::status.eq("cancelled"))
                    .execute(c)?)
            })
            .await
            .unwrap();
    }

    /// A monthly subscription due five minutes ago, on a card with `number`.
    async fn add(&self, name: &str, number: &str) -> i64 {
        let bid = issue(&self.client, number, &format!("bk-{name}")).await;
        let row = monthly(
            name,
            &bid,
            5_000,
            self.clock.now() - chrono::Duration::minutes(5),
        );
        self.db.store.insert_subscription(row).await.unwrap()
    }

    /// A monthly subscription first due at `anchor`, on a card with `number`.
    async fn add_at(&self, name: &str, number: &str, anchor: chrono::DateTime<chrono::Utc>) -> i64 {
        let bid = issue(&self.client, number, &format!("bk-{name}")).await;
        let row = monthly(name, &bid, 5_000, anchor);
        self.db.store.insert_subscription(row).await.unwrap()
    }

    /// Sets a merchant column of subscription `id`.
    async fn set_amount(&self, id: i64, amount: i64) {
        self.db
            .store
            .write(move |c| {
                Ok(diesel::update(subscriptions::table.find(id))
                    .set(subscriptions::amount.eq(amount))
                    .execute(c)?)
            })
            .await
            .unwrap();
    }

    /// The outbox's events of subscription `id`, oldest first: (outbox id, type, data).
    async fn outbox_of(&self, id: i64) -> Vec<(i64, String, Value)> {
        let mut rows = self
            .db
            .store
            .webhooks(None, Some(id), 10_000)
            .await
            .unwrap();
        rows.reverse();
        rows.into_iter()
            .map(|r| {
                let body: Value = serde_json::from_str(&r.body).unwrap();
                (r.id, r.kind, body["data"].clone())
            })
            .collect()
    }

    /// The upcoming notices of subscription `id`, oldest first: (cycle, lead, amount,
    /// previous amount, amount changed).
    async fn notices_of(&self, id: i64) -> Vec<(i64, String, i64, Option<i64>, bool)> {
        self.outbox_of(id)
            .await
            .into_iter()
            .filter(|(_, kind, _)| kind == "charge.upcoming")
            .map(|(_, _, d)| {
                (
                    d["cycle"].as_i64().unwrap(),
                    d["lead"].as_str().unwrap().to_owned(),
                    d["amount"].as_i64().unwrap(),
                    d["previous_amount"].as_i64(),
                    d["amount_changed"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    fn advance(&self, secs: i64) {
        self.clock.advance(chrono::Duration::seconds(secs));
    }
}

fn types_of(got: &[Received], id: i64) -> Vec<String> {
    got.iter()
        .filter(|r| r.subscription() == id)
        .map(|r| r.kind().to_owned())
        .collect()
}

// ---- every event type ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_billing_run_arrives_signed() {
    for db in databases("webhooks_all").await {
        let label = db.label;
        let w = World::new(db).await;
        // The default lead (7 days): each cycle charged here was due already, so its notice
        // goes out with its first attempt, ahead of it.
        let engine = w.engine_with(WebhookConfig::default().upcoming_lead);
        let approved = w.add("ok", "9410123456780001").await;
        let declined = w.add("poor", "9410123456780002").await;
        let expired = w.add("expired", "9410123456780003").await;
        let cancelled = w.add("leaving", "9410123456780011").await;
        let bad = w.add("bad", "9410123456780012").await;
        let ending = w.add("once", "9410123456780013").await;
        w.db.store
            .write(move |c| {
                diesel::update(subscriptions::table.find(bad))
                    .set(subscriptions::amount.eq(0))
                    .execute(c)?;
                diesel::update(subscriptions::table.find(ending))
                    .set(subscriptions::max_cycles.eq(Some(1)))
                    .execute(c)?;
                Ok(())
            })
            .await
            .unwrap();
        engine.pass().await.unwrap();
        // The merchant cancels one; a day later dunning gives up on the declined card, and the
        // one-cycle subscription has ended.
        w.cancel(cancelled).await;
        w.advance(86_400 + 60);
        engine.pass().await.unwrap();
        engine.pass().await.unwrap();

        let deliverer = w.deliverer(vec![Duration::from_secs(60)]);
        let report = deliverer.drain(false).await.unwrap();
        let got = w.receiver.got();
        assert!(
            got.iter().all(|r| r.verified),
            "{label}: a signature did not verify: {got:#?}"
        );
        assert_eq!(report.delivered, got.len(), "{label}: {report:?}");
        assert_eq!(
            types_of(&got, approved),
            ["charge.upcoming", "charge.approved"],
            "{label}"
        );
        assert_eq!(
            types_of(&got, declined),
            [
                "charge.upcoming",
                "charge.declined",
                "charge.declined",
                "subscription.past_due"
            ],
            "{label}"
        );
        assert_eq!(
            types_of(&got, expired),
            [
                "charge.upcoming",
                "charge.failed",
                "subscription.card_invalid"
            ],
            "{label}"
        );
        assert_eq!(
            types_of(&got, cancelled),
            [
                "charge.upcoming",
                "charge.approved",
                "subscription.cancelled",
                "billkey.removed"
            ],
            "{label}"
        );
        // A row that would not be charged is not announced either.
        assert_eq!(types_of(&got, bad), ["subscription.invalid"], "{label}");
        assert_eq!(
            types_of(&got, ending),
            ["charge.upcoming", "charge.approved", "subscription.ended"],
            "{label}"
        );

        // The fields of each kind.
        let one = |id: i64, kind: &str| {
            got.iter()
                .find(|r| r.subscription() == id && r.kind() == kind)
                .unwrap_or_else(|| panic!("{label}: no {kind} for {id}"))
                .json
                .clone()
        };
        let a = one(approved, "charge.approved");
        assert_eq!(a["data"]["external_id"], "ok", "{label}: {a}");
        assert_eq!(a["data"]["moid"], format!("S{approved}-C1-A1"), "{label}");
        assert_eq!(a["data"]["amount"], 5_000, "{label}");
        assert_eq!(a["data"]["result_code"], "3001", "{label}");
        assert!(
            a["data"]["tid"].as_str().is_some_and(|t| t.len() == 30),
            "{label}: {a}"
        );
        assert!(
            a["data"]["auth_code"].is_string() && a["data"]["approved_at"].is_string(),
            "{label}: {a}"
        );
        assert!(
            chrono::DateTime::parse_from_rfc3339(a["timestamp"].as_str().unwrap()).is_ok(),
            "{label}: {a}"
        );
        let u = one(approved, "charge.upcoming");
        assert_eq!(u["data"]["external_id"], "ok", "{label}: {u}");
        assert_eq!(u["data"]["cycle"], 1, "{label}: {u}");
        assert_eq!(u["data"]["amount"], 5_000, "{label}: {u}");
        assert_eq!(u["data"]["previous_amount"], Value::Null, "{label}: {u}");
        assert_eq!(u["data"]["amount_changed"], true, "{label}: {u}");
        assert_eq!(u["data"]["lead"], "7d", "{label}: {u}");
        assert_eq!(
            u["data"]["due_at"],
            (w.clock.now() - chrono::Duration::seconds(86_400 + 60 + 300))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "{label}: {u}"
        );
        let d = one(declined, "charge.declined");
        assert_eq!(d["data"]["result_code"], "3095", "{label}: {d}");
        assert!(d["data"]["next_attempt_at"].is_string(), "{label}: {d}");
        let f = one(expired, "charge.failed");
        assert_eq!(f["data"]["state"], "card_invalid", "{label}: {f}");
        let p = one(declined, "subscription.past_due");
        assert_eq!(p["data"]["status"], "past_due", "{label}: {p}");
        let r = one(cancelled, "billkey.removed");
        let suffix = r["data"]["bid_suffix"].as_str().unwrap();
        assert_eq!(suffix.chars().count(), 4, "{label}: {r}");
        let i = one(bad, "subscription.invalid");
        assert!(
            i["data"]["reason"].as_str().unwrap().starts_with("amount"),
            "{label}: {i}"
        );
        // Nothing is delivered twice when all went well, and ids are unique.
        let mut ids: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), got.len(), "{label}");
        assert_eq!(deliverer.drain(true).await.unwrap().tried(), 0, "{label}");
        w.sim.shutdown().await;
    }
}

// ---- upcoming notices ----

/// `charge.upcoming` with the Act's leads (30 and 7 days): each (cycle, lead) is told once, that
/// long ahead, or at once when the cycle comes due sooner (a new subscription); never after
/// the cycle's charge; with the amount to be charged and the last approved one; not while
/// paused, not for a row that would not be charged; and once however many instances tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upcoming_notices_are_told_once_per_cycle_and_lead_and_never_after_the_charge() {
    const DAY: i64 = 86_400;
    for db in databases("webhooks_upcoming").await {
        let label = db.label;
        let w = World::new(db).await;
        let leads = NoticeLeads::new([
            Duration::from_secs(30 * DAY as u64),
            Duration::from_secs(7 * DAY as u64),
        ]);
        let engine = w.engine_with(leads.clone());
        let t0 = w.clock.now();
        let far = w
            .add_at("far", "9410123456780061", t0 + chrono::Duration::days(40))
            .await;
        let soon = w
            .add_at("soon", "9410123456780062", t0 + chrono::Duration::days(3))
            .await;
        let now_due = w
            .add_at("due", "9410123456780063", t0 - chrono::Duration::minutes(5))
            .await;
        let paused = w
            .add_at("paused", "9410123456780064", t0 + chrono::Duration::days(3))
            .await;
        let bad = w
            .add_at("bad", "9410123456780065", t0 + chrono::Duration::days(3))
            .await;
        w.set_amount(bad, 0).await;
        w.db.store
            .write(move |c| {
                Ok(diesel::update(subscriptions::table.find(paused))
                    .set(subscriptions::status.eq("paused"))
                    .execute(c)?)
            })
            .await
            .unwrap();

        let report = engine.pass().await.unwrap();
        let both = |cycle: i64, amount: i64, previous: Option<i64>| {
            vec![
                (
                    cycle,
                    "30d".to_owned(),
                    amount,
                    previous,
                    previous != Some(amount),
                ),
                (
                    cycle,
                    "7d".to_owned(),
                    amount,
                    previous,
                    previous != Some(amount),
                ),
            ]
        };
        // 40 days ahead: nothing yet. 3 days ahead, new: both leads at once. Due now: both,
        // in the transaction of its attempt, ahead of the approval.
        assert_eq!(w.notices_of(far).await, [], "{label}");
        assert_eq!(w.notices_of(soon).await, both(1, 5_000, None), "{label}");
        assert_eq!(w.notices_of(now_due).await, both(1, 5_000, None), "{label}");
        let kinds: Vec<String> = w
            .outbox_of(now_due)
            .await
            .into_iter()
            .map(|r| r.1)
            .collect();
        assert_eq!(
            kinds,
            ["charge.upcoming", "charge.upcoming", "charge.approved"],
            "{label}"
        );
        assert_eq!(w.notices_of(paused).await, [], "{label}: paused");
        assert_eq!(
            w.notices_of(bad).await,
            [],
            "{label}: amount 0 is not announced"
        );
        // Counted by the pass: those told ahead of an attempt (not those told with one).
        assert_eq!(report.notices, 2, "{label}: {report:?}");
        // The notice's due time is the cycle's.
        let (_, _, d) = w.outbox_of(soon).await.remove(0);
        assert_eq!(
            d["due_at"],
            (t0 + chrono::Duration::days(3)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "{label}: {d}"
        );
        // Passes meanwhile tell nothing again.
        assert_eq!(engine.pass().await.unwrap().notices, 0, "{label}");

        // 30 days before `far` comes due: its first notice, and only that.
        w.advance(10 * DAY - 60);
        engine.pass().await.unwrap();
        assert_eq!(w.notices_of(far).await, [], "{label}: a minute early");
        w.advance(61);
        engine.pass().await.unwrap();
        assert_eq!(
            w.notices_of(far).await,
            both(1, 5_000, None)[..1],
            "{label}"
        );
        // `soon` was charged meanwhile (3 days in): its next cycle (a month after) is 30 days
        // away or less, so told now, with the last approved amount.
        let soon_notices = w.notices_of(soon).await;
        assert_eq!(
            soon_notices[2..],
            both(2, 5_000, Some(5_000))[..1],
            "{label}"
        );
        // The merchant raises `far` before its 7-day notice and `soon` before its cycle 2's.
        w.set_amount(far, 7_000).await;
        w.set_amount(soon, 6_000).await;
        // Seven days before `far` comes due.
        w.advance(23 * DAY);
        engine.pass().await.unwrap();
        assert_eq!(
            w.notices_of(far).await,
            [
                (1, "30d".to_owned(), 5_000, None, true),
                (1, "7d".to_owned(), 7_000, None, true),
            ],
            "{label}"
        );
        assert_eq!(
            w.notices_of(soon).await[3],
            (2, "7d".to_owned(), 6_000, Some(5_000), true),
            "{label}"
        );

        // Months on, each charged cycle of each subscription had both notices, once each,
        // before its approval; the paused row none, the bad row none (and it is invalid now).
        for _ in 0..4 {
            w.advance(15 * DAY);
            engine.pass().await.unwrap();
            engine.pass().await.unwrap();
        }
        for id in [far, soon, now_due] {
            let events = w.outbox_of(id).await;
            let mut told: Vec<(i64, String)> = Vec::new();
            let mut approved = 0;
            for (_, kind, d) in &events {
                let cycle = d["cycle"].as_i64().unwrap_or(0);
                match kind.as_str() {
                    "charge.upcoming" => {
                        let key = (cycle, d["lead"].as_str().unwrap().to_owned());
                        assert!(!told.contains(&key), "{label}: {id} told {key:?} twice");
                        told.push(key);
                    }
                    "charge.approved" => {
                        approved += 1;
                        for lead in ["30d", "7d"] {
                            assert!(
                                told.contains(&(cycle, lead.to_owned())),
                                "{label}: {id} cycle {cycle} charged before its {lead} notice: \
                                 {events:#?}"
                            );
                        }
                    }
                    _ => {}
                }
            }
            assert!(approved >= 2, "{label}: {id}: {events:#?}");
        }
        assert_eq!(w.notices_of(paused).await, [], "{label}");
        assert_eq!(w.notices_of(bad).await, [], "{label}");

        // Three instances telling at once: each notice once.
        let t = w.clock.now();
        let mut many = Vec::new();
        for i in 0..12 {
            many.push(
                w.add_at(
                    &format!("many-{i}"),
                    "9410123456780066",
                    t + chrono::Duration::days(3),
                )
                .await,
            );
        }
        let engines: Vec<Engine> = (0..3)
            .map(|i| w.engine_named(&format!("instance-{i}"), leads.clone()))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for e in engines {
            tasks.spawn(async move { e.pass().await.unwrap().notices });
        }
        let mut told = 0;
        while let Some(n) = tasks.join_next().await {
            told += n.unwrap();
        }
        for id in &many {
            assert_eq!(w.notices_of(*id).await, both(1, 5_000, None), "{label}");
        }
        assert_eq!(
            told,
            2 * many.len(),
            "{label}: told by the three passes together"
        );
        w.sim.shutdown().await;
    }
}

// ---- failing receivers ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_each_event_again_under_the_same_id() {
    for db in databases("webhooks_retry").await {
        let label = db.label;
        let w = World::new(db).await;
        let engine = w.engine();
        let id = w.add("retry", "9410123456780021").await;
        engine.pass().await.unwrap();
        let deliverer = w.deliverer(vec![Duration::from_secs(60), Duration::from_secs(300)]);

        // 500, then 503: tried again after 1 min, then after 5 min, then delivered.
        w.receiver.fail_next(&[500, 503]);
        let r = deliverer.deliver_due(false).await.unwrap();
        assert_eq!((r.failed, r.delivered), (1, 0), "{label}: {r:?}");
        assert_eq!(
            deliverer.deliver_due(false).await.unwrap().tried(),
            0,
            "{label}: not due yet"
        );
        w.advance(61);
        assert_eq!(
            deliverer.deliver_due(false).await.unwrap().failed,
            1,
            "{label}"
        );
        w.advance(299);
        assert_eq!(
            deliverer.deliver_due(false).await.unwrap().tried(),
            0,
            "{label}"
        );
        w.advance(2);
        assert_eq!(
            deliverer.deliver_due(false).await.unwrap().delivered,
            1,
            "{label}"
        );
        let got = w.receiver.got();
        assert_eq!(
            got.iter().map(|r| r.status).collect::<Vec<_>>(),
            [500, 503, 200],
            "{label}"
        );
        assert!(
            got.iter().all(|r| r.id == got[0].id && r.verified),
            "{label}: {got:#?}"
        );
        assert_eq!(types_of(&got, id), ["charge.approved"; 3], "{label}");

        // Failing every try: dead after the last, and `retry` puts it back.
        let rows = w.db.store.webhooks(None, Some(id), 10).await.unwrap();
        assert_eq!(
            (rows[0].state.as_str(), rows[0].attempts),
            ("delivered", 3),
            "{label}"
        );
        w.cancel(id).await;
        engine.pass().await.unwrap();
        w.receiver.fail_next(&[500, 500, 500]);
        deliverer.deliver_due(false).await.unwrap();
        w.advance(61);
        deliverer.deliver_due(false).await.unwrap();
        w.advance(301);
        let r = deliverer.deliver_due(false).await.unwrap();
        assert_eq!(r.dead, 1, "{label}: {r:?}");
        let dead =
            w.db.store
                .webhooks(Some(DeliveryState::Dead), Some(id), 10)
                .await
                .unwrap();
        assert_eq!(dead.len(), 1, "{label}");
        assert_eq!(dead[0].last_status, Some(500), "{label}");
        // Put back, the dead event goes first, then the two behind it.
        let n =
            w.db.store
                .retry_webhooks(w.clock.now(), None)
                .await
                .unwrap();
        assert_eq!(n, 1, "{label}");
        let r = deliverer.drain(false).await.unwrap();
        assert_eq!(r.delivered, 2, "{label}: {r:?}");
        let kinds = types_of(&w.receiver.delivered(), id);
        assert_eq!(
            kinds,
            [
                "charge.approved",
                "subscription.cancelled",
                "billkey.removed"
            ],
            "{label}"
        );
        w.sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriptions_events_arrive_in_order() {
    for db in databases("webhooks_order").await {
        let label = db.label;
        let w = World::new(db).await;
        let engine = w.engine();
        let first = w.add("first", "9410123456780031").await;
        let other = w.add("other", "9410123456780032").await;
        engine.pass().await.unwrap();
        w.cancel(first).await;
        engine.pass().await.unwrap();
        // The first event of `first` fails: its later events wait; `other` is not held up.
        let deliverer = w.deliverer(vec![Duration::from_secs(60)]);
        w.receiver.fail_next_about(first, &[500]);
        deliverer.drain(false).await.unwrap();
        let got = w.receiver.got();
        let firsts: Vec<(&str, u16)> = got
            .iter()
            .filter(|r| r.subscription() == first)
            .map(|r| (r.kind(), r.status))
            .collect();
        assert_eq!(firsts, [("charge.approved", 500)], "{label}: {got:#?}");
        assert_eq!(types_of(&got, other), ["charge.approved"], "{label}");
        w.advance(61);
        deliverer.drain(false).await.unwrap();
        assert_eq!(
            types_of(&w.receiver.delivered(), first),
            [
                "charge.approved",
                "subscription.cancelled",
                "billkey.removed"
            ],
            "{label}"
        );
        w.sim.shutdown().await;
    }
}

// ---- several deliverers, one database ----

/// Three deliverers (three instances) share one outbox: every event is delivered, none by two
/// at once (the receiver answers slowly, so claims overlap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_deliver_each_event_once() {
    for db in databases("webhooks_three").await {
        let label = db.label;
        let w = World::new(db).await;
        let engine = w.engine();
        let mut ids = Vec::new();
        for i in 0..30 {
            ids.push(w.add(&format!("three-{i}"), "9410123456780041").await);
        }
        engine.pass().await.unwrap();
        let deliverers: Vec<Deliverer> = (0..3)
            .map(|i| {
                let clock: SharedClock = Arc::new(w.clock.clone());
                w.deliverer_on(w.webhook_config(), clock, &format!("instance-{i}"))
            })
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for d in deliverers {
            tasks.spawn(async move { d.drain(false).await.unwrap() });
        }
        let mut per_instance = Vec::new();
        while let Some(r) = tasks.join_next().await {
            per_instance.push(r.unwrap().delivered);
        }
        let got = w.receiver.got();
        let mut seen: Vec<&str> = got.iter().map(|r| r.id.as_str()).collect();
        seen.sort_unstable();
        let before = seen.len();
        seen.dedup();
        assert_eq!(before, seen.len(), "{label}: an event was delivered twice");
        assert_eq!(
            per_instance.iter().sum::<usize>(),
            ids.len(),
            "{label}: {per_instance:?}"
        );
        for id in &ids {
            assert_eq!(types_of(&got, *id), ["charge.approved"], "{label}");
        }
        eprintln!("{label}: deliveries per instance {per_instance:?}");
        w.sim.shutdown().await;
    }
}

// ---- the daemon: SIGKILLed between the changes and their delivery ----

/// The daemon charges while the receiver is down and is SIGKILLed; the events wait in the
/// outbox (the health file shows them). Restarted with the receiver up but slow, it is
/// SIGKILLed again with a delivery in flight; a third run delivers every event, signed, what
/// was cut again under the same id and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_before_a_sigkill_are_delivered_after_the_restart() {
    for db in databases("webhooks_daemon").await {
        let label = db.label;
        let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
            .await
            .unwrap();
        let client = NicepayClient::new(
            settings(&sim.base_url(), Charset::Utf8, EdiType::Json),
            Arc::new(nicebill::clock::SystemClock),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // A port nobody listens on yet.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let key = dir.path().join("merchant.key");
        std::fs::write(&key, KEY).unwrap();
        let secret = dir.path().join("webhook.secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let health = dir.path().join("health.json");
        let config = dir.path().join("nicebill.toml");
        let private = |path: &std::path::Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        private(&key);
        private(&secret);
        std::fs::write(
            &config,
            format!(
                r#"[nicepay]
mid = "nictest04m"
merchant_key_file = "{key}"
base_url = "{sim}"
connect_timeout = "1s"
read_timeout = "1s"

[database]
url = "{db}"

[scheduler]
tick = "* * * * * *"
settle_margin = "1s"
lease = "2s"

[retry]
# An attempt that timed out before NICEPAY saw it (a loaded machine) is sent again soon.
resend_after = "1s"
request_error_retry = "1s"

[health]
file = "{health}"

[webhook]
url = "http://{addr}/hooks"
secret_file = "{secret}"
timeout = "5s"
retry_after = ["1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]
"#,
                key = key.display(),
                sim = sim.base_url(),
                db = db.url,
                health = health.display(),
                secret = secret.display(),
            ),
        )
        .unwrap();
        private(&config);
        const N: usize = 12;
        let anchor = chrono::Utc::now() - chrono::Duration::hours(1);
        let mut ids = Vec::new();
        for i in 0..N {
            let bid = issue(&client, "9410123456780051", &format!("d-{label}-{i}")).await;
            let row = monthly(&format!("d-{i}"), &bid, 1_000 + i as i64, anchor);
            ids.push(db.store.insert_subscription(row).await.unwrap());
        }
        let mut first = Killed(
            support::process::bin("warn")
                .args(["run", "--config"])
                .arg(&config)
                .spawn()
                .unwrap(),
        );
        support::campaign::wait_approved(label, &db.store, N, Duration::from_secs(60)).await;
        // The health file tells of the backlog (a pass after the charges wrote it).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let h: Option<Value> = std::fs::read(&health)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            // Each charge and its upcoming notice (the default lead; told with the attempt).
            if h.as_ref()
                .is_some_and(|h| h["webhooks"]["backlog"] == 2 * N as u64)
            {
                assert_eq!(h.unwrap()["webhooks"]["delivering"], true, "{label}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: health {h:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        first.0.kill().unwrap();
        let _ = first.0.wait();

        // The receiver comes up, answering its first requests slowly; the second daemon is
        // SIGKILLed while a delivery is in flight.
        let receiver = Receiver::start_on(&addr.to_string()).await;
        receiver.delay_next(&[Duration::from_secs(2); 3]);
        let run = || {
            Killed(
                support::process::bin("warn")
                    .args(["run", "--config"])
                    .arg(&config)
                    .spawn()
                    .unwrap(),
            )
        };
        let mut second = run();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while receiver.arrived() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: nothing sent"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        second.0.kill().unwrap();
        let _ = second.0.wait();
        let cut = receiver.arrived();

        // A third delivers everything: what was cut again, under the same id and body.
        let _third = run();
        let distinct = |got: &[Received]| {
            let mut seen = std::collections::HashSet::new();
            got.iter()
                .filter(|r| seen.insert(r.id.clone()))
                .cloned()
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        while distinct(&receiver.delivered()).len() < 2 * N {
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: {} of {} delivered",
                distinct(&receiver.delivered()).len(),
                2 * N
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let all = receiver.got();
        assert!(all.iter().all(|r| r.verified), "{label}: {all:#?}");
        for r in &all {
            let first = all.iter().find(|o| o.id == r.id).unwrap();
            assert_eq!(r.body, first.body, "{label}: a redelivery changed its body");
        }
        let got = distinct(&receiver.delivered());
        for id in &ids {
            assert_eq!(
                types_of(&got, *id),
                ["charge.upcoming", "charge.approved"],
                "{label}"
            );
        }
        eprintln!(
            "{label}: {cut} request(s) in flight at the SIGKILL; {} requests for {} events",
            all.len(),
            got.len()
        );
        // Each delivery is recorded right after its answer.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let pending = db
                .store
                .webhooks(Some(DeliveryState::Pending), None, 100)
                .await
                .unwrap();
            if pending.is_empty() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{label}: {pending:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        sim.shutdown().await;
    }
}

// ---- unresolved for long ----

/// An attempt whose answer was lost and whose lookups fail is told once as
/// `charge.unresolved` after the health threshold; its settled outcome follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_unresolved_for_long_is_told_once() {
    use nicebill::gateway::nicepay::Api;
    use nicebill::sim::{FaultMode, FaultRule};
    for db in databases("webhooks_unresolved").await {
        let label = db.label;
        let w = World::new(db).await;
        let engine = w.engine();
        let id = w.add("lost", "9410123456780061").await;
        w.sim.set_faults(vec![
            FaultRule {
                mode: FaultMode::DropAfter,
                api: Some(Api::Approve),
                count: Some(1),
                probability: 1.0,
            },
            FaultRule {
                mode: FaultMode::Http500,
                api: Some(Api::Status),
                count: None,
                probability: 1.0,
            },
        ]);
        engine.pass().await.unwrap();
        let store = &w.db.store;
        let threshold = Duration::from_secs(15 * 60);
        assert_eq!(
            store
                .notice_unresolved(w.clock.now(), threshold)
                .await
                .unwrap(),
            0,
            "{label}: not yet"
        );
        w.advance(15 * 60 + 1);
        assert_eq!(
            store
                .notice_unresolved(w.clock.now(), threshold)
                .await
                .unwrap(),
            1,
            "{label}"
        );
        assert_eq!(
            store
                .notice_unresolved(w.clock.now(), threshold)
                .await
                .unwrap(),
            0,
            "{label}: once"
        );
        let deliverer = w.deliverer(vec![Duration::from_secs(60)]);
        deliverer.drain(false).await.unwrap();
        let got = w.receiver.delivered();
        assert_eq!(types_of(&got, id), ["charge.unresolved"], "{label}");
        let u = &got[0].json["data"];
        assert_eq!(u["moid"], format!("S{id}-C1-A1"), "{label}: {u}");
        assert!(
            u["since"].is_string() && u["tid"].is_string(),
            "{label}: {u}"
        );

        // Lookups work again: the attempt is found approved, and that is told next.
        w.sim.set_faults(vec![]);
        w.advance(3600);
        engine.pass().await.unwrap();
        deliverer.drain(false).await.unwrap();
        assert_eq!(
            types_of(&w.receiver.delivered(), id),
            ["charge.unresolved", "charge.approved"],
            "{label}"
        );
        w.sim.shutdown().await;
    }
}

// ---- a receiver too slow to answer ----

/// A receiver that does not answer within `[webhook] timeout` fails the try (recorded with no
/// status), and the event is delivered at the next try under the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_does_not_answer_in_time_gets_the_event_again() {
    for db in databases("webhooks_timeout").await {
        let label = db.label;
        let w = World::new(db).await;
        let engine = w.engine();
        let id = w.add("slow", "9410123456780071").await;
        engine.pass().await.unwrap();
        let deliverer = w.deliverer_with(vec![Duration::from_secs(60)], Duration::from_millis(300));
        w.receiver.delay_next(&[Duration::from_secs(3)]);
        let r = deliverer.deliver_due(false).await.unwrap();
        assert_eq!((r.failed, r.delivered), (1, 0), "{label}: {r:?}");
        let row = &w.db.store.webhooks(None, Some(id), 10).await.unwrap()[0];
        assert_eq!(
            (row.state.as_str(), row.attempts, row.last_status),
            ("pending", 1, None),
            "{label}"
        );
        assert!(
            row.last_error
                .as_deref()
                .is_some_and(|e| e.contains("no answer within")),
            "{label}: {row:?}"
        );
        w.advance(61);
        let r = deliverer.deliver_due(false).await.unwrap();
        assert_eq!(r.delivered, 1, "{label}: {r:?}");
        // Delivered at the second try, under the event's one id.
        let row = &w.db.store.webhooks(None, Some(id), 10).await.unwrap()[0];
        assert_eq!(
            (row.state.as_str(), row.attempts),
            ("delivered", 2),
            "{label}"
        );
        let got = w.receiver.delivered();
        assert_eq!(got.len(), 1, "{label}: {got:#?}");
        assert!(
            got[0].id == row.event_id && got[0].verified,
            "{label}: {got:#?}"
        );
        w.sim.shutdown().await;
    }
}

// ---- the published verifier ----

/// What a merchant runs: the Standard Webhooks Python package (`pip install standardwebhooks`,
/// which `.ci/run` installs) verifies a real delivery. Says it skipped when Python or the
/// package is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_python_library_verifies_a_delivery() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "the_published_python_library_verifies_a_delivery: skipped (python3 with the \
             standardwebhooks package is missing; pip install standardwebhooks)"
        );
        return;
    }
    for db in databases("webhooks_python").await {
        let label = db.label;
        let w = World::new(db).await;
        let engine = w.engine();
        let id = w.add("python", "9410123456780081").await;
        engine.pass().await.unwrap();
        // The library refuses timestamps five minutes away from its own clock: deliver on the
        // real one.
        let deliverer = w.deliverer_on(
            w.webhook_config(),
            Arc::new(nicebill::clock::SystemClock),
            "python",
        );
        // (The event was written on the world's clock, ahead of the real one: sent now.)
        assert_eq!(deliverer.drain(true).await.unwrap().delivered, 1, "{label}");
        let got = w.receiver.delivered();
        let r = &got[0];
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body.json");
        std::fs::write(&body, &r.body).unwrap();
        let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
secret, body_path, msg_id, timestamp, signature = sys.argv[1:6]
body = open(body_path, "rb").read()
headers = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
event = Webhook(secret).verify(body, headers)
print(event["type"], event["data"]["subscription_id"])
try:
    Webhook(secret).verify(body + b" ", headers)
    print("tampered body accepted")
except Exception:
    print("tampered body refused")
"#;
        let out = std::process::Command::new("python3")
            .args(["-c", script, SECRET])
            .arg(&body)
            .args([&r.id, &r.timestamp, &r.signature])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{label}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            [
                format!("charge.approved {id}").as_str(),
                "tampered body refused"
            ],
            "{label}"
        );
        w.sim.shutdown().await;
    }
}
