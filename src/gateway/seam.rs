//! The one gateway the engine, the daemon and the operator commands hold: NICEPAY's legacy web
//! API or its REST API (v1), chosen in the configuration (`[nicepay] api`).
//!
//! The engine asks four things of it: a key to store before sending (the legacy API's TID, which
//! we make; none on v1, where NICEPAY makes the tid and the order id is the key), an approval,
//! the truth about an attempt whose answer was lost ([`Gateway::look_up`]) and a billkey removal.
//! Answers come back in one vocabulary ([`Reply`], [`Approval`], [`TxStatus`], [`Class`]),
//! whichever API made them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Instant;

use super::nicepay::{
    Approval, ApproveRequest, BillkeyIssued, BillkeyRemoved, Buyer, CallError, CancelRequest,
    Cancellation, IssueRequest, NicepayClient, Reply, TxStatus,
};
use super::nicepay_v1::{self as v1, V1Client, V1Settings};
use crate::clock::SharedClock;
use crate::domain::{Bid, FieldError, Krw, Moid, Tid};

/// Which of NICEPAY's APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiKind {
    /// The legacy web API (`webapi.nicepay.co.kr`, form posts in EUC-KR, MID + merchant key).
    #[default]
    Webapi,
    /// The REST API (`api.nicepay.co.kr/v1`, JSON, client key + secret key).
    V1,
}

impl ApiKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiKind::Webapi => "webapi",
            ApiKind::V1 => "v1",
        }
    }

    pub fn parse(text: &str) -> Option<ApiKind> {
        match text {
            "webapi" => Some(ApiKind::Webapi),
            "v1" => Some(ApiKind::V1),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the engine asks for a TID (legacy API only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TidFor {
    First,
    /// The TID offered before was already stored by another instance.
    AfterCollision,
}

/// One charge attempt, as committed before sending.
#[derive(Clone, Debug)]
pub struct ChargeRequest {
    pub bid: Bid,
    /// The legacy API's TID (ours, stored before sending); `None` on v1.
    pub tid: Option<Tid>,
    /// The order id: the Moid on the legacy API, the `orderId` (the idempotency key) on v1.
    pub moid: Moid,
    pub amount: Krw,
    pub goods_name: String,
    pub card_quota: String,
    pub interest_free: bool,
    pub buyer: Buyer,
}

/// A stored attempt to find out about.
#[derive(Clone, Copy, Debug)]
pub struct AttemptRef<'a> {
    pub tid: Option<&'a Tid>,
    pub moid: &'a str,
    pub amount: i64,
    /// When the attempt was committed (it was sent no later than its send window after):
    /// v1's lookup date and netcancel window are counted from it.
    pub committed_at: DateTime<Utc>,
}

/// NICEPAY, through one API or the other.
#[derive(Debug)]
pub enum Gateway {
    Webapi(Arc<NicepayClient>),
    V1(Arc<V1Client>),
}

impl From<Arc<NicepayClient>> for Gateway {
    fn from(client: Arc<NicepayClient>) -> Self {
        Gateway::Webapi(client)
    }
}

impl Gateway {
    /// NICEPAY's REST API (v1), with `clock` for its dates and the netcancel window.
    pub fn v1(settings: V1Settings, clock: SharedClock) -> Result<Gateway, String> {
        let client = V1Client::new(settings, clock).map_err(|e| e.to_string())?;
        Ok(Gateway::V1(Arc::new(client)))
    }
}

impl From<NicepayClient> for Gateway {
    fn from(client: NicepayClient) -> Self {
        Gateway::Webapi(Arc::new(client))
    }
}

impl Gateway {
    pub fn api(&self) -> ApiKind {
        match self {
            Gateway::Webapi(_) => ApiKind::Webapi,
            Gateway::V1(..) => ApiKind::V1,
        }
    }

    /// The result code recorded for an approval found by a lookup (which carries none).
    pub fn approval_code(&self) -> &'static str {
        match self {
            Gateway::Webapi(_) => super::nicepay::codes::CARD_APPROVED,
            Gateway::V1(..) => v1::codes::SUCCESS,
        }
    }

    /// A stored or answered tid read back (`None` stays `None`): ours on the web API (exactly
    /// 30 characters), NICEPAY's on v1.
    pub fn parse_tid(&self, text: Option<String>) -> Result<Option<Tid>, FieldError> {
        text.map(|t| match self {
            Gateway::Webapi(_) => Tid::new(t),
            Gateway::V1(..) => Tid::issued(t),
        })
        .transpose()
    }

    /// The key stored with an attempt before it is sent: a fresh TID on the legacy API.
    pub fn new_tid(&self, why: TidFor) -> Option<Tid> {
        match self {
            Gateway::Webapi(c) => Some(match why {
                TidFor::First => c.new_tid(),
                TidFor::AfterCollision => c.new_tid_after_collision(),
            }),
            Gateway::V1(..) => None,
        }
    }

    /// Whether this API's TIDs are minted here (and so want TID lanes).
    pub fn mints_tids(&self) -> bool {
        matches!(self, Gateway::Webapi(_))
    }

    /// The TID lanes this instance leased (see `storage::lanes`); nothing on v1.
    pub fn set_tid_lanes(&self, lanes: &[u32]) {
        if let Gateway::Webapi(c) = self {
            c.set_tid_lanes(lanes);
        }
    }

    /// Sends an approval no later than `send_by` (a wait for the request rate that would end
    /// later gives up with nothing sent).
    pub async fn approve_by(
        &self,
        req: &ChargeRequest,
        send_by: Option<Instant>,
    ) -> Result<Reply<Approval>, CallError> {
        match self {
            Gateway::Webapi(c) => {
                let Some(tid) = req.tid.clone() else {
                    return Err(
                        FieldError::new("TID", "an attempt on the web API needs its TID").into(),
                    );
                };
                let request = ApproveRequest {
                    bid: req.bid.clone(),
                    tid,
                    moid: req.moid.clone(),
                    amount: req.amount,
                    goods_name: req.goods_name.clone(),
                    card_quota: req.card_quota.clone(),
                    interest_free: req.interest_free,
                    buyer: req.buyer.clone(),
                    mall_reserved: None,
                };
                c.approve_by(&request, send_by).await
            }
            // Boxed: the v1 arm's state is allocated only when it runs, so an approval in flight
            // on the web API does not carry room for v1's larger call (each send task: 5,488
            // bytes with it inline, 4,240 boxed).
            Gateway::V1(c) => Box::pin(v1::gateway::approve(c, req, send_by)).await,
        }
    }

    /// What became of an attempt. `data` is what NICEPAY holds under it ([`TxStatus::state`],
    /// and whose it is: [`TxStatus::matches`]); an answer without `data` is a failed lookup.
    pub async fn look_up(&self, attempt: &AttemptRef<'_>) -> Result<Reply<TxStatus>, CallError> {
        match self {
            Gateway::Webapi(c) => match attempt.tid {
                Some(tid) => c.status(tid).await,
                None => {
                    Err(FieldError::new("TID", "an attempt on the web API needs its TID").into())
                }
            },
            Gateway::V1(c) => v1::gateway::look_up(c, attempt, c.now()).await,
        }
    }

    pub async fn remove_billkey(
        &self,
        bid: &Bid,
        moid: &Moid,
    ) -> Result<Reply<BillkeyRemoved>, CallError> {
        match self {
            Gateway::Webapi(c) => c.remove_billkey(bid, moid).await,
            Gateway::V1(c) => v1::gateway::remove_billkey(c, bid, moid).await,
        }
    }

    /// Issues a billkey for the card (operator command, demo, benchmark).
    pub async fn issue_billkey(
        &self,
        req: &IssueRequest,
    ) -> Result<Reply<BillkeyIssued>, CallError> {
        match self {
            Gateway::Webapi(c) => c.issue_billkey(req).await,
            Gateway::V1(c) => v1::gateway::issue_billkey(c, req).await,
        }
    }

    /// A full or partial cancel of an approval (`nicebill refund`).
    pub async fn cancel(&self, req: &CancelRequest) -> Result<Reply<Cancellation>, CallError> {
        match self {
            Gateway::Webapi(c) => c.cancel(req).await,
            Gateway::V1(c) => v1::gateway::cancel(c, req).await,
        }
    }

    /// What NICEPAY holds under a TID (`nicebill status TID`).
    pub async fn status(&self, tid: &Tid) -> Result<Reply<TxStatus>, CallError> {
        match self {
            Gateway::Webapi(c) => c.status(tid).await,
            Gateway::V1(c) => v1::gateway::status(c, tid).await,
        }
    }

    /// What NICEPAY holds under an order id sent on `date` (`nicebill status --order-id`): v1
    /// only; the web API looks transactions up by TID alone.
    pub async fn status_by_order(
        &self,
        moid: &Moid,
        sent_at: DateTime<Utc>,
    ) -> Result<Reply<TxStatus>, CallError> {
        match self {
            Gateway::V1(c) => v1::gateway::status_by_order(c, moid, sent_at).await,
            Gateway::Webapi(_) => Err(FieldError::new(
                "order id",
                "the web API looks transactions up by TID only; give the TID (or use api = \"v1\")",
            )
            .into()),
        }
    }

    /// A TID for a request the operator sends by hand (web API only).
    pub fn webapi(&self) -> Option<&NicepayClient> {
        match self {
            Gateway::Webapi(c) => Some(c),
            Gateway::V1(..) => None,
        }
    }
}
