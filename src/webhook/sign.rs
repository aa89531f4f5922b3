//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): the secret is `whsec_`
//! and the base64 of its key bytes; a delivery is signed with HMAC-SHA256 over
//! `{webhook-id}.{webhook-timestamp}.{body}`, sent as `v1,` and the base64 of the MAC.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{KeyInit, Mac};

use crate::domain::{ExposeSecret, FieldError, SecretSlice};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The signing secret. Its key bytes are zeroed when dropped and never printed.
#[derive(Clone)]
pub struct WebhookSecret(SecretSlice<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

/// The key sizes the specification allows (24 to 64 bytes).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

impl WebhookSecret {
    /// `whsec_` followed by base64 (standard alphabet, padded) of 24 to 64 random bytes.
    /// Errors never quote the text.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let field = "webhook secret";
        let Some(b64) = text.trim().strip_prefix("whsec_") else {
            return Err(FieldError::new(field, "must start with whsec_"));
        };
        let key = STANDARD
            .decode(b64)
            .map_err(|_| FieldError::new(field, "is not base64 after whsec_"))?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(FieldError::new(
                field,
                format!(
                    "holds {} key bytes; 24 to 64 are needed (e.g. `openssl rand -base64 32`)",
                    key.len()
                ),
            ));
        }
        Ok(Self(SecretSlice::from(key)))
    }

    /// `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = match HmacSha256::new_from_slice(self.0.expose_secret()) {
            Ok(mac) => mac,
            // HMAC takes keys of any length; `parse` bounds them anyway.
            Err(_) => unreachable!("HMAC accepts every key length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own test vector (its Python library's `test_sign_function`).
    #[test]
    fn the_specifications_vector() {
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            secret.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn bad_secrets_are_refused_without_quoting_them() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
            "whsec_",
        ] {
            let e = WebhookSecret::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("webhook secret: "), "{e}");
            assert!(!e.contains("MfKQ") && !e.contains("c2hv"), "{e}");
        }
        let s = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(format!("{s:?}"), "WebhookSecret(***)");
    }
}
