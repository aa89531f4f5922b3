//! The shop's two v1 keys. The secret key is used as text (never hex-decoded): it keys the
//! encData cipher, ends every signData and answer signature, and is half of the Basic header.

use std::fmt;

use crate::domain::{ExposeSecret, FieldError, SecretString};

/// The client key: 32 hex characters, in newer shops behind a prefix such as `S2_` or `R1_`.
/// Not a secret on its own (it names the shop), but it is half of the Basic credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKey(String);

impl ClientKey {
    pub fn new(text: impl Into<String>) -> Result<Self, FieldError> {
        let text = text.into().trim().to_owned();
        if text.is_empty() {
            return Err(FieldError::new("client_key", "is empty"));
        }
        if text.len() > 64 {
            return Err(FieldError::new(
                "client_key",
                format!("is {} characters long; NICEPAY's have 32 to 35", text.len()),
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(FieldError::new(
                "client_key",
                "may hold only letters, digits and '_' (copy it exactly from the console's 개발정보)",
            ));
        }
        Ok(Self(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({})", self.0)
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The secret key: 32 characters of printable ASCII (lower-case hex in every key seen). Its
/// first 16 bytes are the AES-128 key and the A2 IV; all 32 are the AES-256 key.
#[derive(Clone)]
pub struct SecretKey(SecretString);

impl SecretKey {
    pub const LEN: usize = 32;

    pub fn new(text: impl Into<String>) -> Result<Self, FieldError> {
        let text: String = text.into();
        let text = text.trim();
        if !text.is_ascii()
            || text
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(FieldError::new(
                "secret key",
                "holds characters that are not printable ASCII; copy the key exactly as issued",
            ));
        }
        if text.len() != Self::LEN {
            return Err(FieldError::new(
                "secret key",
                format!(
                    "is {} characters long; NICEPAY v1 secret keys have {}",
                    text.len(),
                    Self::LEN
                ),
            ));
        }
        Ok(Self(SecretString::from(text.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The AES-128-ECB key (and the A2 IV): the first 16 characters as bytes.
    pub fn first16(&self) -> zeroize::Zeroizing<[u8; 16]> {
        let mut key = zeroize::Zeroizing::new([0u8; 16]);
        key.copy_from_slice(&self.expose().as_bytes()[..16]);
        key
    }

    /// The A2 (AES-256-CBC) key: all 32 characters as bytes.
    pub fn all32(&self) -> zeroize::Zeroizing<[u8; 32]> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        key.copy_from_slice(self.expose().as_bytes());
        key
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for SecretKey {}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_the_secret_never_printed() {
        let secret = SecretKey::new("4f13ca267dfa4fc6964148bedcda15ef").unwrap();
        assert_eq!(format!("{secret:?} {secret}"), "SecretKey(***) ***");
        assert_eq!(&*secret.first16(), b"4f13ca267dfa4fc6");
        assert!(
            SecretKey::new("short")
                .unwrap_err()
                .to_string()
                .contains("32")
        );
        assert!(SecretKey::new("4f13ca267dfa4fc6 964148bedcda15e").is_err());
        assert!(ClientKey::new("S2_af4543a0be4d49a98122e01ec2059a56").is_ok());
        assert!(
            ClientKey::new("S2:af45")
                .unwrap_err()
                .to_string()
                .contains("client_key")
        );
        assert!(ClientKey::new("").is_err());
    }
}
