//! The v1 calls' protocol logic over the shared [`SimState`]: the seven calls and the payment
//! object. Nothing here knows about HTTP beyond the status code an answer should carry.

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{Value, json};

pub(crate) use super::request::{Fields, V1Answer, authenticate, routing_error, too_many_requests};
use super::request::{Refusal, Step, card_quota, refuse};
use super::{CancelRecord, Payment, Status, V1State, mask_first6_last4};
use crate::domain::{ExposeSecret, Mid};
use crate::gateway::nicepay::Api;
use crate::gateway::nicepay_v1::SecretKey;
use crate::gateway::nicepay_v1::crypto::{self, EncMode};
use crate::sim::cards::{self, Outcome};
use crate::sim::state::{Billkey, LedgerEntry, LedgerState, RemovalEntry, SimState, kst, mint};

/// One v1 call, routed from its method and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Token,
    Regist,
    Approve(String),
    Expire(String),
    Cancel(String),
    Netcancel,
    LookupTid(String),
    LookupOrder(String),
}

impl Call {
    /// The legacy API whose fault rules apply; `None`: never faulted.
    pub(crate) fn fault_api(&self) -> Option<Api> {
        match self {
            Call::Token => None,
            Call::Regist => Some(Api::BillkeyIssue),
            Call::Approve(_) => Some(Api::Approve),
            Call::Expire(_) => Some(Api::BillkeyRemove),
            Call::Cancel(_) | Call::Netcancel => Some(Api::Cancel),
            Call::LookupTid(_) | Call::LookupOrder(_) => Some(Api::Status),
        }
    }

    /// The name requests are counted under.
    pub(crate) fn counter(&self) -> &'static str {
        match self {
            Call::Token => "v1_token",
            Call::Regist => "v1_regist",
            Call::Approve(_) => "v1_approve",
            Call::Expire(_) => "v1_expire",
            Call::Cancel(_) => "v1_cancel",
            Call::Netcancel => "v1_netcancel",
            Call::LookupTid(_) | Call::LookupOrder(_) => "v1_lookup",
        }
    }
}

/// Handles one authenticated call of `shop`. `bad_signature`: sign the answer wrongly.
pub(crate) fn handle(
    st: &mut SimState,
    shop: usize,
    call: &Call,
    fields: &Fields,
    bad_signature: bool,
) -> V1Answer {
    let now = st.clock.now();
    let result = match call {
        Call::Token => Ok(token(&mut st.v1, shop, now, &mut st.rng)),
        Call::Regist => regist(st, shop, fields),
        Call::Approve(bid) => approve(st, shop, bid, fields),
        Call::Expire(bid) => expire(st, shop, bid, fields),
        Call::Cancel(tid) => cancel(st, shop, tid, fields),
        Call::Netcancel => netcancel(st, shop, fields),
        Call::LookupTid(tid) => lookup_tid(st, shop, tid, fields),
        Call::LookupOrder(order_id) => lookup_order(st, shop, order_id, fields),
    };
    let mut answer = match result {
        Ok(answer) => answer,
        Err(refusal) => refusal.answer(now),
    };
    if bad_signature && answer.body.get("signature").is_some() {
        // A plausible digest over the wrong amount: only verification catches it.
        let tid = answer.body["tid"].as_str().unwrap_or("").to_owned();
        let amount = answer.body["amount"].as_i64().unwrap_or(0) + 1;
        let edi = answer.body["ediDate"].as_str().unwrap_or("").to_owned();
        answer.body["signature"] = Value::String(crypto::answer_signature(
            &tid,
            amount,
            &edi,
            &st.v1.shops[shop].secret,
        ));
    }
    // Only identifiers are logged: never encData, keys or tokens.
    tracing::debug!(
        call = call.counter(),
        shop = st.v1.shops[shop].mid.as_str(),
        result_code = answer.result_code(),
        "simulator v1 answered"
    );
    answer
}

fn ok(body: Value) -> V1Answer {
    V1Answer { status: 200, body }
}

fn token(
    v1: &mut V1State,
    shop: usize,
    now: DateTime<Utc>,
    rng: &mut rand::rngs::StdRng,
) -> V1Answer {
    let lifetime = chrono::Duration::from_std(v1.token_lifetime).unwrap_or(chrono::Duration::MAX);
    let (token, expires) = match v1.tokens.get(&shop) {
        Some((token, expires)) if now < *expires => (token.clone(), *expires),
        _ => {
            let bytes: [u8; 32] = rng.random();
            let fresh = (hex::encode(bytes), now + lifetime);
            v1.tokens.insert(shop, fresh.clone());
            fresh
        }
    };
    ok(json!({
        "resultCode": "0000",
        "resultMsg": "정상 처리되었습니다.",
        "accessToken": token,
        "tokenType": "Bearer",
        "expiredAt": crypto::edi_date(expires),
        "now": crypto::edi_date(now),
    }))
}

fn shop_mid(st: &SimState, shop: usize) -> Mid {
    st.v1.shops[shop].mid.clone()
}

fn secret(st: &SimState, shop: usize) -> SecretKey {
    st.v1.shops[shop].secret.clone()
}

/// The billkey exists, is this shop's and is not expired.
fn usable_bid(st: &SimState, shop: usize, bid: &str) -> Step<()> {
    match st.billkeys.get(bid) {
        None => Err(refuse("A126", "존재하지 않는 빌키 입니다")),
        Some(b) if b.mid != st.v1.shops[shop].mid.as_str() => {
            Err(refuse("A255", "다른 상점의 빌키 입니다"))
        }
        Some(b) if b.removed => Err(refuse("A124", "이미 삭제된 빌키 입니다")),
        Some(_) => Ok(()),
    }
}

fn regist(st: &mut SimState, shop: usize, f: &Fields) -> Step<V1Answer> {
    let enc_data = f.required("encData", 512)?;
    let order_id = f.required("orderId", 64)?;
    let enc_mode = f.text("encMode", 10)?;
    f.buyer()?;
    let secret = secret(st, shop);
    f.check_sign(&[order_id], &secret)?;
    let mode = EncMode::from_wire(enc_mode).ok_or_else(|| {
        refuse(
            "A204",
            format!("encData 복호화 실패: encMode {enc_mode:?} (없음 또는 A2)"),
        )
    })?;
    let plain = crypto::decrypt(enc_data, mode, &secret)
        .map_err(|e| refuse("A204", format!("encData 복호화 실패: {e}")))?;
    let facts = card_facts(plain.expose_secret())?;
    drop(plain);
    let now = st.clock.now();
    let mid = shop_mid(st, shop);
    let bid = mint(
        &mut st.rng,
        now,
        |at, n| format!("BIKY{}{}{n:04}", mid.as_str(), kst(at, "%y%m%d%H%M%S")),
        |c| st.billkeys.contains_key(c),
    );
    let tid = st.mint_tid(&mid, now);
    st.billkeys.insert(
        bid.clone(),
        Billkey {
            mid: mid.as_str().to_owned(),
            behaviour: facts.behaviour,
            masked: facts.legacy_mask,
            brand: facts.brand,
            attempts: 0,
            removed: false,
        },
    );
    st.v1.card_nums.insert(bid.clone(), facts.card_num);
    Ok(ok(json!({
        "resultCode": "0000",
        "resultMsg": "정상 처리되었습니다.",
        "tid": tid,
        "orderId": order_id,
        "bid": bid,
        "authDate": crypto::edi_date(now),
        "cardCode": facts.brand.code,
        "cardName": facts.brand.name,
    })))
}

struct CardFacts {
    behaviour: cards::CardBehaviour,
    legacy_mask: String,
    card_num: String,
    brand: cards::Brand,
}

/// Reads exactly `cardNo=…&expYear=…&expMonth=…&idNo=…&cardPw=…`. Messages never echo a value.
fn card_facts(plain: &[u8]) -> Step<CardFacts> {
    const KEYS: [&str; 5] = ["cardNo", "expYear", "expMonth", "idNo", "cardPw"];
    let shape = || {
        refuse(
            "A204",
            "encData 평문 형식 오류 (cardNo=…&expYear=…&expMonth=…&idNo=…&cardPw=…)",
        )
    };
    let text = std::str::from_utf8(plain).map_err(|_| shape())?;
    let pairs: Vec<&str> = text.split('&').collect();
    if pairs.len() != KEYS.len() {
        return Err(shape());
    }
    let mut values = [""; 5];
    for (i, pair) in pairs.iter().enumerate() {
        let (name, value) = pair.split_once('=').ok_or_else(shape)?;
        if name != KEYS[i] {
            return Err(shape());
        }
        values[i] = value;
    }
    let [card_no, exp_year, exp_month, id_no, card_pw] = values;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !cards::is_valid_card_no(card_no) {
        return Err(refuse("F112", "카드번호 오류 (cardNo: 숫자 14~16자리)"));
    }
    let month_ok = exp_month.len() == 2
        && digits(exp_month)
        && (1..=12).contains(&exp_month.parse::<u8>().unwrap_or(0));
    if exp_year.len() != 2 || !digits(exp_year) || !month_ok {
        return Err(refuse(
            "F112",
            "유효기간 형식 오류 (expYear YY, expMonth MM)",
        ));
    }
    if !matches!(id_no.len(), 6 | 10) || !digits(id_no) {
        return Err(refuse(
            "F113",
            "본인확인 오류: idNo (생년월일 6자리 또는 사업자번호 10자리)",
        ));
    }
    if card_pw.len() != 2 || !digits(card_pw) {
        return Err(refuse("F113", "본인확인 오류: cardPw (비밀번호 앞 2자리)"));
    }
    Ok(CardFacts {
        behaviour: cards::behaviour_for(card_no),
        legacy_mask: cards::mask(card_no),
        card_num: mask_first6_last4(card_no),
        brand: cards::brand_for(card_no),
    })
}

fn approve(st: &mut SimState, shop: usize, bid: &str, f: &Fields) -> Step<V1Answer> {
    let order_id = f.required("orderId", 64)?;
    let amount = f
        .amount("amount")?
        .ok_or_else(|| refuse("U100", "필수 파라미터 누락: amount"))?;
    let goods_name = f.required("goodsName", 40)?;
    let quota = card_quota(f)?;
    match f.0.get("useShopInterest") {
        None | Some(Value::Null) => {
            return Err(refuse("U100", "필수 파라미터 누락: useShopInterest"));
        }
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            return Err(refuse(
                "3031",
                "무이자 오류: useShopInterest (false만 가능)",
            ));
        }
        Some(_) => {
            return Err(refuse(
                "U125",
                "파라미터 형식 오류: useShopInterest (boolean)",
            ));
        }
    }
    let [buyer_name, buyer_email, buyer_tel] = f.buyer()?;
    if let Some(tax_free) = f.amount("taxFreeAmt")?
        && tax_free > amount
    {
        return Err(refuse("U321", "면세금액 오류: taxFreeAmt > amount"));
    }
    let mall_reserved = f.mall_reserved()?;
    let secret = secret(st, shop);
    f.check_sign(&[order_id, bid], &secret)?;
    usable_bid(st, shop, bid)?;
    // Any orderId that reached the card company is spent, whatever became of it (module doc).
    if st.v1.orders.contains_key(&(shop, order_id.to_owned())) {
        return Err(refuse(
            "U112",
            format!("이미 사용된 주문번호 입니다 (orderId {order_id})"),
        ));
    }

    let now = st.clock.now();
    let mid = shop_mid(st, shop);
    let tid = st.mint_tid(&mid, now);
    let Some(billkey) = st.billkeys.get_mut(bid) else {
        return Err(refuse("A126", "존재하지 않는 빌키 입니다"));
    };
    billkey.attempts += 1;
    let outcome = billkey.behaviour.outcome(billkey.attempts);
    let brand = billkey.brand;
    let card_num = st.v1.card_nums.get(bid).cloned().unwrap_or_default();
    let mut payment = Payment {
        shop,
        tid: tid.clone(),
        order_id: order_id.to_owned(),
        amount,
        goods_name: goods_name.to_owned(),
        status: Status::Paid,
        requested_at: now,
        failed_at: None,
        cancelled_at: None,
        result_code: "0000",
        result_msg: "정상 처리되었습니다.".into(),
        approve_no: String::new(),
        brand,
        card_num,
        card_quota: quota,
        balance: amount,
        cancels: Vec::new(),
        ledger: None,
        mall_reserved,
        buyer_name,
        buyer_email,
        buyer_tel,
    };
    match outcome {
        Outcome::Declined(decline) => {
            payment.status = Status::Failed;
            payment.failed_at = Some(now);
            payment.result_code = decline.code;
            payment.result_msg = decline.msg.to_owned();
            payment.balance = 0;
        }
        Outcome::Approved => {
            payment.approve_no = format!("{:08}", st.rng.random_range(0..100_000_000u32));
            payment.ledger = Some(st.ledger.len());
            st.ledger.push(LedgerEntry {
                mid: mid.as_str().to_owned(),
                tid: tid.clone(),
                moid: order_id.to_owned(),
                bid: bid.to_owned(),
                amount,
                goods_name: goods_name.to_owned(),
                auth_code: payment.approve_no.clone(),
                state: LedgerState::Approved,
                cancelled_amount: 0,
                approved_at: now,
                seeded: false,
                buyer_name: payment.buyer_name.clone(),
                buyer_email: payment.buyer_email.clone(),
                buyer_tel: payment.buyer_tel.clone(),
            });
        }
    }
    let answer = payment_object(&payment, &secret, now, None);
    st.v1
        .orders
        .insert((shop, order_id.to_owned()), tid.clone());
    st.v1.payments.insert(tid, payment);
    Ok(ok(answer))
}

fn expire(st: &mut SimState, shop: usize, bid: &str, f: &Fields) -> Step<V1Answer> {
    let order_id = f.required("orderId", 64)?;
    let secret = secret(st, shop);
    f.check_sign(&[order_id, bid], &secret)?;
    usable_bid(st, shop, bid)?;
    if let Some(billkey) = st.billkeys.get_mut(bid) {
        billkey.removed = true;
    }
    let now = st.clock.now();
    let mid = shop_mid(st, shop);
    let tid = st.mint_tid(&mid, now);
    st.removals.push(RemovalEntry {
        mid: mid.as_str().to_owned(),
        bid: bid.to_owned(),
        tid: tid.clone(),
        removed_at: now,
    });
    Ok(ok(json!({
        "resultCode": "0000",
        "resultMsg": "정상 처리되었습니다.",
        "tid": tid,
        "orderId": order_id,
        "bid": bid,
        "authDate": crypto::edi_date(now),
    })))
}

/// This shop's payment `tid`, or `2012`.
fn payment_of<'a>(v1: &'a mut V1State, shop: usize, tid: &str) -> Step<&'a mut Payment> {
    v1.payments
        .get_mut(tid)
        .filter(|p| p.shop == shop)
        .ok_or_else(|| refuse("2012", format!("취소할 거래가 없습니다 (tid {tid})")))
}

/// Cancels `amount` of `p` now; returns the cancel's tid.
fn apply_cancel(st: &mut SimState, tid: &str, amount: i64, reason: &str) -> String {
    let now = st.clock.now();
    let shop = st.v1.payments[tid].shop;
    let mid = shop_mid(st, shop);
    let cancel_tid = st.mint_tid(&mid, now);
    let Some(p) = st.v1.payments.get_mut(tid) else {
        return cancel_tid;
    };
    p.balance -= amount;
    p.status = if p.balance == 0 {
        Status::Cancelled
    } else {
        Status::PartialCancelled
    };
    p.cancelled_at = Some(now);
    p.cancels.push(CancelRecord {
        tid: cancel_tid.clone(),
        amount,
        at: now,
        reason: reason.to_owned(),
    });
    if let Some(entry) = p.ledger.and_then(|i| st.ledger.get_mut(i)) {
        entry.cancelled_amount += amount;
        entry.state = if p.balance == 0 {
            LedgerState::Cancelled
        } else {
            LedgerState::PartiallyCancelled
        };
    }
    cancel_tid
}

fn cancel(st: &mut SimState, shop: usize, tid: &str, f: &Fields) -> Step<V1Answer> {
    let reason = f.required("reason", 100)?;
    let order_id = f.required("orderId", 64)?;
    let cancel_amt = f.amount("cancelAmt")?;
    let tax_free = f.amount("taxFreeAmt")?;
    f.mall_reserved()?;
    let secret = secret(st, shop);
    f.check_sign(&[tid], &secret)?;
    let p = payment_of(&mut st.v1, shop, tid)?;
    match p.status {
        Status::Failed => {
            return Err(refuse(
                "2012",
                format!("취소할 승인 거래가 없습니다 (tid {tid}: 실패한 거래)"),
            ));
        }
        Status::Cancelled => return Err(refuse("2013", "이미 취소된 거래입니다")),
        Status::Paid | Status::PartialCancelled => {}
    }
    let amount = cancel_amt.unwrap_or(p.balance);
    if amount > p.balance {
        return Err(refuse(
            "2032",
            format!(
                "취소금액이 취소가능금액보다 큽니다 (취소가능금액 {})",
                p.balance
            ),
        ));
    }
    if tax_free.is_some_and(|t| t > amount) {
        return Err(refuse("U321", "면세금액 오류: taxFreeAmt > cancelAmt"));
    }
    if !st.v1.cancel_orders.insert((shop, order_id.to_owned())) {
        return Err(refuse(
            "U112",
            format!("이미 사용된 주문번호 입니다 (orderId {order_id})"),
        ));
    }
    let cancel_tid = apply_cancel(st, tid, amount, reason);
    let now = st.clock.now();
    let body = payment_object(&st.v1.payments[tid], &secret, now, Some(&cancel_tid));
    Ok(ok(body))
}

/// The netcancel window, counted from the approval request.
const NETCANCEL_WINDOW: chrono::Duration = chrono::Duration::hours(1);

fn netcancel(st: &mut SimState, shop: usize, f: &Fields) -> Step<V1Answer> {
    let order_id = f.required("orderId", 64)?;
    f.mall_reserved()?;
    let secret = secret(st, shop);
    f.check_sign(&[order_id], &secret)?;
    let now = st.clock.now();
    let not_found = || {
        refuse(
            "2012",
            format!("취소할 거래가 없습니다 (orderId {order_id})"),
        )
    };
    let tid = st
        .v1
        .orders
        .get(&(shop, order_id.to_owned()))
        .cloned()
        .ok_or_else(not_found)?;
    let p = &st.v1.payments[&tid];
    match p.status {
        Status::Failed => return Err(not_found()),
        Status::Cancelled => return Err(refuse("2013", "이미 취소된 거래입니다")),
        Status::Paid | Status::PartialCancelled => {}
    }
    if now - p.requested_at > NETCANCEL_WINDOW {
        return Err(refuse("2020", "망취소 가능 시간 초과 (승인 요청 후 1시간)"));
    }
    let balance = p.balance;
    let cancel_tid = apply_cancel(st, &tid, balance, "netcancel");
    let body = payment_object(&st.v1.payments[&tid], &secret, now, Some(&cancel_tid));
    Ok(ok(body))
}

fn lookup_tid(st: &mut SimState, shop: usize, tid: &str, f: &Fields) -> Step<V1Answer> {
    let secret = secret(st, shop);
    f.check_sign(&[tid], &secret)?;
    let now = st.clock.now();
    let p = st
        .v1
        .payments
        .get(tid)
        .filter(|p| p.shop == shop)
        .ok_or_else(|| not_found(&format!("tid {tid}")))?;
    Ok(ok(lookup_object(p, &secret, now)))
}

fn lookup_order(st: &mut SimState, shop: usize, order_id: &str, f: &Fields) -> Step<V1Answer> {
    let order_date = f.required("orderDate", 64)?;
    if order_date.len() != 8 || !order_date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse(
            "U130",
            format!("날짜 형식 오류: orderDate {order_date:?} (YYYYMMDD)"),
        ));
    }
    let secret = secret(st, shop);
    f.check_sign(&[order_id], &secret)?;
    let now = st.clock.now();
    let p = st
        .v1
        .orders
        .get(&(shop, order_id.to_owned()))
        .map(|tid| &st.v1.payments[tid])
        .filter(|p| crypto::order_date(p.requested_at) == order_date)
        .ok_or_else(|| not_found(&format!("orderId {order_id}, orderDate {order_date}")))?;
    Ok(ok(lookup_object(p, &secret, now)))
}

/// A lookup that finds nothing: HTTP 404 with `U111` (module doc).
fn not_found(what: &str) -> Refusal {
    refuse("U111", format!("거래 내역이 없습니다 ({what})")).with_status(404)
}

/// A lookup answers `0000` whatever the payment's state.
fn lookup_object(p: &Payment, secret: &SecretKey, now: DateTime<Utc>) -> Value {
    let mut body = payment_object(p, secret, now, None);
    body["resultCode"] = "0000".into();
    body["resultMsg"] = "정상 처리되었습니다.".into();
    body
}

fn at_or_zero(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "0".to_owned(), crypto::edi_date)
}

/// The payment object (V1.md, approval section), signed over its own tid, amount and ediDate.
fn payment_object(
    p: &Payment,
    secret: &SecretKey,
    now: DateTime<Utc>,
    cancelled_tid: Option<&str>,
) -> Value {
    let edi_date = crypto::edi_date(now);
    let signature = crypto::answer_signature(&p.tid, p.amount, &edi_date, secret);
    let paid_at = (p.status != Status::Failed).then_some(p.requested_at);
    let cancels: Option<Vec<Value>> = (!p.cancels.is_empty()).then(|| {
        p.cancels
            .iter()
            .map(|c| {
                json!({
                    "tid": c.tid,
                    "amount": c.amount,
                    "cancelledAt": crypto::edi_date(c.at),
                    "reason": c.reason,
                    "receiptUrl": Value::Null,
                    "couponAmt": 0,
                })
            })
            .collect()
    });
    let mut body = json!({
        "resultCode": p.result_code,
        "resultMsg": p.result_msg,
        "tid": p.tid,
        "orderId": p.order_id,
        "ediDate": edi_date,
        "signature": signature,
        "status": p.status.as_str(),
        "paidAt": at_or_zero(paid_at),
        "failedAt": at_or_zero(p.failed_at),
        "cancelledAt": at_or_zero(p.cancelled_at),
        "payMethod": "card",
        "amount": p.amount,
        "balanceAmt": p.balance,
        "goodsName": p.goods_name,
        "mallReserved": p.mall_reserved,
        "useEscrow": false,
        "currency": "KRW",
        "channel": "api",
        "approveNo": p.approve_no,
        "buyerName": p.buyer_name,
        "buyerTel": p.buyer_tel,
        "buyerEmail": p.buyer_email,
        "receiptUrl": Value::Null,
        "issuedCashReceipt": false,
        "card": {
            "cardCode": p.brand.code,
            "cardName": p.brand.name,
            "cardNum": p.card_num,
            "cardQuota": p.card_quota,
            "isInterestFree": false,
            "cardType": "credit",
            "canPartCancel": true,
            "acquCardCode": p.brand.code,
            "acquCardName": p.brand.name,
        },
        "cancels": cancels,
    });
    if let Some(cancelled_tid) = cancelled_tid {
        body["cancelledTid"] = cancelled_tid.into();
        body["resultCode"] = "0000".into();
        body["resultMsg"] = "취소 성공".into();
    }
    body
}
