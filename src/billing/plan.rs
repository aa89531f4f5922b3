//! The pure core of billing: what to do with a claimed subscription, and how its outcome
//! moves it on. No IO; `now` is an argument; every decision is a value the engine commits.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::model::{BillingState, MerchantRow, MerchantStatus, SubscriptionId, SubscriptionStatus};
use crate::domain::{Bid, FieldError, Krw, Moid};
use crate::gateway::ApiKind;
use crate::gateway::nicepay::{Buyer, Class, check_card_quota, check_goods_name, form, limits};
use crate::schedule::{
    CatchUp, Cycle, DueNow, FirstAfter, IntervalUnit, Schedule, Skipped, parse_timezone,
};

/// Where a subscription goes when dunning runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalState {
    PastDue,
    Cancelled,
}

impl FinalState {
    pub fn status(self) -> SubscriptionStatus {
        match self {
            FinalState::PastDue => SubscriptionStatus::PastDue,
            FinalState::Cancelled => SubscriptionStatus::Cancelled,
        }
    }
}

/// Billing rules from the configuration.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Time zone of schedules whose row has none.
    pub timezone: Tz,
    pub catch_up: CatchUp,
    /// Dunning: wait this long after the 1st, 2nd, … decline of a cycle.
    pub retry_after: Vec<Duration>,
    /// Status after the last dunning attempt is declined.
    pub final_state: FinalState,
    /// Prepended to every Moid (e.g. to tell two merchants' systems apart).
    pub moid_prefix: String,
    /// After a request error (our bug or configuration): try the cycle again this much later.
    pub request_error_retry: Duration,
    /// After an attempt that never reached NICEPAY (or was found never to have been approved):
    /// try again this much later.
    pub resend_after: Duration,
    /// The NICEPAY API rows are sent on: its field rules apply ([`validate`]). The engine sets
    /// it from its gateway.
    pub api: ApiKind,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            timezone: chrono_tz::Asia::Seoul,
            catch_up: CatchUp::Latest,
            retry_after: vec![days(1), days(3), days(5)],
            final_state: FinalState::PastDue,
            moid_prefix: String::new(),
            request_error_retry: Duration::from_secs(3600),
            resend_after: Duration::from_secs(60),
            api: ApiKind::Webapi,
        }
    }
}

fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

/// A subscription row that passed every check: ready to charge.
#[derive(Clone, Debug)]
pub struct Valid {
    pub id: SubscriptionId,
    pub external_id: String,
    pub bid: Bid,
    pub amount: Krw,
    pub goods_name: String,
    pub buyer: Buyer,
    pub card_quota: String,
    pub interest_free: bool,
    pub schedule: Schedule,
    pub cancel_at_period_end: bool,
}

/// The merchant's status, or an error naming the column.
pub fn merchant_status(text: &str) -> Result<MerchantStatus, FieldError> {
    text.parse::<MerchantStatus>().map_err(|_| {
        FieldError::new(
            "status",
            format!(
                "{:?} is not one of active, paused, cancelled",
                text.chars().take(40).collect::<String>()
            ),
        )
    })
}

/// Checks every column nicebill relies on; the error names the column and the problem.
pub fn validate(row: &MerchantRow, policy: &Policy) -> Result<Valid, FieldError> {
    merchant_status(&row.status)?;
    if row.external_id.trim().is_empty() {
        return Err(FieldError::new("external_id", "is empty"));
    }
    let amount = Krw::positive(row.amount).map_err(|e| FieldError::new("amount", e.problem))?;
    // Never trimmed: a billkey with white space around it is not the billkey NICEPAY issued,
    // and trimming it here but not where billkeys are compared would split one card in two.
    if row.bid.trim() != row.bid {
        return Err(FieldError::new(
            "bid",
            "has white space around it; write the billkey exactly as NICEPAY issued it",
        ));
    }
    let bid = Bid::new(row.bid.as_str()).map_err(|e| FieldError::new("bid", e.problem))?;
    let mut buyer = Buyer {
        name: row.buyer_name.clone(),
        email: row.buyer_email.clone(),
        tel: row.buyer_tel.clone(),
    };
    check_card_quota("card_quota", &row.card_quota)?;
    let interest_free = match row.card_interest.as_str() {
        "0" => false,
        "1" => true,
        other => {
            return Err(FieldError::new(
                "card_interest",
                format!("{other:?} is not 0 or 1"),
            ));
        }
    };
    match policy.api {
        ApiKind::Webapi => {
            check_goods_name(&row.goods_name)
                .map_err(|e| FieldError::new("goods_name", e.problem))?;
            for (field, value, max) in [
                ("buyer_name", &buyer.name, limits::BUYER_NAME),
                ("buyer_email", &buyer.email, limits::BUYER_EMAIL),
                ("buyer_tel", &buyer.tel, limits::BUYER_TEL),
            ] {
                if let Some(v) = value {
                    form::euc_kr_limited(field, v, max)?;
                }
            }
        }
        ApiKind::V1 => validate_v1(row, interest_free, &mut buyer)?,
    }
    let tz = match &row.timezone {
        Some(name) if !name.trim().is_empty() => {
            parse_timezone("timezone", name).map_err(|e| FieldError::new(e.field, e.problem))?
        }
        _ => policy.timezone,
    };
    let anchor = row.anchor_at;
    let schedule = match &row.cron {
        Some(cron) if !cron.trim().is_empty() => Schedule::cron(cron, anchor, tz),
        _ => {
            let unit: IntervalUnit = row
                .interval_unit
                .parse()
                .map_err(|e: crate::schedule::ScheduleError| FieldError::new(e.field, e.problem))?;
            Schedule::every(unit, row.interval_count, anchor, tz)
        }
    }
    .and_then(|s| s.with_end(row.max_cycles, row.ends_at))
    .map_err(|e| FieldError::new(e.field, e.problem))?;
    Ok(Valid {
        id: row.id,
        external_id: row.external_id.clone(),
        bid,
        amount,
        goods_name: row.goods_name.clone(),
        buyer,
        card_quota: row.card_quota.clone(),
        interest_free,
        schedule,
        cancel_at_period_end: row.cancel_at_period_end,
    })
}

/// NICEPAY v1's rules for the columns it sends (limits in UTF-8 bytes, `nicepay_v1::fields`);
/// the error names the column. A telephone number is sent as its digits (v1 takes digits only),
/// so `010-1234-5678` stays a valid column.
fn validate_v1(
    row: &MerchantRow,
    interest_free: bool,
    buyer: &mut Buyer,
) -> Result<(), FieldError> {
    use crate::gateway::nicepay_v1::fields;
    let named = |column: &'static str| move |e: FieldError| FieldError::new(column, e.problem);
    fields::goods_name(&row.goods_name).map_err(named("goods_name"))?;
    if row.card_quota != "00" {
        return Err(FieldError::new(
            "card_quota",
            format!(
                "{:?}: NICEPAY v1 billing is sent as a lump sum only (\"00\")",
                row.card_quota
            ),
        ));
    }
    if interest_free {
        return Err(FieldError::new(
            "card_interest",
            "merchant-paid interest-free months are not sent on NICEPAY v1 (lump sum only)",
        ));
    }
    if let Some(name) = &buyer.name {
        fields::buyer_name(name).map_err(named("buyer_name"))?;
    }
    if let Some(email) = &buyer.email {
        fields::buyer_email(email).map_err(named("buyer_email"))?;
    }
    if let Some(tel) = &buyer.tel {
        let digits: String = tel
            .chars()
            .filter(|c| !matches!(c, '-' | ' ' | '.' | '(' | ')'))
            .collect();
        fields::buyer_tel(&digits).map_err(named("buyer_tel"))?;
        buyer.tel = Some(digits);
    }
    Ok(())
}

/// The Moid of one attempt: deterministic, so a restart derives the same one.
pub fn moid(
    prefix: &str,
    subscription: SubscriptionId,
    cycle: Cycle,
    attempt: u32,
) -> Result<Moid, FieldError> {
    Moid::new(format!("{prefix}S{subscription}-C{cycle}-A{attempt}"))
}

/// What to do with a claimed subscription now.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The row cannot be charged as written.
    Invalid { reason: String },
    /// No cycle is left (max_cycles, ends_at).
    Ended { skipped: Skipped },
    /// `cancel_at_period_end`: the period ended; cancel instead of charging.
    CancelAtPeriodEnd { cycle: Cycle },
    /// Nothing to charge yet; remember when the next cycle is due.
    Wait {
        next_cycle: Cycle,
        next_charge_at: DateTime<Utc>,
        skipped: Skipped,
        reason: Option<&'static str>,
    },
    /// Charge one cycle now.
    Charge {
        cycle: Cycle,
        due_at: DateTime<Utc>,
        attempt: u32,
        moid: Moid,
        /// Earlier cycles passed over by the catch-up policy.
        skipped: Skipped,
    },
}

/// Decides what a claimed, active subscription needs at `now`.
pub fn decide(valid: &Valid, row: &BillingState, now: DateTime<Utc>, policy: &Policy) -> Decision {
    let schedule = &valid.schedule;
    // Where the subscription stands: the next uncharged cycle and its scheduled due time.
    let current = match row.next_cycle {
        Some(c) if c >= Cycle::FIRST => schedule.due_at(c).map(|due| (c, due)),
        _ => schedule.due_at(Cycle::FIRST).map(|due| (Cycle::FIRST, due)),
    };
    let Some((cycle, due)) = current else {
        return Decision::Ended {
            skipped: Skipped::default(),
        };
    };

    // Resumed after a pause: cycles that came due meanwhile are not charged. (A cron schedule
    // may need more than one call to get there: an unfinished skip waits with a time already
    // come, and the engine keeps the pause for the next call.)
    if row.paused_since.is_some() {
        let next = match schedule.first_after(cycle, due, now) {
            FirstAfter::Next(next) | FirstAfter::Unfinished(next) => next,
            FirstAfter::Ended(skipped) => return Decision::Ended { skipped },
        };
        return Decision::Wait {
            next_cycle: next.cycle,
            next_charge_at: next.due_at,
            skipped: next.skipped,
            reason: Some("paused"),
        };
    }

    // In dunning the row's next_charge_at is the retry time, later than the cycle's due time.
    let act_at = row.next_charge_at.unwrap_or(due).max(due);
    if act_at > now {
        return Decision::Wait {
            next_cycle: cycle,
            next_charge_at: act_at,
            skipped: Skipped::default(),
            reason: None,
        };
    }
    let chosen = match schedule.due_now(cycle, due, now, policy.catch_up) {
        DueNow::Charge(chosen) => chosen,
        DueNow::NotYet => {
            return Decision::Wait {
                next_cycle: cycle,
                next_charge_at: due,
                skipped: Skipped::default(),
                reason: None,
            };
        }
        // A cron schedule with more missed cycles than one call steps through: keep how far
        // catch-up got; the cycle is still due, so the next pass continues from there.
        DueNow::Unfinished(reached) => {
            return Decision::Wait {
                next_cycle: reached.cycle,
                next_charge_at: reached.due_at,
                skipped: reached.skipped,
                reason: None,
            };
        }
    };
    if valid.cancel_at_period_end {
        return Decision::CancelAtPeriodEnd {
            cycle: chosen.cycle,
        };
    }
    let same_cycle = row.next_cycle == Some(chosen.cycle);
    let attempt = if same_cycle {
        // At most i32::MAX: it is stored in a 32-bit column.
        row.cycle_attempts.min(i32::MAX as u32 - 1) + 1
    } else {
        1
    };
    match moid(&policy.moid_prefix, valid.id, chosen.cycle, attempt) {
        Ok(moid) => Decision::Charge {
            cycle: chosen.cycle,
            due_at: chosen.due_at,
            attempt,
            moid,
            skipped: chosen.skipped,
        },
        Err(e) => Decision::Invalid {
            reason: format!("moid: {}", e.problem),
        },
    }
}

/// How an attempt ended, as far as the subscription is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    Approved,
    Declined,
    PermanentCard,
    RequestError,
    /// An approval answered with a code the gateway does not list: retried like a request
    /// error, never counted as a decline (so it never dunns into cancellation).
    UnlistedCode,
    /// Never reached NICEPAY, or a status lookup proved it was never approved.
    NotCharged,
}

impl Settled {
    /// The settled outcome of a classified answer; `None` while it is still ambiguous.
    pub fn from_class(class: Class) -> Option<Settled> {
        match class {
            Class::Approved => Some(Settled::Approved),
            Class::Declined => Some(Settled::Declined),
            Class::PermanentCard => Some(Settled::PermanentCard),
            Class::RequestError => Some(Settled::RequestError),
            Class::UnlistedCode => Some(Settled::UnlistedCode),
            Class::NotSent => Some(Settled::NotCharged),
            Class::Duplicate | Class::Throttled | Class::Unknown => None,
        }
    }
}

/// The subscription's new bookkeeping after an attempt settled.
#[derive(Clone, Debug, PartialEq)]
pub struct Advance {
    pub next_cycle: Cycle,
    pub next_charge_at: Option<DateTime<Utc>>,
    pub cycle_attempts: u32,
    pub cycle_declines: u32,
    /// A new status, with its reason.
    pub status: Option<(SubscriptionStatus, String)>,
}

/// Where an attempt stands in its subscription's schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub cycle: Cycle,
    /// The cycle's scheduled due time.
    pub due_at: DateTime<Utc>,
    /// This cycle's attempts, including this one.
    pub attempts: u32,
    /// This cycle's declines, including this one if it was declined.
    pub declines: u32,
}

/// Moves a subscription on after the attempt at `at` settled as `settled`. Without a
/// schedule (the merchant's row no longer validates), an approval moves to the next cycle and
/// leaves its due time to be worked out once the row is valid again.
pub fn advance(
    schedule: Option<&Schedule>,
    at: Position,
    settled: Settled,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Advance {
    let Position {
        cycle,
        due_at,
        attempts,
        declines,
    } = at;
    let stay = |at: DateTime<Utc>, declines: u32| Advance {
        next_cycle: cycle,
        next_charge_at: Some(at),
        cycle_attempts: attempts,
        cycle_declines: declines,
        status: None,
    };
    let later = |d: Duration| crate::clock::later(now, d);
    match settled {
        // Never two cycles in one go: a cycle that is already due (catch-up "all") waits at
        // least `resend_after`.
        Settled::Approved => match schedule.map(|s| s.next(cycle, due_at)) {
            None => Advance {
                next_cycle: cycle.saturating_next(),
                next_charge_at: None,
                cycle_attempts: 0,
                cycle_declines: 0,
                status: None,
            },
            Some(Some((next, at))) => Advance {
                next_cycle: next,
                next_charge_at: Some(at.max(later(policy.resend_after))),
                cycle_attempts: 0,
                cycle_declines: 0,
                status: None,
            },
            Some(None) => Advance {
                // One past the last: at most i32::MAX, the column's limit.
                next_cycle: cycle.saturating_next(),
                next_charge_at: None,
                cycle_attempts: 0,
                cycle_declines: 0,
                status: Some((
                    SubscriptionStatus::Ended,
                    format!("last cycle ({cycle}) charged"),
                )),
            },
        },
        Settled::Declined => match policy
            .retry_after
            .get((declines as usize).saturating_sub(1))
        {
            Some(wait) => stay(later(*wait), declines),
            None => Advance {
                status: Some((
                    policy.final_state.status(),
                    format!("cycle {cycle} declined {declines} times; dunning exhausted"),
                )),
                ..stay(now, declines)
            },
        },
        Settled::PermanentCard => Advance {
            status: Some((
                SubscriptionStatus::CardInvalid,
                format!("cycle {cycle}: the card cannot be charged again; a new billkey is needed"),
            )),
            ..stay(now, declines)
        },
        Settled::RequestError | Settled::UnlistedCode => {
            stay(later(policy.request_error_retry), declines)
        }
        Settled::NotCharged => stay(later(policy.resend_after), declines),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: &str) -> DateTime<Utc> {
        let naive = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        chrono_tz::Asia::Seoul
            .from_local_datetime(&naive)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn row() -> MerchantRow {
        MerchantRow {
            id: SubscriptionId(17),
            external_id: "ext-17".into(),
            bid: "BIKYnictest04m2611251200001234".into(),
            amount: 9_900,
            goods_name: "월간 구독".into(),
            buyer_name: None,
            buyer_email: None,
            buyer_tel: None,
            card_quota: "00".into(),
            card_interest: "0".into(),
            interval_unit: "month".into(),
            interval_count: 1,
            cron: None,
            timezone: None,
            anchor_at: at("2027-01-31 09:00"),
            max_cycles: None,
            ends_at: None,
            status: "active".into(),
            cancel_at_period_end: false,
        }
    }

    fn valid() -> Valid {
        validate(&row(), &Policy::default()).unwrap()
    }

    #[test]
    fn rows_are_checked_by_the_rules_of_the_api_they_go_out_on() {
        let v1 = Policy {
            api: ApiKind::V1,
            ..Policy::default()
        };
        let webapi = Policy::default();
        // A telephone number with dashes: as written on the web API, its digits on v1.
        let mut r = row();
        r.buyer_tel = Some("010-1234-5678".into());
        assert_eq!(
            validate(&r, &webapi).unwrap().buyer.tel.as_deref(),
            Some("010-1234-5678")
        );
        assert_eq!(
            validate(&r, &v1).unwrap().buyer.tel.as_deref(),
            Some("01012345678")
        );
        // 14 Hangul syllables: 28 bytes in EUC-KR (fits 40), 42 in UTF-8 (does not).
        let mut r = row();
        r.goods_name = "가".repeat(14);
        assert!(validate(&r, &webapi).is_ok());
        let e = validate(&r, &v1).unwrap_err();
        assert_eq!(e.field, "goods_name", "{e}");
        // Instalments and merchant-paid interest are not sent on v1.
        let mut r = row();
        r.card_quota = "03".into();
        assert!(validate(&r, &webapi).is_ok());
        assert_eq!(validate(&r, &v1).unwrap_err().field, "card_quota");
        let mut r = row();
        r.card_interest = "1".into();
        assert!(validate(&r, &webapi).is_ok());
        assert_eq!(validate(&r, &v1).unwrap_err().field, "card_interest");
        // Not a telephone number at all.
        let mut r = row();
        r.buyer_tel = Some("call me".into());
        assert_eq!(validate(&r, &v1).unwrap_err().field, "buyer_tel");
        assert!(validate(&row(), &v1).is_ok());
    }

    fn fresh() -> BillingState {
        BillingState::new(SubscriptionStatus::Active)
    }

    #[test]
    fn first_charge_and_retries_derive_moids() {
        let policy = Policy::default();
        let d = decide(&valid(), &fresh(), at("2027-01-31 10:00"), &policy);
        match d {
            Decision::Charge {
                cycle,
                attempt,
                moid,
                skipped,
                ..
            } => {
                assert_eq!((cycle, attempt, moid.as_str()), (Cycle(1), 1, "S17-C1-A1"));
                assert!(skipped.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // A dunning retry of cycle 3, second attempt, with a prefix.
        let mut r = fresh();
        r.next_cycle = Some(Cycle(3));
        r.next_charge_at = Some(at("2027-04-01 09:00"));
        r.cycle_attempts = 1;
        r.cycle_declines = 1;
        let policy = Policy {
            moid_prefix: "shop-".into(),
            ..Policy::default()
        };
        let d = decide(&valid(), &r, at("2027-04-01 10:00"), &policy);
        assert!(
            matches!(d, Decision::Charge { cycle: Cycle(3), attempt: 2, ref moid, .. } if moid.as_str() == "shop-S17-C3-A2"),
            "{d:?}"
        );
        // Before the retry time: wait, even though the cycle itself is due.
        let d = decide(&valid(), &r, at("2027-03-31 23:00"), &policy);
        assert!(
            matches!(
                d,
                Decision::Wait {
                    next_cycle: Cycle(3),
                    ..
                }
            ),
            "{d:?}"
        );
    }

    #[test]
    fn pause_skips_the_cycles_that_came_due() {
        let mut r = fresh();
        r.next_cycle = Some(Cycle(2));
        r.next_charge_at = Some(at("2027-02-28 09:00"));
        r.paused_since = Some(at("2027-02-10 00:00"));
        let d = decide(&valid(), &r, at("2027-04-15 12:00"), &Policy::default());
        match d {
            Decision::Wait {
                next_cycle,
                next_charge_at,
                skipped,
                reason,
            } => {
                assert_eq!(
                    (next_cycle, next_charge_at, reason),
                    (Cycle(4), at("2027-04-30 09:00"), Some("paused"))
                );
                assert_eq!(
                    (
                        skipped.count,
                        skipped.first.map(|s| s.0),
                        skipped.last.map(|s| s.0)
                    ),
                    (2, Some(Cycle(2)), Some(Cycle(3)))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// Years of missed or paused daily cycles: one summary, decided at once.
    #[test]
    fn years_of_cycles_are_one_summary() {
        let mut r = row();
        let mut st = fresh();
        r.interval_unit = "day".into();
        let now = at("2127-01-31 10:00");
        let days = (now - at("2027-01-31 09:00")).num_days() as u64;
        let d = decide_row(&r, &st, now, &Policy::default());
        match d {
            Decision::Charge {
                cycle,
                skipped,
                moid,
                ..
            } => {
                assert_eq!((u64::from(cycle.0), skipped.count), (days + 1, days));
                assert_eq!(moid.as_str(), format!("S17-C{cycle}-A1"));
            }
            other => panic!("{other:?}"),
        }
        st.paused_since = Some(at("2027-01-01 00:00"));
        let d = decide_row(&r, &st, now, &Policy::default());
        assert!(
            matches!(d, Decision::Wait { next_cycle, skipped, reason: Some("paused"), .. }
                if u64::from(next_cycle.0) == days + 2 && skipped.count == days + 1),
            "{d:?}"
        );
        // Cycle numbers and attempt counts at the limits of their columns.
        let r = row();
        let mut st = fresh();
        st.next_cycle = Some(Cycle(i32::MAX as u32));
        let d = decide_row(&r, &st, now, &Policy::default());
        assert!(matches!(d, Decision::Ended { .. }), "{d:?}");
        let mut st = fresh();
        st.next_cycle = Some(Cycle(1));
        st.cycle_attempts = i32::MAX as u32;
        let d = decide_row(&r, &st, at("2027-01-31 10:00"), &Policy::default());
        assert!(
            matches!(d, Decision::Charge { attempt, .. } if attempt == i32::MAX as u32),
            "{d:?}"
        );
    }

    /// A cron schedule paused for more occurrences than one call steps through: the first
    /// call waits with a time already come (the engine keeps the pause), the next finishes.
    #[test]
    fn a_long_cron_pause_takes_two_calls() {
        let mut r = row();
        let mut st = fresh();
        r.cron = Some("* * * * *".into());
        r.anchor_at = at("2027-01-01 00:00");
        st.paused_since = Some(at("2027-01-01 00:30"));
        let now = at("2027-03-20 00:00") + chrono::Duration::seconds(30);
        let policy = Policy::default();
        let minutes = (now - at("2027-01-01 00:00")).num_minutes() as u64;
        let mut passed = 0;
        let mut calls = 0;
        loop {
            calls += 1;
            let d = decide_row(&r, &st, now, &policy);
            let Decision::Wait {
                next_cycle,
                next_charge_at,
                skipped,
                reason: Some("paused"),
            } = d
            else {
                panic!("{d:?}")
            };
            passed += skipped.count;
            st.next_cycle = Some(next_cycle);
            st.next_charge_at = Some(next_charge_at);
            if next_charge_at > now {
                assert_eq!(
                    (u64::from(next_cycle.0), next_charge_at, passed),
                    (minutes + 2, at("2027-03-20 00:01"), minutes + 1)
                );
                break;
            }
        }
        assert_eq!(calls, 2);
    }

    fn decide_row(r: &MerchantRow, st: &BillingState, now: DateTime<Utc>, p: &Policy) -> Decision {
        decide(&validate(r, p).unwrap(), st, now, p)
    }

    #[test]
    fn dunning_then_final_state() {
        let valid = valid();
        let schedule = Some(&valid.schedule);
        let now = at("2027-01-31 10:00");
        let pos = |declines| Position {
            cycle: Cycle(1),
            due_at: at("2027-01-31 09:00"),
            attempts: declines,
            declines,
        };
        let days = |n| now + chrono::Duration::days(n);
        for (policy_final, want_status) in [
            (FinalState::PastDue, SubscriptionStatus::PastDue),
            (FinalState::Cancelled, SubscriptionStatus::Cancelled),
        ] {
            let policy = Policy {
                final_state: policy_final,
                ..Policy::default()
            };
            let waits: Vec<_> = (1..=3)
                .map(|n| advance(schedule, pos(n), Settled::Declined, now, &policy).next_charge_at)
                .collect();
            assert_eq!(waits, vec![Some(days(1)), Some(days(3)), Some(days(5))]);
            let last = advance(schedule, pos(4), Settled::Declined, now, &policy);
            assert_eq!(last.status.map(|s| s.0), Some(want_status));
            // An unlisted code after as many declines as dunning allows: no new status (so no
            // cancellation, no billkey removal), retried on the request-error schedule.
            let unlisted = advance(schedule, pos(4), Settled::UnlistedCode, now, &policy);
            assert_eq!(
                (
                    unlisted.status,
                    unlisted.next_charge_at,
                    unlisted.cycle_declines
                ),
                (
                    None,
                    Some(now + chrono::Duration::from_std(policy.request_error_retry).unwrap()),
                    4
                )
            );
        }
        let policy = Policy::default();
        let ok = advance(schedule, pos(2), Settled::Approved, now, &policy);
        assert_eq!(
            (ok.next_cycle, ok.next_charge_at, ok.cycle_declines),
            (Cycle(2), Some(at("2027-02-28 09:00")), 0)
        );
        let gone = advance(schedule, pos(0), Settled::PermanentCard, now, &policy);
        assert_eq!(
            gone.status.map(|s| s.0),
            Some(SubscriptionStatus::CardInvalid)
        );
        let bug = advance(schedule, pos(0), Settled::RequestError, now, &policy);
        assert_eq!(
            (bug.next_cycle, bug.next_charge_at, bug.status),
            (Cycle(1), Some(now + chrono::Duration::hours(1)), None)
        );
        let lost = advance(schedule, pos(0), Settled::NotCharged, now, &policy);
        assert_eq!(
            lost.next_charge_at,
            Some(now + chrono::Duration::minutes(1))
        );
        // Without a schedule (the row no longer validates), an approval still moves on.
        let blind = advance(None, pos(1), Settled::Approved, now, &policy);
        assert_eq!((blind.next_cycle, blind.next_charge_at), (Cycle(2), None));
    }

    #[test]
    fn billkeys_with_white_space_are_refused_not_trimmed() {
        for bid in [
            " BIKYnictest04m2611251200001234",
            "BIKYnictest04m2611251200001234\n",
        ] {
            let mut r = row();
            r.bid = bid.into();
            let e = validate(&r, &Policy::default()).unwrap_err();
            assert_eq!(e.field, "bid", "{bid:?}");
        }
    }

    #[test]
    fn classes_that_settle() {
        use Class::*;
        let settles = [
            Approved,
            Declined,
            PermanentCard,
            RequestError,
            UnlistedCode,
            NotSent,
        ];
        for c in settles {
            assert!(Settled::from_class(c).is_some(), "{c:?}");
        }
        for c in [Duplicate, Throttled, Unknown] {
            assert_eq!(
                Settled::from_class(c),
                None,
                "{c:?} must be resolved by lookup"
            );
        }
    }
}
