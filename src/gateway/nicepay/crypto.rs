//! `EncData` for billkey issue: AES-128-ECB with PKCS#7 padding, keyed by the first 16
//! characters of the merchant key, hex encoded.

use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyInit, block_padding::Pkcs7};

use crate::domain::{ExposeSecret, MerchantKey, SecretSlice, SecretString};

type Aes128EcbEnc = ecb::Encryptor<aes::Aes128>;
type Aes128EcbDec = ecb::Decryptor<aes::Aes128>;

/// Encrypts `plain` into upper-case hex (NICEPAY accepts either case).
pub fn encrypt(plain: &SecretString, key: &MerchantKey) -> String {
    let cipher = Aes128EcbEnc::new(&(*key.aes_key()).into());
    hex::encode_upper(cipher.encrypt_padded_vec::<Pkcs7>(plain.expose_secret().as_bytes()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecryptError {
    #[error("EncData is not hexadecimal")]
    NotHex,
    #[error("EncData is not a whole number of AES blocks")]
    BadLength,
    #[error("EncData does not decrypt under this merchant's key (bad padding)")]
    BadPadding,
}

/// Decrypts hex `EncData` (either case). Used by the simulator.
pub fn decrypt(enc_hex: &str, key: &MerchantKey) -> Result<SecretSlice<u8>, DecryptError> {
    let bytes = hex::decode(enc_hex).map_err(|_| DecryptError::NotHex)?;
    if bytes.is_empty() || bytes.len() % 16 != 0 {
        return Err(DecryptError::BadLength);
    }
    let cipher = Aes128EcbDec::new(&(*key.aes_key()).into());
    cipher
        .decrypt_padded_vec::<Pkcs7>(&bytes)
        .map(SecretSlice::from)
        .map_err(|_| DecryptError::BadPadding)
}
