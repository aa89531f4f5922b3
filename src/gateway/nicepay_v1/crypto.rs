//! v1's formulas: the Basic credentials, `signData` on requests, `signature` on answers,
//! `encData` in both modes, and the `ediDate`/`orderDate` shapes. All pure.

use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit, block_padding::Pkcs7};
use base64::Engine as _;
use chrono::{DateTime, FixedOffset, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::keys::{ClientKey, SecretKey};
use crate::domain::{ExposeSecret, SecretSlice, SecretString};

type Aes128EcbEnc = ecb::Encryptor<aes::Aes128>;
type Aes128EcbDec = ecb::Decryptor<aes::Aes128>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// `Authorization: Basic base64(clientKey:secretKey)` (standard alphabet, padded). The whole
/// header value is a secret.
pub fn basic_authorization(client: &ClientKey, secret: &SecretKey) -> SecretString {
    let joined = zeroize::Zeroizing::new(format!("{}:{}", client.as_str(), secret.expose()));
    SecretString::from(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(joined.as_bytes())
    ))
}

/// `signData`: lower-case hex of SHA-256 over the plain concatenation of `parts`, then the
/// secret key as text.
pub fn sign_data(parts: &[&str], secret: &SecretKey) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
    }
    hash.update(secret.expose().as_bytes());
    hex::encode(hash.finalize())
}

/// An answer's `signature`: `hex(sha256(tid + amount + ediDate + SecretKey))`, from the
/// answer's own `tid`, `amount` (plain decimal) and `ediDate` (byte for byte).
pub fn answer_signature(tid: &str, amount: i64, edi_date: &str, secret: &SecretKey) -> String {
    sign_data(&[tid, &amount.to_string(), edi_date], secret)
}

/// Whether `received` is the signature of (`tid`, `amount`, `ediDate`), compared in constant
/// time. Hex case is not significant; anything that is not 64 hex characters fails.
pub fn signature_verifies(
    received: &str,
    tid: &str,
    amount: i64,
    edi_date: &str,
    secret: &SecretKey,
) -> bool {
    let expected = answer_signature(tid, amount, edi_date, secret);
    let received = received.to_ascii_lowercase();
    received.len() == expected.len() && bool::from(received.as_bytes().ct_eq(expected.as_bytes()))
}

/// `encMode`: how `encData` is enciphered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EncMode {
    /// No `encMode` field: AES-128-ECB keyed by the secret key's first 16 characters.
    Aes128Ecb,
    /// `encMode: "A2"`: AES-256-CBC keyed by all 32 characters, IV = the first 16. What we
    /// send (the path every NICEPAY sample takes).
    #[default]
    A2,
}

impl EncMode {
    /// The `encMode` field's value; `None` = leave the field out.
    pub fn wire(self) -> Option<&'static str> {
        match self {
            EncMode::Aes128Ecb => None,
            EncMode::A2 => Some("A2"),
        }
    }

    /// Reads the `encMode` field as sent (absent = AES-128-ECB). `None` for an undocumented mode.
    pub fn from_wire(value: Option<&str>) -> Option<EncMode> {
        match value {
            None | Some("") => Some(EncMode::Aes128Ecb),
            Some("A2") => Some(EncMode::A2),
            Some(_) => None,
        }
    }
}

/// The `encData` plaintext, in the manual's order and keys, ASCII, not URL-encoded.
pub fn card_plaintext(
    card_no: &str,
    exp_year: &str,
    exp_month: &str,
    id_no: &str,
    card_pw: &str,
) -> SecretString {
    SecretString::from(format!(
        "cardNo={card_no}&expYear={exp_year}&expMonth={exp_month}&idNo={id_no}&cardPw={card_pw}"
    ))
}

/// Enciphers `plain` into lower-case hex.
pub fn encrypt(plain: &SecretString, mode: EncMode, secret: &SecretKey) -> String {
    let bytes = plain.expose_secret().as_bytes();
    let out = match mode {
        EncMode::Aes128Ecb => {
            Aes128EcbEnc::new(&(*secret.first16()).into()).encrypt_padded_vec::<Pkcs7>(bytes)
        }
        EncMode::A2 => Aes256CbcEnc::new(&(*secret.all32()).into(), &(*secret.first16()).into())
            .encrypt_padded_vec::<Pkcs7>(bytes),
    };
    hex::encode(out)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecryptError {
    #[error("encData is not hexadecimal")]
    NotHex,
    #[error("encData is not a whole number of AES blocks")]
    BadLength,
    #[error("encData does not decipher under this key and encMode (bad padding)")]
    BadPadding,
}

/// Deciphers hex `encData` (either case). The simulator's half.
pub fn decrypt(
    enc_hex: &str,
    mode: EncMode,
    secret: &SecretKey,
) -> Result<SecretSlice<u8>, DecryptError> {
    let bytes = hex::decode(enc_hex).map_err(|_| DecryptError::NotHex)?;
    if bytes.is_empty() || bytes.len() % 16 != 0 {
        return Err(DecryptError::BadLength);
    }
    let plain = match mode {
        EncMode::Aes128Ecb => {
            Aes128EcbDec::new(&(*secret.first16()).into()).decrypt_padded_vec::<Pkcs7>(&bytes)
        }
        EncMode::A2 => Aes256CbcDec::new(&(*secret.all32()).into(), &(*secret.first16()).into())
            .decrypt_padded_vec::<Pkcs7>(&bytes),
    };
    plain
        .map(SecretSlice::from)
        .map_err(|_| DecryptError::BadPadding)
}

fn kst() -> FixedOffset {
    FixedOffset::east_opt(9 * 3600).expect("+09:00 is a valid offset")
}

/// `ediDate` in NICEPAY's own answer shape: Korea time, milliseconds, colon-less offset
/// (`2026-12-25T09:00:00.000+0900`).
pub fn edi_date(at: DateTime<Utc>) -> String {
    at.with_timezone(&kst())
        .format("%Y-%m-%dT%H:%M:%S%.3f%z")
        .to_string()
}

/// `orderDate` for a lookup by orderId: the Korean calendar date, `YYYYMMDD`.
pub fn order_date(at: DateTime<Utc>) -> String {
    at.with_timezone(&kst()).format("%Y%m%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tampered_or_malformed_signature_never_verifies() {
        let secret = SecretKey::new("4f13ca267dfa4fc6964148bedcda15ef").unwrap();
        let good = answer_signature("T1", 9900, "2026-12-25T09:00:01.234+0900", &secret);
        let e = "2026-12-25T09:00:01.234+0900";
        assert!(signature_verifies(&good, "T1", 9900, e, &secret));
        assert!(signature_verifies(
            &good.to_uppercase(),
            "T1",
            9900,
            e,
            &secret
        ));
        assert!(!signature_verifies(&good, "T1", 990, e, &secret));
        assert!(!signature_verifies(&good[..63], "T1", 9900, e, &secret));
        assert!(!signature_verifies("", "T1", 9900, e, &secret));
    }

    #[test]
    fn the_wrong_mode_or_key_does_not_decipher_silently() {
        let secret = SecretKey::new("2dcc2a0d63bf469490bb19a201be3735").unwrap();
        let other = SecretKey::new("4f13ca267dfa4fc6964148bedcda15ef").unwrap();
        let plain = card_plaintext("1234567890123456", "25", "12", "800101", "12");
        let enc = encrypt(&plain, EncMode::A2, &secret);
        let back = decrypt(&enc, EncMode::A2, &secret).unwrap();
        assert_eq!(back.expose_secret(), plain.expose_secret().as_bytes());
        assert!(
            decrypt(&enc, EncMode::A2, &other).is_err() || {
                decrypt(&enc, EncMode::A2, &other).unwrap().expose_secret()
                    != plain.expose_secret().as_bytes()
            }
        );
        assert_eq!(
            decrypt("zz", EncMode::A2, &secret).err(),
            Some(DecryptError::NotHex)
        );
        assert_eq!(
            decrypt("00ff", EncMode::A2, &secret).err(),
            Some(DecryptError::BadLength)
        );
    }
}
