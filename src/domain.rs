//! Value types shared by every module: money, NICEPAY identifiers and secrets.
//!
//! Each type validates on construction, so a value that exists is a value NICEPAY accepts in
//! shape. Secrets live in `secrecy` boxes (zeroed on drop); the types holding them print `***`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value was refused. Names the field so that the message can be shown as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// Whether a URL's host is this machine: `localhost`, 127.0.0.0/8 or `::1` (brackets allowed).
/// The one test behind "plain http only to loopback" (NICEPAY, webhooks) and "TLS to any other
/// PostgreSQL host".
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whole Korean won. NICEPAY amounts are at most 12 digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Krw(i64);

impl Krw {
    pub const MAX: i64 = 999_999_999_999;

    pub fn new(value: i64) -> Result<Self, FieldError> {
        if !(0..=Self::MAX).contains(&value) {
            return Err(FieldError::new(
                "amount",
                format!("{value} is outside 0..={} KRW", Self::MAX),
            ));
        }
        Ok(Self(value))
    }

    /// An amount that can be charged or refunded: at least 1 KRW.
    pub fn positive(value: i64) -> Result<Self, FieldError> {
        if value <= 0 {
            return Err(FieldError::new(
                "amount",
                format!("{value} KRW: must be at least 1"),
            ));
        }
        Self::new(value)
    }

    pub fn value(self) -> i64 {
        self.0
    }

    /// Parses digits only (`9900`, or NICEPAY's zero-padded `000000009900`).
    pub fn parse_digits(field: &'static str, text: &str) -> Result<Self, FieldError> {
        let text = text.trim();
        if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(
                field,
                format!("{text:?} is not a whole number of KRW (digits only, at most 12)"),
            ));
        }
        let value: i64 = text
            .parse()
            .map_err(|_| FieldError::new(field, format!("{text:?} is not a number")))?;
        Self::new(value).map_err(|e| FieldError::new(field, e.problem))
    }
}

impl TryFrom<i64> for Krw {
    type Error = FieldError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<Krw> for i64 {
    fn from(k: Krw) -> i64 {
        k.0
    }
}

impl fmt::Display for Krw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Krw {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_digits("amount", s)
    }
}

fn check_ascii_id(
    field: &'static str,
    text: &str,
    min: usize,
    max: usize,
    allowed: impl Fn(u8) -> bool,
) -> Result<(), FieldError> {
    if text.len() < min || text.len() > max {
        let want = if min == max {
            format!("exactly {min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(FieldError::new(
            field,
            format!("{text:?} is {} characters, {want} expected", text.len()),
        ));
    }
    if let Some(c) = text.bytes().find(|b| !allowed(*b)) {
        return Err(FieldError::new(
            field,
            format!("{text:?} contains {:?}, which is not allowed", c as char),
        ));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:expr, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(text: impl Into<String>) -> Result<Self, FieldError> {
                let text = text.into();
                check_ascii_id($field, &text, $min, $max, $allowed)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = FieldError;
            fn try_from(text: String) -> Result<Self, Self::Error> {
                Self::new(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Order ids are merchant-chosen; we keep them to printable ASCII without spaces or form
/// metacharacters so they survive every log, URL and database column unchanged.
fn moid_char(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'%' | b'+' | b'"' | b'\\')
}

string_id!(
    /// Merchant id, 10 characters (`nictest04m`).
    Mid, "MID", 10, 10, alnum
);
string_id!(
    /// Billkey: the card as NICEPAY knows it, up to 30 characters.
    Bid, "BID", 1, 30, alnum
);
string_id!(
    /// Order id chosen by the merchant, at most 64 bytes.
    Moid, "Moid", 1, 64, moid_char
);

/// Transaction id: `MID(10) + "01" + "16" + yyMMddHHmmss + 4 digits`, 30 characters.
///
/// Responses may carry TIDs that NICEPAY made for other pay methods, so only the length and
/// character set are enforced here; [`crate::gateway::nicepay::tid`] builds billing TIDs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tid(String);

impl Tid {
    pub const LEN: usize = 30;

    pub fn new(text: impl Into<String>) -> Result<Self, FieldError> {
        let text = text.into();
        check_ascii_id("TID", &text, Self::LEN, Self::LEN, alnum)?;
        Ok(Self(text))
    }

    /// A tid NICEPAY made and sent us on its REST API (v1): up to [`Tid::LEN`] letters and
    /// digits. The manual gives its length as a maximum, so shorter ones are kept too.
    pub fn issued(text: impl Into<String>) -> Result<Self, FieldError> {
        let text = text.into();
        check_ascii_id("tid", &text, 1, Self::LEN, alnum)?;
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Tid {
    type Error = FieldError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::new(text)
    }
}

impl From<Tid> for String {
    fn from(id: Tid) -> String {
        id.0
    }
}

impl FromStr for Tid {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for Tid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Secrets in memory are `secrecy` boxes: zeroed when dropped, reachable only through
/// [`ExposeSecret::expose_secret`], and never printed by the types that hold them (`***`).
pub use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// The merchant key: an 88-character text, used as text (never base64-decoded).
/// Its first 16 characters are the AES key for `EncData`.
#[derive(Clone)]
pub struct MerchantKey(SecretString);

impl PartialEq for MerchantKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for MerchantKey {}

impl MerchantKey {
    pub fn new(text: impl Into<String>) -> Result<Self, FieldError> {
        let text: String = text.into();
        let text = text.trim().to_owned();
        if !text.is_ascii() {
            return Err(FieldError::new(
                "merchant key",
                "contains non-ASCII characters; copy the key exactly as NICEPAY issued it",
            ));
        }
        if text.len() < 16 {
            return Err(FieldError::new(
                "merchant key",
                format!(
                    "is {} characters long; at least 16 are needed (NICEPAY keys have 88)",
                    text.len()
                ),
            ));
        }
        if text
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(FieldError::new(
                "merchant key",
                "contains white space inside the key",
            ));
        }
        Ok(Self(SecretString::from(text)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The AES-128 key for `EncData`: the first 16 characters as bytes.
    pub fn aes_key(&self) -> zeroize::Zeroizing<[u8; 16]> {
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        key.copy_from_slice(&self.expose().as_bytes()[..16]);
        key
    }
}

impl fmt::Debug for MerchantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MerchantKey(***)")
    }
}

impl fmt::Display for MerchantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Card details for billkey issue. Never stored, never logged: every field is a
/// [`SecretString`] (zeroed when dropped), and the whole prints as `CardDetails(***)`.
#[derive(Clone)]
pub struct CardDetails {
    pub card_no: SecretString,
    pub exp_year: SecretString,
    pub exp_month: SecretString,
    pub id_no: SecretString,
    pub card_pw: SecretString,
}

impl fmt::Debug for CardDetails {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardDetails(***)")
    }
}

impl CardDetails {
    /// Validates the shapes NICEPAY expects; errors name the field, never echo the value.
    pub fn new(
        card_no: &str,
        exp_year: &str,
        exp_month: &str,
        id_no: &str,
        card_pw: &str,
    ) -> Result<Self, FieldError> {
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        // Moved into its SecretString below, which zeroes it when dropped.
        let card_no: String = card_no.chars().filter(|c| *c != ' ' && *c != '-').collect();
        // NICEPAY's limit, chosen in `gateway::nicepay::limits`.
        let range = crate::gateway::nicepay::limits::CARD_NO_DIGITS;
        if !range.contains(&card_no.len()) || !digits(&card_no) {
            return Err(FieldError::new(
                "CardNo",
                format!("must be {} to {} digits", range.start(), range.end()),
            ));
        }
        if exp_year.len() != 2 || !digits(exp_year) {
            return Err(FieldError::new("ExpYear", "must be two digits (YY)"));
        }
        let month_ok = exp_month.len() == 2
            && digits(exp_month)
            && (1..=12).contains(&exp_month.parse::<u8>().unwrap_or(0));
        if !month_ok {
            return Err(FieldError::new(
                "ExpMonth",
                "must be two digits 01 to 12 (MM)",
            ));
        }
        if !(id_no.is_empty() || id_no.len() == 6 || id_no.len() == 10) || !digits(id_no) {
            return Err(FieldError::new(
                "IDNo",
                "must be empty, a birth date YYMMDD (6 digits) or a business number (10 digits)",
            ));
        }
        if !(card_pw.is_empty() || card_pw.len() == 2) || !digits(card_pw) {
            return Err(FieldError::new(
                "CardPw",
                "must be empty or the first 2 digits of the card PIN",
            ));
        }
        Ok(Self {
            card_no: SecretString::from(card_no),
            exp_year: SecretString::from(exp_year),
            exp_month: SecretString::from(exp_month),
            id_no: SecretString::from(id_no),
            card_pw: SecretString::from(card_pw),
        })
    }

    /// Parses `key=value` lines (`CardNo=`, `ExpYear=`, `ExpMonth=`, `IDNo=`, `CardPw=`).
    /// Blank lines and `#` comments are skipped; unknown keys are refused.
    pub fn from_lines(text: &str) -> Result<Self, FieldError> {
        let mut values: [Option<zeroize::Zeroizing<String>>; 5] = Default::default();
        const KEYS: [&str; 5] = ["CardNo", "ExpYear", "ExpMonth", "IDNo", "CardPw"];
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(FieldError::new(
                    "card input",
                    "every line must be key=value (CardNo=, ExpYear=, ExpMonth=, IDNo=, CardPw=)",
                ));
            };
            let key = key.trim();
            let Some(i) = KEYS.iter().position(|k| k.eq_ignore_ascii_case(key)) else {
                return Err(FieldError::new(
                    "card input",
                    format!(
                        "unknown key {key:?}; expected CardNo, ExpYear, ExpMonth, IDNo, CardPw"
                    ),
                ));
            };
            values[i] = Some(zeroize::Zeroizing::new(value.trim().to_owned()));
        }
        let [card_no, exp_year, exp_month, id_no, card_pw] = values;
        let card_no = card_no.ok_or_else(|| FieldError::new("CardNo", "is missing"))?;
        let exp_year = exp_year.ok_or_else(|| FieldError::new("ExpYear", "is missing"))?;
        let exp_month = exp_month.ok_or_else(|| FieldError::new("ExpMonth", "is missing"))?;
        Self::new(
            &card_no,
            &exp_year,
            &exp_month,
            id_no.as_ref().map_or("", |v| v.as_str()),
            card_pw.as_ref().map_or("", |v| v.as_str()),
        )
    }

    /// The plaintext NICEPAY encrypts into `EncData`.
    pub(crate) fn enc_plaintext(&self) -> SecretString {
        SecretString::from(format!(
            "CardNo={}&ExpYear={}&ExpMonth={}&IDNo={}&CardPw={}",
            self.card_no.expose_secret(),
            self.exp_year.expose_secret(),
            self.exp_month.expose_secret(),
            self.id_no.expose_secret(),
            self.card_pw.expose_secret()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krw_parses_padded_and_refuses_junk() {
        assert_eq!(
            Krw::parse_digits("Amt", "000000009900").unwrap().value(),
            9900
        );
        assert_eq!(Krw::parse_digits("Amt", "1004").unwrap().value(), 1004);
        for bad in ["", "-1", "9.9", "1e3", "0000000000001", " ", "12a"] {
            let err = Krw::parse_digits("Amt", bad).unwrap_err();
            assert_eq!(err.field, "Amt", "{bad:?}");
        }
        assert!(Krw::positive(0).is_err());
        assert!(Krw::positive(1).is_ok());
    }

    #[test]
    fn ids_check_shape() {
        assert!(Mid::new("nictest04m").is_ok());
        assert!(Mid::new("short").is_err());
        assert!(Tid::new("nictest04m01162612250900001234").is_ok());
        assert!(Tid::new("nictest04m0116261225090000123").is_err());
        assert!(Bid::new("").is_err());
        assert!(Bid::new("BIKYnictest04m2611251200001234").is_ok());
        assert!(Moid::new("S17-C3-A2").is_ok());
        assert!(Moid::new("a&b").is_err());
        assert!(Moid::new("x".repeat(65)).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let key = MerchantKey::new("b+zhZ4yOZ7FsH8pm5lhDfHZEb79tIwnjsdA0FBXh86y").unwrap();
        assert!(!format!("{key:?}{key}").contains("b+zh"));
        let card = CardDetails::new("1234567890123456", "25", "12", "800101", "12").unwrap();
        let shown = format!("{card:?}");
        assert!(!shown.contains("1234567890123456") && !shown.contains("800101"));
        assert_eq!(
            (format!("{key:?}"), format!("{key}"), shown),
            (
                "MerchantKey(***)".into(),
                "***".into(),
                "CardDetails(***)".into()
            )
        );
        // A secret field on its own prints no value either (secrecy's own Debug).
        assert!(!format!("{:?}", card.card_no).contains("1234"));
        assert!(MerchantKey::new("tooshort").is_err());
    }

    #[test]
    fn card_lines() {
        let card = CardDetails::from_lines(
            "CardNo=1234 5678 9012 3456\nExpYear=25\nExpMonth=12\n\nIDNo=800101\nCardPw=12\n",
        )
        .unwrap();
        assert_eq!(
            card.enc_plaintext().expose_secret(),
            "CardNo=1234567890123456&ExpYear=25&ExpMonth=12&IDNo=800101&CardPw=12"
        );
        assert_eq!(
            CardDetails::from_lines("CardNo=1\nExpYear=25\nExpMonth=12")
                .unwrap_err()
                .field,
            "CardNo"
        );
        assert_eq!(
            CardDetails::from_lines("CardNo=1234567890123456\nExpYear=25\nExpMonth=13")
                .unwrap_err()
                .field,
            "ExpMonth"
        );
        assert!(CardDetails::from_lines("Cvc=123").is_err());
    }
}
