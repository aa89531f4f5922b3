//! v1's JSON shapes (V1.md field tables; choices 18, 19). Unknown fields are ignored; optional
//! objects are `Option`. `ediDate` is kept exactly as received (it is hashed).

use serde::{Deserialize, Deserializer, Serialize};

use crate::gateway::nicepay::Buyer;

/// The buyer fields of a request, camelCase.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BuyerFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buyer_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buyer_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub buyer_tel: Option<String>,
}

impl From<&Buyer> for BuyerFields {
    fn from(b: &Buyer) -> Self {
        Self {
            buyer_name: b.name.clone(),
            buyer_email: b.email.clone(),
            buyer_tel: b.tel.clone(),
        }
    }
}

/// `POST /v1/subscribe/regist`. Debug is hand-written: `encData` is card data.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistRequest {
    pub enc_data: String,
    pub order_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enc_mode: Option<&'static str>,
    #[serde(flatten)]
    pub buyer: BuyerFields,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edi_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_data: Option<String>,
}

impl std::fmt::Debug for RegistRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistRequest")
            .field("order_id", &self.order_id)
            .field("enc_data", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// `POST /v1/subscribe/{bid}/payments`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApproveRequest {
    pub order_id: String,
    pub amount: i64,
    pub goods_name: String,
    /// Always `"0"` (lump sum).
    pub card_quota: String,
    /// Always `false`.
    pub use_shop_interest: bool,
    #[serde(flatten)]
    pub buyer: BuyerFields,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mall_reserved: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edi_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_data: Option<String>,
}

/// `POST /v1/subscribe/{bid}/expire`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpireRequest {
    pub order_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edi_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_data: Option<String>,
}

/// `POST /v1/payments/{tid}/cancel`; `cancel_amt` absent = full cancel.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelRequest {
    pub reason: String,
    pub order_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_amt: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edi_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_data: Option<String>,
}

/// `POST /v1/payments/netcancel`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetcancelRequest {
    pub reason: String,
    pub order_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edi_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign_data: Option<String>,
}

/// A payment's `status`, with unknown strings kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Paid,
    Ready,
    Failed,
    Cancelled,
    PartialCancelled,
    Expired,
    Other(String),
}

impl Status {
    pub fn from_wire(text: &str) -> Self {
        match text {
            "paid" => Status::Paid,
            "ready" => Status::Ready,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            "partialCancelled" => Status::PartialCancelled,
            "expired" => Status::Expired,
            other => Status::Other(other.to_owned()),
        }
    }
}

impl Status {
    pub fn as_str(&self) -> &str {
        match self {
            Status::Paid => "paid",
            Status::Ready => "ready",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::PartialCancelled => "partialCancelled",
            Status::Expired => "expired",
            Status::Other(s) => s,
        }
    }
}

impl Serialize for Status {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Status::from_wire(&String::deserialize(d)?))
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    S(String),
    N(serde_json::Number),
}

/// A string or a number, as text (`cardQuota`).
fn str_or_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<StrOrNum>::deserialize(d)?.map(|v| match v {
        StrOrNum::S(s) => s,
        StrOrNum::N(n) => n.to_string(),
    }))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrBool {
    S(String),
    B(bool),
}

/// A string or a bool, as a bool (`canPartCancel`): `true`/`"true"`/`"Y"`/`"1"` are true.
fn str_or_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(Option::<StrOrBool>::deserialize(d)?.map(|v| match v {
        StrOrBool::B(b) => b,
        StrOrBool::S(s) => matches!(s.as_str(), "true" | "Y" | "y" | "1"),
    }))
}

/// The payment object's `card`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Card {
    pub card_code: Option<String>,
    pub card_name: Option<String>,
    /// Masked (first 6 / last 4).
    pub card_num: Option<String>,
    #[serde(deserialize_with = "str_or_num")]
    pub card_quota: Option<String>,
    pub is_interest_free: Option<bool>,
    pub card_type: Option<String>,
    #[serde(deserialize_with = "str_or_bool")]
    pub can_part_cancel: Option<bool>,
    pub acqu_card_code: Option<String>,
    pub acqu_card_name: Option<String>,
}

/// One entry of `cancels[]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct CancelEntry {
    pub tid: Option<String>,
    pub amount: Option<i64>,
    pub cancelled_at: Option<String>,
    pub reason: Option<String>,
    pub receipt_url: Option<String>,
    pub coupon_amt: Option<i64>,
}

/// The payment object (approve, cancel, netcancel, lookup answers).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Payment {
    pub result_code: String,
    pub result_msg: String,
    pub tid: Option<String>,
    pub cancelled_tid: Option<String>,
    pub order_id: Option<String>,
    /// Exactly as received: part of `signature`.
    pub edi_date: Option<String>,
    pub signature: Option<String>,
    pub status: Option<Status>,
    pub paid_at: Option<String>,
    pub failed_at: Option<String>,
    pub cancelled_at: Option<String>,
    pub pay_method: Option<String>,
    pub amount: Option<i64>,
    pub balance_amt: Option<i64>,
    pub goods_name: Option<String>,
    pub mall_reserved: Option<String>,
    pub use_escrow: Option<bool>,
    pub currency: Option<String>,
    pub channel: Option<String>,
    pub approve_no: Option<String>,
    pub buyer_name: Option<String>,
    pub issued_cash_receipt: Option<bool>,
    pub receipt_url: Option<String>,
    pub mall_user_id: Option<String>,
    pub card: Option<Card>,
    pub cancels: Option<Vec<CancelEntry>>,
}

/// The regist answer: camelCase, PascalCase accepted too (choice 19).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RegistAnswer {
    #[serde(alias = "ResultCode")]
    pub result_code: String,
    #[serde(alias = "ResultMsg")]
    pub result_msg: String,
    #[serde(alias = "BID", alias = "Bid")]
    pub bid: Option<String>,
    #[serde(alias = "TID", alias = "Tid")]
    pub tid: Option<String>,
    #[serde(alias = "OrderId", alias = "Moid")]
    pub order_id: Option<String>,
    /// ISO 8601 or `YYYYMMDD`, kept as text.
    #[serde(alias = "AuthDate")]
    pub auth_date: Option<String>,
    #[serde(alias = "CardCode")]
    pub card_code: Option<String>,
    #[serde(alias = "CardName")]
    pub card_name: Option<String>,
}

/// The expire answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ExpireAnswer {
    pub result_code: String,
    pub result_msg: String,
    pub tid: Option<String>,
    pub order_id: Option<String>,
    pub bid: Option<String>,
    pub auth_date: Option<String>,
}

/// The access-token answer (`expiredAt` or `expireAt`). Debug hides the token.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct TokenAnswer {
    pub result_code: String,
    pub result_msg: String,
    pub access_token: Option<String>,
    pub token_type: Option<String>,
    #[serde(alias = "expireAt")]
    pub expired_at: Option<String>,
    pub now: Option<String>,
}

impl std::fmt::Debug for TokenAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenAnswer")
            .field("result_code", &self.result_code)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expired_at", &self.expired_at)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_tolerates_shapes() {
        let p: Payment = serde_json::from_str(
            r#"{"resultCode":"0000","resultMsg":"ok","tid":"t1","orderId":"o1",
            "ediDate":"2026-12-25T09:01:00.100+0900","status":"paid","amount":9900,
            "card":{"cardCode":"04","cardQuota":0,"canPartCancel":"true"},
            "cancels":null,"newField":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(p.status, Some(Status::Paid));
        assert_eq!(p.edi_date.as_deref(), Some("2026-12-25T09:01:00.100+0900"));
        let card = p.card.unwrap();
        assert_eq!(card.card_quota.as_deref(), Some("0"));
        assert_eq!(card.can_part_cancel, Some(true));
        let p: Payment = serde_json::from_str(
            r#"{"resultCode":"0000","status":"weird","card":{"cardQuota":"03","canPartCancel":false}}"#,
        )
        .unwrap();
        assert_eq!(p.status, Some(Status::Other("weird".into())));
        assert_eq!(p.card.unwrap().can_part_cancel, Some(false));
    }

    #[test]
    fn regist_answer_either_case() {
        let a: RegistAnswer = serde_json::from_str(
            r#"{"ResultCode":"F100","ResultMsg":"ok","BID":"BIKY1","AuthDate":"20261205"}"#,
        )
        .unwrap();
        assert_eq!(a.result_code, "F100");
        assert_eq!(a.bid.as_deref(), Some("BIKY1"));
        let a: RegistAnswer = serde_json::from_str(
            r#"{"resultCode":"0000","bid":"BIKY2","authDate":"2026-12-05T10:00:00.000+0900"}"#,
        )
        .unwrap();
        assert_eq!(a.bid.as_deref(), Some("BIKY2"));
    }

    #[test]
    fn token_answer_both_spellings_and_hidden() {
        let a: TokenAnswer =
            serde_json::from_str(r#"{"resultCode":"0000","accessToken":"sekrit","expireAt":"x"}"#)
                .unwrap();
        assert_eq!(a.expired_at.as_deref(), Some("x"));
        let b: TokenAnswer =
            serde_json::from_str(r#"{"resultCode":"0000","accessToken":"sekrit","expiredAt":"y"}"#)
                .unwrap();
        assert_eq!(b.expired_at.as_deref(), Some("y"));
        assert!(!format!("{a:?}").contains("sekrit"));
    }

    #[test]
    fn approve_request_wire_shape() {
        let r = ApproveRequest {
            order_id: "o1".into(),
            amount: 9900,
            goods_name: "g".into(),
            card_quota: "0".into(),
            use_shop_interest: false,
            buyer: BuyerFields::default(),
            mall_reserved: None,
            edi_date: None,
            sign_data: None,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"orderId":"o1","amount":9900,"goodsName":"g","cardQuota":"0","useShopInterest":false})
        );
    }
}
