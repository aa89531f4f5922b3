//! Request fields checked before anything is sent (choices 2–4). Errors name the v1 field.

use crate::domain::FieldError;
use crate::gateway::nicepay::form::euc_kr;

/// UTF-8 byte limits of v1's request fields (choice 2).
pub mod limits {
    pub const GOODS_NAME: usize = 40;
    pub const ORDER_ID: usize = 64;
    pub const BUYER_NAME: usize = 30;
    pub const BUYER_TEL: usize = 20;
    pub const BUYER_EMAIL: usize = 60;
    pub const REASON: usize = 100;
    pub const MALL_RESERVED: usize = 500;
}

/// Free text: no control characters, representable in EUC-KR, at most `max` UTF-8 bytes.
pub fn text(
    field: &'static str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), FieldError> {
    if required && value.trim().is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    euc_kr(field, value)?;
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} UTF-8 bytes, at most {max} allowed", value.len()),
        ));
    }
    Ok(())
}

/// `goodsName`: required, 40 bytes.
pub fn goods_name(value: &str) -> Result<(), FieldError> {
    text("goodsName", value, limits::GOODS_NAME, true)
}

/// An orderId-shaped key (`orderId`, and the path keys bid/tid): `[A-Za-z0-9_-]`, 1..=max.
pub fn key(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "is required"));
    }
    if value.len() > max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes, at most {max} allowed", value.len()),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(FieldError::new(
            field,
            format!("contains {c:?}; only A-Z, a-z, 0-9, '_' and '-' are allowed"),
        ));
    }
    Ok(())
}

/// `orderId`: `[A-Za-z0-9_-]`, 1..=64 bytes (choice 4).
pub fn order_id(value: &str) -> Result<(), FieldError> {
    key("orderId", value, limits::ORDER_ID)
}

/// `buyerName`: optional, 30 bytes.
pub fn buyer_name(value: &str) -> Result<(), FieldError> {
    text("buyerName", value, limits::BUYER_NAME, false)
}

/// `buyerTel`: optional, digits only, 20 bytes.
pub fn buyer_tel(value: &str) -> Result<(), FieldError> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::new("buyerTel", "must be digits only"));
    }
    if value.len() > limits::BUYER_TEL {
        return Err(FieldError::new(
            "buyerTel",
            format!(
                "is {} digits, at most {} allowed",
                value.len(),
                limits::BUYER_TEL
            ),
        ));
    }
    Ok(())
}

/// `buyerEmail`: optional, 60 bytes, ASCII with one `@` when present.
pub fn buyer_email(value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Ok(());
    }
    text("buyerEmail", value, limits::BUYER_EMAIL, false)?;
    if !value.is_ascii() || value.matches('@').count() != 1 || value.contains(char::is_whitespace) {
        return Err(FieldError::new("buyerEmail", "is not an e-mail address"));
    }
    Ok(())
}

/// `reason` (cancel): required, 100 bytes.
pub fn reason(value: &str) -> Result<(), FieldError> {
    text("reason", value, limits::REASON, true)
}

/// `mallReserved`: optional, 500 bytes, no `"`.
pub fn mall_reserved(value: &str) -> Result<(), FieldError> {
    text("mallReserved", value, limits::MALL_RESERVED, false)?;
    if value.contains('"') {
        return Err(FieldError::new("mallReserved", "must not contain '\"'"));
    }
    Ok(())
}

/// `orderDate` for the lookup by orderId: `YYYYMMDD`.
pub fn order_date(value: &str) -> Result<(), FieldError> {
    if value.len() != 8 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FieldError::new("orderDate", "must be YYYYMMDD"));
    }
    Ok(())
}

/// `amount`/`cancelAmt`: positive, at most 12 digits.
pub fn amount(field: &'static str, value: i64) -> Result<(), FieldError> {
    if value <= 0 || value > 999_999_999_999 {
        return Err(FieldError::new(field, "must be 1..=999999999999 KRW"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goods_name_limits_in_utf8_bytes() {
        assert!(goods_name(&"a".repeat(40)).is_ok());
        let e = goods_name(&"a".repeat(41)).unwrap_err();
        assert_eq!(e.field, "goodsName");
        // 13 Hangul = 39 UTF-8 bytes; 14 = 42.
        assert!(goods_name(&"가".repeat(13)).is_ok());
        assert!(goods_name(&"가".repeat(14)).is_err());
        assert!(goods_name("").is_err());
    }

    #[test]
    fn non_euc_kr_and_control_refused() {
        assert_eq!(goods_name("coffee ☕️").unwrap_err().field, "goodsName");
        assert_eq!(goods_name("plan 😀").unwrap_err().field, "goodsName");
        assert!(goods_name("a\nb").is_err());
        assert!(reason("a\u{7}").is_err());
        assert!(goods_name("월간 구독").is_ok());
    }

    #[test]
    fn order_id_charset() {
        assert!(order_id("sub-1_2024AB").is_ok());
        assert_eq!(order_id("a/b").unwrap_err().field, "orderId");
        assert!(order_id("a b").is_err());
        assert!(order_id("").is_err());
        assert!(order_id(&"x".repeat(64)).is_ok());
        assert!(order_id(&"x".repeat(65)).is_err());
        assert!(order_id("가").is_err());
    }

    #[test]
    fn buyer_fields() {
        assert!(buyer_tel("01012345678").is_ok());
        assert!(buyer_tel("010-1234").is_err());
        assert!(buyer_tel(&"1".repeat(21)).is_err());
        assert!(buyer_name(&"가".repeat(10)).is_ok());
        assert!(buyer_name(&"가".repeat(11)).is_err());
        assert!(buyer_email("a@b.kr").is_ok());
        assert!(buyer_email("").is_ok());
        assert!(buyer_email("ab.kr").is_err());
        assert!(buyer_email(&format!("{}@b.kr", "a".repeat(60))).is_err());
    }

    #[test]
    fn other_fields() {
        assert!(reason(&"a".repeat(100)).is_ok());
        assert!(reason(&"a".repeat(101)).is_err());
        assert!(mall_reserved("{\"a\":1}").is_err());
        assert!(mall_reserved(&"a".repeat(501)).is_err());
        assert!(mall_reserved("").is_ok());
        assert!(order_date("20261205").is_ok());
        assert!(order_date("2026-12-05").is_err());
        assert!(amount("amount", 0).is_err());
        assert!(amount("amount", 1000).is_ok());
    }
}
