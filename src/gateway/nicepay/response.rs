//! Response bodies: JSON or `Key=Value&…`, in EUC-KR or UTF-8.
//!
//! The format is recognised from the body itself and the charset from the `Content-Type`
//! header, falling back to what was asked for and then to the other one, because the fields
//! that matter (codes, ids, amounts) are ASCII either way. Never panics on any input.

use std::collections::BTreeMap;

use super::Charset;
use crate::domain::{FieldError, Krw};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty response body")]
    Empty,
    #[error("response body is neither EUC-KR nor UTF-8 text")]
    NotText,
    #[error("response body is not a JSON object: {0}")]
    BadJson(String),
    #[error("response body is neither JSON nor Key=Value text")]
    UnknownFormat,
    #[error("response has no {0}")]
    Missing(&'static str),
    #[error("response field {0}")]
    Invalid(#[from] FieldError),
}

/// The fields of one response, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(BTreeMap<String, String>);

impl Fields {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A field that must be present and non-empty.
    pub fn require(&self, name: &'static str) -> Result<&str, ParseError> {
        match self.get(name) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim()),
            _ => Err(ParseError::Missing(name)),
        }
    }

    /// A non-empty field, or `None`.
    pub fn opt(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    /// A zero-padded amount (`000000009900`).
    pub fn amount(&self, name: &'static str) -> Result<Krw, ParseError> {
        Ok(Krw::parse_digits(name, self.require(name)?)?)
    }

    pub fn result_code(&self) -> Result<&str, ParseError> {
        self.require("ResultCode")
    }

    pub fn result_msg(&self) -> String {
        self.opt("ResultMsg").unwrap_or_default()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Fields as given (the client's tests build answers with it).
    #[cfg(test)]
    pub(crate) fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Fields from any answer already read into a map (v1's JSON answers, flattened).
    pub fn from_map(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }

    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }
}

/// The charset named in a `Content-Type` header value, if any.
pub fn charset_of_content_type(value: &str) -> Option<Charset> {
    value.split(';').skip(1).find_map(|param| {
        let (name, v) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("charset") {
            Charset::parse(v.trim().trim_matches('"'))
        } else {
            None
        }
    })
}

fn decode_text(bytes: &[u8], first: Charset) -> Option<String> {
    let second = match first {
        Charset::EucKr => Charset::Utf8,
        Charset::Utf8 => Charset::EucKr,
    };
    [first, second].into_iter().find_map(|cs| {
        cs.encoding()
            .decode_without_bom_handling_and_without_replacement(bytes)
            .map(std::borrow::Cow::into_owned)
    })
}

/// The most of an answer body the client reads (64 KiB): NICEPAY's answers are well under
/// 2 KiB, so a longer one is not an answer we can trust, and reading it whole would let a
/// broken proxy fill memory. A longer body is a transport failure of class `Unknown`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The most characters of a `ResultMsg` kept (stored, logged, printed): NICEPAY's messages are
/// short sentences; anything longer is cut here, on a character boundary, and nowhere else.
pub const MAX_RESULT_MSG_CHARS: usize = 200;

/// `text` cut to at most `max` characters (never inside a character).
pub fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Parses a response body; `charset` is the header's charset or the one asked for. A
/// `ResultMsg` over [`MAX_RESULT_MSG_CHARS`] is cut to that many characters.
pub fn parse(body: &[u8], charset: Charset) -> Result<Fields, ParseError> {
    let mut fields = parse_any(body, charset)?;
    if let Some(msg) = fields.0.get_mut("ResultMsg") {
        let cut = truncate_chars(msg, MAX_RESULT_MSG_CHARS).len();
        msg.truncate(cut);
    }
    Ok(fields)
}

fn parse_any(body: &[u8], charset: Charset) -> Result<Fields, ParseError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .ok_or(ParseError::Empty)?;
    let body = body[start..]
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(&body[start..]);
    if body.first() == Some(&b'{') {
        parse_json(body, charset)
    } else {
        parse_kv(body, charset)
    }
}

fn parse_json(body: &[u8], charset: Charset) -> Result<Fields, ParseError> {
    let text = decode_text(body, charset).ok_or(ParseError::NotText)?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ParseError::BadJson(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ParseError::BadJson("not an object".into()));
    };
    let mut fields = BTreeMap::new();
    for (name, value) in map {
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            // Nested values and nulls carry nothing nicebill reads.
            serde_json::Value::Null
            | serde_json::Value::Array(_)
            | serde_json::Value::Object(_) => continue,
        };
        fields.insert(name, text);
    }
    Ok(Fields(fields))
}

fn parse_kv(body: &[u8], charset: Charset) -> Result<Fields, ParseError> {
    let mut fields = BTreeMap::new();
    for pair in body
        .split(|b| *b == b'&')
        .map(|p| p.trim_ascii())
        .filter(|p| !p.is_empty())
    {
        let Some(eq) = pair.iter().position(|b| *b == b'=') else {
            return Err(ParseError::UnknownFormat);
        };
        let name = super::form::decode_component(&pair[..eq]);
        let name = match String::from_utf8(name) {
            Ok(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
                n
            }
            _ => return Err(ParseError::UnknownFormat),
        };
        let value = decode_text(&super::form::decode_component(&pair[eq + 1..]), charset)
            .ok_or(ParseError::NotText)?;
        fields.insert(name, value);
    }
    if fields.is_empty() {
        return Err(ParseError::UnknownFormat);
    }
    Ok(Fields(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &[u8], charset: Charset, want: &[(&str, &str)]) {
        let fields = parse(body, charset).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        for (k, v) in want {
            assert_eq!(fields.get(k), Some(*v), "{k} in {body:?}");
        }
    }

    #[test]
    fn json_and_kv_in_both_charsets() {
        let euc = encoding_rs::EUC_KR.encode("{\"ResultCode\":\"3001\",\"ResultMsg\":\"카드 결제 성공\",\"Amt\":\"000000009900\"}").0;
        check(
            &euc,
            Charset::EucKr,
            &[("ResultCode", "3001"), ("ResultMsg", "카드 결제 성공")],
        );
        // A UTF-8 body parses even when EUC-KR was asked for.
        check(
            "{\"ResultCode\":\"3001\",\"ResultMsg\":\"카드 결제 성공\",\"Amt\":9900}".as_bytes(),
            Charset::EucKr,
            &[("ResultMsg", "카드 결제 성공"), ("Amt", "9900")],
        );
        check(
            b"ResultCode=3001&ResultMsg=%C4%AB%B5%E5+%B0%E1%C1%A6&Amt=000000009900",
            Charset::EucKr,
            &[("ResultMsg", "카드 결제"), ("Amt", "000000009900")],
        );
        check(
            "ResultCode=F100&ResultMsg=빌키 발급 성공\r\n".as_bytes(),
            Charset::Utf8,
            &[("ResultCode", "F100"), ("ResultMsg", "빌키 발급 성공")],
        );
        let fields = parse(b"ResultCode=3001&Amt=000000009900", Charset::Utf8).unwrap();
        assert_eq!(fields.amount("Amt").unwrap().value(), 9900);
    }

    #[test]
    fn refuses_what_is_not_an_answer() {
        assert_eq!(parse(b"", Charset::Utf8), Err(ParseError::Empty));
        assert_eq!(parse(b"  \n ", Charset::Utf8), Err(ParseError::Empty));
        assert!(matches!(
            parse(b"{\"ResultCode\":", Charset::Utf8),
            Err(ParseError::BadJson(_))
        ));
        assert!(matches!(
            parse(b"<html>502 Bad Gateway</html>", Charset::Utf8),
            Err(ParseError::UnknownFormat)
        ));
        assert!(matches!(
            parse(b"[1,2]", Charset::Utf8),
            Err(ParseError::UnknownFormat)
        ));
        let fields = parse(b"{\"ResultMsg\":\"x\"}", Charset::Utf8).unwrap();
        assert_eq!(fields.result_code(), Err(ParseError::Missing("ResultCode")));
    }

    #[test]
    fn long_result_messages_are_cut_on_a_character_boundary() {
        let long = format!("잔액부족{}", "가나".repeat(248));
        assert_eq!(long.chars().count(), 500);
        for charset in [Charset::EucKr, Charset::Utf8] {
            let json = format!("{{\"ResultCode\":\"3095\",\"ResultMsg\":\"{long}\"}}");
            let body = charset.encoding().encode(&json).0;
            let msg = parse(&body, charset).unwrap().result_msg();
            assert_eq!(msg.chars().count(), MAX_RESULT_MSG_CHARS, "{charset:?}");
            assert!(long.starts_with(&msg), "{charset:?}");
        }
        assert_eq!(truncate_chars("한글", 1), "한");
        assert_eq!(truncate_chars("ab", 5), "ab");
        assert_eq!(truncate_chars("", 0), "");
    }
}
