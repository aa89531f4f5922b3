//! `nicebill demo`: what a new user runs first. A temporary SQLite database, the built-in
//! simulator, a handful of subscriptions and the billing engine on a fast clock through several
//! months, then a summary. `--protocol` instead walks the client through every NICEPAY API.

use std::sync::Arc;

use super::CliError;
use crate::clock::SystemClock;
use crate::domain::{CardDetails, Krw, Moid};
use crate::gateway::nicepay::client::BaseUrl;
use crate::gateway::nicepay::{
    ApproveRequest, Buyer, CancelRequest, Charset, ClientSettings, EdiType, IssueRequest,
    NicepayClient, TxState,
};
use crate::sim::{SimConfig, SimHandle};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Walk through the five NICEPAY APIs instead of simulating months of billing.
    #[arg(long)]
    pub protocol: bool,
    /// Months of billing to simulate.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=36))]
    pub months: u32,
    /// Response charset to ask for: euc-kr or utf-8.
    #[arg(long, default_value = "euc-kr", value_parser = |s: &str| Charset::parse(s).ok_or("expected euc-kr or utf-8"))]
    pub charset: Charset,
    /// Response format to ask for: JSON or KV.
    #[arg(long, default_value = "JSON", value_parser = |s: &str| EdiType::parse(s).ok_or("expected JSON or KV"))]
    pub edi_type: EdiType,
    /// Show the log lines too (by default only warnings and errors, so the story stays
    /// readable). `RUST_LOG` overrides both.
    #[arg(long)]
    pub verbose: bool,
}

fn step(n: u32, what: &str, outcome: impl std::fmt::Display) {
    println!("{n}. {what:<38} {outcome}");
}

fn failed(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("demo step {what:?} failed: {e}"))
}

pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    if !args.protocol {
        return super::demo_billing::run(args.months, args.charset, args.edi_type).await;
    }
    let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into())).await?;
    let result = walk(&sim, args).await;
    sim.shutdown().await;
    result
}

async fn walk(sim: &SimHandle, args: DemoArgs) -> Result<(), CliError> {
    let (mid, key) = SimConfig::default_merchants()
        .into_iter()
        .next()
        .ok_or_else(|| CliError::Usage("simulator has no merchants".into()))?;
    let mut settings = ClientSettings::new(BaseUrl::parse(&sim.base_url())?, mid, key);
    settings.charset = args.charset;
    settings.edi_type = args.edi_type;
    let client = NicepayClient::new(settings, Arc::new(SystemClock))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    println!(
        "NICEPAY simulator on {} (MID {}, answers {} in {})\n",
        sim.base_url(),
        client.mid(),
        args.edi_type.as_str(),
        args.charset.as_str()
    );

    let card = CardDetails::new("9410123456780000", "30", "01", "", "")?;
    let issued = client
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
    step(
        1,
        "billkey issue (card ****0000)",
        format!("{} BID={bid}", issued.result_code),
    );

    let tid = client.new_tid();
    let amount = Krw::positive(9_900)?;
    let charge = |tid: crate::domain::Tid, moid: &str| -> Result<ApproveRequest, CliError> {
        Ok(ApproveRequest {
            bid: bid.clone(),
            tid,
            moid: Moid::new(moid)?,
            amount,
            goods_name: "월간 구독 (프리미엄)".into(),
            card_quota: "00".into(),
            interest_free: false,
            buyer: Buyer::default(),
            mall_reserved: None,
        })
    };
    let approved = client
        .approve(&charge(tid.clone(), "demo-S1-C1-A1")?)
        .await
        .map_err(|e| failed("approve", e))?;
    let auth = approved
        .data
        .as_ref()
        .ok_or_else(|| failed("approve", &approved.result_msg))?;
    step(
        2,
        "approve 9,900 KRW",
        format!(
            "{} TID={tid} AuthCode={} Card={}",
            approved.result_code,
            auth.auth_code.as_deref().unwrap_or("-"),
            auth.card_no.as_deref().unwrap_or("-")
        ),
    );

    let looked = client.status(&tid).await.map_err(|e| failed("status", e))?;
    let state = looked.data.as_ref().map(|s| s.state);
    step(
        3,
        "status lookup",
        format!("{} {state:?}", looked.result_code),
    );
    if state != Some(TxState::Approved) {
        return Err(failed("status", "expected the charge to be approved"));
    }

    let refunded = client
        .cancel(&CancelRequest {
            tid: tid.clone(),
            moid: Moid::new("demo-S1-C1-A1")?,
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
        4,
        "refund (signature verified)",
        format!(
            "{} CancelAmt={} RemainAmt={}",
            refunded.result_code,
            cancel.cancel_amount,
            cancel.remain_amount.unwrap_or(Krw::new(0)?)
        ),
    );

    let looked = client.status(&tid).await.map_err(|e| failed("status", e))?;
    step(
        5,
        "status lookup",
        format!(
            "{} {:?}",
            looked.result_code,
            looked.data.as_ref().map(|s| s.state)
        ),
    );

    let removed = client
        .remove_billkey(&bid, &Moid::new("demo-remove-1")?)
        .await
        .map_err(|e| failed("billkey remove", e))?;
    step(
        6,
        "billkey remove",
        format!("{} {}", removed.result_code, removed.result_msg),
    );

    let tid2 = client.new_tid();
    let again = client
        .approve(&charge(tid2, "demo-S1-C2-A1")?)
        .await
        .map_err(|e| failed("approve after removal", e))?;
    step(
        7,
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
