//! The HTTP client for the five APIs.
//!
//! Every call builds an EUC-KR form (refusing bad input before anything is sent), posts it,
//! parses the answer and classifies it through [`super::codes`]. Success answers are checked
//! against the request (TID, amount, cancel `Signature`); a mismatch is an error of class
//! `Unknown`, never a success.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::codes::{self, Class, Transport};
use super::response::{self, Fields, ParseError};
use super::tid::TidGenerator;
use super::{Api, Charset, EdiType, crypto, edi_date, form::FormBuilder, limits, sign};
use crate::clock::SharedClock;
use crate::domain::{Bid, CardDetails, FieldError, Krw, MerchantKey, Mid, Moid, Tid};
use crate::gateway::http::{self, describe, transport_of};

/// Where NICEPAY (or the simulator) lives. `https` always; plain `http` only for loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(reqwest::Url);

impl BaseUrl {
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "base_url";
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| FieldError::new(FIELD, format!("{text:?} is not a URL: {e}")))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(FieldError::new(FIELD, "must not have a query or fragment"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FieldError::new(FIELD, "must not carry credentials"));
        }
        let loopback = match url.host_str() {
            Some(host) => crate::domain::is_loopback_host(host),
            None => return Err(FieldError::new(FIELD, format!("{text:?} has no host"))),
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(FieldError::new(
                    FIELD,
                    format!(
                        "{text:?} uses plain http to a non-loopback host; card data and keys must travel over https (http is allowed only for 127.0.0.1/localhost simulators)"
                    ),
                ));
            }
            other => {
                return Err(FieldError::new(
                    FIELD,
                    format!("scheme {other:?} is not supported; use https"),
                ));
            }
        }
        Ok(Self(url))
    }

    pub fn endpoint(&self, api: Api) -> String {
        format!("{}{}", self.0.as_str().trim_end_matches('/'), api.path())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Everything the client needs to know; built from the `[nicepay]` config section.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    pub base_url: BaseUrl,
    pub mid: Mid,
    pub key: MerchantKey,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub charset: Charset,
    pub edi_type: EdiType,
    /// Requests per second this client sends at most (`None`: no limit).
    pub max_requests_per_second: Option<std::num::NonZeroU32>,
}

impl ClientSettings {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
    pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(25);

    pub fn new(base_url: BaseUrl, mid: Mid, key: MerchantKey) -> Self {
        Self {
            base_url,
            mid,
            key,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            read_timeout: Self::DEFAULT_READ_TIMEOUT,
            charset: Charset::EucKr,
            edi_type: EdiType::Json,
            max_requests_per_second: None,
        }
    }
}

/// Optional buyer details sent with billkey issue and approval.
#[derive(Clone, Debug, Default)]
pub struct Buyer {
    pub name: Option<String>,
    pub email: Option<String>,
    pub tel: Option<String>,
}

impl Buyer {
    fn add_to(&self, form: &mut FormBuilder) -> Result<(), FieldError> {
        form.optional("BuyerName", self.name.as_deref(), limits::BUYER_NAME)?
            .optional("BuyerEmail", self.email.as_deref(), limits::BUYER_EMAIL)?
            .optional("BuyerTel", self.tel.as_deref(), limits::BUYER_TEL)?;
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct IssueRequest {
    pub moid: Moid,
    pub card: CardDetails,
    pub buyer: Buyer,
}

#[derive(Clone, Debug)]
pub struct ApproveRequest {
    pub bid: Bid,
    /// Made by the caller (see [`NicepayClient::new_tid`]) and stored before sending.
    pub tid: Tid,
    pub moid: Moid,
    pub amount: Krw,
    pub goods_name: String,
    /// `00` lump sum, `02`, `03`, … months.
    pub card_quota: String,
    /// Merchant-paid interest-free installments (`CardInterest=1`).
    pub interest_free: bool,
    pub buyer: Buyer,
    pub mall_reserved: Option<String>,
}

#[derive(Clone, Debug)]
pub struct CancelRequest {
    pub tid: Tid,
    pub moid: Moid,
    pub amount: Krw,
    pub reason: String,
    pub partial: bool,
    pub mall_reserved: Option<String>,
}

/// A NICEPAY answer that carried a ResultCode.
#[derive(Clone, Debug)]
pub struct Reply<T> {
    pub api: Api,
    pub result_code: String,
    pub result_msg: String,
    pub class: Class,
    /// The parsed success fields: present exactly when `class` is `Approved` and NICEPAY
    /// returned the fields for it.
    pub data: Option<T>,
    pub fields: Fields,
}

#[derive(Clone, Debug, Serialize)]
pub struct BillkeyIssued {
    pub bid: Bid,
    pub tid: Option<String>,
    pub auth_date: Option<String>,
    pub card_code: Option<String>,
    pub card_name: Option<String>,
    pub card_cl: Option<String>,
    pub acqu_card_code: Option<String>,
    pub acqu_card_name: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Approval {
    pub tid: Tid,
    pub moid: Moid,
    pub amount: Krw,
    pub auth_code: Option<String>,
    pub auth_date: Option<String>,
    /// Masked by NICEPAY (`12345678****1234`).
    pub card_no: Option<String>,
    pub card_code: Option<String>,
    pub card_name: Option<String>,
    pub card_quota: Option<String>,
    pub card_cl: Option<String>,
    pub cc_part_cl: Option<String>,
    pub card_interest: Option<String>,
    pub acqu_card_code: Option<String>,
    pub acqu_card_name: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BillkeyRemoved {
    pub tid: Option<String>,
    pub bid: Option<String>,
    pub auth_date: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cancellation {
    pub tid: Tid,
    pub cancel_amount: Krw,
    pub remain_amount: Option<Krw>,
    pub cancel_date: Option<String>,
    pub cancel_time: Option<String>,
    pub cancel_num: Option<String>,
    pub pay_method: Option<String>,
}

/// What a status lookup says about the transaction of a TID.
///
/// Only [`TxState::Approved`] is money taken now. A cancelled transaction was approved once
/// and then refunded in full: it is **not** an approval (and nothing in this gateway turns it
/// into one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxState {
    /// `Status=0`: an approved transaction exists (a partly refunded one included).
    Approved,
    /// `Status=1`: it was approved and then cancelled in full; no money is held now.
    Cancelled,
    /// `Status=9`: no approved transaction has this TID.
    NotFound,
}

/// The answer of a status lookup (`ResultCode=0000`).
///
/// A TID is only as unique as the merchants who make them, so the transaction found may be
/// somebody else's (a TID collision): check [`TxStatus::matches`] against our order before
/// taking an approval as ours.
#[derive(Clone, Debug, Serialize)]
pub struct TxStatus {
    /// The transaction's tid; `None` only when nothing was found under an order id (v1).
    pub tid: Option<Tid>,
    pub state: TxState,
    pub auth_code: Option<String>,
    pub auth_date: Option<String>,
    /// `Moid`: the order id of the transaction found, as NICEPAY sent it (not checked
    /// against our Moid rules: a foreign order id may contain anything). *Inferred*: the
    /// legacy lookup's documentation names only `Status`, `TID`, `AuthCode` and `AuthDate`;
    /// NICEPAY's current lookup (`GET /v1/payments/{tid}`) answers the order id (`orderId`),
    /// so we read `Moid` when it is there and never require it.
    pub moid: Option<String>,
    /// `Amt`: the amount of the transaction found (zero-padded to 12 digits on the wire), the
    /// amount originally approved, not what is left after partial refunds. *Inferred* like
    /// `moid` (NICEPAY's current lookup answers it as `amount`, beside `balanceAmt` for the
    /// remainder). Present but not digits is an error of the answer, never `None`.
    pub amount: Option<Krw>,
}

/// Whether the transaction a status lookup found is the one we sent. See [`TxStatus::matches`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "match")]
pub enum Match {
    /// The answer names our Moid and our amount.
    Same,
    /// The answer names another Moid or another amount: the TID belongs to a different
    /// transaction (a TID collision). `what` says which values differ, for the log.
    Different { what: String },
    /// The answer lacks `Moid` or `Amt` (and what it has agrees with ours), so it cannot
    /// prove the transaction is ours. Treat it as "not proven ours", never as ours.
    Unverifiable { missing: Vec<&'static str> },
}

impl TxStatus {
    /// Compares the transaction found with our order: `moid` and `amount` as sent in the
    /// approval.
    ///
    /// Any value present that differs makes the answer [`Match::Different`], even when the
    /// other one is missing; otherwise a missing value makes it [`Match::Unverifiable`].
    /// Moids compare exactly (case and all). This says nothing about the state: a cancelled
    /// or not-found transaction can match too, so look at [`TxStatus::state`] as well (a
    /// not-found answer carries no Moid or Amt and is `Unverifiable`).
    pub fn matches(&self, moid: &str, amount: Krw) -> Match {
        let mut differ = Vec::new();
        let mut missing = Vec::new();
        match self.moid.as_deref() {
            Some(theirs) if theirs == moid => {}
            Some(theirs) => differ.push(format!("Moid {theirs:?} is not ours ({moid:?})")),
            None => missing.push("Moid"),
        }
        match self.amount {
            Some(theirs) if theirs == amount => {}
            Some(theirs) => differ.push(format!("Amt {theirs} is not ours ({amount})")),
            None => missing.push("Amt"),
        }
        if !differ.is_empty() {
            Match::Different {
                what: differ.join("; "),
            }
        } else if !missing.is_empty() {
            Match::Unverifiable { missing }
        } else {
            Match::Same
        }
    }
}

/// A call that produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("{0} (refused before sending)")]
    Input(#[from] FieldError),
    #[error("{api}: {detail}", api = api.as_str())]
    Transport {
        api: Api,
        failure: Transport,
        detail: String,
    },
    /// A v1 call that produced no answer: classified by v1's own table.
    #[error("{0}")]
    V1(Box<crate::gateway::nicepay_v1::V1CallError>),
}

impl From<crate::gateway::nicepay_v1::V1CallError> for CallError {
    fn from(e: crate::gateway::nicepay_v1::V1CallError) -> Self {
        match e {
            crate::gateway::nicepay_v1::V1CallError::Input(f) => CallError::Input(f),
            other => CallError::V1(Box::new(other)),
        }
    }
}

impl CallError {
    pub fn class(&self) -> Class {
        match self {
            CallError::Input(_) => Class::RequestError,
            CallError::Transport { failure, .. } => codes::classify_transport(*failure),
            CallError::V1(e) => e.class(),
        }
    }

    fn transport(api: Api, failure: Transport, detail: impl Into<String>) -> Self {
        CallError::Transport {
            api,
            failure,
            detail: detail.into(),
        }
    }
}

/// The class of any call's result.
pub fn class_of<T>(result: &Result<Reply<T>, CallError>) -> Class {
    match result {
        Ok(reply) => reply.class,
        Err(e) => e.class(),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

pub struct NicepayClient {
    http: reqwest::Client,
    settings: ClientSettings,
    clock: SharedClock,
    tids: TidGenerator,
    /// `max_requests_per_second`: a token bucket every call waits on.
    limiter: Option<governor::DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for NicepayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NicepayClient")
            .field("base_url", &self.settings.base_url.as_str())
            .field("mid", &self.settings.mid)
            .finish_non_exhaustive()
    }
}

impl NicepayClient {
    pub fn new(settings: ClientSettings, clock: SharedClock) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.read_timeout)
            .timeout(
                settings
                    .connect_timeout
                    .saturating_add(settings.read_timeout),
            )
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nicebill/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let tids = TidGenerator::new(settings.mid.clone());
        // The bucket holds a tenth of a second's requests: in any one second at most 1.1
        // times the rate goes out.
        let limiter = settings.max_requests_per_second.map(|n| {
            let burst =
                std::num::NonZeroU32::new(n.get() / 10).unwrap_or(std::num::NonZeroU32::MIN);
            governor::RateLimiter::direct(governor::Quota::per_second(n).allow_burst(burst))
        });
        Ok(Self {
            http,
            settings,
            clock,
            tids,
            limiter,
        })
    }

    pub fn mid(&self) -> &Mid {
        &self.settings.mid
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// A fresh billing TID, unique within this process.
    pub fn new_tid(&self) -> Tid {
        self.tids.next(self.clock.now())
    }

    /// The TID lanes leased for this instance ([`TidGenerator::set_lanes`]).
    pub fn set_tid_lanes(&self, lanes: &[u32]) {
        self.tids.set_lanes(lanes);
    }

    /// A TID to replace one another instance had already stored (see
    /// [`TidGenerator::next_after_collision`](super::tid::TidGenerator::next_after_collision)).
    pub fn new_tid_after_collision(&self) -> Tid {
        self.tids.next_after_collision(self.clock.now())
    }

    fn base_form(&self, form: &mut FormBuilder, edi: &str) -> Result<(), FieldError> {
        form.field("MID", self.settings.mid.as_str(), 10)?
            .field("EdiDate", edi, 14)?
            .field("CharSet", self.settings.charset.as_str(), 10)?
            .field("EdiType", self.settings.edi_type.as_str(), 10)?;
        Ok(())
    }

    pub async fn issue_billkey(
        &self,
        req: &IssueRequest,
    ) -> Result<Reply<BillkeyIssued>, CallError> {
        let api = Api::BillkeyIssue;
        let edi = edi_date(self.clock.now());
        let key = &self.settings.key;
        let mut form = FormBuilder::new();
        self.base_form(&mut form, &edi)?;
        form.field("Moid", req.moid.as_str(), limits::MOID)?
            .field(
                "EncData",
                &crypto::encrypt(&req.card.enc_plaintext(), key),
                512,
            )?
            .field(
                "SignData",
                &sign::billkey_issue(self.settings.mid.as_str(), &edi, req.moid.as_str(), key),
                64,
            )?;
        req.buyer.add_to(&mut form)?;
        let fields = self
            .post(api, form.finish(), Some(req.moid.as_str()), None, None)
            .await?;
        finish(api, fields, |f| {
            Ok(BillkeyIssued {
                bid: Bid::new(f.require("BID")?)?,
                tid: f.opt("TID"),
                auth_date: f.opt("AuthDate"),
                card_code: f.opt("CardCode"),
                card_name: f.opt("CardName"),
                card_cl: f.opt("CardCl"),
                acqu_card_code: f.opt("AcquCardCode"),
                acqu_card_name: f.opt("AcquCardName"),
            })
        })
    }

    pub async fn approve(&self, req: &ApproveRequest) -> Result<Reply<Approval>, CallError> {
        self.approve_by(req, None).await
    }

    /// [`Self::approve`], sent no later than `send_by`: a wait for the request rate
    /// (`max_requests_per_second`) that would end later gives up with nothing sent
    /// ([`Class::NotSent`]).
    pub async fn approve_by(
        &self,
        req: &ApproveRequest,
        send_by: Option<Instant>,
    ) -> Result<Reply<Approval>, CallError> {
        let api = Api::Approve;
        if req.amount.value() < 1 {
            return Err(FieldError::new("Amt", "must be at least 1 KRW").into());
        }
        super::check_card_quota("CardQuota", &req.card_quota)?;
        super::check_goods_name(&req.goods_name)?;
        let edi = edi_date(self.clock.now());
        let amt = req.amount.to_string();
        let mid = self.settings.mid.as_str();
        let mut form = FormBuilder::new();
        self.base_form(&mut form, &edi)?;
        form.field("BID", req.bid.as_str(), 30)?
            .field("TID", req.tid.as_str(), 30)?
            .field("Moid", req.moid.as_str(), limits::MOID)?
            .field("Amt", &amt, 12)?
            .field("GoodsName", &req.goods_name, limits::GOODS_NAME)?
            .field("CardInterest", if req.interest_free { "1" } else { "0" }, 1)?
            .field("CardQuota", &req.card_quota, 2)?
            .field(
                "SignData",
                &sign::approve(
                    mid,
                    &edi,
                    req.moid.as_str(),
                    &amt,
                    req.bid.as_str(),
                    &self.settings.key,
                ),
                64,
            )?
            .optional(
                "MallReserved",
                req.mall_reserved.as_deref(),
                limits::MALL_RESERVED,
            )?;
        req.buyer.add_to(&mut form)?;
        let fields = self
            .post(
                api,
                form.finish(),
                Some(req.moid.as_str()),
                Some(req.tid.as_str()),
                send_by,
            )
            .await?;
        finish(api, fields, |f| {
            let tid = f.opt("TID").unwrap_or_else(|| req.tid.to_string());
            let amount = f.amount("Amt")?;
            if tid != req.tid.as_str() || amount != req.amount {
                return Err(Untrusted(format!(
                    "approval answer does not match the request (TID {tid}, Amt {amount})"
                ))
                .into());
            }
            if let Some(moid) = f.opt("Moid")
                && moid != req.moid.as_str()
            {
                return Err(Untrusted(format!("approval answer is for Moid {moid}")).into());
            }
            Ok(Approval {
                tid: req.tid.clone(),
                moid: req.moid.clone(),
                amount,
                auth_code: f.opt("AuthCode"),
                auth_date: f.opt("AuthDate"),
                card_no: f.opt("CardNo").map(|c| mask_card(&c)),
                card_code: f.opt("CardCode"),
                card_name: f.opt("CardName"),
                card_quota: f.opt("CardQuota"),
                card_cl: f.opt("CardCl"),
                cc_part_cl: f.opt("CcPartCl"),
                card_interest: f.opt("CardInterest"),
                acqu_card_code: f.opt("AcquCardCode"),
                acqu_card_name: f.opt("AcquCardName"),
            })
        })
    }

    pub async fn remove_billkey(
        &self,
        bid: &Bid,
        moid: &Moid,
    ) -> Result<Reply<BillkeyRemoved>, CallError> {
        let api = Api::BillkeyRemove;
        let edi = edi_date(self.clock.now());
        let mut form = FormBuilder::new();
        self.base_form(&mut form, &edi)?;
        form.field("BID", bid.as_str(), 30)?
            .field("Moid", moid.as_str(), limits::MOID)?
            .field(
                "SignData",
                &sign::billkey_remove(
                    self.settings.mid.as_str(),
                    &edi,
                    moid.as_str(),
                    bid.as_str(),
                    &self.settings.key,
                ),
                64,
            )?;
        let fields = self
            .post(api, form.finish(), Some(moid.as_str()), None, None)
            .await?;
        finish(api, fields, |f| {
            Ok(BillkeyRemoved {
                tid: f.opt("TID"),
                bid: f.opt("BID"),
                auth_date: f.opt("AuthDate"),
            })
        })
    }

    pub async fn cancel(&self, req: &CancelRequest) -> Result<Reply<Cancellation>, CallError> {
        let api = Api::Cancel;
        if req.amount.value() < 1 {
            return Err(FieldError::new("CancelAmt", "must be at least 1 KRW").into());
        }
        if req.reason.trim().is_empty() {
            return Err(FieldError::new("CancelMsg", "is empty; give a reason").into());
        }
        let edi = edi_date(self.clock.now());
        let amt = req.amount.to_string();
        let mid = self.settings.mid.as_str();
        let key = &self.settings.key;
        let mut form = FormBuilder::new();
        self.base_form(&mut form, &edi)?;
        form.field("TID", req.tid.as_str(), 30)?
            .field("Moid", req.moid.as_str(), limits::MOID)?
            .field("CancelAmt", &amt, 12)?
            .field("CancelMsg", &req.reason, limits::CANCEL_MSG)?
            .field("PartialCancelCode", if req.partial { "1" } else { "0" }, 1)?
            .field("SignData", &sign::cancel(mid, &amt, &edi, key), 64)?
            .optional(
                "MallReserved",
                req.mall_reserved.as_deref(),
                limits::MALL_RESERVED,
            )?;
        let fields = self
            .post(
                api,
                form.finish(),
                Some(req.moid.as_str()),
                Some(req.tid.as_str()),
                None,
            )
            .await?;
        finish(api, fields, |f| {
            let cancel_amt_text = f.require("CancelAmt")?;
            let cancel_amount = Krw::parse_digits("CancelAmt", cancel_amt_text)?;
            let tid = f.opt("TID").unwrap_or_else(|| req.tid.to_string());
            let answer_mid = f.opt("MID").unwrap_or_else(|| mid.to_owned());
            let signature = f.opt("Signature").unwrap_or_default();
            // NICEPAY's answer zero-pads CancelAmt; accept a signature over either the text as
            // sent or its plain digits, and nothing else.
            let plain = cancel_amount.to_string();
            let valid = [cancel_amt_text, plain.as_str()].iter().any(|amt| {
                sign::digest_eq(
                    &signature,
                    &sign::cancel_response(&tid, &answer_mid, amt, key),
                )
            });
            if !valid {
                return Err(Untrusted(
                    "cancel answer Signature does not verify; the refund is NOT confirmed".into(),
                )
                .into());
            }
            if tid != req.tid.as_str() || answer_mid != mid || cancel_amount != req.amount {
                return Err(Untrusted(format!(
                    "cancel answer does not match the request (TID {tid}, CancelAmt {cancel_amount})"
                ))
                .into());
            }
            let remain_amount = match f.opt("RemainAmt") {
                Some(r) => Some(Krw::parse_digits("RemainAmt", &r)?),
                None => None,
            };
            Ok(Cancellation {
                tid: req.tid.clone(),
                cancel_amount,
                remain_amount,
                cancel_date: f.opt("CancelDate"),
                cancel_time: f.opt("CancelTime"),
                cancel_num: f.opt("CancelNum"),
                pay_method: f.opt("PayMethod"),
            })
        })
    }

    /// Looks a TID up. `class == Approved` means only that the lookup worked; what it found
    /// is `data` ([`TxStatus::state`], and whether it is ours: [`TxStatus::matches`]).
    pub async fn status(&self, tid: &Tid) -> Result<Reply<TxStatus>, CallError> {
        let api = Api::Status;
        let edi = edi_date(self.clock.now());
        let mid = self.settings.mid.as_str();
        let mut form = FormBuilder::new();
        self.base_form(&mut form, &edi)?;
        form.field("TID", tid.as_str(), 30)?.field(
            "SignData",
            &sign::status(tid.as_str(), mid, &edi, &self.settings.key),
            64,
        )?;
        let fields = self
            .post(api, form.finish(), None, Some(tid.as_str()), None)
            .await?;
        finish(api, fields, |f| tx_status(tid, f))
    }

    async fn post(
        &self,
        api: Api,
        body: String,
        moid: Option<&str>,
        tid: Option<&str>,
        send_by: Option<Instant>,
    ) -> Result<Fields, CallError> {
        if let Some(limiter) = &self.limiter {
            let ready = limiter.until_ready();
            match send_by {
                None => ready.await,
                Some(by) => {
                    if tokio::time::timeout_at(by.into(), ready).await.is_err() {
                        return Err(CallError::transport(
                            api,
                            Transport::ConnectFailed,
                            "not sent: the request rate limit (max_requests_per_second) left no \
                             slot before the attempt's send window closed",
                        ));
                    }
                }
            }
        }
        let started = Instant::now();
        let url = self.settings.base_url.endpoint(api);
        let result = self.exchange(api, &url, body).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(fields) => tracing::debug!(
                api = api.as_str(),
                moid,
                tid,
                result_code = fields.get("ResultCode").unwrap_or(""),
                elapsed_ms,
                "nicepay answered"
            ),
            Err(e) => tracing::debug!(
                api = api.as_str(),
                moid,
                tid,
                class = e.class().as_str(),
                error = %e,
                elapsed_ms,
                "nicepay call failed"
            ),
        }
        result
    }

    async fn exchange(&self, api: Api, url: &str, body: String) -> Result<Fields, CallError> {
        let response = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded; charset=euc-kr",
            )
            .body(body)
            .send()
            .await
            .map_err(|e| CallError::transport(api, transport_of(&e), describe(&e)))?;
        let status = response.status();
        let charset = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(response::charset_of_content_type)
            .unwrap_or(self.settings.charset);
        let bytes = read_capped(api, response).await?;
        if !status.is_success() {
            return Err(CallError::transport(
                api,
                Transport::HttpStatus(status.as_u16()),
                format!("HTTP {status} instead of a NICEPAY answer"),
            ));
        }
        response::parse(&bytes, charset)
            .map_err(|e| CallError::transport(api, Transport::Unparsable, e.to_string()))
    }
}

/// Reads an answer body within [`response::MAX_BODY_BYTES`] (see [`http::read_capped`]).
async fn read_capped(api: Api, response: reqwest::Response) -> Result<Vec<u8>, CallError> {
    http::read_capped(response, response::MAX_BODY_BYTES)
        .await
        .map_err(|(failure, detail)| CallError::transport(api, failure, detail))
}

/// The success fields of a status answer for `tid`.
fn tx_status(tid: &Tid, f: &Fields) -> Result<TxStatus, ExtractError> {
    let state = match f.require("Status")? {
        "0" => TxState::Approved,
        "1" => TxState::Cancelled,
        "9" => TxState::NotFound,
        other => {
            return Err(ParseError::Invalid(FieldError::new(
                "Status",
                format!("{other:?} is not 0, 1 or 9"),
            ))
            .into());
        }
    };
    if let Some(answer_tid) = f.opt("TID")
        && answer_tid != tid.as_str()
    {
        return Err(Untrusted(format!("status answer is for TID {answer_tid}")).into());
    }
    // Empty counts as absent, as for every optional field; anything else must be digits.
    let amount = match f.opt("Amt") {
        Some(text) => Some(Krw::parse_digits("Amt", &text)?),
        None => None,
    };
    Ok(TxStatus {
        tid: Some(tid.clone()),
        state,
        auth_code: f.opt("AuthCode"),
        auth_date: f.opt("AuthDate"),
        moid: f.opt("Moid"),
        amount,
    })
}

/// A success answer that does not match what we asked.
struct Untrusted(String);

enum ExtractError {
    Parse(ParseError),
    Untrusted(String),
}

impl From<ParseError> for ExtractError {
    fn from(e: ParseError) -> Self {
        ExtractError::Parse(e)
    }
}

impl From<FieldError> for ExtractError {
    fn from(e: FieldError) -> Self {
        ExtractError::Parse(ParseError::Invalid(e))
    }
}

impl From<Untrusted> for ExtractError {
    fn from(e: Untrusted) -> Self {
        ExtractError::Untrusted(e.0)
    }
}

fn finish<T>(
    api: Api,
    fields: Fields,
    extract: impl FnOnce(&Fields) -> Result<T, ExtractError>,
) -> Result<Reply<T>, CallError> {
    let code = fields
        .result_code()
        .map_err(|e| CallError::transport(api, Transport::Unparsable, e.to_string()))?
        .to_owned();
    let class = codes::classify(api, &code);
    // Only the API's own success code carries success fields; "already removed" does not.
    let success_code = matches!(
        (api, code.as_str()),
        (Api::BillkeyIssue, "F100")
            | (Api::Approve, "3001")
            | (Api::BillkeyRemove, "F101")
            | (Api::Cancel, "2001" | "2211")
            | (Api::Status, "0000")
    );
    let data = if success_code {
        match extract(&fields) {
            Ok(data) => Some(data),
            Err(ExtractError::Parse(e)) => {
                return Err(CallError::transport(
                    api,
                    Transport::Unparsable,
                    format!("success code {code} but {e}"),
                ));
            }
            Err(ExtractError::Untrusted(why)) => {
                return Err(CallError::transport(api, Transport::Untrusted, why));
            }
        }
    } else {
        None
    };
    Ok(Reply {
        api,
        result_msg: fields.result_msg(),
        result_code: code,
        class,
        data,
        fields,
    })
}

/// Keeps at most the first 6 and last 4 digits of a card number, whatever NICEPAY sent.
pub fn mask_card(card: &str) -> String {
    let chars: Vec<char> = card.chars().collect();
    let n = chars.len();
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if (i < 6 || i + 4 >= n) || !c.is_ascii_digit() {
                *c
            } else {
                '*'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        for ok in [
            "https://webapi.nicepay.co.kr",
            "http://127.0.0.1:8080",
            "http://localhost:1/",
            "http://[::1]:9",
            "http://127.8.0.1",
        ] {
            assert!(BaseUrl::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://webapi.nicepay.co.kr",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "not a url",
            "https://user:pw@host",
        ] {
            assert_eq!(BaseUrl::parse(bad).unwrap_err().field, "base_url", "{bad}");
        }
        let url = BaseUrl::parse("http://127.0.0.1:9/").unwrap();
        assert_eq!(
            url.endpoint(Api::Status),
            "http://127.0.0.1:9/webapi/inquery/trans_status.jsp"
        );
    }

    const TID: &str = "nictest04m01162612250900001234";

    fn looked_up(moid: Option<&str>, amount: Option<i64>) -> TxStatus {
        TxStatus {
            tid: Some(Tid::new(TID).unwrap()),
            state: TxState::Approved,
            auth_code: None,
            auth_date: None,
            moid: moid.map(str::to_owned),
            amount: amount.map(|a| Krw::new(a).unwrap()),
        }
    }

    #[test]
    fn matches_compares_moid_and_amount() {
        let ours = Krw::new(9_900).unwrap();
        assert_eq!(
            looked_up(Some("S17-C3-A2"), Some(9_900)).matches("S17-C3-A2", ours),
            Match::Same
        );
        // (answer's Moid, answer's Amt, what the difference names)
        let different = [
            (Some("S99-C1-A1"), Some(9_900), vec!["Moid"]),
            (Some("S17-C3-A2"), Some(5_000), vec!["Amt"]),
            (Some("S99-C1-A1"), Some(5_000), vec!["Moid", "Amt"]),
            // Case counts: an order id is compared as sent.
            (Some("s17-c3-a2"), Some(9_900), vec!["Moid"]),
            // A difference wins over a missing value.
            (Some("S99-C1-A1"), None, vec!["Moid"]),
            (None, Some(5_000), vec!["Amt"]),
        ];
        for (moid, amount, names) in different {
            match looked_up(moid, amount).matches("S17-C3-A2", ours) {
                Match::Different { what } => {
                    for name in names {
                        assert!(what.contains(name), "{moid:?} {amount:?}: {what}");
                    }
                }
                other => panic!("{moid:?} {amount:?}: {other:?}"),
            }
        }
        let unverifiable = [
            (None, None, vec!["Moid", "Amt"]),
            (Some("S17-C3-A2"), None, vec!["Amt"]),
            (None, Some(9_900), vec!["Moid"]),
        ];
        for (moid, amount, want) in unverifiable {
            assert_eq!(
                looked_up(moid, amount).matches("S17-C3-A2", ours),
                Match::Unverifiable { missing: want },
                "{moid:?} {amount:?}"
            );
        }
    }

    fn status_answer(pairs: &[(&str, &str)]) -> Result<Reply<TxStatus>, CallError> {
        let tid = Tid::new(TID).unwrap();
        let mut all = vec![("ResultCode", "0000"), ("ResultMsg", "조회 성공")];
        all.extend_from_slice(pairs);
        finish(Api::Status, Fields::from_pairs(all), |f| tx_status(&tid, f))
    }

    #[test]
    fn status_answers_parse() {
        let reply = status_answer(&[
            ("TID", TID),
            ("Status", "0"),
            ("Moid", "S17-C3-A2"),
            ("Amt", "000000009900"),
            ("AuthCode", "12345678"),
        ])
        .unwrap();
        assert_eq!(reply.class, Class::Approved, "the lookup worked");
        let status = reply.data.unwrap();
        assert_eq!(status.state, TxState::Approved);
        assert_eq!(status.moid.as_deref(), Some("S17-C3-A2"));
        assert_eq!(status.amount.map(Krw::value), Some(9_900));
        // Cancelled stays cancelled, with the Moid and Amt of the transaction.
        let status = status_answer(&[("Status", "1"), ("Moid", "한글-주문"), ("Amt", "9900")])
            .unwrap()
            .data
            .unwrap();
        assert_eq!(status.state, TxState::Cancelled);
        assert_eq!(status.moid.as_deref(), Some("한글-주문"));
        assert_eq!(status.amount.map(Krw::value), Some(9_900));
        // Not found: no Moid, no Amt; empty values count as absent.
        let status = status_answer(&[("Status", "9"), ("Moid", ""), ("Amt", " ")])
            .unwrap()
            .data
            .unwrap();
        assert_eq!(status.state, TxState::NotFound);
        assert_eq!((status.moid, status.amount), (None, None));
    }

    #[test]
    fn status_answers_that_cannot_be_trusted() {
        for amt in ["9,900", "-1", "12a", "0000000099000", "9.9"] {
            let result = status_answer(&[("Status", "0"), ("Moid", "S1"), ("Amt", amt)]);
            match result {
                Err(
                    ref e @ CallError::Transport {
                        failure,
                        ref detail,
                        ..
                    },
                ) => {
                    assert_eq!(failure, Transport::Unparsable, "{amt}");
                    assert_eq!(e.class(), Class::Unknown, "{amt}");
                    assert!(detail.contains("Amt"), "{amt}: {detail}");
                }
                other => panic!("Amt {amt:?}: {other:?}"),
            }
        }
        for status in ["2", "", "approved"] {
            let result = status_answer(&[("Status", status)]);
            assert!(
                matches!(result, Err(ref e) if e.class() == Class::Unknown),
                "Status {status:?}: {result:?}"
            );
        }
        let other_tid = "nictest04m01162612250900009999";
        let result = status_answer(&[("Status", "0"), ("TID", other_tid)]);
        assert!(
            matches!(
                result,
                Err(CallError::Transport {
                    failure: Transport::Untrusted,
                    ..
                })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn masks_to_first_six_last_four() {
        assert_eq!(mask_card("1234567890123456"), "123456******3456");
        assert_eq!(mask_card("12345678****1234"), "123456******1234");
    }
}
