//! The one table from (API, ResultCode) and from transport failures to what nicebill does.
//!
//! Correct NICEPAY's answers here and nowhere else. Entries marked *inferred* are our safe
//! reading where NICEPAY documents nothing.

use super::Api;

pub use crate::gateway::{Class, Transport};

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
