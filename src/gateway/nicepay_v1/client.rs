//! The v1 (REST, JSON) client. Mirrors the legacy client: no retries, no redirects, connect
//! and read timeouts, a token bucket for `max_requests_per_second`, a send deadline for
//! approvals, a 64 KiB answer limit, and no secret in any log line or Debug output.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::answer::{self, ApprovalReading};
use super::choices;
use super::codes::{self, Call, Class, Method, Transport};
use super::crypto;
use super::fields;
use super::settings::{Auth, V1Settings};
use super::types::*;
use crate::clock::SharedClock;
use crate::domain::{Bid, CardDetails, ExposeSecret, FieldError, Krw, Moid, SecretString, Tid};
use crate::gateway::http::{self, describe, transport_of};
use crate::gateway::nicepay::Buyer;

/// An answer v1 gave, with its class.
#[derive(Debug, Clone)]
pub struct V1Reply<T> {
    pub call: Call,
    pub http_status: u16,
    pub result_code: String,
    pub result_msg: String,
    pub class: Class,
    pub data: T,
}

/// An approval answer: the reading (class, paid) and the payment object as received.
#[derive(Debug, Clone)]
pub struct V1Approval {
    pub reading: ApprovalReading,
    pub payment: Payment,
}

/// A call that produced no answer to read.
#[derive(Debug, thiserror::Error)]
pub enum V1CallError {
    /// Refused before sending (class RequestError).
    #[error("refused before sending: {0}")]
    Input(FieldError),
    #[error("{call:?}: {failure:?}: {detail}")]
    Transport {
        call: Call,
        failure: Transport,
        detail: String,
    },
}

impl V1CallError {
    pub fn class(&self) -> Class {
        match self {
            V1CallError::Input(_) => Class::RequestError,
            V1CallError::Transport { call, failure, .. } => {
                codes::classify_transport(*call, *failure)
            }
        }
    }

    fn transport(call: Call, failure: Transport, detail: impl Into<String>) -> Self {
        V1CallError::Transport {
            call,
            failure,
            detail: detail.into(),
        }
    }
}

impl From<FieldError> for V1CallError {
    fn from(e: FieldError) -> Self {
        V1CallError::Input(e)
    }
}

/// An approval to send.
#[derive(Debug, Clone)]
pub struct V1ApproveRequest {
    pub bid: Bid,
    pub order_id: Moid,
    pub amount: Krw,
    pub goods_name: String,
    /// Only `"0"` (lump sum) is sent; anything else is refused.
    pub card_quota: String,
    pub buyer: Buyer,
    pub mall_reserved: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

struct Token {
    value: SecretString,
    renew_at: Instant,
}

pub struct V1Client {
    http: reqwest::Client,
    settings: V1Settings,
    clock: SharedClock,
    limiter: Option<governor::DefaultDirectRateLimiter>,
    token: Mutex<Option<Token>>,
}

impl std::fmt::Debug for V1Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V1Client")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What a call logs: never a secret.
#[derive(Clone, Copy)]
struct LogKey<'a> {
    order_id: Option<&'a str>,
    tid: Option<&'a str>,
}

impl V1Client {
    pub fn new(settings: V1Settings, clock: SharedClock) -> Result<Self, BuildError> {
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
        let limiter = settings.max_requests_per_second.map(|n| {
            let burst = NonZeroU32::new(n.get() / 10).unwrap_or(NonZeroU32::MIN);
            governor::RateLimiter::direct(governor::Quota::per_second(n).allow_burst(burst))
        });
        Ok(Self {
            http,
            settings,
            clock,
            limiter,
            token: Mutex::new(None),
        })
    }

    /// The time on this client's clock (dates and windows are counted on it).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    pub fn settings(&self) -> &V1Settings {
        &self.settings
    }

    /// `ediDate` and `signData` over `parts + ediDate`, when signing is on (choice 1).
    fn signing(&self, parts: &[&str]) -> (Option<String>, Option<String>) {
        if !self.settings.sign_requests {
            return (None, None);
        }
        let edi = crypto::edi_date(self.clock.now());
        let mut all: Vec<&str> = parts.to_vec();
        all.push(&edi);
        let sign = crypto::sign_data(&all, &self.settings.secret_key);
        (Some(edi), Some(sign))
    }

    fn check_buyer(buyer: &Buyer) -> Result<BuyerFields, FieldError> {
        if let Some(n) = &buyer.name {
            fields::buyer_name(n)?;
        }
        if let Some(e) = &buyer.email {
            fields::buyer_email(e)?;
        }
        if let Some(t) = &buyer.tel {
            fields::buyer_tel(t)?;
        }
        Ok(BuyerFields::from(buyer))
    }

    /// `POST /v1/subscribe/regist`. Success (`0000`, or F100 on the legacy reading) needs a bid.
    pub async fn issue_billkey(
        &self,
        order_id: &Moid,
        card: &CardDetails,
        buyer: &Buyer,
    ) -> Result<V1Reply<RegistAnswer>, V1CallError> {
        let order = order_id.as_str();
        fields::order_id(order)?;
        let buyer = Self::check_buyer(buyer)?;
        let plain = crypto::card_plaintext(
            card.card_no.expose_secret(),
            card.exp_year.expose_secret(),
            card.exp_month.expose_secret(),
            card.id_no.expose_secret(),
            card.card_pw.expose_secret(),
        );
        let enc_data = crypto::encrypt(&plain, self.settings.enc_mode, &self.settings.secret_key);
        let (edi_date, sign_data) = self.signing(&[order]);
        let body = RegistRequest {
            enc_data,
            order_id: order.to_owned(),
            enc_mode: self.settings.enc_mode.wire(),
            buyer,
            edi_date,
            sign_data,
        };
        let key = LogKey {
            order_id: Some(order),
            tid: None,
        };
        let (status, a): (u16, RegistAnswer) = self
            .send(Call::Regist, "", None, Some(&body), key, None)
            .await?;
        let mut class = self.class_of(Call::Regist, status, &a.result_code);
        if class == Class::Approved && a.bid.as_deref().is_none_or(str::is_empty) {
            class = Class::Unknown;
        }
        Ok(reply(Call::Regist, status, class, a))
    }

    /// `POST /v1/subscribe/{bid}/payments`. `send_by`: give up unsent (NotSent) if the rate
    /// limiter has no slot before then.
    pub async fn approve(
        &self,
        req: &V1ApproveRequest,
        send_by: Option<Instant>,
    ) -> Result<V1Reply<V1Approval>, V1CallError> {
        let order = req.order_id.as_str();
        let bid = req.bid.as_str();
        fields::key("bid", bid, 30)?;
        fields::order_id(order)?;
        fields::amount("amount", req.amount.value())?;
        fields::goods_name(&req.goods_name)?;
        if req.card_quota != "0" {
            return Err(FieldError::new("cardQuota", "only \"0\" (lump sum) is sent").into());
        }
        if let Some(m) = &req.mall_reserved {
            fields::mall_reserved(m)?;
        }
        let buyer = Self::check_buyer(&req.buyer)?;
        let (edi_date, sign_data) = self.signing(&[order, bid]);
        let body = ApproveRequest {
            order_id: order.to_owned(),
            amount: req.amount.value(),
            goods_name: req.goods_name.clone(),
            card_quota: "0".to_owned(),
            use_shop_interest: false,
            buyer,
            mall_reserved: req.mall_reserved.clone(),
            edi_date,
            sign_data,
        };
        let key = LogKey {
            order_id: Some(order),
            tid: None,
        };
        let (status, payment): (u16, Payment) = self
            .send(Call::Approve, bid, None, Some(&body), key, send_by)
            .await?;
        let reading = answer::read_approval(
            status,
            &payment,
            order,
            req.amount.value(),
            &self.settings.secret_key,
        );
        if let Some(why) = reading.untrusted {
            tracing::warn!(order_id = order, why, "v1 approval answer not trusted");
        }
        if reading.paid.as_ref().is_some_and(|p| p.signature_absent) {
            tracing::warn!(order_id = order, "v1 approval answer carried no signature");
        }
        Ok(reply(
            Call::Approve,
            status,
            reading.class,
            V1Approval { reading, payment },
        ))
    }

    /// `POST /v1/subscribe/{bid}/expire`; bid-gone codes read as Approved (choice 15).
    pub async fn expire(
        &self,
        bid: &Bid,
        order_id: &Moid,
    ) -> Result<V1Reply<ExpireAnswer>, V1CallError> {
        let order = order_id.as_str();
        fields::key("bid", bid.as_str(), 30)?;
        fields::order_id(order)?;
        let (edi_date, sign_data) = self.signing(&[order, bid.as_str()]);
        let body = ExpireRequest {
            order_id: order.to_owned(),
            edi_date,
            sign_data,
        };
        let key = LogKey {
            order_id: Some(order),
            tid: None,
        };
        let (status, a): (u16, ExpireAnswer) = self
            .send(Call::Expire, bid.as_str(), None, Some(&body), key, None)
            .await?;
        let class = self.class_of(Call::Expire, status, &a.result_code);
        Ok(reply(Call::Expire, status, class, a))
    }

    /// `POST /v1/payments/{tid}/cancel`; `cancel_amt` absent = full cancel.
    pub async fn cancel(
        &self,
        tid: &Tid,
        order_id: &Moid,
        reason: &str,
        cancel_amt: Option<Krw>,
    ) -> Result<V1Reply<Payment>, V1CallError> {
        let order = order_id.as_str();
        fields::key("tid", tid.as_str(), 30)?;
        fields::order_id(order)?;
        fields::reason(reason)?;
        if let Some(a) = cancel_amt {
            fields::amount("cancelAmt", a.value())?;
        }
        let (edi_date, sign_data) = self.signing(&[tid.as_str()]);
        let body = CancelRequest {
            reason: reason.to_owned(),
            order_id: order.to_owned(),
            cancel_amt: cancel_amt.map(Krw::value),
            edi_date,
            sign_data,
        };
        let key = LogKey {
            order_id: Some(order),
            tid: Some(tid.as_str()),
        };
        let (status, p): (u16, Payment) = self
            .send(Call::Cancel, tid.as_str(), None, Some(&body), key, None)
            .await?;
        let class = self.payment_class(Call::Cancel, status, &p);
        Ok(reply(Call::Cancel, status, class, p))
    }

    /// `POST /v1/payments/netcancel` for an approval whose outcome is unknown.
    pub async fn netcancel(&self, order_id: &Moid) -> Result<V1Reply<Payment>, V1CallError> {
        let order = order_id.as_str();
        fields::order_id(order)?;
        let (edi_date, sign_data) = self.signing(&[order]);
        let body = NetcancelRequest {
            reason: "net cancel: approval outcome unknown".to_owned(),
            order_id: order.to_owned(),
            edi_date,
            sign_data,
        };
        let key = LogKey {
            order_id: Some(order),
            tid: None,
        };
        let (status, p): (u16, Payment) = self
            .send(Call::Netcancel, "", None, Some(&body), key, None)
            .await?;
        let class = self.payment_class(Call::Netcancel, status, &p);
        Ok(reply(Call::Netcancel, status, class, p))
    }

    /// `GET /v1/payments/{tid}`. Read it with [`answer::read_lookup`].
    pub async fn lookup_tid(&self, tid: &Tid) -> Result<V1Reply<Payment>, V1CallError> {
        fields::key("tid", tid.as_str(), 30)?;
        let (edi_date, sign_data) = self.signing(&[tid.as_str()]);
        let query: Vec<(&str, String)> = match (edi_date, sign_data) {
            (Some(e), Some(s)) => vec![("ediDate", e), ("signData", s)],
            _ => Vec::new(),
        };
        let key = LogKey {
            order_id: None,
            tid: Some(tid.as_str()),
        };
        self.lookup(Call::LookupTid, tid.as_str(), query, key).await
    }

    /// `GET /v1/payments/find/{orderId}?orderDate=YYYYMMDD`, without signData (choice 5).
    pub async fn lookup_order(
        &self,
        order_id: &Moid,
        order_date: &str,
    ) -> Result<V1Reply<Payment>, V1CallError> {
        let order = order_id.as_str();
        fields::order_id(order)?;
        fields::order_date(order_date)?;
        let key = LogKey {
            order_id: Some(order),
            tid: None,
        };
        let query = vec![("orderDate", order_date.to_owned())];
        self.lookup(Call::LookupOrder, order, query, key).await
    }

    async fn lookup(
        &self,
        call: Call,
        path_key: &str,
        query: Vec<(&str, String)>,
        key: LogKey<'_>,
    ) -> Result<V1Reply<Payment>, V1CallError> {
        let (status, p): (u16, Payment) = self
            .send::<(), _>(call, path_key, Some(query), None, key, None)
            .await?;
        // Not-found codes are not in the table (Unknown here): read lookups with
        // `answer::read_lookup`, which knows them.
        let class = self.class_of(call, status, &p.result_code);
        Ok(reply(call, status, class, p))
    }

    fn class_of(&self, call: Call, status: u16, code: &str) -> Class {
        if code.is_empty() {
            codes::classify_http(call, status)
        } else if code == codes::SUCCESS && status != 200 {
            Class::Unknown
        } else {
            codes::classify(call, code)
        }
    }

    /// Cancel/netcancel: `0000` must also carry a signature that verifies when present.
    fn payment_class(&self, call: Call, status: u16, p: &Payment) -> Class {
        let class = self.class_of(call, status, &p.result_code);
        if class != Class::Approved {
            return class;
        }
        match (p.signature.as_deref(), p.tid.as_deref(), p.amount) {
            (Some(sig), Some(tid), Some(amount)) if !sig.is_empty() => {
                let edi = p.edi_date.as_deref().unwrap_or("");
                if crypto::signature_verifies(sig, tid, amount, edi, &self.settings.secret_key) {
                    Class::Approved
                } else {
                    tracing::warn!(call = call.as_str(), "v1 answer signature does not verify");
                    Class::Unknown
                }
            }
            _ => Class::Approved,
        }
    }

    /// The Authorization header value; fetches a Bearer token when none is valid.
    async fn authorization(&self, call: Call) -> Result<SecretString, V1CallError> {
        let basic =
            crypto::basic_authorization(&self.settings.client_key, &self.settings.secret_key);
        if self.settings.auth == Auth::Basic || call == Call::Token {
            return Ok(basic);
        }
        let mut token = self.token.lock().await;
        if let Some(t) = token.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(SecretString::from(format!(
                "Bearer {}",
                t.value.expose_secret()
            )));
        }
        let fresh = Box::pin(self.fetch_token()).await?;
        let header = SecretString::from(format!("Bearer {}", fresh.value.expose_secret()));
        *token = Some(fresh);
        Ok(header)
    }

    async fn fetch_token(&self) -> Result<Token, V1CallError> {
        let key = LogKey {
            order_id: None,
            tid: None,
        };
        let (status, a): (u16, TokenAnswer) = self
            .send_once::<serde_json::Value, _>(
                Call::Token,
                "",
                None,
                Some(&serde_json::json!({})),
                key,
            )
            .await?;
        let token = a.access_token.clone().filter(|t| !t.is_empty());
        match token {
            Some(value) if status == 200 && a.result_code == codes::SUCCESS => Ok(Token {
                value: SecretString::from(value),
                renew_at: Instant::now() + token_life(&a),
            }),
            _ => {
                let class = if a.result_code.is_empty() {
                    codes::classify_http(Call::Token, status)
                } else {
                    codes::classify(Call::Token, &a.result_code)
                };
                Err(V1CallError::transport(
                    Call::Token,
                    if status == 200 {
                        Transport::Unparsable
                    } else {
                        Transport::HttpStatus(status)
                    },
                    format!(
                        "no access token: resultCode {:?} {:?} ({})",
                        a.result_code,
                        a.result_msg,
                        class.as_str()
                    ),
                ))
            }
        }
    }

    /// Sends with the rate limit, and (Bearer) one token renewal + resend on 401/U305.
    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        call: Call,
        path_key: &str,
        query: Option<Vec<(&str, String)>>,
        body: Option<&B>,
        key: LogKey<'_>,
        send_by: Option<Instant>,
    ) -> Result<(u16, T), V1CallError> {
        if let Some(limiter) = &self.limiter {
            let ready = limiter.until_ready();
            match send_by {
                None => ready.await,
                Some(by) => {
                    if tokio::time::timeout_at(by, ready).await.is_err() {
                        return Err(V1CallError::transport(
                            call,
                            Transport::ConnectFailed,
                            "not sent: the request rate limit left no slot before the send \
                             window closed",
                        ));
                    }
                }
            }
        }
        let first = self
            .exchange(call, path_key, query.clone(), body, key)
            .await;
        if self.settings.auth == Auth::Bearer && call != Call::Token && needs_new_token(&first) {
            tracing::debug!(call = call.as_str(), "v1 token refused: renewing once");
            *self.token.lock().await = None;
            let second = self.exchange(call, path_key, query, body, key).await;
            if needs_new_token(&second) {
                return Err(V1CallError::transport(
                    call,
                    Transport::HttpStatus(401),
                    "refused again after renewing the access token",
                ));
            }
            let (status, v) = second?;
            return Ok((status, parse_value(call, v)?));
        }
        let (status, v) = first?;
        Ok((status, parse_value(call, v)?))
    }

    /// One exchange without the rate limit or token renewal (the token call itself).
    async fn send_once<B: Serialize, T: DeserializeOwned>(
        &self,
        call: Call,
        path_key: &str,
        query: Option<Vec<(&str, String)>>,
        body: Option<&B>,
        key: LogKey<'_>,
    ) -> Result<(u16, T), V1CallError> {
        let (status, value) = self.exchange(call, path_key, query, body, key).await?;
        Ok((status, parse_value(call, value)?))
    }

    async fn exchange<B: Serialize>(
        &self,
        call: Call,
        path_key: &str,
        query: Option<Vec<(&str, String)>>,
        body: Option<&B>,
        key: LogKey<'_>,
    ) -> Result<(u16, serde_json::Value), V1CallError> {
        let started = std::time::Instant::now();
        let result = self.exchange_inner(call, path_key, query, body).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok((status, v)) => tracing::debug!(
                call = call.as_str(),
                order_id = key.order_id,
                tid = key.tid,
                http_status = status,
                result_code = v
                    .get("resultCode")
                    .or_else(|| v.get("ResultCode"))
                    .and_then(|c| c.as_str())
                    .unwrap_or(""),
                elapsed_ms,
                "nicepay v1 answered"
            ),
            Err(e) => tracing::debug!(
                call = call.as_str(),
                order_id = key.order_id,
                tid = key.tid,
                class = e.class().as_str(),
                elapsed_ms,
                "nicepay v1 call failed"
            ),
        }
        result
    }

    async fn exchange_inner<B: Serialize>(
        &self,
        call: Call,
        path_key: &str,
        query: Option<Vec<(&str, String)>>,
        body: Option<&B>,
    ) -> Result<(u16, serde_json::Value), V1CallError> {
        let auth = self.authorization(call).await?;
        let text = format!(
            "{}{}",
            self.settings.base_url.as_str().trim_end_matches('/'),
            call.path(path_key)
        );
        let mut url = reqwest::Url::parse(&text).map_err(|e| {
            V1CallError::transport(call, Transport::ConnectFailed, format!("bad URL: {e}"))
        })?;
        if let Some(q) = &query {
            url.query_pairs_mut().extend_pairs(q.iter());
        }
        let mut request = match call.method() {
            Method::Get => self.http.get(url),
            Method::Post => self.http.post(url),
        };
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b).map_err(|e| {
                V1CallError::transport(call, Transport::ConnectFailed, format!("body: {e}"))
            })?;
            request = request
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/json; charset=utf-8",
                )
                .body(bytes);
        }
        let mut header = reqwest::header::HeaderValue::from_str(auth.expose_secret())
            .map_err(|_| FieldError::new("Authorization", "is not a valid header value"))?;
        header.set_sensitive(true);
        let response = request
            .header(reqwest::header::AUTHORIZATION, header)
            .send()
            .await
            .map_err(|e| V1CallError::transport(call, transport_of(&e), describe(&e)))?;
        let status = response.status().as_u16();
        let bytes = read_capped(call, response).await?;
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if v.is_object() => Ok((status, v)),
            _ if status != 200 => Err(V1CallError::transport(
                call,
                Transport::HttpStatus(status),
                format!("HTTP {status} without a JSON answer"),
            )),
            _ => Err(V1CallError::transport(
                call,
                Transport::Unparsable,
                "HTTP 200 with a body that is not a JSON object",
            )),
        }
    }
}

fn parse_value<T: DeserializeOwned>(call: Call, v: serde_json::Value) -> Result<T, V1CallError> {
    serde_json::from_value(v).map_err(|e| {
        V1CallError::transport(call, Transport::Unparsable, format!("answer shape: {e}"))
    })
}

/// HTTP 401 or U305 on the call itself: the token was refused (choice 12). A refused *token
/// request* (wrong secret key: 401, U101) is not a refused token: asking again would only hide
/// its code from the operator.
fn needs_new_token(r: &Result<(u16, serde_json::Value), V1CallError>) -> bool {
    match r {
        Ok((401, _)) => true,
        Ok((_, v)) => v.get("resultCode").and_then(|c| c.as_str()) == Some("U305"),
        Err(V1CallError::Transport {
            call,
            failure: Transport::HttpStatus(401),
            ..
        }) => *call != Call::Token,
        Err(_) => false,
    }
}

/// An answer that carries `resultCode` and `resultMsg`.
pub trait Coded {
    fn result_code(&self) -> &str;
    fn result_msg(&self) -> &str;
}

macro_rules! coded {
    ($($t:ty),*) => {$(
        impl Coded for $t {
            fn result_code(&self) -> &str {
                &self.result_code
            }
            fn result_msg(&self) -> &str {
                &self.result_msg
            }
        }
    )*};
}
coded!(Payment, RegistAnswer, ExpireAnswer);

impl Coded for V1Approval {
    fn result_code(&self) -> &str {
        &self.payment.result_code
    }
    fn result_msg(&self) -> &str {
        &self.payment.result_msg
    }
}

/// The reply of `call`, its code and message taken from the answer itself.
fn reply<T: Coded>(call: Call, http_status: u16, class: Class, data: T) -> V1Reply<T> {
    V1Reply {
        call,
        http_status,
        result_code: data.result_code().to_owned(),
        result_msg: data.result_msg().to_owned(),
        class,
        data,
    }
}

/// How long a token is used: min(expiry − now, 30 min) − 60 s, from the answer's own times
/// (choice 13); unreadable times → 30 min − 60 s.
fn token_life(a: &TokenAnswer) -> Duration {
    let parse = |s: &Option<String>| {
        s.as_deref().and_then(|t| {
            chrono::DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f%z")
                .or_else(|_| chrono::DateTime::parse_from_rfc3339(t))
                .ok()
        })
    };
    let life = match (parse(&a.expired_at), parse(&a.now)) {
        (Some(exp), Some(now)) => (exp - now)
            .to_std()
            .unwrap_or_default()
            .min(choices::TOKEN_LIFE),
        _ => choices::TOKEN_LIFE,
    };
    life.saturating_sub(choices::TOKEN_RENEW_BEFORE)
}

/// Reads an answer body within [`choices::MAX_BODY`] (see [`http::read_capped`]).
async fn read_capped(call: Call, response: reqwest::Response) -> Result<Vec<u8>, V1CallError> {
    http::read_capped(response, choices::MAX_BODY)
        .await
        .map_err(|(failure, detail)| V1CallError::transport(call, failure, detail))
}
