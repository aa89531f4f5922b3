//! The simulator's NICEPAY v1 REST API (`/v1/…`, `V1.md`), served on the legacy simulator's
//! port and sharing its state: billkeys, the ledger of approvals, removals, minted TIDs, the
//! clock, fault rules, latency, hold and throttle.
//!
//! | call                                   | what the simulator does |
//! | -------------------------------------- | ----------------------- |
//! | `POST /v1/access-token` (Basic only)   | issues a 64-hex token: the same one while valid, a new one after expiry (lifetime 30 min, `--v1-token-lifetime-ms`, `POST /_sim/v1_token_lifetime`) |
//! | `POST /v1/subscribe/regist`            | deciphers `encData` (`encMode` absent: AES-128-ECB, `A2`: AES-256-CBC), reads exactly `cardNo=…&expYear=…&expMonth=…&idNo=…&cardPw=…`, issues a 30-character `bid`; the card's behaviour comes from its number ([`super::cards`]) |
//! | `POST /v1/subscribe/{bid}/payments`    | charges: the simulator mints the 30-character `tid`; approvals go to the ledger (`moid` = orderId) |
//! | `POST /v1/subscribe/{bid}/expire`      | removes the bid (recorded in the removals) |
//! | `POST /v1/payments/{tid}/cancel`       | full (`cancelAmt` absent) or partial cancel |
//! | `POST /v1/payments/netcancel`          | cancels the approval of `orderId` within 1 hour of its request |
//! | `GET /v1/payments/{tid}`               | the payment object |
//! | `GET /v1/payments/find/{orderId}?orderDate=YYYYMMDD` | the payment object, when `orderDate` is the KST date of the approval request |
//!
//! **Shops** ([`V1Shop`]): a client key, a secret key and a 10-character MID-like name that
//! prefixes the shop's TIDs and BIDs and names it in the ledger and removals. Both
//! authentication schemes work for every shop (the manual ties the scheme to the key; the
//! simulator does not).
//!
//! **Choices** where the manual is silent (V1.md, "Open questions"):
//!
//! - Authentication: no or a malformed `Authorization` header, an unknown client key or a
//!   wrong secret key → HTTP 401, `U101`; an unknown or expired bearer token → HTTP 401, `U305`.
//!   Nothing else is looked at before authentication succeeds (the throttle, latency and
//!   faults come after it; a 401 is counted in `/_sim/requests` but never throttled).
//! - Unknown `/v1/` path → HTTP 404 `U108`; wrong method → HTTP 405 `U110`. Business answers
//!   are HTTP 200 with a `resultCode`, except lookups of an unknown `tid`/`orderId` (or a
//!   wrong `orderDate`): **HTTP 404** with `resultCode` `U111`, so that a client must read the
//!   body whatever the status.
//! - Request errors (HTTP 200): a missing required field, or `signData` without `ediDate` →
//!   `U100`; a text longer than its limit in **UTF-8 bytes** → `U105`; a wrong type, a text
//!   outside EUC-KR (emoji), `"` in `mallReserved`, non-digits in `buyerTel`, a body that is not
//!   a JSON object → `U125`; `amount`/`cancelAmt` not a positive JSON integer of at most 12
//!   digits → `U127`; `ediDate` not ISO 8601 or `orderDate` not `YYYYMMDD` → `U130`; a wrong
//!   `signData` → `U312`; `taxFreeAmt` above the amount → `U321`; `cardQuota` other than `0`
//!   or `2`..`36` → `3022`; `useShopInterest` other than `false` → `3031`. Unknown fields are
//!   ignored. `signData` is optional; when sent it must verify, by the manual's formula for the
//!   call (lookup by orderId: `orderId + ediDate + SecretKey`, since the caller has no tid).
//! - Registration: an undocumented `encMode`, `encData` that does not decipher under the
//!   shop's key in that mode, or a plaintext not exactly in the manual's form → `A204`; a bad
//!   card number or expiry → `F112`; `idNo` not 6 or 10 digits or `cardPw` not 2 digits →
//!   `F113` (all five are required since 2023-10).
//! - Billkeys: unknown → `A126`; another shop's → `A255`; expired → `A124` (approve and
//!   expire alike).
//! - Approval `orderId`: **any orderId that reached the card company before — paid, declined
//!   or cancelled since — is refused with `U112`**, and the refusal changes nothing (no
//!   ledger entry, no card attempt). The manual forbids only paid ones; refusing declined ones
//!   too keeps "one orderId, one transaction", so a lookup by orderId is never ambiguous, and
//!   nicebill never reuses an orderId anyway. A declined approval answers the payment object
//!   with the issuer's code and `status: failed`.
//! - Cancel: unknown tid, another shop's or a failed payment → `2012`; already fully
//!   cancelled → `2013`; `cancelAmt` above `balanceAmt` → `2032`; a cancel `orderId` this
//!   shop already used for a cancel → `U112`. Partial cancels work (unlike NICEPAY's sandbox).
//!   Each cancel gets a `cancelledTid` of its own. The answer's `signature` covers the
//!   payment's `amount`.
//! - Netcancel: unknown orderId or a failed approval → `2012`; already cancelled → `2013`;
//!   more than 1 hour (simulator clock) after the approval request → `2020`. It cancels the
//!   remaining balance; `status` becomes `cancelled`.
//! - Lookups find failed payments too (`status: failed`, `resultCode` `0000`).
//!
//! **Faults** ([`super::FaultRule`]) use the legacy API names: regist = `billkey_issue`,
//! approve = `approve`, expire = `billkey_remove`, cancel and netcancel = `cancel`, both
//! lookups = `status`; a rule for `approve` hits legacy and v1 approvals alike. The access
//! token call is never faulted (it is throttled). `bad_signature` (and `bad_cancel_signature`
//! on cancel and netcancel) makes the answer's `signature` wrong. Request counts
//! (`/_sim/requests`) are kept as `v1_token`, `v1_regist`, `v1_approve`, `v1_expire`,
//! `v1_cancel`, `v1_netcancel`, `v1_lookup`.

mod calls;
pub(super) mod http;
mod request;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::cards::Brand;
use crate::domain::Mid;
use crate::gateway::nicepay_v1::{ClientKey, SecretKey};

/// A v1 shop the simulator knows.
#[derive(Clone)]
pub struct V1Shop {
    pub client: ClientKey,
    pub secret: SecretKey,
    /// 10 characters: prefixes TIDs and BIDs, names the shop in the ledger and removals.
    pub mid: Mid,
}

impl std::fmt::Debug for V1Shop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V1Shop")
            .field("client", &self.client)
            .field("mid", &self.mid)
            .finish_non_exhaustive()
    }
}

/// The manual's sandbox keys (V1.md, `v1-vectors.json`): `doc_sandbox` and `doc_readme`.
pub const DEFAULT_SHOPS: &[(&str, &str, &str)] = &[
    (
        "58e3b578555e45738d6b569e53d5ae54",
        "4f13ca267dfa4fc6964148bedcda15ef",
        "nicv1sbx0m",
    ),
    (
        "S2_af4543a0be4d49a98122e01ec2059a56",
        "9eb85607103646da9f9c02b128f2e5ee",
        "nicv1rdm0m",
    ),
];

/// How long an access token lives unless configured otherwise.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 60);

impl V1Shop {
    /// The shops of [`DEFAULT_SHOPS`].
    pub fn defaults() -> Vec<V1Shop> {
        DEFAULT_SHOPS
            .iter()
            .map(|(client, secret, mid)| V1Shop {
                client: ClientKey::new(*client).expect("default client keys are valid"),
                secret: SecretKey::new(*secret).expect("default secret keys are valid"),
                mid: Mid::new(*mid).expect("default names are valid"),
            })
            .collect()
    }

    /// A shop named `nicv1x{n:03}m`, as `--v1-merchant` adds them (`n` = its place).
    pub fn numbered(client: ClientKey, secret: SecretKey, n: usize) -> V1Shop {
        V1Shop {
            client,
            secret,
            mid: Mid::new(format!("nicv1x{:03}m", n % 1000)).expect("10 alphanumerics"),
        }
    }
}

/// Parses `CLIENT_KEY:SECRET_KEY` (`--v1-merchant`).
pub fn parse_v1_merchant(text: &str) -> Result<(ClientKey, SecretKey), String> {
    let (client, secret) = text
        .split_once(':')
        .ok_or_else(|| "expected CLIENT_KEY:SECRET_KEY".to_owned())?;
    let client = ClientKey::new(client).map_err(|e| e.to_string())?;
    let secret = SecretKey::new(secret).map_err(|e| e.to_string())?;
    Ok((client, secret))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Status {
    Paid,
    Failed,
    Cancelled,
    PartialCancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Paid => "paid",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::PartialCancelled => "partialCancelled",
        }
    }
}

pub(super) struct CancelRecord {
    tid: String,
    amount: i64,
    at: DateTime<Utc>,
    reason: String,
}

/// One approval request that reached the card company.
pub(super) struct Payment {
    shop: usize,
    tid: String,
    order_id: String,
    amount: i64,
    goods_name: String,
    status: Status,
    /// When the approval request arrived: the netcancel window and `orderDate` count from it.
    requested_at: DateTime<Utc>,
    failed_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    result_code: &'static str,
    result_msg: String,
    approve_no: String,
    brand: Brand,
    card_num: String,
    card_quota: String,
    balance: i64,
    cancels: Vec<CancelRecord>,
    /// Index in the shared ledger (approvals only).
    ledger: Option<usize>,
    mall_reserved: Option<String>,
    buyer_name: Option<String>,
    buyer_email: Option<String>,
    buyer_tel: Option<String>,
}

/// The v1 side of [`super::state::SimState`].
pub(crate) struct V1State {
    shops: Vec<V1Shop>,
    token_lifetime: Duration,
    /// Shop index → (token, expiry).
    tokens: HashMap<usize, (String, DateTime<Utc>)>,
    /// tid → payment.
    payments: HashMap<String, Payment>,
    /// (shop, approval orderId) → tid.
    orders: HashMap<(usize, String), String>,
    /// (shop, cancel orderId) of cancels carried out.
    cancel_orders: HashSet<(usize, String)>,
    /// bid → the card number masked first 6 / last 4, as v1 shows it.
    card_nums: HashMap<String, String>,
}

impl Default for V1State {
    fn default() -> Self {
        Self {
            shops: Vec::new(),
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            tokens: HashMap::new(),
            payments: HashMap::new(),
            orders: HashMap::new(),
            cancel_orders: HashSet::new(),
            card_nums: HashMap::new(),
        }
    }
}

impl V1State {
    pub(super) fn new(shops: Vec<V1Shop>, token_lifetime: Duration) -> Self {
        Self {
            shops,
            token_lifetime,
            ..Self::default()
        }
    }

    pub(super) fn set_token_lifetime(&mut self, lifetime: Duration) {
        self.token_lifetime = lifetime;
    }

    /// Forgets tokens and payments; shops and the token lifetime stay.
    pub(super) fn reset(&mut self) {
        self.tokens.clear();
        self.payments.clear();
        self.orders.clear();
        self.cancel_orders.clear();
        self.card_nums.clear();
    }
}

/// The card number as v1 shows it: first 6, `*` for the middle, last 4.
pub fn mask_first6_last4(card_no: &str) -> String {
    let n = card_no.len();
    if n <= 10 || !card_no.is_ascii() {
        return "*".repeat(n);
    }
    format!(
        "{}{}{}",
        &card_no[..6],
        "*".repeat(n - 10),
        &card_no[n - 4..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_parsing() {
        let shops = V1Shop::defaults();
        assert_eq!(shops.len(), 2);
        assert_eq!(
            shops[1].client.as_str(),
            "S2_af4543a0be4d49a98122e01ec2059a56"
        );
        assert!(!format!("{shops:?}").contains("4f13ca"));
        let (c, s) = parse_v1_merchant(
            "R1_0123456789abcdef0123456789abcdef:0123456789abcdef0123456789abcdef",
        )
        .unwrap();
        assert_eq!(c.as_str(), "R1_0123456789abcdef0123456789abcdef");
        assert_eq!(V1Shop::numbered(c, s, 7).mid.as_str(), "nicv1x007m");
        assert!(parse_v1_merchant("nocolon").is_err());
        assert!(parse_v1_merchant("abc:short").is_err());
        assert_eq!(mask_first6_last4("5361121234561234"), "536112******1234");
        assert_eq!(mask_first6_last4("12345678901234"), "123456****1234");
    }
}
