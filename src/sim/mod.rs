//! A NICEPAY simulator for tests and demos: the five billing APIs over plain HTTP on a loopback
//! port, strict enough that a client passing against it passes against NICEPAY.
//!
//! It checks what NICEPAY checks (required fields, EUC-KR byte limits, `SignData`, `EncData`,
//! TID shape and reuse, Moid reuse, amounts, installments, refund arithmetic), answers in the
//! requested `CharSet`/`EdiType` with Korean messages, and signs cancel answers. Protocol rules
//! live in [`state`], card outcomes in [`cards`], HTTP, faults and control endpoints in the
//! server.
//!
//! Faults ([`FaultRule`]) make the transport misbehave the ways that matter for "at most one
//! charge per cycle": a 500 page, a connection dropped before or after the charge, an answer
//! that never comes, a body that is not an answer, a cancel answer with a wrong `Signature`,
//! an answer over 64 KiB, a 500-character `ResultMsg`, and a request held back before it is processed (an approval that lands late: until then a
//! status lookup finds nothing).
//!
//! Control endpoints on the same port (never delayed, never faulted):
//!
//! | request                 | effect                                                     |
//! | ----------------------- | ---------------------------------------------------------- |
//! | `GET /_sim/health`      | `{"ok":true}`                                              |
//! | `GET /_sim/ledger`      | every successful approval, as a JSON array of [`LedgerEntry`] |
//! | `GET /_sim/removals`    | every billkey removal carried out, as a JSON array of [`RemovalEntry`] |
//! | `GET /_sim/requests`    | requests received per API (`{"approve":3,…}`)              |
//! | `POST /_sim/faults`     | body: JSON array of [`FaultRule`]; replaces the rules       |
//! | `POST /_sim/latency`    | body: `{"ms":20}`; delay before every API answer           |
//! | `POST /_sim/hold`       | body: `{"ms":10000}`; how long a `hold_before` request is held |
//! | `POST /_sim/reset`      | forgets ledger, removals, billkeys, TIDs, v1 payments and tokens, and fault rules |
//! | `POST /_sim/v1_token_lifetime` | body: `{"ms":1000}`; lifetime of v1 access tokens issued from now on |
//! | `POST /_sim/foreign_approval` | body: `{"tid":…,"moid":…,"amount":9900}`; somebody else's approval holds the TID (see [`SimHandle::seed_foreign_approval`]) |
//!
//! The v1 REST API (`/v1/…`) is served on the same port, sharing all of this: see [`v1`].
//!
//! The simulator accepts any card and signs with test keys, so it only ever listens on
//! loopback addresses.

pub mod cards;
mod delay;
mod server;
pub mod state;
pub mod v1;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{SharedClock, SystemClock};
use crate::domain::{Krw, MerchantKey, Mid, Tid};
use crate::gateway::nicepay::Api;

pub use state::{LedgerEntry, LedgerState, RemovalEntry};
pub use v1::V1Shop;

/// Everything the simulator starts with.
#[derive(Clone)]
pub struct SimConfig {
    /// Must be a loopback address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Merchants the simulator knows; a later entry for the same MID wins.
    pub merchants: Vec<(Mid, MerchantKey)>,
    /// Delay before every API answer.
    pub latency: Duration,
    /// How long a [`FaultMode::HoldBefore`] request is held before it is processed.
    pub hold: Duration,
    pub faults: Vec<FaultRule>,
    /// Seeds fault draws and minted identifiers, so that a run can be repeated.
    pub seed: u64,
    /// Dates in answers, BIDs, TIDs and the ledger come from here.
    pub clock: SharedClock,
    /// Refuse API requests above a rate, as NICEPAY does when overloaded.
    pub throttle: Option<Throttle>,
    /// The v1 API's shops (default: the manual's sandbox keys, [`v1::DEFAULT_SHOPS`]).
    pub v1_shops: Vec<V1Shop>,
    /// How long a v1 access token lives (default 30 minutes).
    pub v1_token_lifetime: Duration,
}

/// The simulator's own rate limit: at most `per_second` API requests are processed in any
/// one-second window; the others are refused at once, unprocessed, with `answer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    pub per_second: u32,
    #[serde(default)]
    pub answer: ThrottleAnswer,
}

/// How a throttled request is refused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThrottleAnswer {
    /// An answer with `ResultCode=V003` ("too many requests").
    #[default]
    V003,
    /// HTTP 429 Too Many Requests.
    Http429,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mids: Vec<&str> = self.merchants.iter().map(|(m, _)| m.as_str()).collect();
        f.debug_struct("SimConfig")
            .field("listen", &self.listen)
            .field("merchants", &mids)
            .field("latency", &self.latency)
            .field("hold", &self.hold)
            .field("faults", &self.faults)
            .field("seed", &self.seed)
            .field("v1_shops", &self.v1_shops)
            .finish_non_exhaustive()
    }
}

/// NICEPAY's published test merchants (see `vectors.json`): their keys are public.
const DEFAULT_MERCHANTS: &[(&str, &str)] = &[
    (
        "nictest04m",
        "b+zhZ4yOZ7FsH8pm5lhDfHZEb79tIwnjsdA0FBXh86yLc6BJeFVrZFXhAoJ3gEWgrWwN+lJMV0W4hvDdbe4Sjw==",
    ),
    (
        "nicepay00m",
        "EYzu8jGGMfqaDEp76gSckuvnaHHu+bC4opsSN6lHv3b2lurNYkVXrZ7Z1AoqQnXI3eLuaUFyoRNC6FkrzVjceg==",
    ),
];

impl SimConfig {
    /// The default merchants, no latency, no faults (a held request: 10 s), seed 0, the
    /// system clock.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            merchants: Self::default_merchants(),
            latency: Duration::ZERO,
            hold: DEFAULT_HOLD,
            faults: Vec::new(),
            seed: 0,
            clock: Arc::new(SystemClock),
            throttle: None,
            v1_shops: V1Shop::defaults(),
            v1_token_lifetime: v1::DEFAULT_TOKEN_LIFETIME,
        }
    }

    /// NICEPAY's test merchants `nictest04m` (billing) and `nicepay00m` with their public keys.
    pub fn default_merchants() -> Vec<(Mid, MerchantKey)> {
        DEFAULT_MERCHANTS
            .iter()
            .map(|(mid, key)| {
                (
                    Mid::new(*mid).expect("default MIDs are valid"),
                    MerchantKey::new(*key).expect("default keys are valid"),
                )
            })
            .collect()
    }
}

/// How long a [`FaultMode::HoldBefore`] request is held unless configured otherwise.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(10);
/// The longest hold that can be configured (`--hold-ms`, `POST /_sim/hold`).
pub const MAX_HOLD: Duration = Duration::from_secs(3600);

/// How a faulted request goes wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// Answer a 500 page; nothing is processed.
    Http500,
    /// Close the connection without processing or answering.
    DropBefore,
    /// Process the request (record the charge), then close the connection without answering.
    DropAfter,
    /// Process the request, then never answer (until the simulator shuts down).
    HangAfter,
    /// Hold the request for the configured hold (`--hold-ms`, `POST /_sim/hold`; default
    /// 10 s) before processing it, then process it (an approval is recorded then, even if the
    /// client has given up) and answer. Meanwhile a status lookup of its TID finds nothing
    /// (`Status=9`): an approval that lands late. A shutdown during the hold drops the request
    /// unprocessed.
    HoldBefore,
    /// Process the request, then answer 200 with a body that is not a NICEPAY answer.
    Garbage,
    /// Cancel only: process the cancel, answer with a wrong `Signature`.
    BadCancelSignature,
    /// Process the request, then answer with a wrong signature: for the legacy API the
    /// cancel answer's `Signature` (as `bad_cancel_signature`), for v1 the payment object's
    /// `signature` (approve, cancel, netcancel, lookups).
    BadSignature,
    /// Process the request, then answer it preceded by [`OVERSIZED_PADDING`] bytes of white
    /// space: a well-formed answer (leading white space is allowed) longer than any client
    /// should read (nicebill reads at most 64 KiB).
    Oversized,
    /// Process the request, then answer with its `ResultMsg` made 500 characters long
    /// (the real message, then filler).
    LongResultMsg,
}

/// How much white space an [`FaultMode::Oversized`] answer starts with (70 KiB).
pub const OVERSIZED_PADDING: usize = 70 * 1024;

impl FaultMode {
    pub const ALL: [FaultMode; 10] = [
        FaultMode::Http500,
        FaultMode::DropBefore,
        FaultMode::DropAfter,
        FaultMode::HangAfter,
        FaultMode::HoldBefore,
        FaultMode::Garbage,
        FaultMode::BadCancelSignature,
        FaultMode::BadSignature,
        FaultMode::Oversized,
        FaultMode::LongResultMsg,
    ];

    /// The name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultMode::Http500 => "http500",
            FaultMode::DropBefore => "drop_before",
            FaultMode::DropAfter => "drop_after",
            FaultMode::HangAfter => "hang_after",
            FaultMode::HoldBefore => "hold_before",
            FaultMode::Garbage => "garbage",
            FaultMode::BadCancelSignature => "bad_cancel_signature",
            FaultMode::BadSignature => "bad_signature",
            FaultMode::Oversized => "oversized",
            FaultMode::LongResultMsg => "long_result_msg",
        }
    }

    /// Accepts `-` for `_` and any case.
    pub fn parse(text: &str) -> Option<FaultMode> {
        let text = text.trim().to_ascii_lowercase().replace('-', "_");
        Self::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

fn one() -> f64 {
    1.0
}

/// When a fault fires. For each API request, the first rule whose `api` matches, whose `count`
/// is not used up, and whose probability draw succeeds decides the fault; firing uses one of
/// its `count`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    pub mode: FaultMode,
    /// `None`: any API.
    #[serde(default)]
    pub api: Option<Api>,
    /// Fire on at most this many matching requests; `None`: no limit.
    #[serde(default)]
    pub count: Option<u32>,
    /// Chance (0 to 1) that a matching request is faulted.
    #[serde(default = "one")]
    pub probability: f64,
}

impl FaultRule {
    /// Refuses probabilities outside 0..=1 and a bad-signature rule for an API other than
    /// cancel (it could never fire, which is surely a mistake).
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.probability) {
            return Err(format!(
                "probability {} is not between 0 and 1",
                self.probability
            ));
        }
        if self.mode == FaultMode::BadCancelSignature && self.api.is_some_and(|a| a != Api::Cancel)
        {
            return Err("bad_cancel_signature applies only to the cancel API".into());
        }
        if self.mode == FaultMode::BadSignature
            && self
                .api
                .is_some_and(|a| matches!(a, Api::BillkeyIssue | Api::BillkeyRemove))
        {
            return Err(
                "bad_signature applies only to APIs with signed answers (approve, cancel, status)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A running simulator. Dropping it stops the server too; [`SimHandle::shutdown`] also waits
/// for it to end.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl SimHandle {
    /// Binds `config.listen` (port 0 allowed) and serves in a spawned task.
    pub async fn start(config: SimConfig) -> std::io::Result<SimHandle> {
        check_loopback(config.listen)?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(server::Shared::new(&config));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(server::run(listener, Arc::clone(&shared), stopped));
        tracing::info!(%addr, "nicepay simulator started");
        Ok(SimHandle {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every successful approval, in order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.shared.ledger()
    }

    /// Every billkey removal carried out (`F101`), in order.
    pub fn removals(&self) -> Vec<RemovalEntry> {
        self.shared.removals()
    }

    /// Replaces the fault rules.
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        self.shared.set_faults(rules);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// Refuses API requests above a rate (`None`: no limit), as `POST /_sim/throttle`.
    pub fn set_throttle(&self, throttle: Option<Throttle>) {
        self.shared.set_throttle(throttle);
    }

    /// How long a [`FaultMode::HoldBefore`] request is held (at most [`MAX_HOLD`]).
    pub fn set_hold(&self, hold: Duration) {
        self.shared.set_hold(hold.min(MAX_HOLD));
    }

    /// Requests received per API ([`Api::as_str`]), whatever became of them.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.shared.request_counts()
    }

    /// Makes `tid` a TID collision: records an approval of somebody else's order `moid` for
    /// `amount` under it (as `POST /_sim/foreign_approval`). An approval with this TID then
    /// answers `A225` (duplicate TID) and charges nothing, while a status lookup of it answers
    /// `Status=0` with the foreign `Moid` and `Amt`. The entry shows in [`SimHandle::ledger`]
    /// with `seeded: true`. Refused (with the reason) when the TID is not a billing TID of a
    /// configured merchant or is already used, or that merchant already approved `moid`.
    pub fn seed_foreign_approval(&self, tid: &Tid, moid: &str, amount: Krw) -> Result<(), String> {
        self.shared
            .seed_foreign_approval(tid.as_str(), moid, amount.value())
    }

    /// How long v1 access tokens issued from now on live (as `POST /_sim/v1_token_lifetime`).
    pub fn set_v1_token_lifetime(&self, lifetime: Duration) {
        self.shared.set_v1_token_lifetime(lifetime);
    }

    /// Forgets ledger, removals, billkeys, TIDs and fault rules (as `POST /_sim/reset`).
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, ends open connections (hung requests included) and returns when the
    /// server task has ended.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::error!("simulator task failed: {e}");
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        // A test that panics drops its handle: do not leave a server behind.
        self.stop.send_replace(true);
    }
}

fn check_loopback(addr: SocketAddr) -> std::io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "the simulator listens only on loopback addresses (127.0.0.1, ::1), not {addr}: \
                 it approves any card with public test keys and is meant for tests and demos"
            ),
        ))
    }
}

/// `nicebill sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Address to listen on (loopback only; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8585")]
    pub listen: SocketAddr,
    /// Delay before every API answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// How long a `hold_before` request is held before it is processed, in milliseconds
    /// (at most one hour).
    #[arg(long, default_value_t = DEFAULT_HOLD.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(0..=MAX_HOLD.as_millis() as u64))]
    pub hold_ms: u64,
    /// A fault rule, `MODE[:API[:PROBABILITY[:COUNT]]]`, e.g. `drop_after:approve:0.05`.
    /// MODE: http500, drop_before, drop_after, hang_after, hold_before, garbage,
    /// bad_cancel_signature, bad_signature, oversized, long_result_msg.
    /// API: billkey_issue, approve, billkey_remove, cancel, status or any. Repeatable; the
    /// first matching rule wins. v1 calls use the same names: regist = billkey_issue,
    /// payments = approve, expire = billkey_remove, cancel and netcancel = cancel, both
    /// lookups = status.
    #[arg(long = "fault", value_name = "RULE", value_parser = parse_fault)]
    pub faults: Vec<FaultRule>,
    /// An extra merchant, MID=KEY, added to the built-in test merchants (nictest04m,
    /// nicepay00m). Repeatable.
    #[arg(long = "merchant", value_name = "MID=KEY", value_parser = parse_merchant)]
    pub merchants: Vec<(Mid, MerchantKey)>,
    /// Seed for fault draws and minted identifiers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Refuse API requests above this many per second (any one-second window), unprocessed,
    /// as NICEPAY does when overloaded.
    #[arg(long, value_name = "PER_SECOND",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub throttle_above: Option<u32>,
    /// How a request over `--throttle-above` is refused: `v003` (an answer with
    /// ResultCode V003) or `http429`.
    #[arg(long, value_enum, default_value = "v003", requires = "throttle_above")]
    pub throttle_answer: ThrottleAnswerArg,
    /// An extra v1 shop, CLIENT_KEY:SECRET_KEY, added to the manual's sandbox keys; named
    /// `nicv1x001m`, `nicv1x002m`, … in TIDs, BIDs and the ledger. Repeatable.
    #[arg(long = "v1-merchant", value_name = "CLIENT_KEY:SECRET_KEY",
          value_parser = v1::parse_v1_merchant)]
    pub v1_merchants: Vec<(
        crate::gateway::nicepay_v1::ClientKey,
        crate::gateway::nicepay_v1::SecretKey,
    )>,
    /// Lifetime of v1 access tokens, in milliseconds (NICEPAY: 30 minutes).
    #[arg(long, default_value_t = v1::DEFAULT_TOKEN_LIFETIME.as_millis() as u64)]
    pub v1_token_lifetime_ms: u64,
}

/// `--throttle-answer`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ThrottleAnswerArg {
    V003,
    Http429,
}

/// Parses `MODE[:API[:PROBABILITY[:COUNT]]]`.
pub fn parse_fault(text: &str) -> Result<FaultRule, String> {
    let mut parts = text.split(':');
    let mode_text = parts.next().unwrap_or("");
    let mode = FaultMode::parse(mode_text).ok_or_else(|| {
        let names: Vec<&str> = FaultMode::ALL.iter().map(|m| m.as_str()).collect();
        format!(
            "unknown fault mode {mode_text:?}; expected one of {}",
            names.join(", ")
        )
    })?;
    let api = match parts.next().map(str::trim) {
        None | Some("") | Some("any") => None,
        Some(name) => Some(
            Api::ALL
                .into_iter()
                .find(|a| a.as_str() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = Api::ALL.iter().map(|a| a.as_str()).collect();
                    format!("unknown API {name:?}; expected any, {}", names.join(", "))
                })?,
        ),
    };
    let probability = match parts.next().map(str::trim) {
        None | Some("") => 1.0,
        Some(p) => p
            .parse::<f64>()
            .map_err(|_| format!("probability {p:?} is not a number"))?,
    };
    let count = match parts.next().map(str::trim) {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<u32>()
                .map_err(|_| format!("count {c:?} is not a whole number"))?,
        ),
    };
    if parts.next().is_some() {
        return Err(format!(
            "{text:?}: too many parts; expected MODE[:API[:PROBABILITY[:COUNT]]]"
        ));
    }
    let rule = FaultRule {
        mode,
        api,
        count,
        probability,
    };
    rule.validate()?;
    Ok(rule)
}

/// Parses `MID=KEY` (the key may itself contain `=`).
pub fn parse_merchant(text: &str) -> Result<(Mid, MerchantKey), String> {
    let (mid, key) = text
        .split_once('=')
        .ok_or_else(|| "expected MID=KEY".to_owned())?;
    let mid = Mid::new(mid.trim()).map_err(|e| e.to_string())?;
    let key = MerchantKey::new(key).map_err(|e| e.to_string())?;
    Ok((mid, key))
}

/// Runs `nicebill sim` until `shutdown` resolves. The first line on stdout names the URL,
/// so that scripts can start the simulator on port 0 and read where it listens.
pub async fn serve(args: SimArgs, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    check_loopback(args.listen)?;
    let mut config = SimConfig::new(args.listen);
    for (mid, key) in args.merchants {
        config.merchants.retain(|(m, _)| *m != mid);
        config.merchants.push((mid, key));
    }
    config.latency = Duration::from_millis(args.latency_ms);
    config.hold = Duration::from_millis(args.hold_ms).min(MAX_HOLD);
    config.faults = args.faults;
    config.seed = args.seed;
    config.throttle = args.throttle_above.map(|per_second| Throttle {
        per_second,
        answer: match args.throttle_answer {
            ThrottleAnswerArg::V003 => ThrottleAnswer::V003,
            ThrottleAnswerArg::Http429 => ThrottleAnswer::Http429,
        },
    });
    for (i, (client, secret)) in args.v1_merchants.into_iter().enumerate() {
        config.v1_shops.retain(|s| s.client != client);
        config
            .v1_shops
            .push(V1Shop::numbered(client, secret, i + 1));
    }
    config.v1_token_lifetime = Duration::from_millis(args.v1_token_lifetime_ms);
    let mids: Vec<&str> = config.merchants.iter().map(|(m, _)| m.as_str()).collect();
    tracing::info!(merchants = ?mids, v1_shops = ?config.v1_shops, faults = ?config.faults, "simulator configuration");
    let handle = SimHandle::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "nicebill sim listening on {}", handle.base_url())?;
        out.flush()?;
    }
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_rules_from_the_command_line() {
        let r = parse_fault("drop_after:approve:0.05").unwrap();
        assert_eq!(
            (r.mode, r.api, r.probability, r.count),
            (FaultMode::DropAfter, Some(Api::Approve), 0.05, None)
        );
        let r = parse_fault("http500").unwrap();
        assert_eq!(
            (r.mode, r.api, r.probability, r.count),
            (FaultMode::Http500, None, 1.0, None)
        );
        let r = parse_fault("Hang-After:any:1:2").unwrap();
        assert_eq!(
            (r.mode, r.api, r.probability, r.count),
            (FaultMode::HangAfter, None, 1.0, Some(2))
        );
        for bad in [
            "",
            "explode",
            "garbage:charge",
            "garbage:approve:1.5",
            "garbage:approve:x",
            "garbage:approve:1:-1",
            "garbage:approve:1:1:1",
            "bad_cancel_signature:approve",
            "bad_signature:billkey_issue",
            "bad_signature:billkey_remove",
        ] {
            assert!(parse_fault(bad).is_err(), "{bad:?}");
        }
        for mode in FaultMode::ALL {
            assert_eq!(FaultMode::parse(mode.as_str()), Some(mode));
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(json, format!("\"{}\"", mode.as_str()));
        }
    }

    #[test]
    fn fault_rules_from_json() {
        let rules: Vec<FaultRule> = serde_json::from_str(
            r#"[{"mode":"drop_after","api":"approve","count":1},{"mode":"garbage","probability":0.5}]"#,
        )
        .unwrap();
        assert_eq!(rules[0].probability, 1.0);
        assert_eq!(rules[0].count, Some(1));
        assert_eq!(rules[1].api, None);
        assert!(serde_json::from_str::<Vec<FaultRule>>(r#"[{"mode":"x"}]"#).is_err());
        assert!(
            serde_json::from_str::<Vec<FaultRule>>(r#"[{"mode":"garbage","prob":1}]"#).is_err()
        );
    }

    #[test]
    fn merchants_from_the_command_line() {
        let (mid, key) = parse_merchant("abcdefghij=0123456789abcdef==").unwrap();
        assert_eq!(mid.as_str(), "abcdefghij");
        assert_eq!(key.expose(), "0123456789abcdef==");
        assert!(parse_merchant("abcdefghij").is_err());
        assert!(parse_merchant("short=0123456789abcdef").is_err());
        assert!(parse_merchant("abcdefghij=short").is_err());
    }

    #[test]
    fn args_parse() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            sim: SimArgs,
        }
        let cli = Cli::try_parse_from([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--fault",
            "garbage:status",
            "--fault",
            "drop_after:approve:0.5:3",
            "--merchant",
            "abcdefghij=0123456789abcdef",
            "--latency-ms",
            "20",
            "--fault",
            "hold_before:approve:1:1",
            "--hold-ms",
            "2500",
        ])
        .unwrap();
        assert_eq!(cli.sim.faults.len(), 3);
        assert_eq!(cli.sim.faults[2].mode, FaultMode::HoldBefore);
        assert_eq!(cli.sim.merchants.len(), 1);
        assert_eq!(cli.sim.latency_ms, 20);
        assert_eq!(cli.sim.hold_ms, 2500);
        let defaults = Cli::try_parse_from(["sim"]).unwrap();
        assert_eq!(defaults.sim.listen, "127.0.0.1:8585".parse().unwrap());
        assert_eq!(defaults.sim.hold_ms, 10_000);
        assert!(Cli::try_parse_from(["sim", "--hold-ms", "3600001"]).is_err());
        assert_eq!(
            defaults.sim.v1_token_lifetime_ms,
            v1::DEFAULT_TOKEN_LIFETIME.as_millis() as u64
        );
        let v1 = Cli::try_parse_from([
            "sim",
            "--v1-merchant",
            "R1_0123456789abcdef0123456789abcdef:0123456789abcdef0123456789abcdef",
            "--v1-token-lifetime-ms",
            "500",
        ])
        .unwrap();
        assert_eq!(v1.sim.v1_merchants.len(), 1);
        assert_eq!(v1.sim.v1_token_lifetime_ms, 500);
        assert!(Cli::try_parse_from(["sim", "--v1-merchant", "nokeys"]).is_err());
    }

    #[tokio::test]
    async fn refuses_non_loopback() {
        for listen in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0"] {
            let args = SimArgs {
                listen: listen.parse().unwrap(),
                latency_ms: 0,
                hold_ms: 0,
                faults: vec![],
                merchants: vec![],
                seed: 0,
                throttle_above: None,
                throttle_answer: ThrottleAnswerArg::V003,
                v1_merchants: vec![],
                v1_token_lifetime_ms: 1000,
            };
            let err = serve(args, std::future::ready(())).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("loopback"), "{err}");
        }
        let err = SimHandle::start(SimConfig::new("0.0.0.0:0".parse().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn default_merchants_match_the_vectors() {
        let merchants = SimConfig::default_merchants();
        let mids: Vec<&str> = merchants.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(mids, ["nictest04m", "nicepay00m"]);
        assert!(merchants.iter().all(|(_, k)| k.expose().len() == 88));
    }
}
