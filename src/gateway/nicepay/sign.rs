//! `SignData` and the cancel response `Signature`: lower-case hex SHA-256 over field texts
//! concatenated in the order NICEPAY specifies for each API.

use sha2::{Digest, Sha256};

use crate::domain::MerchantKey;

fn sha256_hex(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Billkey issue: `MID + EdiDate + Moid + MerchantKey`.
pub fn billkey_issue(mid: &str, edi_date: &str, moid: &str, key: &MerchantKey) -> String {
    sha256_hex(&[mid, edi_date, moid, key.expose()])
}

/// Approval: `MID + EdiDate + Moid + Amt + BID + MerchantKey`.
pub fn approve(
    mid: &str,
    edi_date: &str,
    moid: &str,
    amt: &str,
    bid: &str,
    key: &MerchantKey,
) -> String {
    sha256_hex(&[mid, edi_date, moid, amt, bid, key.expose()])
}

/// Billkey removal: `MID + EdiDate + Moid + BID + MerchantKey`.
pub fn billkey_remove(
    mid: &str,
    edi_date: &str,
    moid: &str,
    bid: &str,
    key: &MerchantKey,
) -> String {
    sha256_hex(&[mid, edi_date, moid, bid, key.expose()])
}

/// Cancel request: `MID + CancelAmt + EdiDate + MerchantKey`.
pub fn cancel(mid: &str, cancel_amt: &str, edi_date: &str, key: &MerchantKey) -> String {
    sha256_hex(&[mid, cancel_amt, edi_date, key.expose()])
}

/// Status lookup: `TID + MID + EdiDate + MerchantKey`.
pub fn status(tid: &str, mid: &str, edi_date: &str, key: &MerchantKey) -> String {
    sha256_hex(&[tid, mid, edi_date, key.expose()])
}

/// Cancel response `Signature`: `TID + MID + CancelAmt + MerchantKey`.
pub fn cancel_response(tid: &str, mid: &str, cancel_amt: &str, key: &MerchantKey) -> String {
    sha256_hex(&[tid, mid, cancel_amt, key.expose()])
}

/// Compares two hex digests without an early exit, case-insensitively.
pub fn digest_eq(a: &str, b: &str) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| {
        acc | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())
    }) == 0
}
