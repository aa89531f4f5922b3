//! The v1 client against a small in-test HTTP stub on 127.0.0.1 (not the simulator).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use nicebill::clock::{SharedClock, SystemClock};
use nicebill::domain::{Bid, Krw, Moid, Tid};
use nicebill::gateway::nicepay::Buyer;
use nicebill::gateway::nicepay::client::BaseUrl;
use nicebill::gateway::nicepay_v1::crypto;
use nicebill::gateway::nicepay_v1::{
    Auth, Call, ClientKey, Reading, SecretKey, V1ApproveRequest, V1CallError, V1Client, V1Settings,
    read_lookup,
};
use nicebill::gateway::{Class, Transport};
use serde_json::{Value, json};

const CLIENT: &str = "58e3b578555e45738d6b569e53d5ae54";
const SECRET: &str = "4f13ca267dfa4fc6964148bedcda15ef";

#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: String,
    auth: String,
    body: Value,
}

#[derive(Clone, Default)]
struct Stub {
    answers: Arc<Mutex<VecDeque<(u16, Value)>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    url: String,
}

impl Stub {
    async fn start() -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let me = Stub {
            url: format!("http://{}", listener.local_addr().unwrap()),
            ..Stub::default()
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
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let query = req.uri().query().unwrap_or_default().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            state.seen.lock().unwrap().push(Seen {
                                method,
                                path,
                                query,
                                auth,
                                body,
                            });
                            let (status, answer) = state
                                .answers
                                .lock()
                                .unwrap()
                                .pop_front()
                                .unwrap_or((500, json!({})));
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
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

    fn answer(&self, status: u16, body: Value) {
        self.answers.lock().unwrap().push_back((status, body));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn settings(url: &str) -> V1Settings {
    V1Settings::new(
        BaseUrl::parse(url).unwrap(),
        ClientKey::new(CLIENT).unwrap(),
        SecretKey::new(SECRET).unwrap(),
    )
}

fn client(s: V1Settings) -> V1Client {
    let clock: SharedClock = Arc::new(SystemClock);
    V1Client::new(s, clock).unwrap()
}

fn approve_req(order: &str, amount: i64) -> V1ApproveRequest {
    V1ApproveRequest {
        bid: Bid::new("BIKYnictest00m2612250900001234").unwrap(),
        order_id: Moid::new(order).unwrap(),
        amount: Krw::new(amount).unwrap(),
        goods_name: "월간 구독".to_owned(),
        card_quota: "0".to_owned(),
        buyer: Buyer::default(),
        mall_reserved: None,
    }
}

fn paid(order: &str, amount: i64, signature: Option<String>) -> Value {
    let edi = "2026-12-25T09:01:00.100+0900";
    let tid = "nictest00m01162612250900001234";
    let sig = signature.unwrap_or_else(|| {
        crypto::answer_signature(tid, amount, edi, &SecretKey::new(SECRET).unwrap())
    });
    json!({"resultCode":"0000","resultMsg":"ok","tid":tid,"orderId":order,"ediDate":edi,
        "status":"paid","amount":amount,"balanceAmt":amount,"approveNo":"000123",
        "paidAt":"2026-12-25T09:01:00.000+0900","signature":sig,
        "card":{"cardCode":"04","cardQuota":0,"canPartCancel":"true"}})
}

#[tokio::test]
async fn approve_happy_path_sends_basic_header_and_reads_approved() {
    let stub = Stub::start().await;
    stub.answer(200, paid("S1-A1", 9900, None));
    let c = client(settings(&stub.url));
    let r = c.approve(&approve_req("S1-A1", 9900), None).await.unwrap();
    assert_eq!(r.class, Class::Approved);
    let p = r.data.reading.paid.unwrap();
    assert_eq!(p.tid, "nictest00m01162612250900001234");
    assert_eq!(p.approve_no.as_deref(), Some("000123"));
    let seen = stub.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].path,
        "/v1/subscribe/BIKYnictest00m2612250900001234/payments"
    );
    assert_eq!(
        seen[0].auth,
        format!(
            "Basic {}",
            base64_std(format!("{CLIENT}:{SECRET}").as_bytes())
        )
    );
    assert_eq!(seen[0].body["cardQuota"], "0");
    assert_eq!(seen[0].body["useShopInterest"], false);
    assert_eq!(seen[0].body["amount"], 9900);
    assert!(
        seen[0].body.get("signData").is_none(),
        "signData off by default"
    );
}

fn base64_std(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test]
async fn signature_mismatch_is_never_approved() {
    let stub = Stub::start().await;
    stub.answer(200, paid("S1-A2", 9900, Some("00".repeat(32))));
    let c = client(settings(&stub.url));
    let r = c.approve(&approve_req("S1-A2", 9900), None).await.unwrap();
    assert_eq!(r.class, Class::Unknown);
    assert!(r.data.reading.paid.is_none());
}

#[tokio::test]
async fn order_or_amount_mismatch_is_unknown() {
    let stub = Stub::start().await;
    stub.answer(200, paid("S1-OTHER", 9900, None));
    stub.answer(200, paid("S1-A3", 990, None));
    let c = client(settings(&stub.url));
    let r = c.approve(&approve_req("S1-A3", 9900), None).await.unwrap();
    assert_eq!(r.class, Class::Unknown);
    let r = c.approve(&approve_req("S1-A3", 9900), None).await.unwrap();
    assert_eq!(r.class, Class::Unknown);
}

#[tokio::test]
async fn connection_refused_is_not_sent() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(settings(&format!("http://127.0.0.1:{port}")));
    let e = c
        .approve(&approve_req("S1-A4", 9900), None)
        .await
        .unwrap_err();
    assert_eq!(e.class(), Class::NotSent, "{e}");
}

#[tokio::test]
async fn silent_server_is_unknown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut s = settings(&url);
    s.read_timeout = Duration::from_millis(300);
    let c = client(s);
    let e = c
        .approve(&approve_req("S1-A5", 9900), None)
        .await
        .unwrap_err();
    assert_eq!(e.class(), Class::Unknown, "{e}");
}

fn token(value: &str) -> Value {
    json!({"resultCode":"0000","resultMsg":"ok","accessToken":value,"tokenType":"Bearer",
        "expiredAt":"2026-12-25T09:30:00.000+0900","now":"2026-12-25T09:00:00.000+0900"})
}

#[tokio::test]
async fn bearer_fetches_a_token_and_renews_once_on_401() {
    let stub = Stub::start().await;
    stub.answer(200, token("tok-1"));
    stub.answer(200, paid("S2-A1", 9900, None));
    stub.answer(401, json!({"resultCode":"U305","resultMsg":"token"}));
    stub.answer(200, token("tok-2"));
    stub.answer(200, paid("S2-A2", 9900, None));
    let mut s = settings(&stub.url);
    s.auth = Auth::Bearer;
    let c = client(s);
    let r = c.approve(&approve_req("S2-A1", 9900), None).await.unwrap();
    assert_eq!(r.class, Class::Approved);
    let r = c.approve(&approve_req("S2-A2", 9900), None).await.unwrap();
    assert_eq!(r.class, Class::Approved);
    let seen = stub.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths[0], "/v1/access-token");
    assert!(seen[0].auth.starts_with("Basic "));
    assert_eq!(seen[1].auth, "Bearer tok-1");
    assert_eq!(seen[2].auth, "Bearer tok-1");
    assert_eq!(paths[3], "/v1/access-token");
    assert_eq!(seen[4].auth, "Bearer tok-2");
    assert_eq!(seen.len(), 5);

    // A second 401 after the renewal is a request error, and nothing more is sent.
    stub.answer(401, json!({"resultCode":"U305","resultMsg":"token"}));
    stub.answer(200, token("tok-3"));
    stub.answer(401, json!({"resultCode":"U305","resultMsg":"token"}));
    let e = c
        .approve(&approve_req("S2-A3", 9900), None)
        .await
        .unwrap_err();
    assert_eq!(e.class(), Class::RequestError, "{e}");
    assert_eq!(stub.seen().len(), 8);
}

/// A wrong secret key on Bearer: the token request itself is refused (401, U101). That is
/// not a refused token, so the client must not ask again, and the operator must see U101.
#[tokio::test]
async fn bearer_token_request_refused_is_reported_once_with_its_code() {
    let stub = Stub::start().await;
    stub.answer(401, json!({"resultCode":"U101","resultMsg":"auth failed"}));
    stub.answer(200, token("tok-never"));
    let mut s = settings(&stub.url);
    s.auth = Auth::Bearer;
    let c = client(s);
    let e = c
        .approve(&approve_req("S2-B1", 9900), None)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("U101"),
        "the refusal's code is hidden: {text}"
    );
    let seen = stub.seen();
    assert_eq!(seen.len(), 1, "asked for a token more than once: {seen:?}");
    assert_eq!(seen[0].path, "/v1/access-token");
}

#[tokio::test]
async fn lookups() {
    let stub = Stub::start().await;
    stub.answer(200, paid("S3-A1", 9900, None));
    stub.answer(200, json!({"resultCode":"U126","resultMsg":"none"}));
    stub.answer(200, json!({"resultCode":"A246","resultMsg":"busy"}));
    let c = client(settings(&stub.url));
    let key = SecretKey::new(SECRET).unwrap();
    let order = Moid::new("S3-A1").unwrap();
    let r = c.lookup_order(&order, "20261225").await.unwrap();
    let reading = read_lookup(
        Call::LookupOrder,
        r.http_status,
        &r.data,
        "S3-A1",
        9900,
        &key,
    );
    assert!(matches!(reading, Reading::Approved { .. }), "{reading:?}");
    let r = c.lookup_order(&order, "20261225").await.unwrap();
    let reading = read_lookup(
        Call::LookupOrder,
        r.http_status,
        &r.data,
        "S3-A1",
        9900,
        &key,
    );
    assert!(matches!(reading, Reading::NotFound { .. }), "{reading:?}");
    let tid = Tid::new("nictest00m01162612250900001234").unwrap();
    let r = c.lookup_tid(&tid).await.unwrap();
    assert_eq!(r.class, Class::Throttled);
    let seen = stub.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/v1/payments/find/S3-A1");
    assert_eq!(seen[0].query, "orderDate=20261225");
    assert_eq!(seen[2].path, "/v1/payments/nictest00m01162612250900001234");
}

#[tokio::test]
async fn bad_input_never_reaches_the_stub() {
    let stub = Stub::start().await;
    let c = client(settings(&stub.url));
    let mut emoji = approve_req("S4-A1", 9900);
    emoji.goods_name = "plan 😀".to_owned();
    let mut long = approve_req("S4-A2", 9900);
    long.goods_name = "a".repeat(41);
    for req in [emoji, long] {
        match c.approve(&req, None).await {
            Err(V1CallError::Input(e)) => assert_eq!(e.field, "goodsName"),
            other => panic!("expected an input error, got {other:?}"),
        }
    }
    // Moid may allow characters v1's orderId does not; '/' must never reach a path.
    if let Ok(slash) = Moid::new("S4/A3") {
        let e = c.netcancel(&slash).await.unwrap_err();
        assert!(
            matches!(e, V1CallError::Input(ref f) if f.field == "orderId"),
            "{e}"
        );
        assert_eq!(e.class(), Class::RequestError);
    }
    assert!(Moid::new("S4/A3").is_err() || stub.seen().is_empty());
    assert!(stub.seen().is_empty());
}

#[tokio::test]
async fn debug_output_hides_the_secret_key() {
    let c = client(settings("http://127.0.0.1:9"));
    let shown = format!("{c:?} {:?}", c.settings());
    assert!(!shown.contains(SECRET), "{shown}");
}

#[tokio::test]
async fn not_found_as_http_404_with_a_code_and_without_one() {
    let stub = Stub::start().await;
    stub.answer(
        404,
        json!({"resultCode":"U111","resultMsg":"거래 내역이 없습니다"}),
    );
    stub.answer(404, json!("<html>Not Found</html>"));
    let c = client(settings(&stub.url));
    let key = SecretKey::new(SECRET).unwrap();
    let order = Moid::new("S5-A1").unwrap();
    let r = c.lookup_order(&order, "20261225").await.unwrap();
    assert_eq!(r.http_status, 404);
    let reading = read_lookup(
        Call::LookupOrder,
        r.http_status,
        &r.data,
        "S5-A1",
        9900,
        &key,
    );
    assert_eq!(
        reading,
        Reading::NotFound {
            code: "U111".into()
        }
    );
    // A 404 page that is not a NICEPAY answer proves nothing: an error, never "not found".
    let e = c.lookup_order(&order, "20261225").await.unwrap_err();
    assert!(
        matches!(
            e,
            V1CallError::Transport {
                failure: Transport::HttpStatus(404),
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn regist_expire_cancel_and_netcancel() {
    let stub = Stub::start().await;
    stub.answer(
        200,
        json!({"resultCode":"0000","resultMsg":"ok","bid":"BIKYnictest00m2612250900001234",
               "tid":"nictest00m01162612250900001111","orderId":"bk-1","authDate":"2026-12-25T09:00:00.000+0900",
               "cardCode":"04","cardName":"삼성"}),
    );
    stub.answer(200, json!({"resultCode":"F100","resultMsg":"legacy ok"}));
    stub.answer(
        200,
        json!({"resultCode":"0000","resultMsg":"ok","bid":"BIKYnictest00m2612250900001234","orderId":"rm-1"}),
    );
    stub.answer(
        200,
        json!({"resultCode":"A124","resultMsg":"already removed"}),
    );
    let edi = "2026-12-25T09:01:00.000+0900";
    let key = SecretKey::new(SECRET).unwrap();
    let tid = "nictest00m01162612250900002222";
    let sig = crypto::answer_signature(tid, 9900, edi, &key);
    stub.answer(
        200,
        json!({"resultCode":"0000","resultMsg":"ok","tid":tid,"cancelledTid":"nictest00m01162612250900003333",
               "orderId":"c-1","status":"partialCancelled","amount":9900,"balanceAmt":6900,"ediDate":edi,
               "signature":sig}),
    );
    stub.answer(
        200,
        json!({"resultCode":"0000","resultMsg":"ok","tid":tid,"orderId":"c-2","status":"cancelled",
               "amount":9900,"ediDate":edi,"signature":"00".repeat(32)}),
    );
    stub.answer(
        200,
        json!({"resultCode":"2015","resultMsg":"cancel requested already"}),
    );
    let c = client(settings(&stub.url));
    let card =
        nicebill::domain::CardDetails::new("9410123456780000", "30", "01", "880229", "37").unwrap();
    let buyer = Buyer::default();
    let r = c
        .issue_billkey(&Moid::new("bk-1").unwrap(), &card, &buyer)
        .await
        .unwrap();
    assert_eq!(r.class, Class::Approved);
    assert_eq!(
        r.data.bid.as_deref(),
        Some("BIKYnictest00m2612250900001234")
    );
    // F100 is success only with a bid (choice 7).
    let r = c
        .issue_billkey(&Moid::new("bk-2").unwrap(), &card, &buyer)
        .await
        .unwrap();
    assert_eq!(r.class, Class::Unknown, "{r:?}");
    let bid = Bid::new("BIKYnictest00m2612250900001234").unwrap();
    let r = c.expire(&bid, &Moid::new("rm-1").unwrap()).await.unwrap();
    assert_eq!(r.class, Class::Approved);
    // Already gone: the goal is reached (choice 15).
    let r = c.expire(&bid, &Moid::new("rm-2").unwrap()).await.unwrap();
    assert_eq!(r.class, Class::Approved, "{r:?}");
    let t = Tid::new(tid).unwrap();
    let r = c
        .cancel(
            &t,
            &Moid::new("c-1").unwrap(),
            "고객요청",
            Some(Krw::positive(3000).unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(r.class, Class::Approved);
    assert_eq!(r.data.balance_amt, Some(6900));
    // A cancel answer whose signature does not verify is never a refund.
    let r = c
        .cancel(&t, &Moid::new("c-2").unwrap(), "고객요청", None)
        .await
        .unwrap();
    assert_eq!(r.class, Class::Unknown, "{r:?}");
    let r = c.netcancel(&Moid::new("S6-C1-A1").unwrap()).await.unwrap();
    assert_eq!(r.class, Class::Duplicate, "{r:?}");
    let seen = stub.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/subscribe/regist",
            "/v1/subscribe/regist",
            "/v1/subscribe/BIKYnictest00m2612250900001234/expire",
            "/v1/subscribe/BIKYnictest00m2612250900001234/expire",
            "/v1/payments/nictest00m01162612250900002222/cancel",
            "/v1/payments/nictest00m01162612250900002222/cancel",
            "/v1/payments/netcancel",
        ]
    );
    // The partial cancel sent its amount; the full one did not.
    assert_eq!(seen[4].body["cancelAmt"], 3000);
    assert!(
        seen[5].body.get("cancelAmt").is_none(),
        "{:?}",
        seen[5].body
    );
}
