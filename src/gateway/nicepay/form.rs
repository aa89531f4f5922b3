//! Request bodies: `application/x-www-form-urlencoded`, percent-encoded from **EUC-KR** bytes.
//!
//! reqwest's `.form()` encodes UTF-8, which NICEPAY would read as mojibake, so bodies are built
//! here. Byte limits are EUC-KR bytes (a Hangul syllable is two), checked before sending; text
//! EUC-KR cannot represent is refused with an error naming the field.
//!
//! "EUC-KR" means strict KS X 1001 here. encoding_rs's EUC-KR encoder is CP949 (WHATWG): it
//! also encodes the 8,822 Hangul syllables KS X 1001 lacks (`똠` → `8C 63`) with a lead or
//! trail byte below `0xA1`. NICEPAY decodes strict EUC-KR and would garble them, so every
//! encoded pair must have both bytes in `0xA1..=0xFE` (ASCII single bytes aside).

use std::borrow::Cow;

use encoding_rs::EUC_KR;

use crate::domain::FieldError;

/// Whether EUC-KR bytes (as encoding_rs makes them) stay inside KS X 1001: ASCII single bytes,
/// and pairs whose lead and trail bytes are both `0xA1..=0xFE`.
pub fn is_ks_x_1001(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] < 0x80 {
            i += 1;
            continue;
        }
        match bytes.get(i..i + 2) {
            Some([lead, trail])
                if (0xA1..=0xFE).contains(lead) && (0xA1..=0xFE).contains(trail) =>
            {
                i += 2
            }
            _ => return false,
        }
    }
    true
}

/// Encodes `text` as strict EUC-KR (KS X 1001), refusing characters it cannot represent
/// (CP949's extra Hangul included) and control characters.
pub fn euc_kr<'a>(field: &'static str, text: &'a str) -> Result<Cow<'a, [u8]>, FieldError> {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(FieldError::new(
            field,
            format!("contains the control character {c:?}"),
        ));
    }
    let (bytes, _, unmappable) = EUC_KR.encode(text);
    if unmappable {
        let bad = text
            .chars()
            .find(|c| EUC_KR.encode(c.encode_utf8(&mut [0; 4])).2)
            .unwrap_or('\u{FFFD}');
        return Err(FieldError::new(
            field,
            format!(
                "{bad:?} (U+{:04X}) cannot be represented in EUC-KR; remove it or use Korean/ASCII text",
                bad as u32
            ),
        ));
    }
    if !is_ks_x_1001(&bytes) {
        let bad = text
            .chars()
            .find(|c| !is_ks_x_1001(&EUC_KR.encode(c.encode_utf8(&mut [0; 4])).0))
            .unwrap_or('\u{FFFD}');
        return Err(FieldError::new(
            field,
            format!(
                "{bad:?} (U+{:04X}) is outside KS X 1001 (strict EUC-KR), which NICEPAY decodes; it would arrive garbled. Use another word or spelling",
                bad as u32
            ),
        ));
    }
    Ok(bytes)
}

/// Encodes and checks the EUC-KR byte length of `text`.
pub fn euc_kr_limited<'a>(
    field: &'static str,
    text: &'a str,
    max_bytes: usize,
) -> Result<Cow<'a, [u8]>, FieldError> {
    let bytes = euc_kr(field, text)?;
    if bytes.len() > max_bytes {
        return Err(FieldError::new(
            field,
            format!(
                "is {} EUC-KR bytes, at most {max_bytes} allowed (a Hangul syllable counts 2)",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Builds a form body field by field.
#[derive(Debug, Default)]
pub struct FormBuilder {
    body: String,
}

impl FormBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name=value`, encoding `value` as EUC-KR within `max_bytes`.
    pub fn field(
        &mut self,
        name: &'static str,
        value: &str,
        max_bytes: usize,
    ) -> Result<&mut Self, FieldError> {
        let bytes = euc_kr_limited(name, value, max_bytes)?;
        if !self.body.is_empty() {
            self.body.push('&');
        }
        self.body.push_str(name);
        self.body.push('=');
        self.body.extend(form_urlencoded::byte_serialize(&bytes));
        Ok(self)
    }

    /// Adds the field only when there is a value.
    pub fn optional(
        &mut self,
        name: &'static str,
        value: Option<&str>,
        max_bytes: usize,
    ) -> Result<&mut Self, FieldError> {
        match value {
            Some(v) => self.field(name, v, max_bytes),
            None => Ok(self),
        }
    }

    pub fn finish(self) -> String {
        self.body
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("field {0:?} appears more than once")]
    Duplicate(String),
    #[error("field name {0:?} is not ASCII")]
    BadName(String),
    #[error("field {0}: bytes are not valid EUC-KR")]
    BadText(String),
}

/// Decodes a form body whose percent-encoded bytes are EUC-KR (what NICEPAY receives).
/// Never panics; duplicate fields are refused rather than guessed at.
pub fn decode(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (name, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let name = decode_component(name);
        let name = match std::str::from_utf8(&name) {
            Ok(n) if n.is_ascii() => n.to_owned(),
            _ => {
                return Err(FormError::BadName(
                    String::from_utf8_lossy(&name).into_owned(),
                ));
            }
        };
        let raw = decode_component(value);
        let value = EUC_KR
            .decode_without_bom_handling_and_without_replacement(&raw)
            .ok_or_else(|| FormError::BadText(name.clone()))?
            .into_owned();
        if out.iter().any(|(n, _)| *n == name) {
            return Err(FormError::Duplicate(name));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// Percent-decodes one form component (`+` is a space) into raw bytes.
pub(super) fn decode_component(raw: &[u8]) -> Vec<u8> {
    let plus_as_space: Vec<u8> = raw
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_encoding::percent_decode(&plus_as_space).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unrepresentable_and_long_text() {
        let err = euc_kr("GoodsName", "구독 🎉").unwrap_err();
        assert_eq!(err.field, "GoodsName");
        assert!(err.problem.contains("U+1F389"), "{err}");
        let err = euc_kr_limited("GoodsName", &"가".repeat(21), 40).unwrap_err();
        assert!(err.problem.contains("42 EUC-KR bytes"), "{err}");
        assert!(euc_kr_limited("GoodsName", &"가".repeat(20), 40).is_ok());
        assert!(euc_kr("GoodsName", "a\nb").is_err());
    }

    #[test]
    fn refuses_what_ks_x_1001_lacks() {
        // CP949-only syllables: encoding_rs encodes them, NICEPAY would garble them.
        for (c, bytes) in [
            ('똠', [0x8C, 0x63]),
            ('햏', [0xC1, 0x64]),
            ('뷁', [0x94, 0xEE]),
            ('쀍', [0x97, 0xCD]),
        ] {
            let text = c.to_string();
            let (encoded, _, unmappable) = EUC_KR.encode(&text);
            assert!(!unmappable, "{c}");
            assert_eq!(&encoded[..], &bytes[..], "{c}");
            for field in ["GoodsName", "BuyerName", "CancelMsg"] {
                let err = euc_kr(field, &format!("월간 {c} 구독")).unwrap_err();
                assert_eq!(err.field, field);
                assert!(
                    err.problem.contains(&format!("U+{:04X}", c as u32)),
                    "{err}"
                );
                assert!(err.problem.contains("KS X 1001"), "{err}");
            }
        }
        for ok in [
            "가",
            "한글",
            "漢字",
            "ＡＢＣ",
            "월간 구독 (프리미엄)",
            "plain ASCII ~",
        ] {
            let bytes = euc_kr("GoodsName", ok).unwrap();
            assert!(is_ks_x_1001(&bytes), "{ok}");
        }
        assert!(!is_ks_x_1001(&[0xB0]), "a lone lead byte");
        assert!(!is_ks_x_1001(&[0xB0, 0x41]), "an ASCII trail byte");
        assert!(is_ks_x_1001(&[0xB0, 0xA1, 0x41]));
    }

    #[test]
    fn round_trips_through_decode() {
        let mut form = FormBuilder::new();
        form.field("GoodsName", "월간 구독 (프리미엄)", 40).unwrap();
        form.field("Moid", "S1-C2-A3", 64).unwrap();
        let body = form.finish();
        assert_eq!(
            decode(body.as_bytes()).unwrap(),
            vec![
                ("GoodsName".to_owned(), "월간 구독 (프리미엄)".to_owned()),
                ("Moid".to_owned(), "S1-C2-A3".to_owned())
            ]
        );
        assert!(matches!(decode(b"a=1&a=2"), Err(FormError::Duplicate(_))));
        assert!(matches!(decode(b"a=%FF%FF"), Err(FormError::BadText(_))));
    }
}
