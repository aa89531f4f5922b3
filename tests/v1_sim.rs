//! The simulator's v1 REST API (`/v1/…`), driven with raw HTTP requests and v1's formulas
//! (`gateway::nicepay_v1::crypto`), never with a v1 client: authentication, the seven calls,
//! the payment object and its signature, orderId reuse, the netcancel window, lookups, length
//! limits in UTF-8 bytes, and faults.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use nicebill::clock::ManualClock;
use nicebill::domain::ExposeSecret;
use nicebill::gateway::nicepay::Api;
use nicebill::gateway::nicepay_v1::crypto::{self, EncMode};
use nicebill::gateway::nicepay_v1::{ClientKey, SecretKey};
use nicebill::sim::{FaultMode, FaultRule, LedgerState, SimConfig, SimHandle, Throttle};
use serde_json::{Value, json};

const CLIENT: &str = "58e3b578555e45738d6b569e53d5ae54";
const SECRET: &str = "4f13ca267dfa4fc6964148bedcda15ef";
const OTHER_CLIENT: &str = "S2_af4543a0be4d49a98122e01ec2059a56";
const OTHER_SECRET: &str = "9eb85607103646da9f9c02b128f2e5ee";
const CARD: &str = "4000000000000001";
const DECLINED_CARD: &str = "4000000000000002";

struct Env {
    sim: SimHandle,
    clock: ManualClock,
    http: reqwest::Client,
    base: String,
    secret: SecretKey,
    auth: String,
}

fn basic(client: &str, secret: &str) -> String {
    let client = ClientKey::new(client).unwrap();
    let secret = SecretKey::new(secret).unwrap();
    crypto::basic_authorization(&client, &secret)
        .expose_secret()
        .to_owned()
}

impl Env {
    /// A simulator on a manual clock at 2026-12-25 10:00 KST.
    async fn start() -> Env {
        let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 12, 25, 1, 0, 0).unwrap());
        let mut config = SimConfig::new(([127, 0, 0, 1], 0).into());
        config.clock = std::sync::Arc::new(clock.clone());
        let sim = SimHandle::start(config).await.unwrap();
        Env {
            base: sim.base_url(),
            sim,
            clock,
            http: reqwest::Client::new(),
            secret: SecretKey::new(SECRET).unwrap(),
            auth: basic(CLIENT, SECRET),
        }
    }

    async fn read(response: reqwest::Result<reqwest::Response>) -> (u16, Value) {
        let response = response.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    async fn post_as(&self, auth: Option<&str>, path: &str, body: &Value) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        Self::read(request.send().await).await
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_as(Some(&self.auth), path, body).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let request = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Authorization", &self.auth);
        Self::read(request.send().await).await
    }

    fn enc_data(&self, card: &str, mode: EncMode, secret: &SecretKey) -> String {
        let plain = crypto::card_plaintext(card, "30", "12", "800101", "12");
        crypto::encrypt(&plain, mode, secret)
    }

    async fn regist(&self, card: &str) -> String {
        let body = json!({
            "encData": self.enc_data(card, EncMode::A2, &self.secret),
            "encMode": "A2",
            "orderId": format!("B-{card}-{}", rand_suffix()),
        });
        let (status, answer) = self.post("/v1/subscribe/regist", &body).await;
        assert_eq!((status, code(&answer)), (200, "0000"), "{answer}");
        answer["bid"].as_str().unwrap().to_owned()
    }

    async fn approve(&self, bid: &str, order_id: &str, amount: i64) -> (u16, Value) {
        let body = json!({
            "orderId": order_id,
            "amount": amount,
            "goodsName": "월간 구독",
            "cardQuota": "0",
            "useShopInterest": false,
        });
        self.post(&format!("/v1/subscribe/{bid}/payments"), &body)
            .await
    }

    fn verifies(&self, answer: &Value) -> bool {
        crypto::signature_verifies(
            answer["signature"].as_str().unwrap_or(""),
            answer["tid"].as_str().unwrap_or(""),
            answer["amount"].as_i64().unwrap_or(-1),
            answer["ediDate"].as_str().unwrap_or(""),
            &self.secret,
        )
    }

    fn today(&self) -> String {
        use nicebill::clock::Clock;
        crypto::order_date(self.clock.now())
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn code(answer: &Value) -> &str {
    answer["resultCode"].as_str().unwrap_or("")
}

fn once(mode: FaultMode, api: Api) -> Vec<FaultRule> {
    vec![FaultRule {
        mode,
        api: Some(api),
        count: Some(1),
        probability: 1.0,
    }]
}

#[tokio::test]
async fn authentication_is_strict() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    let approve_path = format!("/v1/subscribe/{bid}/payments");
    let body = json!({"orderId": "auth-1", "amount": 1000, "goodsName": "g",
                      "cardQuota": "0", "useShopInterest": false});
    let refused = [
        (None, "U101"),
        (Some(basic(CLIENT, OTHER_SECRET)), "U101"),
        (
            Some(basic("0123456789abcdef0123456789abcdef", SECRET)),
            "U101",
        ),
        (Some("Basic !!notbase64".to_owned()), "U101"),
        (Some("Digest x".to_owned()), "U101"),
        (Some("Bearer 00112233".to_owned()), "U305"),
    ];
    for (auth, want) in refused {
        let (status, answer) = env.post_as(auth.as_deref(), &approve_path, &body).await;
        assert_eq!((status, code(&answer)), (401, want), "{auth:?}: {answer}");
    }
    assert!(env.sim.ledger().is_empty(), "a refused call charged");
    // Another shop's correct keys authenticate, but the bid is not theirs.
    let other = basic(OTHER_CLIENT, OTHER_SECRET);
    let (status, answer) = env.post_as(Some(&other), &approve_path, &body).await;
    assert_eq!((status, code(&answer)), (200, "A255"), "{answer}");

    // Tokens: the same one while valid, refused after expiry, a new one then.
    let (status, _) = env
        .post_as(None, "/_sim/v1_token_lifetime", &json!({"ms": 60_000}))
        .await;
    assert_eq!(status, 200);
    let (status, first) = env.post("/v1/access-token", &json!({})).await;
    assert_eq!((status, code(&first)), (200, "0000"), "{first}");
    assert_eq!(first["tokenType"], "Bearer");
    let token = first["accessToken"].as_str().unwrap().to_owned();
    env.clock.advance(chrono::Duration::seconds(30));
    let (_, again) = env.post("/v1/access-token", &json!({})).await;
    assert_eq!(again["accessToken"], token.as_str());
    assert_eq!(again["expiredAt"], first["expiredAt"]);
    let bearer = format!("Bearer {token}");
    let (status, answer) = env
        .post_as(Some(&bearer), "/v1/access-token", &json!({}))
        .await;
    assert_eq!(
        (status, code(&answer)),
        (401, "U101"),
        "tokens come from Basic only"
    );
    let (status, answer) = env.post_as(Some(&bearer), &approve_path, &body).await;
    assert_eq!((status, code(&answer)), (200, "0000"), "{answer}");
    env.clock.advance(chrono::Duration::seconds(31));
    let body2 = json!({"orderId": "auth-2", "amount": 1000, "goodsName": "g",
                       "cardQuota": "0", "useShopInterest": false});
    let (status, answer) = env.post_as(Some(&bearer), &approve_path, &body2).await;
    assert_eq!((status, code(&answer)), (401, "U305"), "{answer}");
    let (_, renewed) = env.post("/v1/access-token", &json!({})).await;
    assert_ne!(renewed["accessToken"], token.as_str());
    assert_eq!(env.sim.ledger().len(), 1);

    // Unknown paths and wrong methods.
    let (status, answer) = env.post("/v1/nope", &json!({})).await;
    assert_eq!((status, code(&answer)), (404, "U108"));
    let (status, answer) = env.get(&approve_path).await;
    assert_eq!((status, code(&answer)), (405, "U110"));
    let counts = env.sim.request_counts();
    assert_eq!(counts.get("v1_approve"), Some(&9), "{counts:?}");
}

#[tokio::test]
async fn registration_in_both_modes() {
    let env = Env::start().await;
    for (mode, wire) in [(EncMode::Aes128Ecb, None), (EncMode::A2, Some("A2"))] {
        let mut body = json!({
            "encData": env.enc_data(CARD, mode, &env.secret),
            "orderId": format!("reg-{mode:?}"),
        });
        if let Some(wire) = wire {
            body["encMode"] = wire.into();
        }
        let (status, answer) = env.post("/v1/subscribe/regist", &body).await;
        assert_eq!((status, code(&answer)), (200, "0000"), "{mode:?}: {answer}");
        let bid = answer["bid"].as_str().unwrap();
        assert_eq!(bid.len(), 30, "{bid}");
        assert_eq!(answer["tid"].as_str().unwrap().len(), 30);
        assert_eq!(answer["cardName"], "신한");
        // Upper-case hex deciphers too.
        body["encData"] = body["encData"].as_str().unwrap().to_uppercase().into();
        body["orderId"] = format!("reg-upper-{mode:?}").into();
        let (_, answer) = env.post("/v1/subscribe/regist", &body).await;
        assert_eq!(code(&answer), "0000", "{answer}");
    }
    let other = SecretKey::new(OTHER_SECRET).unwrap();
    let a2 = env.enc_data(CARD, EncMode::A2, &env.secret);
    let refused = [
        // A2 data sent as ECB, ECB data sent as A2, an undocumented mode, another key.
        (json!({"encData": a2, "orderId": "r1"}), "A204"),
        (
            json!({"encData": env.enc_data(CARD, EncMode::Aes128Ecb, &env.secret),
                   "encMode": "A2", "orderId": "r2"}),
            "A204",
        ),
        (
            json!({"encData": a2, "encMode": "A3", "orderId": "r3"}),
            "A204",
        ),
        (
            json!({"encData": env.enc_data(CARD, EncMode::A2, &other), "encMode": "A2",
                   "orderId": "r4"}),
            "A204",
        ),
        (
            json!({"encData": "zz", "encMode": "A2", "orderId": "r5"}),
            "A204",
        ),
        (json!({"encMode": "A2", "orderId": "r6"}), "U100"),
        (json!({"encData": a2, "encMode": "A2"}), "U100"),
        (
            json!({"encData": a2, "encMode": "A2", "orderId": 5}),
            "U125",
        ),
    ];
    for (body, want) in refused {
        let (status, answer) = env.post("/v1/subscribe/regist", &body).await;
        assert_eq!((status, code(&answer)), (200, want), "{body}: {answer}");
    }
    // The plaintext must be exactly the manual's: legacy keys are refused.
    let legacy = nicebill::domain::SecretString::from(
        "CardNo=4000000000000001&ExpYear=30&ExpMonth=12&IDNo=800101&CardPw=12".to_owned(),
    );
    let body = json!({"encData": crypto::encrypt(&legacy, EncMode::A2, &env.secret),
                      "encMode": "A2", "orderId": "r7"});
    let (_, answer) = env.post("/v1/subscribe/regist", &body).await;
    assert_eq!(code(&answer), "A204", "{answer}");
    let short_pw = crypto::card_plaintext(CARD, "30", "12", "800101", "");
    let body = json!({"encData": crypto::encrypt(&short_pw, EncMode::A2, &env.secret),
                      "encMode": "A2", "orderId": "r8"});
    let (_, answer) = env.post("/v1/subscribe/regist", &body).await;
    assert_eq!(code(&answer), "F113", "{answer}");
    // Nothing echoes card data.
    assert!(!answer.to_string().contains(CARD));
}

#[tokio::test]
async fn approval_signature_reuse_and_declines() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    let (status, answer) = env.approve(&bid, "S1-C1-A1", 9900).await;
    assert_eq!((status, code(&answer)), (200, "0000"), "{answer}");
    assert_eq!(answer["status"], "paid");
    assert_eq!(answer["orderId"], "S1-C1-A1");
    assert_eq!(answer["amount"], 9900);
    assert_eq!(answer["balanceAmt"], 9900);
    assert_eq!(answer["failedAt"], "0");
    assert_eq!(answer["cancelledAt"], "0");
    assert_eq!(answer["card"]["cardNum"], "400000******0001");
    assert_eq!(answer["card"]["cardQuota"], "0");
    let tid = answer["tid"].as_str().unwrap().to_owned();
    assert_eq!(tid.len(), 30);
    assert!(env.verifies(&answer), "{answer}");
    let ledger = env.sim.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (
            ledger[0].moid.as_str(),
            ledger[0].tid.as_str(),
            ledger[0].amount
        ),
        ("S1-C1-A1", tid.as_str(), 9900)
    );
    assert_eq!(ledger[0].auth_code, answer["approveNo"].as_str().unwrap());

    // A paid orderId is refused, and the refusal charges nothing.
    let (status, answer) = env.approve(&bid, "S1-C1-A1", 9900).await;
    assert_eq!((status, code(&answer)), (200, "U112"), "{answer}");
    assert_eq!(env.sim.ledger(), ledger);

    // A declined card: the payment object with the issuer's code, status failed.
    let declined = env.regist(DECLINED_CARD).await;
    let (status, answer) = env.approve(&declined, "S2-C1-A1", 9900).await;
    assert_eq!((status, code(&answer)), (200, "3095"), "{answer}");
    assert_eq!(answer["status"], "failed");
    assert_ne!(answer["failedAt"], "0");
    assert_eq!(answer["paidAt"], "0");
    assert!(env.verifies(&answer));
    // The simulator's choice: a declined orderId is spent too.
    let (_, answer) = env.approve(&declined, "S2-C1-A1", 9900).await;
    assert_eq!(code(&answer), "U112", "{answer}");
    assert_eq!(env.sim.ledger(), ledger);

    // Field rules: types, values, lengths in UTF-8 bytes.
    let path = format!("/v1/subscribe/{bid}/payments");
    let good = json!({"orderId": "F-1", "amount": 1000, "goodsName": "g", "cardQuota": 0,
                      "useShopInterest": false, "unknownField": [1, 2]});
    let with = |name: &str, value: Value| {
        let mut body = good.clone();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(name);
        } else {
            body[name] = value;
        }
        body
    };
    let cases = [
        (with("amount", json!("1000")), "U127"),
        (with("amount", json!(10.5)), "U127"),
        (with("amount", json!(0)), "U127"),
        (with("amount", Value::Null), "U100"),
        (with("goodsName", Value::Null), "U100"),
        (with("cardQuota", Value::Null), "U100"),
        (with("cardQuota", json!("1")), "3022"),
        (with("cardQuota", json!(true)), "U125"),
        (with("useShopInterest", json!(true)), "3031"),
        (with("useShopInterest", json!("false")), "U125"),
        (with("useShopInterest", Value::Null), "U100"),
        (with("goodsName", json!("가".repeat(14))), "U105"),
        (with("goodsName", json!("구독🙂")), "U125"),
        (with("orderId", json!("x".repeat(65))), "U105"),
        (with("mallReserved", json!("a\"b")), "U125"),
        (with("mallReserved", json!("x".repeat(501))), "U105"),
        (with("buyerTel", json!("010-1234")), "U125"),
        (with("buyerName", json!("가".repeat(11))), "U105"),
        (with("taxFreeAmt", json!(1001)), "U321"),
    ];
    for (body, want) in cases {
        let (status, answer) = env.post(&path, &body).await;
        assert_eq!((status, code(&answer)), (200, want), "{body}: {answer}");
    }
    assert_eq!(env.sim.ledger().len(), 1, "refused requests charged");
    let (status, answer) = env.post(&path, &json!([1])).await;
    assert_eq!((status, code(&answer)), (200, "U125"));
    // 13 Hangul syllables are 39 bytes: accepted; the number form of cardQuota too.
    let body = with("goodsName", json!("가".repeat(13)));
    let (_, answer) = env.post(&path, &body).await;
    assert_eq!(code(&answer), "0000", "{answer}");
    assert_eq!(answer["goodsName"], "가".repeat(13));
    let body = with("orderId", json!("x".repeat(64)));
    let (_, answer) = env.post(&path, &body).await;
    assert_eq!(code(&answer), "0000", "{answer}");
}

#[tokio::test]
async fn sign_data_is_optional_but_checked() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    let path = format!("/v1/subscribe/{bid}/payments");
    let edi = crypto::edi_date(Utc::now());
    let body = |order: &str, sign: Option<String>, edi: Option<&str>| {
        let mut b = json!({"orderId": order, "amount": 1000, "goodsName": "g",
                           "cardQuota": "0", "useShopInterest": false});
        if let Some(sign) = sign {
            b["signData"] = sign.into();
        }
        if let Some(edi) = edi {
            b["ediDate"] = edi.into();
        }
        b
    };
    let good = crypto::sign_data(&["sd-1", &bid, &edi], &env.secret);
    let (_, answer) = env.post(&path, &body("sd-1", Some(good), Some(&edi))).await;
    assert_eq!(code(&answer), "0000", "{answer}");
    let wrong = crypto::sign_data(&["sd-2", "other", &edi], &env.secret);
    let (_, answer) = env
        .post(&path, &body("sd-2", Some(wrong), Some(&edi)))
        .await;
    assert_eq!(code(&answer), "U312", "{answer}");
    let lone = crypto::sign_data(&["sd-3", &bid, &edi], &env.secret);
    let (_, answer) = env.post(&path, &body("sd-3", Some(lone), None)).await;
    assert_eq!(code(&answer), "U100", "{answer}");
    let (_, answer) = env
        .post(&path, &body("sd-4", None, Some("yesterday")))
        .await;
    assert_eq!(code(&answer), "U130", "{answer}");
    let (_, answer) = env.post(&path, &body("sd-5", None, Some(&edi))).await;
    assert_eq!(code(&answer), "0000", "ediDate alone is fine: {answer}");
    assert_eq!(env.sim.ledger().len(), 2);
}

#[tokio::test]
async fn expire_then_approve_is_refused() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    let path = format!("/v1/subscribe/{bid}/expire");
    let (status, answer) = env.post(&path, &json!({"orderId": "X1-1"})).await;
    assert_eq!((status, code(&answer)), (200, "0000"), "{answer}");
    assert_eq!(answer["bid"], bid.as_str());
    let removals = env.sim.removals();
    assert_eq!(removals.len(), 1);
    assert_eq!(removals[0].bid, bid);
    assert_eq!(removals[0].tid, answer["tid"].as_str().unwrap());
    let (_, answer) = env.approve(&bid, "after-expire", 1000).await;
    assert_eq!(code(&answer), "A124", "{answer}");
    let (_, answer) = env.post(&path, &json!({"orderId": "X1-2"})).await;
    assert_eq!(code(&answer), "A124", "{answer}");
    let (_, answer) = env
        .post(
            "/v1/subscribe/BIKYnosuchbid/expire",
            &json!({"orderId": "X1-3"}),
        )
        .await;
    assert_eq!(code(&answer), "A126", "{answer}");
    assert_eq!(env.sim.removals().len(), 1);
    assert!(env.sim.ledger().is_empty());
}

#[tokio::test]
async fn cancels_partial_then_full() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    let (_, paid) = env.approve(&bid, "S3-C1-A1", 10_000).await;
    let tid = paid["tid"].as_str().unwrap().to_owned();
    let path = format!("/v1/payments/{tid}/cancel");
    let (status, answer) = env
        .post(
            &path,
            &json!({"reason": "부분 환불", "orderId": "R1-1", "cancelAmt": 3000}),
        )
        .await;
    assert_eq!((status, code(&answer)), (200, "0000"), "{answer}");
    assert_eq!(answer["status"], "partialCancelled");
    assert_eq!(answer["balanceAmt"], 7000);
    assert_eq!(answer["amount"], 10_000);
    assert_eq!(answer["cancels"].as_array().unwrap().len(), 1);
    assert_eq!(answer["cancels"][0]["amount"], 3000);
    assert_ne!(answer["cancelledTid"], tid.as_str());
    assert!(env.verifies(&answer), "{answer}");
    let entry = &env.sim.ledger()[0];
    assert_eq!(
        (entry.state, entry.cancelled_amount),
        (LedgerState::PartiallyCancelled, 3000)
    );

    // More than the balance; a cancel orderId used again.
    let (_, answer) = env
        .post(
            &path,
            &json!({"reason": "r", "orderId": "R1-2", "cancelAmt": 7001}),
        )
        .await;
    assert_eq!(code(&answer), "2032", "{answer}");
    let (_, answer) = env
        .post(
            &path,
            &json!({"reason": "r", "orderId": "R1-1", "cancelAmt": 1000}),
        )
        .await;
    assert_eq!(code(&answer), "U112", "{answer}");
    let (_, answer) = env
        .post(&path, &json!({"orderId": "R1-3", "cancelAmt": 1000}))
        .await;
    assert_eq!(code(&answer), "U100", "reason is required: {answer}");

    // The rest: no cancelAmt is a full cancel.
    let (_, answer) = env
        .post(&path, &json!({"reason": "해지", "orderId": "R1-4"}))
        .await;
    assert_eq!(code(&answer), "0000", "{answer}");
    assert_eq!(answer["status"], "cancelled");
    assert_eq!(answer["balanceAmt"], 0);
    assert_eq!(answer["cancels"][1]["amount"], 7000);
    assert!(env.verifies(&answer));
    let entry = &env.sim.ledger()[0];
    assert_eq!(
        (entry.state, entry.cancelled_amount),
        (LedgerState::Cancelled, 10_000)
    );
    let (_, answer) = env
        .post(&path, &json!({"reason": "again", "orderId": "R1-5"}))
        .await;
    assert_eq!(code(&answer), "2013", "{answer}");
    let (_, answer) = env
        .post(
            "/v1/payments/nicv1sbx0m01162612251000000000/cancel",
            &json!({"reason": "r", "orderId": "R1-6"}),
        )
        .await;
    assert_eq!(code(&answer), "2012", "{answer}");
    let (_, looked) = env.get(&format!("/v1/payments/{tid}")).await;
    assert_eq!(looked["status"], "cancelled");
    assert_eq!(looked["cancels"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn netcancel_window() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    let (_, paid) = env.approve(&bid, "S4-C1-A1", 5000).await;
    assert_eq!(code(&paid), "0000");
    env.clock.advance(chrono::Duration::minutes(59));
    let (status, answer) = env
        .post("/v1/payments/netcancel", &json!({"orderId": "S4-C1-A1"}))
        .await;
    assert_eq!((status, code(&answer)), (200, "0000"), "{answer}");
    assert_eq!(answer["status"], "cancelled");
    assert_eq!(answer["tid"], paid["tid"]);
    assert!(env.verifies(&answer));
    let (_, again) = env
        .post("/v1/payments/netcancel", &json!({"orderId": "S4-C1-A1"}))
        .await;
    assert_eq!(code(&again), "2013", "{again}");
    let date = env.today();
    let (status, looked) = env
        .get(&format!("/v1/payments/find/S4-C1-A1?orderDate={date}"))
        .await;
    assert_eq!((status, code(&looked)), (200, "0000"), "{looked}");
    assert_eq!(looked["status"], "cancelled");
    assert_eq!(env.sim.ledger()[0].state, LedgerState::Cancelled);

    let (_, answer) = env
        .post("/v1/payments/netcancel", &json!({"orderId": "never-sent"}))
        .await;
    assert_eq!(code(&answer), "2012", "{answer}");

    // Past the hour: 2020, and the charge stays.
    let (_, late) = env.approve(&bid, "S4-C1-A2", 5000).await;
    assert_eq!(code(&late), "0000");
    env.clock.advance(chrono::Duration::minutes(61));
    let (_, answer) = env
        .post("/v1/payments/netcancel", &json!({"orderId": "S4-C1-A2"}))
        .await;
    assert_eq!(code(&answer), "2020", "{answer}");
    assert_eq!(env.sim.ledger()[1].state, LedgerState::Approved);
}

#[tokio::test]
async fn lookups_by_tid_and_order_id() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    let (_, paid) = env.approve(&bid, "S5-C1-A1", 7700).await;
    let tid = paid["tid"].as_str().unwrap();
    let (status, by_tid) = env.get(&format!("/v1/payments/{tid}")).await;
    assert_eq!((status, code(&by_tid)), (200, "0000"), "{by_tid}");
    assert_eq!(by_tid["status"], "paid");
    assert_eq!(by_tid["orderId"], "S5-C1-A1");
    assert_eq!(by_tid["amount"], 7700);
    assert!(env.verifies(&by_tid));

    let today = env.today();
    assert_eq!(today, "20261225");
    let (status, by_order) = env
        .get(&format!("/v1/payments/find/S5-C1-A1?orderDate={today}"))
        .await;
    assert_eq!((status, code(&by_order)), (200, "0000"), "{by_order}");
    assert_eq!(by_order["tid"], tid);
    assert!(env.verifies(&by_order));

    let not_found = [
        "/v1/payments/find/S5-C1-A1?orderDate=20261226".to_owned(),
        format!("/v1/payments/find/S5-C1-A9?orderDate={today}"),
        "/v1/payments/nicv1sbx0m01162612251000000000".to_owned(),
    ];
    for path in not_found {
        let (status, answer) = env.get(&path).await;
        assert_eq!((status, code(&answer)), (404, "U111"), "{path}: {answer}");
    }
    let (status, answer) = env.get("/v1/payments/find/S5-C1-A1").await;
    assert_eq!((status, code(&answer)), (200, "U100"), "{answer}");
    let (_, answer) = env
        .get("/v1/payments/find/S5-C1-A1?orderDate=2026-12-25")
        .await;
    assert_eq!(code(&answer), "U130", "{answer}");
    // Another shop does not see it.
    let other = basic(OTHER_CLIENT, OTHER_SECRET);
    let response = env
        .http
        .get(format!("{}/v1/payments/{tid}", env.base))
        .header("Authorization", other)
        .send()
        .await;
    let (status, answer) = Env::read(response).await;
    assert_eq!((status, code(&answer)), (404, "U111"), "{answer}");
    // A signed lookup.
    let edi = crypto::edi_date(Utc::now());
    let sign = crypto::sign_data(&[tid, &edi], &env.secret);
    let query = url_query(&[("ediDate", &edi), ("signData", &sign)]);
    let (_, answer) = env.get(&format!("/v1/payments/{tid}?{query}")).await;
    assert_eq!(code(&answer), "0000", "{answer}");
    let query = url_query(&[("ediDate", &edi), ("signData", &"0".repeat(64))]);
    let (_, answer) = env.get(&format!("/v1/payments/{tid}?{query}")).await;
    assert_eq!(code(&answer), "U312", "{answer}");
}

fn url_query(pairs: &[(&str, &str)]) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

#[tokio::test]
async fn a_lost_approval_answer_is_still_a_charge() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    env.sim.set_faults(once(FaultMode::DropAfter, Api::Approve));
    let body = json!({"orderId": "S6-C1-A1", "amount": 9900, "goodsName": "g",
                      "cardQuota": "0", "useShopInterest": false});
    let lost = env
        .http
        .post(format!("{}/v1/subscribe/{bid}/payments", env.base))
        .header("Authorization", &env.auth)
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await;
    assert!(lost.is_err(), "{lost:?}");
    let ledger = env.sim.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].moid, "S6-C1-A1");
    let (_, looked) = env
        .get(&format!(
            "/v1/payments/find/S6-C1-A1?orderDate={}",
            env.today()
        ))
        .await;
    assert_eq!(code(&looked), "0000", "{looked}");
    assert_eq!(looked["status"], "paid");
    assert_eq!(looked["tid"], ledger[0].tid.as_str());
    assert!(env.verifies(&looked));
    // Resending the same orderId is refused: the ledger keeps one charge.
    let (_, answer) = env.approve(&bid, "S6-C1-A1", 9900).await;
    assert_eq!(code(&answer), "U112");
    assert_eq!(env.sim.ledger().len(), 1);

    // Dropped before: nothing charged, nothing found.
    env.sim
        .set_faults(once(FaultMode::DropBefore, Api::Approve));
    let lost = env
        .http
        .post(format!("{}/v1/subscribe/{bid}/payments", env.base))
        .header("Authorization", &env.auth)
        .body(
            serde_json::to_vec(
                &json!({"orderId": "S6-C1-A2", "amount": 9900, "goodsName": "g",
                                       "cardQuota": "0", "useShopInterest": false}),
            )
            .unwrap(),
        )
        .send()
        .await;
    assert!(lost.is_err());
    let (status, _) = env
        .get(&format!(
            "/v1/payments/find/S6-C1-A2?orderDate={}",
            env.today()
        ))
        .await;
    assert_eq!(status, 404);
    assert_eq!(env.sim.ledger().len(), 1);

    // A 500 page and a garbled body: not JSON answers.
    for mode in [FaultMode::Http500, FaultMode::Garbage] {
        env.sim.set_faults(once(mode, Api::Status));
        let (status, answer) = env.get("/v1/payments/whatever").await;
        assert!(answer.is_string(), "{mode:?}: {status} {answer}");
    }
}

#[tokio::test]
async fn bad_signature_fault() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    env.sim
        .set_faults(once(FaultMode::BadSignature, Api::Approve));
    let (_, answer) = env.approve(&bid, "S7-C1-A1", 9900).await;
    assert_eq!(code(&answer), "0000");
    assert!(!env.verifies(&answer), "{answer}");
    assert_eq!(env.sim.ledger().len(), 1, "the approval happened");
    let tid = answer["tid"].as_str().unwrap();
    let (_, looked) = env.get(&format!("/v1/payments/{tid}")).await;
    assert!(env.verifies(&looked), "the fault was used up");
    env.sim
        .set_faults(once(FaultMode::BadSignature, Api::Status));
    let (_, looked) = env.get(&format!("/v1/payments/{tid}")).await;
    assert!(!env.verifies(&looked));
    env.sim
        .set_faults(once(FaultMode::BadCancelSignature, Api::Cancel));
    let (_, answer) = env
        .post(
            &format!("/v1/payments/{tid}/cancel"),
            &json!({"reason": "r", "orderId": "R7-1"}),
        )
        .await;
    assert_eq!(code(&answer), "0000");
    assert!(!env.verifies(&answer));
}

#[tokio::test]
async fn throttled_v1_requests() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    env.sim.set_throttle(Some(Throttle {
        per_second: 1,
        answer: nicebill::sim::ThrottleAnswer::V003,
    }));
    let mut codes = Vec::new();
    for i in 0..3 {
        let (status, answer) = env.approve(&bid, &format!("T-{i}"), 1000).await;
        codes.push((status, code(&answer).to_owned()));
    }
    assert!(codes.contains(&(200, "V003".to_owned())), "{codes:?}");
    env.sim.set_throttle(Some(Throttle {
        per_second: 1,
        answer: nicebill::sim::ThrottleAnswer::Http429,
    }));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut statuses = Vec::new();
    for i in 3..6 {
        statuses.push(env.approve(&bid, &format!("T-{i}"), 1000).await.0);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    env.sim.set_throttle(None);
    // Only the requests let through were charged.
    let charged = codes.iter().filter(|(_, c)| c == "0000").count()
        + statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(env.sim.ledger().len(), charged);
}

#[tokio::test]
async fn reset_forgets_v1_payments() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    let (_, paid) = env.approve(&bid, "S8-C1-A1", 1000).await;
    env.sim.reset();
    let (status, _) = env
        .get(&format!("/v1/payments/{}", paid["tid"].as_str().unwrap()))
        .await;
    assert_eq!(status, 404);
    let (_, answer) = env.approve(&bid, "S8-C1-A2", 1000).await;
    assert_eq!(
        code(&answer),
        "A126",
        "billkeys are forgotten too: {answer}"
    );
}

#[tokio::test]
async fn a_held_approval_lands_late() {
    let env = Env::start().await;
    let bid = env.regist(CARD).await;
    env.sim.set_hold(Duration::from_millis(800));
    env.sim
        .set_faults(once(FaultMode::HoldBefore, Api::Approve));
    let body = json!({"orderId": "S9-C1-A1", "amount": 9900, "goodsName": "g",
                      "cardQuota": "0", "useShopInterest": false});
    let gave_up = env
        .http
        .post(format!("{}/v1/subscribe/{bid}/payments", env.base))
        .header("Authorization", &env.auth)
        .timeout(Duration::from_millis(200))
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await;
    assert!(gave_up.is_err(), "{gave_up:?}");
    let find = format!("/v1/payments/find/S9-C1-A1?orderDate={}", env.today());
    let (status, _) = env.get(&find).await;
    assert_eq!(status, 404, "nothing during the hold");
    assert!(env.sim.ledger().is_empty());
    let mut found = None;
    for _ in 0..50 {
        let (status, answer) = env.get(&find).await;
        if status == 200 {
            found = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found = found.expect("the held approval was never recorded");
    assert_eq!(found["status"], "paid");
    assert_eq!(env.sim.ledger().len(), 1);
}
