//! The billing vocabulary: ids, statuses, charge states, event kinds, and the two halves of a
//! subscription — the merchant's row (what to charge, when) and nicebill's state (where billing
//! stands). Storage maps rows to these; the planner and the engine speak only these.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::schedule::Cycle;

/// A subscription's id (`subscriptions.id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SubscriptionId(pub i64);

/// A charge attempt's id (`charges.id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ChargeId(pub i64);

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for ChargeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Writes the `as_str`/`FromStr`/`Display` trio of a text enum once.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = UnknownText;
            fn from_str(s: &str) -> Result<Self, UnknownText> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownText {
                        what: stringify!($name),
                        text: other.chars().take(40).collect(),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// A stored text that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a known {what}")]
pub struct UnknownText {
    pub what: &'static str,
    pub text: String,
}

text_enum! {
    /// What the merchant asks for (`subscriptions.status`).
    MerchantStatus {
        Active => "active",
        Paused => "paused",
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// nicebill's verdict on a subscription (`billing_state.status`): the merchant's intent,
    /// or what billing found.
    SubscriptionStatus {
        Active => "active",
        Paused => "paused",
        Cancelled => "cancelled",
        PastDue => "past_due",
        CardInvalid => "card_invalid",
        Ended => "ended",
        Invalid => "invalid",
    }
}

impl From<MerchantStatus> for SubscriptionStatus {
    fn from(s: MerchantStatus) -> Self {
        match s {
            MerchantStatus::Active => SubscriptionStatus::Active,
            MerchantStatus::Paused => SubscriptionStatus::Paused,
            MerchantStatus::Cancelled => SubscriptionStatus::Cancelled,
        }
    }
}

text_enum! {
    /// The state of one charge attempt (`charges.state`).
    ChargeState {
        /// Committed; the request may be on its way.
        Pending => "pending",
        /// Sent; the answer was lost or ambiguous; a status lookup decides.
        Unknown => "unknown",
        Approved => "approved",
        Declined => "declined",
        CardInvalid => "card_invalid",
        RequestError => "request_error",
        /// NICEPAY answered with a code nicebill does not list: not approved, retried on the
        /// request-error schedule, never a decline (`nicebill charges list --state unlisted_code`).
        UnlistedCode => "unlisted_code",
        /// Never reached NICEPAY, or a lookup found no approval (looked up once more later).
        NotCharged => "not_charged",
        /// A lookup found it approved and then cancelled: not approved now.
        Cancelled => "cancelled",
        /// Approved at NICEPAY although another attempt of its cycle was approved too: a double
        /// charge, found by a late lookup. Listed by `nicebill charges doubles`; never refunded
        /// automatically.
        Double => "double",
    }
}

impl ChargeState {
    /// Pending or unknown: the attempt may have been charged.
    pub fn is_unresolved(self) -> bool {
        matches!(self, ChargeState::Pending | ChargeState::Unknown)
    }

    /// The states the database's partial unique indexes name (kept in step with the
    /// migrations): unresolved ones, and unresolved-or-approved ones.
    pub const UNRESOLVED: [&'static str; 2] = ["pending", "unknown"];
}

text_enum! {
    /// What an event records (`events.kind`).
    EventKind {
        Invalid => "invalid",
        Revalidated => "revalidated",
        Ended => "ended",
        Cancelled => "cancelled",
        CardInvalid => "card_invalid",
        PastDue => "past_due",
        StatusChanged => "status_changed",
        Paused => "paused",
        Resumed => "resumed",
        Reactivated => "reactivated",
        CycleSkipped => "cycle_skipped",
        Declined => "declined",
        RequestError => "request_error",
        /// An approval answered with a result code nicebill does not list.
        UnlistedCode => "unlisted_code",
        NotCharged => "not_charged",
        ChargeCancelled => "charge_cancelled",
        ApprovedLate => "approved_late",
        DoubleCharge => "double_charge",
        LookupMismatch => "lookup_mismatch",
        BillkeyChanged => "billkey_changed",
        BillkeyRemoved => "billkey_removed",
        BillkeyRemovalFailed => "billkey_removal_failed",
        BillkeyRemovalHeld => "billkey_removal_held",
    }
}

text_enum! {
    /// What a webhook tells the merchant (its `type`).
    WebhookKind {
        ChargeApproved => "charge.approved",
        ChargeDeclined => "charge.declined",
        ChargeFailed => "charge.failed",
        ChargeUnresolved => "charge.unresolved",
        ChargeDouble => "charge.double",
        ChargeUpcoming => "charge.upcoming",
        SubscriptionPastDue => "subscription.past_due",
        SubscriptionCardInvalid => "subscription.card_invalid",
        SubscriptionEnded => "subscription.ended",
        SubscriptionCancelled => "subscription.cancelled",
        SubscriptionInvalid => "subscription.invalid",
        BillkeyRemoved => "billkey.removed",
        Ping => "ping",
    }
}

text_enum! {
    /// Where a webhook event stands (`webhook_outbox.state`).
    DeliveryState {
        /// Not delivered yet; tried again at `next_attempt_at`.
        Pending => "pending",
        /// A 2xx answer came.
        Delivered => "delivered",
        /// Every try failed; `nicebill webhooks retry` puts it back.
        Dead => "dead",
        /// Left out by `[webhook] events`; kept for pollers, never sent.
        Filtered => "filtered",
    }
}

impl EventKind {
    /// The webhook an event of this kind is told as, if any.
    pub fn webhook(self) -> Option<WebhookKind> {
        Some(match self {
            EventKind::PastDue => WebhookKind::SubscriptionPastDue,
            EventKind::CardInvalid => WebhookKind::SubscriptionCardInvalid,
            EventKind::Ended => WebhookKind::SubscriptionEnded,
            EventKind::Cancelled => WebhookKind::SubscriptionCancelled,
            EventKind::Invalid => WebhookKind::SubscriptionInvalid,
            EventKind::DoubleCharge => WebhookKind::ChargeDouble,
            _ => return None,
        })
    }
}

impl EventKind {
    /// The event of a status nicebill sets.
    pub fn of_status(status: SubscriptionStatus) -> EventKind {
        match status {
            SubscriptionStatus::Ended => EventKind::Ended,
            SubscriptionStatus::Cancelled => EventKind::Cancelled,
            SubscriptionStatus::CardInvalid => EventKind::CardInvalid,
            SubscriptionStatus::PastDue => EventKind::PastDue,
            SubscriptionStatus::Invalid => EventKind::Invalid,
            SubscriptionStatus::Active | SubscriptionStatus::Paused => EventKind::StatusChanged,
        }
    }
}

/// The merchant's row, read column by column from whatever bytes it holds and parsed strictly:
/// each value has its type, nothing is yet checked against NICEPAY's rules (`plan::validate`).
#[derive(Clone, Debug, PartialEq)]
pub struct MerchantRow {
    pub id: SubscriptionId,
    pub external_id: String,
    pub bid: String,
    pub amount: i64,
    pub goods_name: String,
    pub buyer_name: Option<String>,
    pub buyer_email: Option<String>,
    pub buyer_tel: Option<String>,
    pub card_quota: String,
    pub card_interest: String,
    pub interval_unit: String,
    pub interval_count: i64,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub anchor_at: DateTime<Utc>,
    pub max_cycles: Option<i64>,
    pub ends_at: Option<DateTime<Utc>>,
    pub status: String,
    pub cancel_at_period_end: bool,
}

/// Where billing of one subscription stands (`billing_state`), kept by nicebill alone.
#[derive(Clone, Debug, PartialEq)]
pub struct BillingState {
    pub status: SubscriptionStatus,
    pub status_reason: Option<String>,
    /// The next cycle not yet charged; `None` before the first decision.
    pub next_cycle: Option<Cycle>,
    /// When to act next: the cycle's due time, or a dunning retry after it.
    pub next_charge_at: Option<DateTime<Utc>>,
    pub cycle_attempts: u32,
    pub cycle_declines: u32,
    /// Set when a pause was noticed; the resume skips the cycles that came due meanwhile.
    pub paused_since: Option<DateTime<Utc>>,
}

impl BillingState {
    /// The state of a subscription nicebill has just noticed.
    pub fn new(status: SubscriptionStatus) -> Self {
        Self {
            status,
            status_reason: None,
            next_cycle: None,
            next_charge_at: None,
            cycle_attempts: 0,
            cycle_declines: 0,
            paused_since: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_round_trip() {
        for s in SubscriptionStatus::ALL {
            assert_eq!(s.as_str().parse::<SubscriptionStatus>(), Ok(*s));
        }
        for s in ChargeState::ALL {
            assert_eq!(s.as_str().parse::<ChargeState>(), Ok(*s));
        }
        for k in EventKind::ALL {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(*k));
        }
        assert!("frozen".parse::<MerchantStatus>().is_err());
        let unresolved: Vec<&str> = ChargeState::ALL
            .iter()
            .filter(|s| s.is_unresolved())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(unresolved, ChargeState::UNRESOLVED);
    }
}

/// `[webhook] upcoming_lead`: how long before a cycle comes due its `charge.upcoming` notices
/// go out, in whole seconds, longest first, each once. One notice per (cycle, lead): the
/// storage keeps, per subscription, the shortest lead already told for its cycle, so the leads
/// still to tell are those shorter than it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NoticeLeads(Vec<i64>);

impl NoticeLeads {
    /// Sorted longest first; repeats and sub-second parts dropped.
    pub fn new(leads: impl IntoIterator<Item = std::time::Duration>) -> Self {
        let mut secs: Vec<i64> = leads
            .into_iter()
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .filter(|s| *s > 0)
            .collect();
        secs.sort_unstable_by(|a, b| b.cmp(a));
        secs.dedup();
        Self(secs)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every lead, in seconds, longest first.
    pub fn secs(&self) -> &[i64] {
        &self.0
    }

    pub fn shortest(&self) -> Option<i64> {
        self.0.last().copied()
    }

    /// The leads still to tell when `told` (seconds) is the shortest already told for the
    /// cycle (`None`: none yet), longest first.
    pub fn after(&self, told: Option<i64>) -> impl Iterator<Item = i64> + '_ {
        self.0
            .iter()
            .copied()
            .filter(move |l| told.is_none_or(|t| *l < t))
    }

    /// `30d`, `7d`, `36h`, `90m`, `45s`: the largest unit that divides the lead, as the
    /// configuration writes it (the `lead` of a notice, and part of its dedupe key).
    pub fn label(secs: i64) -> String {
        for (unit, name) in [(86_400, "d"), (3_600, "h"), (60, "m")] {
            if secs % unit == 0 {
                return format!("{}{name}", secs / unit);
            }
        }
        format!("{secs}s")
    }
}

#[cfg(test)]
mod notice_lead_tests {
    use super::NoticeLeads;
    use std::time::Duration;

    #[test]
    fn leads_are_longest_first_once_and_told_in_order() {
        let d = |s| Duration::from_secs(s);
        let leads = NoticeLeads::new([d(7 * 86_400), d(30 * 86_400), d(7 * 86_400), d(3_600)]);
        assert_eq!(leads.secs(), &[30 * 86_400, 7 * 86_400, 3_600]);
        assert_eq!(leads.shortest(), Some(3_600));
        assert_eq!(leads.after(None).count(), 3);
        assert_eq!(
            leads.after(Some(30 * 86_400)).collect::<Vec<_>>(),
            vec![7 * 86_400, 3_600]
        );
        assert_eq!(leads.after(Some(3_600)).count(), 0);
        assert_eq!(NoticeLeads::label(30 * 86_400), "30d");
        assert_eq!(NoticeLeads::label(36 * 3_600), "36h");
        assert_eq!(NoticeLeads::label(90 * 60), "90m");
        assert_eq!(NoticeLeads::label(45), "45s");
        assert!(NoticeLeads::new([Duration::from_millis(10)]).is_empty());
    }
}
