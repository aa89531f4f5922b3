//! Operator commands that speak to NICEPAY directly: billkey issue/remove, approve, refund,
//! status. Input is validated before anything is sent; card details never come from argv.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::CliError;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::domain::{Bid, CardDetails, Krw, Moid, Tid};
use crate::gateway::nicepay::{
    Buyer, CallError, CancelRequest, Class, IssueRequest, Reply, check_goods_name,
};
use crate::gateway::{ApiKind, ChargeRequest, Gateway, TidFor};

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Order id for the issue request (default: generated).
    #[arg(long)]
    pub moid: Option<Moid>,
    /// Buyer name sent to NICEPAY.
    #[arg(long)]
    pub buyer_name: Option<String>,
    /// Print the whole response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    pub bid: Bid,
    #[arg(long)]
    pub moid: Option<Moid>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    #[arg(long)]
    pub bid: Bid,
    /// Amount in whole KRW (digits only).
    #[arg(long)]
    pub amount: String,
    /// Product name; at most 40 EUC-KR bytes (a Hangul syllable counts 2).
    #[arg(long)]
    pub goods_name: String,
    #[arg(long)]
    pub moid: Option<Moid>,
    /// Installment months: 00 (lump sum), 02, 03, …
    #[arg(long, default_value = "00")]
    pub quota: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RefundArgs {
    pub tid: Tid,
    /// Amount to refund in whole KRW.
    #[arg(long)]
    pub amount: String,
    /// A partial refund (the rest stays charged).
    #[arg(long)]
    pub partial: bool,
    /// Reason shown to the card company; at most 100 EUC-KR bytes.
    #[arg(long)]
    pub reason: String,
    /// Order id of the original charge (default: derived from the TID).
    #[arg(long)]
    pub moid: Option<Moid>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The transaction's TID.
    #[arg(required_unless_present = "order_id", conflicts_with = "order_id")]
    pub tid: Option<Tid>,
    /// Look the transaction up by its order id instead (v1 only).
    #[arg(long)]
    pub order_id: Option<Moid>,
    /// With --order-id: the day the order was sent, YYYY-MM-DD in Korea time (default: today).
    #[arg(long, requires = "order_id")]
    pub date: Option<chrono::NaiveDate>,
    #[arg(long)]
    pub json: bool,
}

fn gateway(config_path: &Path) -> Result<Gateway, CliError> {
    let config = Config::load(config_path)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    config
        .nicepay
        .gateway(Arc::new(SystemClock))
        .map_err(CliError::Usage)
}

fn amount(field: &'static str, text: &str) -> Result<Krw, CliError> {
    let krw = Krw::parse_digits(field, text)?;
    Ok(Krw::positive(krw.value()).map_err(|e| crate::domain::FieldError::new(field, e.problem))?)
}

/// A generated order id: `{prefix}-{yyMMddHHmmss}-{4 random digits}`.
fn generated_moid(prefix: &str) -> Moid {
    let stamp = SystemClock
        .now()
        .with_timezone(&chrono_tz::Asia::Seoul)
        .format("%y%m%d%H%M%S");
    let text = format!("{prefix}-{stamp}-{:04}", rand::random_range(0..10_000));
    Moid::new(text).expect("generated Moid is short ASCII")
}

#[derive(Serialize)]
struct JsonReply<'a, T: Serialize> {
    /// Which of NICEPAY's APIs answered: `webapi` or `v1`.
    api: ApiKind,
    /// Which call: `approve`, `cancel`, `status`, `billkey_issue`, `billkey_remove`.
    call: &'static str,
    result_code: &'a str,
    result_msg: &'a str,
    class: Class,
    data: &'a Option<T>,
    response: std::collections::BTreeMap<String, String>,
}

/// Prints the reply (JSON to stdout when asked) and turns a non-success into an error whose
/// one line carries ResultCode, ResultMsg and what to do.
fn conclude<T: Serialize>(
    api: ApiKind,
    result: Result<Reply<T>, CallError>,
    json: bool,
    context: &str,
    success: impl FnOnce(&T),
) -> Result<(), CliError> {
    let reply = match result {
        Ok(reply) => reply,
        Err(CallError::Input(e)) => return Err(CliError::Input(e)),
        Err(e) => {
            let class = e.class();
            return Err(CliError::Gateway {
                class,
                line: format!("{context}: {e} [class {class}]: {}", class.advice()),
            });
        }
    };
    if json {
        let out = JsonReply {
            api,
            call: reply.api.as_str(),
            result_code: &reply.result_code,
            result_msg: &reply.result_msg,
            class: reply.class,
            data: &reply.data,
            response: reply.fields.clone().into_map(),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(std::io::Error::other)?
        );
    }
    match (&reply.data, reply.class) {
        (Some(data), Class::Approved) => {
            if !json {
                success(data);
            }
            Ok(())
        }
        (None, Class::Approved) => {
            // "Already removed" answers: the goal is reached, say so.
            if !json {
                println!(
                    "done (ResultCode={} ResultMsg={:?})",
                    reply.result_code, reply.result_msg
                );
            }
            Ok(())
        }
        (_, class) => Err(CliError::Gateway {
            class,
            line: format!(
                "{context}: ResultCode={} ResultMsg={:?} [class {class}]: {}",
                reply.result_code,
                reply.result_msg,
                class.advice()
            ),
        }),
    }
}

fn read_card() -> Result<CardDetails, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        // Each answer is zeroed when dropped, as is everything CardDetails keeps.
        let ask = |label: &str| {
            rpassword::prompt_password(format!("{label}: ")).map(zeroize::Zeroizing::new)
        };
        let card_no = ask("Card number")?;
        let exp_year = ask("Expiry year (YY)")?;
        let exp_month = ask("Expiry month (MM)")?;
        let id_no = ask("Birth date YYMMDD or business number (may be empty)")?;
        let card_pw = ask("First 2 digits of the card PIN (may be empty)")?;
        Ok(CardDetails::new(
            card_no.trim(),
            exp_year.trim(),
            exp_month.trim(),
            id_no.trim(),
            card_pw.trim(),
        )?)
    } else {
        let mut text = zeroize::Zeroizing::new(String::new());
        stdin.lock().read_to_string(&mut text)?;
        Ok(CardDetails::from_lines(&text)?)
    }
}

pub async fn issue(config: &Path, args: IssueArgs) -> Result<(), CliError> {
    let card = read_card()?;
    let gateway = gateway(config)?;
    let moid = args.moid.unwrap_or_else(|| generated_moid("billkey"));
    let request = IssueRequest {
        moid,
        card,
        buyer: Buyer {
            name: args.buyer_name,
            ..Buyer::default()
        },
    };
    let result = gateway.issue_billkey(&request).await;
    conclude(gateway.api(), result, args.json, "billkey issue", |d| {
        println!("{}", d.bid)
    })
}

pub async fn remove(config: &Path, args: RemoveArgs) -> Result<(), CliError> {
    let gateway = gateway(config)?;
    let moid = args.moid.unwrap_or_else(|| generated_moid("remove"));
    let result = gateway.remove_billkey(&args.bid, &moid).await;
    conclude(gateway.api(), result, args.json, "billkey remove", |_| {
        println!("removed {}", args.bid)
    })
}

pub async fn approve(config: &Path, args: ApproveArgs) -> Result<(), CliError> {
    let amount = amount("amount", &args.amount)?;
    let gateway = gateway(config)?;
    if gateway.api() == ApiKind::Webapi {
        check_goods_name(&args.goods_name)?;
    }
    let tid = gateway.new_tid(TidFor::First);
    let moid = args.moid.unwrap_or_else(|| generated_moid("approve"));
    let context = match &tid {
        Some(tid) => format!("approve TID {tid}"),
        None => format!("approve order {moid}"),
    };
    let request = ChargeRequest {
        bid: args.bid,
        tid,
        moid,
        amount,
        goods_name: args.goods_name,
        card_quota: args.quota,
        interest_free: false,
        buyer: Buyer::default(),
    };
    let result = gateway.approve_by(&request, None).await;
    conclude(gateway.api(), result, args.json, &context, |a| {
        println!(
            "approved TID={} Moid={} Amt={} AuthCode={} AuthDate={} Card={}",
            a.tid,
            a.moid,
            a.amount,
            a.auth_code.as_deref().unwrap_or("-"),
            a.auth_date.as_deref().unwrap_or("-"),
            a.card_no.as_deref().unwrap_or("-")
        )
    })
}

pub async fn refund(config: &Path, args: RefundArgs) -> Result<(), CliError> {
    let amount = amount("amount", &args.amount)?;
    let gateway = gateway(config)?;
    if gateway.api() == ApiKind::Webapi {
        crate::gateway::nicepay::form::euc_kr_limited(
            "reason",
            &args.reason,
            crate::gateway::nicepay::limits::CANCEL_MSG,
        )?;
    }
    let moid = match (args.moid, gateway.api()) {
        (Some(m), _) => m,
        (None, ApiKind::Webapi) => Moid::new(format!("cancel-{}", args.tid))?,
        // On v1 every cancel has an order id of its own (a partial cancel's may not repeat).
        (None, ApiKind::V1) => generated_moid("refund"),
    };
    let request = CancelRequest {
        tid: args.tid.clone(),
        moid,
        amount,
        reason: args.reason,
        partial: args.partial,
        mall_reserved: None,
    };
    let result = gateway.cancel(&request).await;
    conclude(
        gateway.api(),
        result,
        args.json,
        &format!("refund TID {}", args.tid),
        |c| {
            println!(
                "refunded TID={} CancelAmt={} RemainAmt={} CancelNum={}",
                c.tid,
                c.cancel_amount,
                c.remain_amount.map(|r| r.to_string()).unwrap_or("-".into()),
                c.cancel_num.as_deref().unwrap_or("-")
            )
        },
    )
}

pub async fn status(config: &Path, args: StatusArgs) -> Result<(), CliError> {
    let gateway = gateway(config)?;
    let (result, context) = match (&args.tid, &args.order_id) {
        (Some(tid), _) => (gateway.status(tid).await, format!("status TID {tid}")),
        (None, Some(order)) => {
            let sent_at = match args.date {
                // Noon in Korea: the lookup asks for that day.
                Some(day) => day
                    .and_hms_opt(3, 0, 0)
                    .map(|t| t.and_utc())
                    .unwrap_or_else(|| SystemClock.now()),
                None => SystemClock.now(),
            };
            (
                gateway.status_by_order(order, sent_at).await,
                format!("status order {order}"),
            )
        }
        (None, None) => return Err(CliError::Usage("give a TID or --order-id".into())),
    };
    conclude(gateway.api(), result, args.json, &context, |s| {
        let state = match s.state {
            crate::gateway::nicepay::TxState::Approved => "approved",
            crate::gateway::nicepay::TxState::Cancelled => "cancelled",
            crate::gateway::nicepay::TxState::NotFound => "not-found",
        };
        println!(
            "{state} TID={} AuthCode={} AuthDate={}",
            s.tid.as_ref().map_or("-", Tid::as_str),
            s.auth_code.as_deref().unwrap_or("-"),
            s.auth_date.as_deref().unwrap_or("-")
        )
    })
}
