//! Pure readings of v1 answers (V1.md "Reading a lookup", choices 8, 9, 11).

use super::codes::{self, Call, Class, SUCCESS};
use super::crypto;
use super::keys::SecretKey;
use super::types::{Payment, Status};

/// A charge that v1 confirmed as ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paid {
    pub tid: String,
    pub approve_no: Option<String>,
    pub paid_at: Option<String>,
    pub amount: i64,
    pub balance: Option<i64>,
    /// The answer carried no `signature` (choice 8): accepted, the caller logs a warning.
    pub signature_absent: bool,
}

/// The reading of an approval answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalReading {
    pub class: Class,
    pub paid: Option<Paid>,
    /// Why a `0000` answer was not taken as success (signature, orderId, amount, status).
    pub untrusted: Option<&'static str>,
}

/// Why a `0000` payment object is not ours, if it is not.
fn distrust(
    answer: &Payment,
    our_order_id: &str,
    our_amount: i64,
    secret: &SecretKey,
) -> Option<&'static str> {
    let Some(tid) = answer.tid.as_deref().filter(|t| !t.is_empty()) else {
        return Some("answer has no tid");
    };
    if answer.order_id.as_deref() != Some(our_order_id) {
        return Some("orderId differs from ours");
    }
    let Some(amount) = answer.amount else {
        return Some("answer has no amount");
    };
    if amount != our_amount {
        return Some("amount differs from ours");
    }
    if let Some(signature) = answer.signature.as_deref().filter(|s| !s.is_empty()) {
        let edi = answer.edi_date.as_deref().unwrap_or("");
        if !crypto::signature_verifies(signature, tid, amount, edi, secret) {
            return Some("signature does not verify");
        }
    }
    None
}

fn paid(answer: &Payment) -> Paid {
    Paid {
        tid: answer.tid.clone().unwrap_or_default(),
        approve_no: answer.approve_no.clone(),
        paid_at: answer.paid_at.clone(),
        amount: answer.amount.unwrap_or_default(),
        balance: answer.balance_amt,
        signature_absent: answer.signature.as_deref().is_none_or(str::is_empty),
    }
}

/// An approval answer: success only if HTTP 200, `0000`, `status = paid`, orderId and amount
/// ours and the signature verifies (or is absent, flagged). A `0000` that fails a check is
/// Unknown (resolve by lookup), never success and never failure.
pub fn read_approval(
    http_status: u16,
    answer: &Payment,
    our_order_id: &str,
    our_amount: i64,
    secret: &SecretKey,
) -> ApprovalReading {
    let not_ok = |class, why| ApprovalReading {
        class,
        paid: None,
        untrusted: why,
    };
    if answer.result_code != SUCCESS {
        let class = if answer.result_code.is_empty() {
            codes::classify_http(Call::Approve, http_status)
        } else {
            codes::classify(Call::Approve, &answer.result_code)
        };
        return not_ok(class, None);
    }
    if http_status != 200 {
        return not_ok(
            Class::Unknown,
            Some("0000 with an HTTP status other than 200"),
        );
    }
    if answer.status != Some(Status::Paid) {
        return not_ok(Class::Unknown, Some("0000 without status paid"));
    }
    if let Some(why) = distrust(answer, our_order_id, our_amount, secret) {
        return not_ok(Class::Unknown, Some(why));
    }
    ApprovalReading {
        class: Class::Approved,
        paid: Some(paid(answer)),
        untrusted: None,
    }
}

/// The reading of a lookup (by tid or by orderId).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// Charged and ours (`paid`, or `partialCancelled`: `balance` is what is left).
    Approved {
        tid: String,
        approve_no: Option<String>,
        paid_at: Option<String>,
        balance: Option<i64>,
        signature_absent: bool,
    },
    /// `cancelled`, `failed` or `expired`: the attempt is void; a new attempt needs a new orderId.
    NotApproved { status: Status },
    /// `ready` or an unknown status: look again later.
    Pending,
    /// A not-found code: conclusive only after a netcancel or after the 1-hour window.
    NotFound { code: String },
    /// `0000` but not ours (signature, orderId, amount): alert, never a success.
    Untrusted { why: &'static str },
    /// Anything else: try again later, charge nothing meanwhile.
    Failed { code: String, class: Class },
}

/// Reads a lookup answer against the attempt we are resolving.
pub fn read_lookup(
    call: Call,
    http_status: u16,
    answer: &Payment,
    our_order_id: &str,
    our_amount: i64,
    secret: &SecretKey,
) -> Reading {
    let code = answer.result_code.as_str();
    if codes::not_found_codes().contains(&code) || (code.is_empty() && http_status == 404) {
        return Reading::NotFound {
            code: code.to_owned(),
        };
    }
    if code != SUCCESS {
        let class = if code.is_empty() {
            codes::classify_http(call, http_status)
        } else {
            codes::classify(call, code)
        };
        return Reading::Failed {
            code: code.to_owned(),
            class,
        };
    }
    if http_status != 200 {
        return Reading::Untrusted {
            why: "0000 with an HTTP status other than 200",
        };
    }
    let status = answer
        .status
        .clone()
        .unwrap_or(Status::Other(String::new()));
    if let Some(why) = distrust(answer, our_order_id, our_amount, secret) {
        return Reading::Untrusted { why };
    }
    match status {
        Status::Paid | Status::PartialCancelled => {
            let p = paid(answer);
            Reading::Approved {
                tid: p.tid,
                approve_no: p.approve_no,
                paid_at: p.paid_at,
                balance: p.balance,
                signature_absent: p.signature_absent,
            }
        }
        Status::Cancelled | Status::Failed | Status::Expired => Reading::NotApproved { status },
        Status::Ready | Status::Other(_) => Reading::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::new("0123456789abcdef0123456789abcdef").unwrap()
    }

    fn signed(status: &str, amount: i64, order: &str) -> Payment {
        let edi = "2026-12-25T09:01:00.100+0900";
        let sig = crypto::answer_signature("T1", amount, edi, &key());
        serde_json::from_value(serde_json::json!({
            "resultCode": "0000", "resultMsg": "ok", "tid": "T1", "orderId": order,
            "ediDate": edi, "status": status, "amount": amount, "balanceAmt": amount,
            "approveNo": "123", "signature": sig
        }))
        .unwrap()
    }

    #[test]
    fn approval_checks() {
        let a = signed("paid", 9900, "o1");
        let r = read_approval(200, &a, "o1", 9900, &key());
        assert_eq!(r.class, Class::Approved);
        assert!(!r.paid.unwrap().signature_absent);
        assert_eq!(
            read_approval(200, &a, "o2", 9900, &key()).class,
            Class::Unknown
        );
        assert_eq!(
            read_approval(200, &a, "o1", 9901, &key()).class,
            Class::Unknown
        );
        assert_eq!(
            read_approval(500, &a, "o1", 9900, &key()).class,
            Class::Unknown
        );
        let mut bad = a.clone();
        bad.signature = Some("00".repeat(32));
        let r = read_approval(200, &bad, "o1", 9900, &key());
        assert_eq!(r.class, Class::Unknown);
        assert_eq!(r.untrusted, Some("signature does not verify"));
        let mut none = a.clone();
        none.signature = None;
        let r = read_approval(200, &none, "o1", 9900, &key());
        assert_eq!(r.class, Class::Approved);
        assert!(r.paid.unwrap().signature_absent);
        let failed = signed("failed", 9900, "o1");
        assert_eq!(
            read_approval(200, &failed, "o1", 9900, &key()).class,
            Class::Unknown
        );
        let declined = Payment {
            result_code: "3095".into(),
            ..Default::default()
        };
        assert_eq!(
            read_approval(200, &declined, "o1", 9900, &key()).class,
            Class::Declined
        );
        let empty = Payment::default();
        assert_eq!(
            read_approval(502, &empty, "o1", 9900, &key()).class,
            Class::Unknown
        );
    }

    #[test]
    fn lookup_readings() {
        let look = |p: &Payment| read_lookup(Call::LookupOrder, 200, p, "o1", 9900, &key());
        assert!(matches!(
            look(&signed("paid", 9900, "o1")),
            Reading::Approved { .. }
        ));
        assert!(matches!(
            look(&signed("partialCancelled", 9900, "o1")),
            Reading::Approved { .. }
        ));
        assert_eq!(
            look(&signed("cancelled", 9900, "o1")),
            Reading::NotApproved {
                status: Status::Cancelled
            }
        );
        assert_eq!(look(&signed("ready", 9900, "o1")), Reading::Pending);
        assert!(matches!(
            look(&signed("paid", 990, "o1")),
            Reading::Untrusted { .. }
        ));
        let mut nf = Payment {
            result_code: "U126".into(),
            ..Default::default()
        };
        assert!(matches!(look(&nf), Reading::NotFound { .. }));
        nf.result_code = "A246".into();
        assert_eq!(
            look(&nf),
            Reading::Failed {
                code: "A246".into(),
                class: Class::Throttled
            }
        );
    }
}
