//! Payment gateways nicebill speaks to: NICEPAY's legacy web API and its current REST API (v1).
//!
//! [`Class`] is the vocabulary both speak: each API's own table maps its result codes onto it.

use serde::Serialize;

mod http;
pub mod nicepay;
pub mod nicepay_v1;
mod seam;

pub use seam::{ApiKind, AttemptRef, ChargeRequest, Gateway, TidFor};

/// What an answer (or the lack of one) means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// The API did what was asked (for removal: the billkey is gone, whoever removed it).
    Approved,
    /// The issuer declined; try again later on the dunning schedule.
    Declined,
    /// This card will not work again: stop charging, ask for a new card.
    PermanentCard,
    /// Our request was wrong (a bug or bad configuration): fail loudly, do not retry.
    RequestError,
    /// An approval answered with a card-result code (`3xxx`) this table does not list: not an
    /// approval, but nothing says the card is declined either. Never dunned towards
    /// cancellation: retried on the request-error schedule and shown to the operator.
    UnlistedCode,
    /// NICEPAY has seen this TID/Moid (v1: orderId) before: resolve by status lookup, never assume failure.
    Duplicate,
    /// NICEPAY is overloaded or delayed: back off, look the TID up, retry the same request.
    Throttled,
    /// The request never left this machine: safe to send the same request again.
    NotSent,
    /// The request may have reached NICEPAY: only a status lookup can tell.
    Unknown,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Approved => "approved",
            Class::Declined => "declined",
            Class::PermanentCard => "permanent_card",
            Class::RequestError => "request_error",
            Class::UnlistedCode => "unlisted_code",
            Class::Duplicate => "duplicate",
            Class::Throttled => "throttled",
            Class::NotSent => "not_sent",
            Class::Unknown => "unknown",
        }
    }

    /// One sentence an operator can act on.
    pub fn advice(self) -> &'static str {
        match self {
            Class::Approved => "done",
            Class::Declined => {
                "the issuer declined; retry later or ask the customer to check the card"
            }
            Class::PermanentCard => {
                "this card cannot be used again; ask the customer for a new card"
            }
            Class::RequestError => {
                "the request was refused as malformed; check configuration and input, do not retry unchanged"
            }
            Class::UnlistedCode => {
                "NICEPAY answered with a code nicebill does not know; it is retried later and never leads to cancellation. Look the code up with NICEPAY and add it to the API's codes.rs"
            }
            Class::Duplicate => {
                "NICEPAY has seen this TID/Moid before; run `nicebill status TID` before doing anything else"
            }
            Class::Throttled => {
                "NICEPAY is busy; wait and retry (after `nicebill status TID` for a charge)"
            }
            Class::NotSent => "the request never reached NICEPAY; it is safe to retry",
            Class::Unknown => {
                "the outcome is unknown; run `nicebill status TID` before retrying, never charge again blindly"
            }
        }
    }
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Ways a call can fail without a usable ResultCode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Connecting (DNS, TCP, TLS) failed: nothing was sent.
    ConnectFailed,
    /// The request was sent, but no complete answer came in time.
    TimedOut,
    /// The connection broke after the request was (or may have been) sent.
    ConnectionLost,
    /// The server answered with this HTTP status instead of a NICEPAY body.
    HttpStatus(u16),
    /// A body came back that is not a NICEPAY answer.
    Unparsable,
    /// The answer was longer than the client reads (64 KiB): it was sent, the outcome is unknown.
    Oversized,
    /// A success answer whose signature or echoed fields do not match the request.
    Untrusted,
}
