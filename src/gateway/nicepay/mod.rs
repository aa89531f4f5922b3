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

/// EUC-KR byte limits of text fields.
pub mod limits {
    pub const GOODS_NAME: usize = 40;
    pub const MOID: usize = 64;
    pub const BUYER_NAME: usize = 30;
    pub const BUYER_TEL: usize = 20;
    pub const BUYER_EMAIL: usize = 60;
    pub const MALL_RESERVED: usize = 500;
    pub const CANCEL_MSG: usize = 100;
}

/// Checks a goods name as NICEPAY will see it (EUC-KR, at most 40 bytes).
pub fn check_goods_name(text: &str) -> Result<(), crate::domain::FieldError> {
    if text.trim().is_empty() {
        return Err(crate::domain::FieldError::new("GoodsName", "is empty"));
    }
    form::euc_kr_limited("GoodsName", text, limits::GOODS_NAME).map(|_| ())
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
    fn paths_round_trip() {
        for api in Api::ALL {
            assert_eq!(Api::from_path(api.path()), Some(api));
        }
    }
}
