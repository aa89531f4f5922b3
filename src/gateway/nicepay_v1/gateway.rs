//! v1 in the gateway's one vocabulary: v1 answers become [`Reply`], [`Approval`], [`TxStatus`]
//! and the rest, and an attempt whose answer was lost is resolved as V1.md's idempotency section
//! designs it ([`look_up`]): look up by orderId; while the netcancel window lasts, netcancel and
//! look up again; after it, lookups alone.
//!
//! `Reply::api` names the call in the legacy vocabulary (`approve`, `cancel`, `status`,
//! `billkey_issue`, `billkey_remove`), so operator output has one shape on both APIs;
//! `Reply::fields` holds v1's answer flattened (`card.cardCode`, `cancels.0.amount`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::answer::{Reading, read_lookup};
use super::choices;
use super::client::{V1ApproveRequest, V1Client, V1Reply};
use super::codes::{self, Call, Class};
use super::crypto;
use super::types::{Payment, Status};
use crate::domain::{Bid, FieldError, Krw, Moid, Tid};
use crate::gateway::nicepay::response::Fields;
use crate::gateway::nicepay::{
    Api, Approval, BillkeyIssued, BillkeyRemoved, CallError, CancelRequest, Cancellation,
    IssueRequest, Reply, TxState, TxStatus,
};
use crate::gateway::seam::{AttemptRef, ChargeRequest};

/// The legacy name of a v1 call (one shape for operator output on both APIs).
fn api_of(call: Call) -> Api {
    match call {
        Call::Regist => Api::BillkeyIssue,
        Call::Approve => Api::Approve,
        Call::Expire => Api::BillkeyRemove,
        Call::Cancel | Call::Netcancel => Api::Cancel,
        // The token call is never answered to a caller.
        Call::LookupTid | Call::LookupOrder | Call::Token => Api::Status,
    }
}

/// An answer flattened into name → text (`card.cardCode`, `cancels.0.amount`); nulls left out.
fn fields_of<T: Serialize>(answer: &T) -> Fields {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            }
        };
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Object(m) => m.iter().for_each(|(k, x)| walk(&key(k), x, out)),
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| walk(&key(&i.to_string()), x, out)),
            serde_json::Value::String(s) => {
                out.insert(prefix.to_owned(), s.clone());
            }
            other => {
                out.insert(prefix.to_owned(), other.to_string());
            }
        }
    }
    let mut map = BTreeMap::new();
    if let Ok(v) = serde_json::to_value(answer) {
        walk("", &v, &mut map);
    }
    Fields::from_map(map)
}

fn reply<T, A>(r: &V1Reply<A>, answer: &impl Serialize, class: Class, data: Option<T>) -> Reply<T> {
    Reply {
        api: api_of(r.call),
        result_code: r.result_code.clone(),
        result_msg: r.result_msg.clone(),
        class,
        data,
        fields: fields_of(answer),
    }
}

/// A reply that tells nothing settled: `class`, no data, `note` after the answer's message.
fn open<A>(r: &V1Reply<A>, answer: &impl Serialize, class: Class, note: &str) -> Reply<TxStatus> {
    let mut out = reply(r, answer, class, None);
    out.result_msg = if out.result_msg.is_empty() {
        note.to_owned()
    } else {
        format!("{} ({note})", out.result_msg)
    };
    out
}

/// `POST /v1/subscribe/{bid}/payments`. Only lump sums are sent (choice 18): `00` is sent as
/// `"0"`, any instalment and merchant-paid interest-free months are refused before sending.
pub async fn approve(
    c: &V1Client,
    req: &ChargeRequest,
    send_by: Option<std::time::Instant>,
) -> Result<Reply<Approval>, CallError> {
    if req.interest_free {
        return Err(FieldError::new(
            "useShopInterest",
            "merchant-paid interest-free instalments are not sent on v1 (lump sum only)",
        )
        .into());
    }
    let card_quota = match req.card_quota.as_str() {
        "00" | "0" => "0".to_owned(),
        other => other.to_owned(),
    };
    let request = V1ApproveRequest {
        bid: req.bid.clone(),
        order_id: req.moid.clone(),
        amount: req.amount,
        goods_name: req.goods_name.clone(),
        card_quota,
        buyer: req.buyer.clone(),
        mall_reserved: None,
    };
    let r = c
        .approve(&request, send_by.map(tokio::time::Instant::from_std))
        .await?;
    let payment = &r.data.payment;
    let mut class = r.class;
    let data = match (&r.data.reading.paid, class) {
        (Some(paid), Class::Approved) => match Tid::issued(paid.tid.clone()) {
            Ok(tid) => {
                let card = payment.card.clone().unwrap_or_default();
                Some(Approval {
                    tid,
                    moid: req.moid.clone(),
                    amount: req.amount,
                    auth_code: paid.approve_no.clone(),
                    auth_date: paid.paid_at.clone(),
                    card_no: card.card_num,
                    card_code: card.card_code,
                    card_name: card.card_name,
                    card_quota: card.card_quota,
                    card_cl: card.card_type,
                    cc_part_cl: None,
                    card_interest: card
                        .is_interest_free
                        .map(|b| if b { "1" } else { "0" }.into()),
                    acqu_card_code: card.acqu_card_code,
                    acqu_card_name: card.acqu_card_name,
                })
            }
            Err(e) => {
                tracing::error!(order_id = %req.moid, error = %e, "v1 approval answer carries a tid nicebill cannot store; resolved by lookup");
                class = Class::Unknown;
                None
            }
        },
        _ => None,
    };
    Ok(reply(&r, payment, class, data))
}

/// One lookup read against the attempt being resolved.
enum Step {
    /// Settled by this answer (approved, cancelled, void), or a failure to hand back as is.
    Done(Reply<TxStatus>),
    /// Nothing approved under the orderId yet: not found (`pending = false`) or `ready`.
    Open {
        reply: Box<V1Reply<Payment>>,
        pending: bool,
    },
}

/// What a payment object says, as a lookup's answer.
fn tx_status(p: &Payment, state: TxState, tid: Option<Tid>) -> TxStatus {
    TxStatus {
        tid,
        state,
        auth_code: p.approve_no.clone(),
        auth_date: p.paid_at.clone(),
        moid: p.order_id.clone(),
        amount: p.amount.and_then(|a| Krw::new(a).ok()),
    }
}

fn settled(r: &V1Reply<Payment>, state: TxState, tid: Option<Tid>) -> Step {
    let p = &r.data;
    Step::Done(reply(r, p, Class::Approved, Some(tx_status(p, state, tid))))
}

fn read(c: &V1Client, r: V1Reply<Payment>, attempt: &AttemptRef<'_>) -> Step {
    let reading = read_lookup(
        r.call,
        r.http_status,
        &r.data,
        attempt.moid,
        attempt.amount,
        &c.settings().secret_key,
    );
    let tid = |text: &str| Tid::issued(text).ok();
    match reading {
        Reading::Approved { tid: t, .. } => match tid(&t) {
            Some(t) => settled(&r, TxState::Approved, Some(t)),
            None => {
                tracing::error!(
                    order_id = attempt.moid,
                    "v1 lookup found our payment under a tid nicebill cannot store; left unresolved"
                );
                Step::Done(open(&r, &r.data, Class::Unknown, "tid not storable"))
            }
        },
        Reading::NotApproved {
            status: Status::Cancelled,
        } => {
            let t = r.data.tid.as_deref().and_then(tid);
            settled(&r, TxState::Cancelled, t)
        }
        // failed or expired: the attempt is void, nothing was charged under it.
        Reading::NotApproved { .. } => {
            let t = r.data.tid.as_deref().and_then(tid);
            settled(&r, TxState::NotFound, t)
        }
        Reading::Pending => Step::Open {
            reply: Box::new(r),
            pending: true,
        },
        Reading::NotFound { .. } => Step::Open {
            reply: Box::new(r),
            pending: false,
        },
        Reading::Untrusted { why } => {
            tracing::error!(
                order_id = attempt.moid,
                why,
                "v1 lookup answered 0000 with a payment nicebill cannot take as its own; left unresolved (never a success, never a failure)"
            );
            Step::Done(open(&r, &r.data, Class::Unknown, why))
        }
        Reading::Failed { class, .. } => Step::Done(open(&r, &r.data, class, "lookup failed")),
    }
}

/// The `orderDate`s to try for an attempt committed at `at`: its KST date first, then the day
/// before or after when `at` is within [`choices::MIDNIGHT_MARGIN`] of KST midnight (choice 6;
/// it also covers that much clock skew between us and NICEPAY).
fn order_dates(at: DateTime<Utc>) -> Vec<String> {
    let margin = chrono::Duration::from_std(choices::MIDNIGHT_MARGIN).unwrap_or_default();
    let mut dates = vec![crypto::order_date(at)];
    for d in [
        crypto::order_date(at - margin),
        crypto::order_date(at + margin),
    ] {
        if !dates.contains(&d) {
            dates.push(d);
        }
    }
    dates
}

/// Lookup by orderId over [`order_dates`]; the first date that finds anything decides.
async fn find(c: &V1Client, moid: &Moid, attempt: &AttemptRef<'_>) -> Result<Step, CallError> {
    let mut last = None;
    for date in order_dates(attempt.committed_at) {
        let r = c.lookup_order(moid, &date).await?;
        match read(c, r, attempt) {
            Step::Open {
                reply,
                pending: false,
            } => last = Some(reply),
            step => return Ok(step),
        }
    }
    let reply = last.expect("at least one order date");
    Ok(Step::Open {
        reply,
        pending: false,
    })
}

/// What became of an approval whose answer was lost or not trusted (V1.md, idempotency).
///
/// 1. Look up by orderId. Paid with our amount (signature verified) is an approval: **no
///    netcancel**. Cancelled, failed or expired settle it too.
/// 2. Nothing approved, and less than [`choices::NETCANCEL_STOP`] since the attempt was
///    committed: netcancel by orderId (a paid approval that appeared meanwhile is cancelled;
///    "not found", 2013 and 2015 mean there is nothing to cancel), then look up again (by the
///    netcancel's tid if it gave one). What that lookup says settles it.
/// 3. Past the stop, lookups alone; "not found" is conclusive only after
///    [`choices::NETCANCEL_WINDOW`] (choice 11), or when NICEPAY says the window passed (2020).
///
/// Anything else (a failed lookup, an untrusted answer, a failed netcancel) settles nothing:
/// the reply carries no data and the engine looks again later.
pub async fn look_up(
    c: &V1Client,
    attempt: &AttemptRef<'_>,
    now: DateTime<Utc>,
) -> Result<Reply<TxStatus>, CallError> {
    let moid = Moid::new(attempt.moid)?;
    let age = (now - attempt.committed_at).to_std().unwrap_or_default();
    let (first, pending) = match find(c, &moid, attempt).await? {
        Step::Done(r) => return Ok(r),
        Step::Open { reply, pending } => (reply, pending),
    };
    let not_yet = "nothing approved yet; conclusive once the 1-hour netcancel window has passed";
    if age >= choices::NETCANCEL_STOP {
        return Ok(if !pending && age >= choices::NETCANCEL_WINDOW {
            not_found(&first)
        } else {
            open(&first, &first.data, Class::Unknown, not_yet)
        });
    }
    let n = c.netcancel(&moid).await?;
    let code = n.result_code.as_str();
    let nothing_to_cancel = codes::not_found_codes().contains(&code) || n.class == Class::Duplicate;
    if code == "2020" {
        // NICEPAY says the window has passed (our clock is behind): lookups alone decide.
        return Ok(if pending {
            open(&first, &first.data, Class::Unknown, not_yet)
        } else {
            not_found(&first)
        });
    }
    if n.class != Class::Approved && !nothing_to_cancel {
        tracing::warn!(
            order_id = attempt.moid,
            result_code = code,
            class = n.class.as_str(),
            "v1 netcancel of an unresolved approval failed; looked up again later"
        );
        let mut out = open(
            &n,
            &n.data,
            n.class,
            "netcancel failed; looked up again later",
        );
        out.data = None;
        return Ok(out);
    }
    if n.class == Class::Approved {
        tracing::warn!(
            order_id = attempt.moid,
            "v1 netcancel cancelled an approval whose answer was lost"
        );
    }
    let by_tid = n.data.tid.as_deref().and_then(|t| Tid::issued(t).ok());
    let second = match by_tid {
        Some(tid) => read(c, c.lookup_tid(&tid).await?, attempt),
        None => find(c, &moid, attempt).await?,
    };
    Ok(match second {
        Step::Done(r) => r,
        Step::Open {
            reply,
            pending: false,
        } => not_found(&reply),
        Step::Open {
            reply,
            pending: true,
        } => open(
            &reply,
            &reply.data,
            Class::Unknown,
            "still ready after the netcancel",
        ),
    })
}

fn not_found(r: &V1Reply<Payment>) -> Reply<TxStatus> {
    reply(
        r,
        &r.data,
        Class::Approved,
        Some(TxStatus {
            tid: None,
            state: TxState::NotFound,
            auth_code: None,
            auth_date: None,
            moid: None,
            amount: None,
        }),
    )
}

/// A lookup for an operator (`nicebill status`): what NICEPAY holds, whoever's it is. A
/// `0000` whose signature does not verify is shown as unknown, never as a state.
fn operator_status(c: &V1Client, r: V1Reply<Payment>, asked: Option<&Tid>) -> Reply<TxStatus> {
    let p = &r.data;
    let code = p.result_code.as_str();
    let status = |state, tid| reply(&r, p, Class::Approved, Some(tx_status(p, state, tid)));
    if codes::not_found_codes().contains(&code) || (code.is_empty() && r.http_status == 404) {
        return status(TxState::NotFound, asked.cloned());
    }
    if code != codes::SUCCESS {
        return open(&r, p, r.class, "lookup failed");
    }
    if let (Some(sig), Some(tid), Some(amount)) = (
        p.signature.as_deref().filter(|s| !s.is_empty()),
        p.tid.as_deref(),
        p.amount,
    ) {
        let edi = p.edi_date.as_deref().unwrap_or("");
        if !crypto::signature_verifies(sig, tid, amount, edi, &c.settings().secret_key) {
            return open(&r, p, Class::Unknown, "signature does not verify");
        }
    }
    let tid = p
        .tid
        .as_deref()
        .and_then(|t| Tid::issued(t).ok())
        .or_else(|| asked.cloned());
    match p.status {
        Some(Status::Paid) | Some(Status::PartialCancelled) => status(TxState::Approved, tid),
        Some(Status::Cancelled) => status(TxState::Cancelled, tid),
        Some(Status::Failed) | Some(Status::Expired) => status(TxState::NotFound, tid),
        _ => open(&r, p, Class::Unknown, "payment not settled yet (ready)"),
    }
}

/// `nicebill status TID` on v1.
pub async fn status(c: &V1Client, tid: &Tid) -> Result<Reply<TxStatus>, CallError> {
    let r = c.lookup_tid(tid).await?;
    Ok(operator_status(c, r, Some(tid)))
}

/// `nicebill status --order-id` on v1: the order as sent on the KST date of `sent_at`.
pub async fn status_by_order(
    c: &V1Client,
    moid: &Moid,
    sent_at: DateTime<Utc>,
) -> Result<Reply<TxStatus>, CallError> {
    let r = c.lookup_order(moid, &crypto::order_date(sent_at)).await?;
    Ok(operator_status(c, r, None))
}

/// `POST /v1/subscribe/regist`.
pub async fn issue_billkey(
    c: &V1Client,
    req: &IssueRequest,
) -> Result<Reply<BillkeyIssued>, CallError> {
    let r = c.issue_billkey(&req.moid, &req.card, &req.buyer).await?;
    let a = &r.data;
    let mut class = r.class;
    let data = if class == Class::Approved {
        match a.bid.clone().map(Bid::new) {
            Some(Ok(bid)) => Some(BillkeyIssued {
                bid,
                tid: a.tid.clone(),
                auth_date: a.auth_date.clone(),
                card_code: a.card_code.clone(),
                card_name: a.card_name.clone(),
                card_cl: None,
                acqu_card_code: None,
                acqu_card_name: None,
            }),
            _ => {
                class = Class::Unknown;
                None
            }
        }
    } else {
        None
    };
    Ok(reply(&r, a, class, data))
}

/// `POST /v1/subscribe/{bid}/expire`. A billkey already gone reads as done (choice 15),
/// without data.
pub async fn remove_billkey(
    c: &V1Client,
    bid: &Bid,
    moid: &Moid,
) -> Result<Reply<BillkeyRemoved>, CallError> {
    let r = c.expire(bid, moid).await?;
    let a = &r.data;
    let data =
        (r.class == Class::Approved && a.result_code == codes::SUCCESS).then(|| BillkeyRemoved {
            tid: a.tid.clone(),
            bid: a.bid.clone(),
            auth_date: a.auth_date.clone(),
        });
    Ok(reply(&r, a, r.class, data))
}

/// `POST /v1/payments/{tid}/cancel`. A partial cancel sends `cancelAmt`; a full one does not
/// (v1 then cancels what is left), and the amount reported is the one NICEPAY cancelled.
pub async fn cancel(c: &V1Client, req: &CancelRequest) -> Result<Reply<Cancellation>, CallError> {
    let amount = req.partial.then_some(req.amount);
    let r = c.cancel(&req.tid, &req.moid, &req.reason, amount).await?;
    let p = &r.data;
    let data = (r.class == Class::Approved).then(|| {
        let last = p.cancels.as_ref().and_then(|c| c.last());
        let cancelled = last
            .and_then(|e| e.amount)
            .and_then(|a| Krw::new(a).ok())
            .unwrap_or(req.amount);
        Cancellation {
            tid: p
                .cancelled_tid
                .as_deref()
                .and_then(|t| Tid::issued(t).ok())
                .unwrap_or_else(|| req.tid.clone()),
            cancel_amount: cancelled,
            remain_amount: p.balance_amt.and_then(|a| Krw::new(a).ok()),
            cancel_date: p.cancelled_at.clone(),
            cancel_time: None,
            cancel_num: None,
            pay_method: p.pay_method.clone(),
        }
    });
    Ok(reply(&r, p, r.class, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn order_dates_cover_kst_midnight() {
        // 12:00 KST: one date.
        let noon = Utc.with_ymd_and_hms(2026, 12, 25, 3, 0, 0).unwrap();
        assert_eq!(order_dates(noon), vec!["20261225"]);
        // 23:55 KST: that day, then the next.
        let late = Utc.with_ymd_and_hms(2026, 12, 25, 14, 55, 0).unwrap();
        assert_eq!(order_dates(late), vec!["20261225", "20261226"]);
        // 00:03 KST: that day, then the one before.
        let early = Utc.with_ymd_and_hms(2026, 12, 25, 15, 3, 0).unwrap();
        assert_eq!(order_dates(early), vec!["20261226", "20261225"]);
    }

    #[test]
    fn answers_flatten_with_dotted_names() {
        let p: Payment = serde_json::from_value(serde_json::json!({
            "resultCode": "0000", "resultMsg": "ok", "tid": "T1", "amount": 9900,
            "status": "paid", "card": {"cardCode": "04"},
            "cancels": [{"amount": 100}]
        }))
        .unwrap();
        let f = fields_of(&p).into_map();
        assert_eq!(f["resultCode"], "0000");
        assert_eq!(f["amount"], "9900");
        assert_eq!(f["status"], "paid");
        assert_eq!(f["card.cardCode"], "04");
        assert_eq!(f["cancels.0.amount"], "100");
        assert!(!f.contains_key("paidAt"), "nulls are left out");
    }
}
