//! NICEPAY's card-billing web API. Only this module knows the wire format: field names,
//! signatures, encodings, result codes.

pub mod client;
pub mod codes;
pub mod crypto;
pub mod form;
pub mod response;
pub mod sign;
pub mod tid;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use client::{
    Approval, ApproveRequest, BillkeyIssued, BillkeyRemoved, Buyer, CallError, CancelRequest,
    Cancellation, ClientSettings, IssueRequest, Match, NicepayClient, Reply, TxState, TxStatus,
};
pub use codes::{Class, Transport};

/// The five APIs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    BillkeyIssue,
    Approve,
    BillkeyRemove,
    Cancel,
    Status,
}

impl Api {
    pub const ALL: [Api; 5] = [
        Api::BillkeyIssue,
        Api::Approve,
        Api::BillkeyRemove,
        Api::Cancel,
        Api::Status,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Api::BillkeyIssue => "/webapi/billing/billing_regist.jsp",
            Api::Approve => "/webapi/billing/billing_approve.jsp",
            Api::BillkeyRemove => "/webapi/billing/billkey_remove.jsp",
            Api::Cancel => "/webapi/cancel_process.jsp",
            Api::Status => "/webapi/inquery/trans_status.jsp",
        }
    }

    pub fn from_path(path: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.path() == path)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Api::BillkeyIssue => "billkey_issue",
            Api::Approve => "approve",
            Api::BillkeyRemove => "billkey_remove",
            Api::Cancel => "cancel",
            Api::Status => "status",
        }
    }
}

/// `CharSet`: the encoding of the **response** (requests are always EUC-KR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Charset {
    #[default]
    #[serde(rename = "euc-kr")]
    EucKr,
    #[serde(rename = "utf-8")]
    Utf8,
}

impl Charset {
    pub fn as_str(self) -> &'static str {
        match self {
            Charset::EucKr => "euc-kr",
            Charset::Utf8 => "utf-8",
        }
    }

    pub fn parse(text: &str) -> Option<Charset> {
        match text.trim().to_ascii_lowercase().as_str() {
            "euc-kr" | "euckr" | "euc_kr" | "ks_c_5601-1987" | "cp949" => Some(Charset::EucKr),
            "utf-8" | "utf8" => Some(Charset::Utf8),
            _ => None,
        }
    }

    pub fn encoding(self) -> &'static encoding_rs::Encoding {
        match self {
            Charset::EucKr => encoding_rs::EUC_KR,
            Charset::Utf8 => encoding_rs::UTF_8,
        }
    }
}

/// `EdiType`: the format of the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EdiType {
    #[default]
    #[serde(rename = "JSON")]
    Json,
    #[serde(rename = "KV")]
    Kv,
}

impl EdiType {
    pub fn as_str(self) -> &'static str {
        match self {
            EdiType::Json => "JSON",
            EdiType::Kv => "KV",
        }
    }

    pub fn parse(text: &str) -> Option<EdiType> {
        match text.trim().to_ascii_uppercase().as_str() {
            "JSON" => Some(EdiType::Json),
            "KV" => Some(EdiType::Kv),
            _ => None,
        }
    }
}

/// `EdiDate`: `YYYYMMDDHHMMSS` in Korea time, whatever the host's time zone.
pub fn edi_date(now: DateTime<Utc>) -> String {
    now.with_timezone(&chrono_tz::Asia::Seoul)
        .format("%Y%m%d%H%M%S")
        .to_string()
}

/// Field limits, and where NICEPAY's manual disagrees with itself, the reading nicebill chose.
///
/// Each choice is made here once; the client, the planner and the simulator follow it.
///
/// - **`Amt` in billkey removal.** The removal table lists `Amt` as required, but every sample
///   omits it and removal charges nothing. nicebill does not send it (an amount on a removal
///   has no meaning and is not in `SignData`), and the simulator does not require it; it
///   accepts and ignores one if sent.
/// - **`BuyerEmail`, `BuyerTel`, `BuyerName`.** Optional in the manual. Sent with every
///   approval when the subscription row has them (`buyer_email`, `buyer_tel`, `buyer_name`),
///   checked like every text field; absent columns are not sent at all (never as empty).
///   `nicebill billkey issue` sends `BuyerName` only (`--buyer-name`).
/// - **`MallReserved`.** Never sent by the daemon or the CLI: the subscription table has no
///   column for it, and NICEPAY only echoes it back; nothing nicebill needs travels in it (the
///   Moid already names subscription, cycle and attempt). The client supports it
///   (`ApproveRequest::mall_reserved`) within [`MALL_RESERVED`] bytes.
/// - **`CardNo`.** The manual's field length is 16, so [`CARD_NO_DIGITS`] is 14 to 16 digits
///   (14 and 15 for Diners and Amex); a longer number would be refused or cut by NICEPAY, so it
///   is refused before sending, naming `CardNo`.
/// - **`CardQuota`.** The manual shows `00` (lump sum), `02`, `03`, … without an upper bound;
///   Korean issuers offer at most 36 months, and NICEPAY refuses more with `3022/3023`. So
///   `00` or `02`..=[`CARD_QUOTA_MAX_MONTHS`] everywhere ([`check_card_quota`]).
pub mod limits {
    pub const GOODS_NAME: usize = 40;
    pub const MOID: usize = 64;
    pub const BUYER_NAME: usize = 30;
    pub const BUYER_TEL: usize = 20;
    pub const BUYER_EMAIL: usize = 60;
    pub const MALL_RESERVED: usize = 500;
    pub const CANCEL_MSG: usize = 100;
    /// Digits in a card number (see the module comment).
    pub const CARD_NO_DIGITS: std::ops::RangeInclusive<usize> = 14..=16;
    /// The longest installment, in months (see the module comment).
    pub const CARD_QUOTA_MAX_MONTHS: u32 = 36;
}

/// Checks a goods name as NICEPAY will see it (strict EUC-KR, at most 40 bytes).
pub fn check_goods_name(text: &str) -> Result<(), crate::domain::FieldError> {
    if text.trim().is_empty() {
        return Err(crate::domain::FieldError::new("GoodsName", "is empty"));
    }
    form::euc_kr_limited("GoodsName", text, limits::GOODS_NAME).map(|_| ())
}

/// Checks an installment: `00` (lump sum) or `02` to `36` months, two digits.
pub fn check_card_quota(field: &'static str, text: &str) -> Result<(), crate::domain::FieldError> {
    let months = (text.len() == 2 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u32>().ok())
        .flatten();
    match months {
        Some(0) => Ok(()),
        Some(m) if (2..=limits::CARD_QUOTA_MAX_MONTHS).contains(&m) => Ok(()),
        _ => Err(crate::domain::FieldError::new(
            field,
            format!(
                "{:?} is not 00 (lump sum) or 02..{} months",
                text.chars().take(10).collect::<String>(),
                limits::CARD_QUOTA_MAX_MONTHS
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn edi_date_is_korea_time() {
        let at = Utc.with_ymd_and_hms(2026, 12, 25, 0, 0, 0).unwrap();
        assert_eq!(edi_date(at), "20261225090000");
        let at = Utc.with_ymd_and_hms(2026, 12, 31, 15, 30, 5).unwrap();
        assert_eq!(edi_date(at), "20270101003005");
    }

    #[test]
    fn card_quota_is_00_or_02_to_36() {
        for ok in ["00", "02", "12", "36"] {
            assert!(check_card_quota("CardQuota", ok).is_ok(), "{ok}");
        }
        for bad in ["01", "37", "99", "1", "002", "ab", "", "+2"] {
            let e = check_card_quota("CardQuota", bad).unwrap_err();
            assert_eq!(e.field, "CardQuota", "{bad}");
            assert!(e.problem.contains("02..36"), "{e}");
        }
    }

    #[test]
    fn paths_round_trip() {
        for api in Api::ALL {
            assert_eq!(Api::from_path(api.path()), Some(api));
        }
    }
}
