//! The one table from (API, ResultCode) and from transport failures to what nicebill does.
//!
//! Correct NICEPAY's answers here and nowhere else. Entries marked *inferred* are our safe
//! reading where NICEPAY documents nothing.

use serde::Serialize;

use super::Api;

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
    /// NICEPAY has seen this TID/Moid before: resolve by status lookup, never assume failure.
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
                "NICEPAY answered with a code nicebill does not know; it is retried later and never leads to cancellation. Look the code up with NICEPAY and add it to codes.rs"
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

/// Which APIs a table row applies to: `None` means every API.
type Row = (Option<Api>, &'static str, Class, &'static str);

use Api::{Approve, BillkeyIssue, BillkeyRemove, Cancel, Status};
use Class::*;

/// The ResultCode of a card approval: what nicebill records for an approval that a status
/// lookup found (a lookup's own answer carries the lookup's code, not the approval's).
pub const CARD_APPROVED: &str = "3001";

/// API-specific rows come first; the first matching row wins.
const TABLE: &[Row] = &[
    // Success, per API.
    (Some(BillkeyIssue), "F100", Approved, "billkey issued"),
    (Some(Approve), "3001", Approved, "card approval"),
    (Some(BillkeyRemove), "F101", Approved, "billkey removed"),
    (Some(Cancel), "2001", Approved, "cancel succeeded"),
    (
        Some(Cancel),
        "2211",
        Approved,
        "cancel succeeded (some pay methods)",
    ),
    (Some(Status), "0000", Approved, "lookup succeeded"),
    // Removal of a billkey that is already gone reaches the goal.
    (Some(BillkeyRemove), "A124", Approved, "BID already removed"),
    (Some(BillkeyRemove), "A125", Approved, "BID already removed"),
    (Some(BillkeyRemove), "A126", Approved, "BID unknown"),
    (Some(BillkeyRemove), "U115", Approved, "BID unknown"),
    (Some(BillkeyRemove), "U309", Approved, "BID invalid"),
    // Duplicates: ambiguous, resolve by status lookup.
    (None, "A225", Duplicate, "duplicate TID"),
    (None, "1651", Duplicate, "duplicate TID"),
    (None, "A127", Duplicate, "duplicate Moid"),
    (None, "2201", Duplicate, "already approved"),
    // Throttling and delayed processing.
    (None, "V003", Throttled, "too many requests"),
    (None, "A246", Throttled, "too many connections"),
    (None, "A299", Throttled, "delayed processing"),
    (None, "U303", Throttled, "delayed processing"),
    // Issuer declines: retry on the dunning schedule. NICEPAY's published result-code list
    // (nicepay-manual common/code.md) names one issuer refusal, 3095 "카드사 실패 응답"; its
    // other 3xxx codes are card numbers, merchant set-up, installments and amounts. Add a
    // decline here only when NICEPAY names it: an unlisted 3xxx is `UnlistedCode`, never a
    // decline, so it can never dun a subscription into cancellation.
    (
        None,
        "3095",
        Declined,
        "issuer declined (insufficient balance or limit, inferred)",
    ),
    // Permanent for this card.
    (None, "3011", PermanentCard, "card number error"),
    (None, "3021", PermanentCard, "card expired / expiry error"),
    (
        None,
        "F112",
        PermanentCard,
        "card rejected at billkey issue",
    ),
    (
        None,
        "F113",
        PermanentCard,
        "card rejected at billkey issue",
    ),
    (
        None,
        "F114",
        PermanentCard,
        "card rejected at billkey issue",
    ),
    (
        None,
        "F115",
        PermanentCard,
        "card rejected at billkey issue",
    ),
    (
        None,
        "F116",
        PermanentCard,
        "card rejected at billkey issue",
    ),
    (
        None,
        "F117",
        PermanentCard,
        "card rejected at billkey issue",
    ),
    (
        None,
        "F118",
        PermanentCard,
        "card rejected at billkey issue",
    ),
    (None, "A124", PermanentCard, "BID removed"),
    (None, "A125", PermanentCard, "BID removed"),
    (None, "A126", PermanentCard, "BID unknown"),
    (None, "U115", PermanentCard, "BID unknown"),
    (None, "U309", PermanentCard, "BID invalid"),
    (None, "A223", PermanentCard, "BID of another merchant"),
    (None, "A255", PermanentCard, "BID of another merchant"),
    // Request errors: bugs, not retryable.
    (None, "A101", RequestError, "signature mismatch"),
    (None, "A211", RequestError, "signature mismatch"),
    (None, "3022", RequestError, "installment months error"),
    (None, "3023", RequestError, "installment months over limit"),
    (None, "3024", RequestError, "installment minimum amount"),
    (None, "3041", RequestError, "amount error"),
    (None, "1652", RequestError, "TID length"),
    // Field errors: NICEPAY documents no codes for these; the simulator answers with them.
    (
        None,
        "A110",
        RequestError,
        "required field missing (simulator)",
    ),
    (
        None,
        "A111",
        RequestError,
        "field too long or malformed (simulator)",
    ),
    (None, "A112", RequestError, "unknown MID (simulator)"),
    (
        None,
        "A113",
        RequestError,
        "EncData does not decrypt (simulator)",
    ),
    (
        Some(Cancel),
        "2012",
        RequestError,
        "no such transaction to cancel",
    ),
    (
        Some(Cancel),
        "2013",
        RequestError,
        "cancel amount exceeds what remains",
    ),
    (Some(Cancel), "2015", RequestError, "already cancelled"),
];

/// Classifies a ResultCode for one API.
///
/// A code missing from the table is read safely: for an approval, an unlisted `3xxx` is
/// `UnlistedCode` (a card result we cannot read: retried on the request-error schedule, never
/// dunned, never cancelling), anything else might hide an approval and is `Unknown` (status
/// lookup decides); for a cancel it is `Unknown` too; for the other APIs it is a request error.
pub fn classify(api: Api, code: &str) -> Class {
    let code = code.trim();
    let row = TABLE
        .iter()
        .find(|(a, c, _, _)| *c == code && a.is_none_or(|a| a == api));
    if let Some((_, _, class, _)) = row {
        return *class;
    }
    match api {
        Api::Approve if code.len() == 4 && code.starts_with('3') => UnlistedCode,
        Api::Approve | Api::Cancel => Unknown,
        Api::BillkeyIssue | Api::BillkeyRemove | Api::Status => RequestError,
    }
}

/// Classifies a failure that produced no usable ResultCode.
pub fn classify_transport(failure: Transport) -> Class {
    match failure {
        Transport::ConnectFailed => NotSent,
        Transport::HttpStatus(429) | Transport::HttpStatus(503) => Throttled,
        Transport::HttpStatus(s) if s >= 500 => Unknown,
        // A 4xx other than 429 means the server read and refused the request: our bug. 408
        // (request timeout) may have been partly processed by a proxy, so it stays unknown.
        Transport::HttpStatus(408) => Unknown,
        Transport::HttpStatus(_) => RequestError,
        Transport::TimedOut
        | Transport::ConnectionLost
        | Transport::Unparsable
        | Transport::Oversized
        | Transport::Untrusted => Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (api, code, expected class): the table as NICEPAY's documentation reads.
    const CASES: &[(Api, &str, Class)] = &[
        (BillkeyIssue, "F100", Approved),
        (Approve, "3001", Approved),
        (BillkeyRemove, "F101", Approved),
        (Cancel, "2001", Approved),
        (Cancel, "2211", Approved),
        (Status, "0000", Approved),
        (Approve, "F100", Unknown),
        (BillkeyIssue, "3001", RequestError),
        (Approve, "0000", Unknown),
        (Approve, "3095", Declined),
        (Approve, "3099", UnlistedCode),
        (Approve, "3012", UnlistedCode),
        (Approve, "3999", UnlistedCode),
        (Approve, "3011", PermanentCard),
        (Approve, "3021", PermanentCard),
        (BillkeyIssue, "F113", PermanentCard),
        (Approve, "A124", PermanentCard),
        (Approve, "U115", PermanentCard),
        (Approve, "U309", PermanentCard),
        (Approve, "A223", PermanentCard),
        (Approve, "A255", PermanentCard),
        (BillkeyRemove, "A124", Approved),
        (BillkeyRemove, "A125", Approved),
        (BillkeyRemove, "A126", Approved),
        (BillkeyRemove, "U115", Approved),
        (Approve, "A101", RequestError),
        (Cancel, "A211", RequestError),
        (Approve, "3022", RequestError),
        (Approve, "3024", RequestError),
        (Approve, "3041", RequestError),
        (Approve, "1652", RequestError),
        (Approve, "A225", Duplicate),
        (Approve, "1651", Duplicate),
        (Approve, "A127", Duplicate),
        (Approve, "2201", Duplicate),
        (Approve, "V003", Throttled),
        (Status, "A246", Throttled),
        (Approve, "A299", Throttled),
        (Approve, "U303", Throttled),
        (Approve, "ZZZZ", Unknown),
        (Approve, "", Unknown),
        (Cancel, "9999", Unknown),
        (Cancel, "2015", RequestError),
        (BillkeyRemove, "9999", RequestError),
        (Status, "9999", RequestError),
    ];

    #[test]
    fn result_codes() {
        for (api, code, want) in CASES {
            assert_eq!(classify(*api, code), *want, "{api:?} {code}");
        }
    }

    #[test]
    fn transport_failures() {
        let cases = [
            (Transport::ConnectFailed, NotSent),
            (Transport::TimedOut, Unknown),
            (Transport::ConnectionLost, Unknown),
            (Transport::Unparsable, Unknown),
            (Transport::Oversized, Unknown),
            (Transport::Untrusted, Unknown),
            (Transport::HttpStatus(500), Unknown),
            (Transport::HttpStatus(502), Unknown),
            (Transport::HttpStatus(503), Throttled),
            (Transport::HttpStatus(429), Throttled),
            (Transport::HttpStatus(404), RequestError),
            (Transport::HttpStatus(408), Unknown),
        ];
        for (t, want) in cases {
            assert_eq!(classify_transport(t), want, "{t:?}");
        }
    }

    #[test]
    fn every_row_is_reachable() {
        for (i, (api, code, class, _)) in TABLE.iter().enumerate() {
            let apis = match api {
                Some(a) => vec![*a],
                None => Api::ALL.to_vec(),
            };
            let reached = apis.iter().any(|a| classify(*a, code) == *class);
            assert!(reached, "row {i} ({code}) is shadowed by an earlier row");
        }
    }
}
