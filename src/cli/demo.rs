//! `nicebill demo`: what a new user runs first. A temporary SQLite database, the built-in
//! simulator, a handful of subscriptions and the billing engine on a fast clock through several
//! months, then a summary. `--protocol` instead walks the client through every NICEPAY API.

use std::sync::Arc;
use std::time::Duration;

use super::CliError;
use crate::clock::{Clock, SharedClock, SystemClock};
use crate::domain::{CardDetails, Krw, Moid};
use crate::gateway::nicepay::client::BaseUrl;
use crate::gateway::nicepay::{
    Buyer, CancelRequest, Charset, ClientSettings, EdiType, IssueRequest, NicepayClient, TxState,
};
use crate::gateway::nicepay_v1::{ClientKey, SecretKey, V1Settings};
use crate::gateway::{ApiKind, ChargeRequest, Gateway, TidFor};
use crate::sim::{SimConfig, SimHandle};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Walk through every NICEPAY call instead of simulating months of billing.
    #[arg(long)]
    pub protocol: bool,
    /// Months of billing to simulate.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=36))]
    pub months: u32,
    /// Which NICEPAY API the story runs on: webapi (the legacy web API) or v1 (the REST API).
    /// The built-in simulator serves both.
    #[arg(long, default_value = "webapi", value_parser = |s: &str| ApiKind::parse(s).ok_or("expected webapi or v1"))]
    pub api: ApiKind,
    /// Response charset to ask for (web API only): euc-kr (default) or utf-8.
    #[arg(long, value_parser = |s: &str| Charset::parse(s).ok_or("expected euc-kr or utf-8"))]
    pub charset: Option<Charset>,
    /// Response format to ask for (web API only): JSON (default) or KV.
    #[arg(long, value_parser = |s: &str| EdiType::parse(s).ok_or("expected JSON or KV"))]
    pub edi_type: Option<EdiType>,
    /// Show the log lines too (by default only warnings and errors, so the story stays
    /// readable). `RUST_LOG` overrides both.
    #[arg(long)]
    pub verbose: bool,
}

/// The demo's gateway on the built-in simulator: its first test merchant on the web API, or
/// its first v1 shop (NICEPAY's published sandbox keys); and one line saying which.
pub(super) fn demo_gateway(
    sim: &SimHandle,
    args: &DemoArgs,
    clock: SharedClock,
) -> Result<(Gateway, String), CliError> {
    let base_url = BaseUrl::parse(&sim.base_url())?;
    match args.api {
        ApiKind::Webapi => {
            let (mid, key) = SimConfig::default_merchants()
                .into_iter()
                .next()
                .ok_or_else(|| CliError::Usage("simulator has no merchants".into()))?;
            let mut settings = ClientSettings::new(base_url, mid.clone(), key);
            settings.charset = args.charset.unwrap_or_default();
            settings.edi_type = args.edi_type.unwrap_or_default();
            settings.connect_timeout = Duration::from_secs(2);
            settings.read_timeout = Duration::from_secs(5);
            let who = format!(
                "web API, MID {mid}, answers {} in {}",
                settings.edi_type.as_str(),
                settings.charset.as_str()
            );
            let client =
                NicepayClient::new(settings, clock).map_err(|e| CliError::Usage(e.to_string()))?;
            Ok((Gateway::from(client), who))
        }
        ApiKind::V1 => {
            if args.charset.is_some() || args.edi_type.is_some() {
                return Err(CliError::Usage(
                    "--charset and --edi-type choose the web API's answer format; v1 answers JSON in UTF-8".into(),
                ));
            }
            let (client_key, secret_key, shop) = crate::sim::v1::DEFAULT_SHOPS[0];
            let mut settings = V1Settings::new(
                base_url,
                ClientKey::new(client_key)?,
                SecretKey::new(secret_key)?,
            );
            settings.connect_timeout = Duration::from_secs(2);
            settings.read_timeout = Duration::from_secs(5);
            let who = format!("REST API v1, shop {shop}, client key {client_key}, Basic auth");
            Ok((Gateway::v1(settings, clock).map_err(CliError::Usage)?, who))
        }
    }
}

fn step(n: u32, what: &str, outcome: impl std::fmt::Display) {
    println!("{n}. {what:<38} {outcome}");
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("demo step {what:?} failed: {e}"))
}

pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    if !args.protocol {
        return super::demo_billing::run(&args).await;
    }
    let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into())).await?;
    let result = walk(&sim, args).await;
    sim.shutdown().await;
    result
}

async fn walk(sim: &SimHandle, args: DemoArgs) -> Result<(), CliError> {
    let (gateway, who) = demo_gateway(sim, &args, Arc::new(SystemClock))?;
    println!("NICEPAY simulator on {} ({who})\n", sim.base_url());

    let card = CardDetails::new("9410123456780000", "30", "01", "880229", "37")?;
    let issued = gateway
        .issue_billkey(&IssueRequest {
            moid: Moid::new("demo-billkey-1")?,
            card,
            buyer: Buyer {
                name: Some("홍길동".into()),
                ..Buyer::default()
            },
        })
        .await
        .map_err(|e| failed("billkey issue", e))?;
    let bid = issued
        .data
        .as_ref()
        .map(|d| d.bid.clone())
        .ok_or_else(|| failed("billkey issue", &issued.result_msg))?;
    let mut n = 0;
    let mut step = |what: &str, outcome: String| {
        n += 1;
        step(n, what, outcome)
    };
    step(
        "billkey issue (card ****0000)",
        format!("{} BID={bid}", issued.result_code),
    );

    let amount = Krw::positive(9_900)?;
    let charge = |moid: &str| -> Result<ChargeRequest, CliError> {
        Ok(ChargeRequest {
            bid: bid.clone(),
            // Ours on the web API, stored before sending; NICEPAY's on v1.
            tid: gateway.new_tid(TidFor::First),
            moid: Moid::new(moid)?,
            amount,
            goods_name: "월간 구독 (프리미엄)".into(),
            card_quota: "00".into(),
            interest_free: false,
            buyer: Buyer::default(),
        })
    };
    let approved = gateway
        .approve_by(&charge("demo-S1-C1-A1")?, None)
        .await
        .map_err(|e| failed("approve", e))?;
    let auth = approved
        .data
        .as_ref()
        .ok_or_else(|| failed("approve", &approved.result_msg))?;
    let tid = auth.tid.clone();
    step(
        "approve 9,900 KRW",
        format!(
            "{} TID={tid} AuthCode={} Card={}",
            approved.result_code,
            auth.auth_code.as_deref().unwrap_or("-"),
            auth.card_no.as_deref().unwrap_or("-")
        ),
    );

    let looked = gateway
        .status(&tid)
        .await
        .map_err(|e| failed("status", e))?;
    let state = looked.data.as_ref().map(|s| s.state);
    step(
        "status lookup by TID",
        format!("{} {state:?}", looked.result_code),
    );
    if state != Some(TxState::Approved) {
        return Err(failed("status", "expected the charge to be approved"));
    }
    if args.api == ApiKind::V1 {
        let by_order = gateway
            .status_by_order(&Moid::new("demo-S1-C1-A1")?, SystemClock.now())
            .await
            .map_err(|e| failed("status by order id", e))?;
        step(
            "status lookup by order id",
            format!(
                "{} {:?}",
                by_order.result_code,
                by_order.data.as_ref().map(|s| s.state)
            ),
        );
    }

    // A cancel repeats the order id on the web API; on v1 each cancel has one of its own.
    let cancel_moid = match args.api {
        ApiKind::Webapi => "demo-S1-C1-A1",
        ApiKind::V1 => "demo-cancel-1",
    };
    let refunded = gateway
        .cancel(&CancelRequest {
            tid: tid.clone(),
            moid: Moid::new(cancel_moid)?,
            amount,
            reason: "고객요청".into(),
            partial: false,
            mall_reserved: None,
        })
        .await
        .map_err(|e| failed("refund", e))?;
    let cancel = refunded
        .data
        .as_ref()
        .ok_or_else(|| failed("refund", &refunded.result_msg))?;
    step(
        "refund (signature verified)",
        format!(
            "{} CancelAmt={} RemainAmt={}",
            refunded.result_code,
            cancel.cancel_amount,
            cancel.remain_amount.unwrap_or(Krw::new(0)?)
        ),
    );

    let looked = gateway
        .status(&tid)
        .await
        .map_err(|e| failed("status", e))?;
    step(
        "status lookup",
        format!(
            "{} {:?}",
            looked.result_code,
            looked.data.as_ref().map(|s| s.state)
        ),
    );

    let removed = gateway
        .remove_billkey(&bid, &Moid::new("demo-remove-1")?)
        .await
        .map_err(|e| failed("billkey remove", e))?;
    step(
        "billkey remove",
        format!("{} {}", removed.result_code, removed.result_msg),
    );

    let again = gateway
        .approve_by(&charge("demo-S1-C2-A1")?, None)
        .await
        .map_err(|e| failed("approve after removal", e))?;
    step(
        "approve on the removed billkey",
        format!(
            "{} {} [{}]",
            again.result_code, again.result_msg, again.class
        ),
    );

    let ledger = sim.ledger();
    println!("\nsimulator ledger: {} approval(s)", ledger.len());
    for entry in ledger {
        println!(
            "  TID={} Moid={} Amt={} state={:?} cancelled={}",
            entry.tid, entry.moid, entry.amount, entry.state, entry.cancelled_amount
        );
    }
    Ok(())
}
