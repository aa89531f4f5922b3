//! Every *inferred* reading of V1.md and every open question ("Open questions"), answered once
//! with the safe choice. Numbered; the code cites these numbers.
//!
//! 1. `signData`/`ediDate` on requests: **off by default** (`sign_requests = false`); when on,
//!    ediDate is ISO 8601 in Korea time with `+09:00` (crypto::edi_date) (OQ 1).
//! 2. Length limits are counted in **UTF-8 bytes** (the stricter of UTF-8 and EUC-KR for Korean
//!    text) (OQ 8).
//! 3. Text that EUC-KR (KS X 1001) cannot represent (emoji, CP949-only Hangul) and control
//!    characters are **refused before sending** (OQ 8).
//! 4. orderId: `[A-Za-z0-9_-]`, 1..=64 bytes; a **new orderId for every call** (issue, approve,
//!    expire, cancel); netcancel uses the approval's own orderId (OQ 3).
//! 5. Lookup by orderId is sent **without signData** (the printed formula is doubtful) (OQ 2).
//! 6. `orderDate` = the **KST date the approval was sent**; when it was sent within
//!    [`MIDNIGHT_MARGIN`] of KST midnight, the next day is looked up as well (OQ 5).
//! 7. Legacy success codes: F100/F101 are success on issue/expire only (issue also needs a
//!    `bid`); 3001, F200, 2001, 2211 → **Unknown**, confirmed by lookup (OQ 7).
//! 8. Answer `signature` absent on a paid answer: **accepted but flagged** so the caller logs a
//!    warning (OQ 12); a present signature that does not verify is **never success** (Unknown,
//!    `Transport::Untrusted`).
//! 9. A paid answer whose orderId or amount is not ours → **Unknown**, never success.
//! 10. 2020 on netcancel = the 1-hour window passed → RequestError; the caller falls back to a
//!     lookup and `/cancel` (OQ 4).
//! 11. Not-found codes on lookups: U107, U111, U126, A118, A243, A251, A214, 2012, U122, and
//!     HTTP 404 without a code; conclusive only after a netcancel or after [`NETCANCEL_WINDOW`]
//!     (OQ 5, 6).
//! 12. HTTP 401 or U305 with a Bearer key → **one** token renewal and one resend; a second
//!     401/U305 is a RequestError (OQ 15).
//! 13. Token renewed [`TOKEN_RENEW_BEFORE`] before min(expiry field, answer's `now` +
//!     [`TOKEN_LIFE`]); `expiredAt` or `expireAt` accepted; the token length is not checked
//!     (OQ 9).
//! 14. U504 on approve ("NICEPAY net-cancelled it", *inferred*) → **Unknown**: the lookup by
//!     orderId confirms before a new orderId is used; elsewhere Throttled.
//! 15. Bid-gone codes (A124, A125, A126, U115, U309, A223) on expire → Approved (goal reached).
//! 16. 2013/2015 → Duplicate on cancel/netcancel (look up by tid, check `cancels[]`); elsewhere
//!     Unknown. 2032/U123 → RequestError (after a retry the caller treats it as duplicate).
//! 17. Unknown-row codes and HTTP 5xx on issue, expire, lookups and token → Throttled (no money
//!     moves); on approve, cancel and netcancel → Unknown. Any unlisted code → Unknown.
//! 18. `cardQuota` is sent as `"0"` and `useShopInterest` as `false`; answers accept
//!     `cardQuota` as string or number and `canPartCancel` as string or bool (OQ 9).
//! 19. Regist answers: camelCase with PascalCase aliases; `authDate` ISO 8601 or YYYYMMDD (OQ 9).
//! 20. The cancel answer's signature is checked with the `amount` of the answer as sent (OQ 11).
//! 21. `encMode` default `A2` (AES-256-CBC) (OQ 10).
//! 22. Business failures may come as HTTP 200 or 4xx: a readable `resultCode` wins over the
//!     HTTP status (OQ 6).
//! 23. No retry inside the client (reqwest never retries, no redirects); resending is the
//!     caller's decision from the class.
//! 24. Answer bodies above [`MAX_BODY`] bytes → Unknown (`Transport::Oversized`).

use std::time::Duration;

/// The manual's netcancel window: a netcancel works only within 1 hour of the approval.
pub const NETCANCEL_WINDOW: Duration = Duration::from_secs(60 * 60);
/// We stop trying netcancel 10 minutes before the window closes (clock skew, in-flight time).
pub const NETCANCEL_STOP: Duration = Duration::from_secs(50 * 60);
/// An access token's stated life.
pub const TOKEN_LIFE: Duration = Duration::from_secs(30 * 60);
/// Renew the token this long before it expires.
pub const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(60);
/// Near KST midnight, a lookup by orderId also tries the next day (choice 6).
pub const MIDNIGHT_MARGIN: Duration = Duration::from_secs(10 * 60);
/// v1's connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// v1's read timeout.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body read.
pub const MAX_BODY: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netcancel_stops_before_the_window() {
        assert!(NETCANCEL_STOP < NETCANCEL_WINDOW);
        assert!(TOKEN_RENEW_BEFORE < TOKEN_LIFE);
    }
}
