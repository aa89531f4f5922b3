//! Helpers shared by the integration tests: a simulator on a loopback port and clients for it,
//! a database per backend, configuration files (`config`), processes (`process`), the
//! simulator's control endpoints (`sim_api`), and the fault campaign's scale and verdict
//! (`campaign`, shared by `tests/campaign.rs` and `tests/pg_restart.rs`).
#![allow(dead_code)]

pub mod campaign;
pub mod config;
pub mod process;
pub mod sim_api;

#[allow(unused_imports)]
pub use config::ConfigFile;
#[allow(unused_imports)]
pub use process::{Killed, nicebill, spawn_sim, terminate};
#[allow(unused_imports)]
pub use sim_api::{client_at, ledger, requests};

use std::sync::Arc;
use std::time::Duration;

use nicebill::clock::{SharedClock, SystemClock};
use nicebill::domain::{Bid, CardDetails, Krw, MerchantKey, Mid, Moid, Tid};
use nicebill::gateway::nicepay::client::BaseUrl;
use nicebill::gateway::nicepay::{
    ApproveRequest, Buyer, Charset, ClientSettings, EdiType, IssueRequest, NicepayClient,
};
use nicebill::gateway::nicepay_v1::{ClientKey, SecretKey, V1Settings};
use nicebill::gateway::{ApiKind, Gateway};
use nicebill::sim::{SimConfig, SimHandle};

pub const KEY: &str =
    "b+zhZ4yOZ7FsH8pm5lhDfHZEb79tIwnjsdA0FBXh86yLc6BJeFVrZFXhAoJ3gEWgrWwN+lJMV0W4hvDdbe4Sjw==";

pub async fn sim() -> SimHandle {
    SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
        .await
        .expect("simulator starts on a loopback port")
}

pub fn settings(base_url: &str, charset: Charset, edi_type: EdiType) -> ClientSettings {
    let mut s = ClientSettings::new(
        BaseUrl::parse(base_url).unwrap(),
        Mid::new("nictest04m").unwrap(),
        MerchantKey::new(KEY).unwrap(),
    );
    s.charset = charset;
    s.edi_type = edi_type;
    s.connect_timeout = Duration::from_secs(2);
    s.read_timeout = Duration::from_secs(2);
    s
}

pub fn client(sim: &SimHandle, charset: Charset, edi_type: EdiType) -> NicepayClient {
    NicepayClient::new(
        settings(&sim.base_url(), charset, edi_type),
        Arc::new(SystemClock),
    )
    .unwrap()
}

pub fn card(number: &str) -> CardDetails {
    CardDetails::new(number, "30", "01", "880229", "37").unwrap()
}

pub async fn issue(client: &NicepayClient, number: &str, moid: &str) -> Bid {
    let reply = client
        .issue_billkey(&IssueRequest {
            moid: Moid::new(moid).unwrap(),
            card: card(number),
            buyer: Buyer::default(),
        })
        .await
        .expect("billkey issue answered");
    assert_eq!(reply.result_code, "F100", "{}", reply.result_msg);
    reply.data.expect("F100 carries a BID").bid
}

pub fn approve_request(bid: &Bid, tid: Tid, moid: &str, amount: i64) -> ApproveRequest {
    ApproveRequest {
        bid: bid.clone(),
        tid,
        moid: Moid::new(moid).unwrap(),
        amount: Krw::positive(amount).unwrap(),
        goods_name: "월간 구독 (프리미엄)".into(),
        card_quota: "00".into(),
        interest_free: false,
        buyer: Buyer {
            name: Some("홍길동".into()),
            email: Some("buyer@example.com".into()),
            tel: Some("010-1234-5678".into()),
        },
        mall_reserved: Some("메모 memo".into()),
    }
}

/// The simulator's first v1 shop (the manual's sandbox keys): client key and secret key.
pub const V1_CLIENT_KEY: &str = "58e3b578555e45738d6b569e53d5ae54";
pub const V1_SECRET_KEY: &str = "4f13ca267dfa4fc6964148bedcda15ef";
/// The name the simulator's ledger gives that shop.
pub const V1_SHOP: &str = "nicv1sbx0m";

pub fn v1_settings(base_url: &str) -> V1Settings {
    let mut s = V1Settings::new(
        BaseUrl::parse(base_url).unwrap(),
        ClientKey::new(V1_CLIENT_KEY).unwrap(),
        SecretKey::new(V1_SECRET_KEY).unwrap(),
    );
    s.connect_timeout = Duration::from_secs(2);
    s.read_timeout = Duration::from_secs(2);
    s
}

/// The Basic `Authorization` value of the first v1 shop, and the access token the simulator
/// at `sim_url` hands that shop (the same one while it is valid): what no output may show.
pub async fn v1_credentials(sim_url: &str) -> (String, String) {
    let basic = nicebill::gateway::nicepay_v1::crypto::basic_authorization(
        &ClientKey::new(V1_CLIENT_KEY).unwrap(),
        &SecretKey::new(V1_SECRET_KEY).unwrap(),
    );
    let basic = nicebill::domain::ExposeSecret::expose_secret(&basic).to_owned();
    let body = reqwest::Client::new()
        .post(format!("{sim_url}/v1/access-token"))
        .header("Authorization", &basic)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let token = answer["accessToken"].as_str().unwrap().to_owned();
    (basic, token)
}

/// A gateway on either API for the simulator at `base_url`, on `clock`.
pub fn gateway_for(api: ApiKind, base_url: &str, clock: SharedClock) -> Gateway {
    match api {
        ApiKind::Webapi => Gateway::from(
            NicepayClient::new(settings(base_url, Charset::EucKr, EdiType::Json), clock).unwrap(),
        ),
        ApiKind::V1 => Gateway::v1(v1_settings(base_url), clock).unwrap(),
    }
}

/// Issues a billkey through either API.
pub async fn issue_on(gateway: &Gateway, number: &str, moid: &str) -> Bid {
    let reply = gateway
        .issue_billkey(&IssueRequest {
            moid: Moid::new(moid).unwrap(),
            card: card(number),
            buyer: Buyer::default(),
        })
        .await
        .expect("billkey issue answered");
    reply
        .data
        .unwrap_or_else(|| panic!("no BID: {} {}", reply.result_code, reply.result_msg))
        .bid
}

/// Both APIs, or the one `NICEBILL_TEST_API` names (`webapi` or `v1`).
pub fn apis() -> Vec<ApiKind> {
    match std::env::var("NICEBILL_TEST_API").ok().as_deref() {
        Some("webapi") => vec![ApiKind::Webapi],
        Some("v1") => vec![ApiKind::V1],
        _ => vec![ApiKind::Webapi, ApiKind::V1],
    }
}

/// The shop name the simulator's ledger gives each API's test merchant.
pub fn shop(api: ApiKind) -> &'static str {
    match api {
        ApiKind::Webapi => "nictest04m",
        ApiKind::V1 => V1_SHOP,
    }
}

/// Every API ([`apis`]) with every database ([`databases`]), a fresh database for each API.
pub async fn every_api_and_db(test: &str) -> Vec<(ApiKind, TestDb)> {
    let mut out = Vec::new();
    for api in apis() {
        for db in databases(&format!("{test}_{api}")).await {
            out.push((api, db));
        }
    }
    out
}

/// A Postgres URL from the environment, or `None` after saying the test skipped.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("NICEBILL_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("{test}: skipped on PostgreSQL (NICEBILL_TEST_POSTGRES_URL is not set)");
            None
        }
    }
}

/// A database for one test: a temporary SQLite file, and a fresh PostgreSQL schema when
/// `NICEBILL_TEST_POSTGRES_URL` names a server. Each comes migrated.
pub struct TestDb {
    pub label: &'static str,
    pub store: nicebill::storage::Store,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

pub async fn databases(test: &str) -> Vec<TestDb> {
    use nicebill::storage::{DbUrl, Store};
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("nicebill.db").display());
    let store = Store::open(DbUrl::parse(&sqlite_url).unwrap(), 4).unwrap();
    store.migrate().await.unwrap();
    let mut dbs = vec![TestDb {
        label: "sqlite",
        store,
        url: sqlite_url,
        _dir: Some(dir),
    }];
    if let Some(base) = postgres_url(test) {
        let schema = format!(
            "t_{}_{:08x}",
            test.to_ascii_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            rand::random::<u32>()
        );
        let admin = Store::open(DbUrl::parse(&base).unwrap(), 1).unwrap();
        admin.create_schema(&schema).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let store = Store::open(DbUrl::parse(&url).unwrap(), 8).unwrap();
        store.migrate().await.unwrap();
        dbs.push(TestDb {
            label: "postgres",
            store,
            url,
            _dir: None,
        });
    }
    dbs
}

/// A monthly subscription row as a merchant would insert it.
pub fn monthly(
    external_id: &str,
    bid: &Bid,
    amount: i64,
    anchor: chrono::DateTime<chrono::Utc>,
) -> nicebill::storage::models::NewSubscription {
    nicebill::storage::models::NewSubscription::monthly(
        external_id,
        bid.as_str(),
        amount,
        "월간 구독",
        anchor.naive_utc(),
    )
}

/// Korea time → UTC.
pub fn kst(text: &str) -> chrono::DateTime<chrono::Utc> {
    use chrono::TimeZone;
    let naive = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
    chrono_tz::Asia::Seoul
        .from_local_datetime(&naive)
        .unwrap()
        .with_timezone(&chrono::Utc)
}
