//! v1's result codes, in ONE table (V1.md, "Result codes and what nicebill does with them"),
//! read per call. `0000` is v1's only success code; the per-call exceptions are documented on
//! [`classify`] and in [`super::choices`].

pub use crate::gateway::{Class, Transport};

/// v1's success code, for every call.
pub const SUCCESS: &str = "0000";

/// One v1 call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    Regist,
    Approve,
    Expire,
    Cancel,
    Netcancel,
    LookupTid,
    LookupOrder,
    Token,
}

/// The HTTP method of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Call {
    pub const ALL: [Call; 8] = [
        Call::Regist,
        Call::Approve,
        Call::Expire,
        Call::Cancel,
        Call::Netcancel,
        Call::LookupTid,
        Call::LookupOrder,
        Call::Token,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Call::Regist => "regist",
            Call::Approve => "approve",
            Call::Expire => "expire",
            Call::Cancel => "cancel",
            Call::Netcancel => "netcancel",
            Call::LookupTid => "lookup_tid",
            Call::LookupOrder => "lookup_order",
            Call::Token => "token",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Call::LookupTid | Call::LookupOrder => Method::Get,
            _ => Method::Post,
        }
    }

    /// The path of the call; `key` is the bid (approve, expire), the tid (cancel, lookup by
    /// tid) or the orderId (lookup by orderId), already validated by the caller; ignored by
    /// the calls whose path has no parameter.
    pub fn path(self, key: &str) -> String {
        match self {
            Call::Regist => "/v1/subscribe/regist".to_owned(),
            Call::Approve => format!("/v1/subscribe/{key}/payments"),
            Call::Expire => format!("/v1/subscribe/{key}/expire"),
            Call::Cancel => format!("/v1/payments/{key}/cancel"),
            Call::Netcancel => "/v1/payments/netcancel".to_owned(),
            Call::LookupTid => format!("/v1/payments/{key}"),
            Call::LookupOrder => format!("/v1/payments/find/{key}"),
            Call::Token => "/v1/access-token".to_owned(),
        }
    }

    /// Calls that move money: an unknown outcome must be resolved, never assumed a failure.
    pub fn moves_money(self) -> bool {
        matches!(self, Call::Approve | Call::Cancel | Call::Netcancel)
    }
}

/// The row of V1.md's result-code table a code is listed in (per-call readings are applied by
/// [`classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    Success,
    /// F100/F101: legacy success seen in v1 answers; success on issue/expire only.
    LegacyBillkeySuccess,
    /// 3001, F200, 2001, 2211: legacy success codes; never trusted as success.
    LegacySuccess,
    Declined,
    Permanent,
    /// A124, A125, A126, U115, U309, A223: the billkey is gone or invalid.
    BidGone,
    Request,
    /// 2032/U123: cancel exceeds the balance (after a retry: already cancelled).
    CancelExceeds,
    /// 2020: netcancel window (1 h) passed.
    NetcancelWindow,
    Duplicate,
    /// 2013, 2015: already cancelled / cancel already requested.
    CancelDuplicate,
    Throttled,
    /// U504: NICEPAY net-cancelled the payment itself (*inferred*).
    SelfNetcancelled,
    Unknown,
}

/// Every code of V1.md's table, with its row. Ranges of the manual are written out.
const TABLE: &[(&str, Row)] = {
    use Row::*;
    &[
        ("0000", Success),
        ("F100", LegacyBillkeySuccess),
        ("F101", LegacyBillkeySuccess),
        ("3001", LegacySuccess),
        ("F200", LegacySuccess),
        ("2001", LegacySuccess),
        ("2211", LegacySuccess),
        // declined, retry later
        ("3095", Declined),
        ("3081", Declined),
        ("A110", Declined),
        ("2003", Declined),
        ("2023", Declined),
        // permanent for this card
        ("3011", Permanent),
        ("3021", Permanent),
        ("3051", Permanent),
        ("3053", Permanent),
        ("3057", Permanent),
        ("3091", Permanent),
        ("F112", Permanent),
        ("F113", Permanent),
        ("F118", Permanent),
        ("F201", Permanent),
        ("A124", BidGone),
        ("A125", BidGone),
        ("A126", BidGone),
        ("U115", BidGone),
        ("U309", BidGone),
        ("A223", BidGone),
        // request error: auth and config
        ("U101", Request),
        ("U102", Request),
        ("U103", Request),
        ("U104", Request),
        ("U304", Request),
        ("U305", Request),
        ("U116", Request),
        ("U117", Request),
        ("U118", Request),
        ("U313", Request),
        ("A114", Request),
        ("U315", Request),
        ("A224", Request),
        ("U316", Request),
        ("A109", Request),
        ("A300", Request),
        ("A301", Request),
        ("A302", Request),
        ("A303", Request),
        ("A305", Request),
        ("P005", Request),
        ("P006", Request),
        ("P014", Request),
        ("P016", Request),
        ("2151", Request),
        ("2152", Request),
        ("3012", Request),
        ("3013", Request),
        ("3014", Request),
        ("F114", Request),
        ("F115", Request),
        ("F116", Request),
        ("F117", Request),
        ("A122", Request),
        ("A255", Request),
        ("A148", Request),
        ("A149", Request),
        // signature and encryption
        ("U312", Request),
        ("A101", Request),
        ("A211", Request),
        ("U306", Request),
        ("A204", Request),
        ("U314", Request),
        ("A205", Request),
        // fields and format
        ("U100", Request),
        ("A117", Request),
        ("9000", Request),
        ("P007", Request),
        ("U105", Request),
        ("U124", Request),
        ("A147", Request),
        ("9001", Request),
        ("P008", Request),
        ("P009", Request),
        ("U125", Request),
        ("U131", Request),
        ("A212", Request),
        ("A102", Request),
        ("A227", Request),
        ("U132", Request),
        ("P010", Request),
        ("P011", Request),
        ("P012", Request),
        ("P013", Request),
        ("U130", Request),
        ("A106", Request),
        ("P024", Request),
        ("U127", Request),
        ("A116", Request),
        ("P034", Request),
        ("P017", Request),
        ("A113", Request),
        ("3041", Request),
        ("U113", Request),
        ("1615", Request),
        ("P036", Request),
        ("U321", Request),
        ("3022", Request),
        ("3023", Request),
        ("3024", Request),
        ("P028", Request),
        ("P037", Request),
        ("3031", Request),
        ("3032", Request),
        ("3033", Request),
        ("3034", Request),
        ("3052", Request),
        ("3054", Request),
        ("3055", Request),
        ("3056", Request),
        ("U108", Request),
        ("U109", Request),
        ("U110", Request),
        ("U119", Request),
        ("A242", Request),
        ("U308", Request),
        ("U320", Request),
        ("U120", Request),
        ("A115", Request),
        ("U129", Request),
        // cancel request errors
        ("2010", Request),
        ("2011", Request),
        ("U318", Request),
        ("2014", Request),
        ("2016", Request),
        ("2017", Request),
        ("2018", Request),
        ("2019", Request),
        ("2024", Request),
        ("2025", Request),
        ("2026", Request),
        ("2027", Request),
        ("2028", Request),
        ("2029", Request),
        ("2030", Request),
        ("2031", Request),
        ("2033", Request),
        ("2052", Request),
        ("1534", Request),
        ("U106", Request),
        ("U319", Request),
        ("U128", Request),
        ("2032", CancelExceeds),
        ("U123", CancelExceeds),
        ("2020", NetcancelWindow),
        // duplicate
        ("U112", Duplicate),
        ("P015", Duplicate),
        ("A127", Duplicate),
        ("2201", Duplicate),
        ("U114", Duplicate),
        ("A225", Duplicate),
        ("2156", Duplicate),
        ("2013", CancelDuplicate),
        ("2015", CancelDuplicate),
        // throttled, gateway trouble
        ("A246", Throttled),
        ("V003", Throttled),
        ("2159", Throttled),
        ("U504", SelfNetcancelled),
        // unknown outcome
        ("A299", Unknown),
        ("U303", Unknown),
        ("A226", Unknown),
        ("A401", Unknown),
        ("U501", Unknown),
        ("U508", Unknown),
        ("X001", Unknown),
        ("X002", Unknown),
        ("X003", Unknown),
        ("X004", Unknown),
        ("T001", Unknown),
        ("T002", Unknown),
        ("T003", Unknown),
        ("T004", Unknown),
        ("T005", Unknown),
        ("A400", Unknown),
        ("A403", Unknown),
        ("A254", Unknown),
        ("P026", Unknown),
        ("P027", Unknown),
        ("P101", Unknown),
        ("U506", Unknown),
        ("U507", Unknown),
        ("A304", Unknown),
        ("A306", Unknown),
        ("A402", Unknown),
        ("F106", Unknown),
        ("F107", Unknown),
        ("F108", Unknown),
        ("F109", Unknown),
        ("U509", Unknown),
        ("A307", Unknown),
        ("9002", Unknown),
        ("S999", Unknown),
        ("S001", Unknown),
        ("S002", Unknown),
        ("U310", Unknown),
        ("A252", Unknown),
        ("U503", Unknown),
        ("P035", Unknown),
        ("2021", Unknown),
        ("2022", Unknown),
        ("3062", Unknown),
        ("P044", Unknown),
    ]
};

/// Lookup codes that mean "no such transaction" (V1.md, "Reading a lookup"). They are also in
/// the request-error row for other calls where the manual lists them; on a lookup they are read
/// by [`super::answer`], not by [`classify`].
pub fn not_found_codes() -> &'static [&'static str] {
    &[
        "U107", "U111", "U126", "A118", "A243", "A251", "A214", "2012", "U122",
    ]
}

fn row(code: &str) -> Option<Row> {
    TABLE.iter().find(|(c, _)| *c == code).map(|(_, r)| *r)
}

/// Whether a call only reads or manages keys (no money moves): there, gateway trouble is
/// "back off and retry" rather than "resolve by lookup".
fn non_money(call: Call) -> bool {
    !call.moves_money()
}

/// The class of `result_code` for `call`. Per-call readings (see [`super::choices`]):
/// - F100/F101 are success only on issue and expire (the caller also requires a `bid` on issue);
///   3001, F200, 2001, 2211 and every other legacy success are **Unknown**, confirmed by lookup.
/// - bid-gone codes on expire are **Approved** (the goal, no billkey, is reached).
/// - 2013/2015 are Duplicate on cancel and netcancel, Unknown elsewhere.
/// - U504 on approve is **Unknown** (NICEPAY says it net-cancelled, *inferred*: the lookup by
///   orderId confirms it before a new orderId is used); Throttled elsewhere.
/// - 2020 is RequestError (netcancel window passed: fall back to lookup and `/cancel`).
/// - unknown-row codes on issue, expire, lookups and token are Throttled (nothing is charged).
/// - any code not in the table is Unknown.
pub fn classify(call: Call, result_code: &str) -> Class {
    let Some(row) = row(result_code) else {
        return Class::Unknown;
    };
    match row {
        Row::Success => Class::Approved,
        Row::LegacyBillkeySuccess => match call {
            Call::Regist | Call::Expire => Class::Approved,
            _ => Class::Unknown,
        },
        Row::LegacySuccess => Class::Unknown,
        Row::Declined => Class::Declined,
        Row::Permanent => Class::PermanentCard,
        Row::BidGone => match call {
            Call::Expire => Class::Approved,
            _ => Class::PermanentCard,
        },
        Row::Request | Row::CancelExceeds | Row::NetcancelWindow => Class::RequestError,
        Row::Duplicate => Class::Duplicate,
        Row::CancelDuplicate => match call {
            Call::Cancel | Call::Netcancel => Class::Duplicate,
            _ => Class::Unknown,
        },
        Row::Throttled => Class::Throttled,
        Row::SelfNetcancelled => match call {
            Call::Approve => Class::Unknown,
            _ => Class::Throttled,
        },
        Row::Unknown => {
            if non_money(call) {
                Class::Throttled
            } else {
                Class::Unknown
            }
        }
    }
}

/// The class of an HTTP status whose body carried no readable `resultCode`.
/// 401/403/405 → RequestError; 408 → Unknown (the client renews a Bearer token once on 401 before this);
/// 429 → Throttled; 5xx → Unknown on calls that move money, Throttled elsewhere; other 4xx and
/// 3xx (redirects are never followed) → RequestError; a 2xx without a code → Unknown.
pub fn classify_http(call: Call, status: u16) -> Class {
    match status {
        429 => Class::Throttled,
        408 => Class::Unknown,
        500..=599 => {
            if call.moves_money() {
                Class::Unknown
            } else {
                Class::Throttled
            }
        }
        300..=499 => Class::RequestError,
        _ => Class::Unknown,
    }
}

/// The class of a transport failure: nothing sent → NotSent; an HTTP status → [`classify_http`];
/// anything after sending (timeout, reset, unparsable, oversized, untrusted) → Unknown.
pub fn classify_transport(call: Call, failure: Transport) -> Class {
    match failure {
        Transport::ConnectFailed => Class::NotSent,
        Transport::HttpStatus(status) => classify_http(call, status),
        Transport::TimedOut
        | Transport::ConnectionLost
        | Transport::Unparsable
        | Transport::Oversized
        | Transport::Untrusted => Class::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Call::*;
    use Class::*;

    /// Every code of V1.md's result-code table with its expected class on approve, and (where
    /// it differs) on the other calls. Drop a code from TABLE and this fails.
    const EXPECTED: &[(&str, Class)] = &[
        ("0000", Approved),
        ("F100", Unknown),
        ("F101", Unknown),
        ("3001", Unknown),
        ("F200", Unknown),
        ("2001", Unknown),
        ("2211", Unknown),
        ("3095", Declined),
        ("3081", Declined),
        ("A110", Declined),
        ("2003", Declined),
        ("2023", Declined),
        ("3011", PermanentCard),
        ("3021", PermanentCard),
        ("3051", PermanentCard),
        ("3053", PermanentCard),
        ("3057", PermanentCard),
        ("3091", PermanentCard),
        ("F112", PermanentCard),
        ("F113", PermanentCard),
        ("F118", PermanentCard),
        ("F201", PermanentCard),
        ("A124", PermanentCard),
        ("A125", PermanentCard),
        ("A126", PermanentCard),
        ("U115", PermanentCard),
        ("U309", PermanentCard),
        ("A223", PermanentCard),
        ("2013", Unknown),
        ("2015", Unknown),
        ("U112", Duplicate),
        ("P015", Duplicate),
        ("A127", Duplicate),
        ("2201", Duplicate),
        ("U114", Duplicate),
        ("A225", Duplicate),
        ("2156", Duplicate),
        ("A246", Throttled),
        ("V003", Throttled),
        ("2159", Throttled),
        ("U504", Unknown),
        ("2032", RequestError),
        ("U123", RequestError),
        ("2020", RequestError),
    ];

    const REQUEST_ERRORS: &str = "U101 U102 U103 U104 U304 U305 U116 U117 U118 U313 A114 U315 \
        A224 U316 A109 A300 A301 A302 A303 A305 P005 P006 P014 P016 2151 2152 3012 3013 3014 \
        F114 F115 F116 F117 A122 A255 A148 A149 U312 A101 A211 U306 A204 U314 A205 U100 A117 \
        9000 P007 U105 U124 A147 9001 P008 P009 U125 U131 A212 A102 A227 U132 P010 P011 P012 \
        P013 U130 A106 P024 U127 A116 P034 P017 A113 3041 U113 1615 P036 U321 3022 3023 3024 \
        P028 P037 3031 3032 3033 3034 3052 3054 3055 3056 U108 U109 U110 U119 A242 U308 U320 \
        U120 A115 U129 2010 2011 U318 2014 2016 2017 2018 2019 2024 2025 2026 2027 2028 2029 \
        2030 2031 2033 2052 1534 U106 U319 U128";

    const UNKNOWNS: &str = "A299 U303 A226 A401 U501 U508 X001 X002 X003 X004 T001 T002 T003 \
        T004 T005 A400 A403 A254 P026 P027 P101 U506 U507 A304 A306 A402 F106 F107 F108 F109 \
        U509 A307 9002 S999 S001 S002 U310 A252 U503 P035 2021 2022 3062 P044";

    #[test]
    fn every_listed_code_on_approve() {
        for (code, class) in EXPECTED {
            assert!(row(code).is_some(), "{code} missing from TABLE");
            assert_eq!(classify(Approve, code), *class, "{code}");
        }
        for code in REQUEST_ERRORS.split_whitespace() {
            assert!(row(code).is_some(), "{code} missing from TABLE");
            assert_eq!(classify(Approve, code), RequestError, "{code}");
        }
        for code in UNKNOWNS.split_whitespace() {
            assert!(row(code).is_some(), "{code} missing from TABLE");
            assert_eq!(classify(Approve, code), Unknown, "{code}");
            assert_eq!(classify(Netcancel, code), Unknown, "{code}");
            assert_eq!(classify(Cancel, code), Unknown, "{code}");
            for call in [Regist, Expire, LookupTid, LookupOrder, Token] {
                assert_eq!(classify(call, code), Throttled, "{code} on {call:?}");
            }
        }
        let listed = EXPECTED.len()
            + REQUEST_ERRORS.split_whitespace().count()
            + UNKNOWNS.split_whitespace().count();
        assert_eq!(
            listed,
            TABLE.len(),
            "TABLE and the test list the same codes"
        );
    }

    #[test]
    fn per_call_readings() {
        for code in ["A124", "A125", "A126", "U115", "U309", "A223"] {
            assert_eq!(classify(Expire, code), Approved, "{code}");
        }
        for call in [Regist, Expire] {
            assert_eq!(classify(call, "F100"), Approved);
            assert_eq!(classify(call, "F101"), Approved);
        }
        for call in [Cancel, Netcancel] {
            assert_eq!(classify(call, "2013"), Duplicate);
            assert_eq!(classify(call, "2015"), Duplicate);
            assert_eq!(classify(call, "3001"), Unknown);
            assert_eq!(classify(call, "2001"), Unknown);
        }
        assert_eq!(classify(Regist, "U504"), Throttled);
        for call in Call::ALL {
            assert_eq!(classify(call, "0000"), Approved);
            assert_eq!(classify(call, "ZZ99"), Unknown, "unlisted on {call:?}");
            assert_eq!(classify(call, ""), Unknown);
        }
    }

    #[test]
    fn http_statuses() {
        for call in Call::ALL {
            for status in [401, 403, 405, 400, 404, 302] {
                assert_eq!(classify_http(call, status), RequestError);
            }
            assert_eq!(classify_http(call, 429), Throttled);
        }
        assert_eq!(classify_http(Approve, 502), Unknown);
        assert_eq!(classify_http(Netcancel, 500), Unknown);
        assert_eq!(classify_http(Cancel, 503), Unknown);
        assert_eq!(classify_http(LookupTid, 500), Throttled);
        assert_eq!(classify_http(Regist, 504), Throttled);
        assert_eq!(classify_http(Approve, 408), Unknown);
        assert_eq!(
            classify_transport(Approve, Transport::ConnectFailed),
            NotSent
        );
        assert_eq!(classify_transport(Approve, Transport::TimedOut), Unknown);
        assert_eq!(
            classify_transport(Approve, Transport::HttpStatus(503)),
            Unknown
        );
    }

    #[test]
    fn not_found_codes_are_nine() {
        assert_eq!(not_found_codes().len(), 9);
        assert!(not_found_codes().contains(&"U122"));
    }

    #[test]
    fn paths_and_methods() {
        assert_eq!(Approve.path("BIKYx"), "/v1/subscribe/BIKYx/payments");
        assert_eq!(LookupOrder.path("o-1"), "/v1/payments/find/o-1");
        assert_eq!(LookupTid.method(), Method::Get);
        assert_eq!(Token.method(), Method::Post);
        assert_eq!(Token.path(""), "/v1/access-token");
    }
}
