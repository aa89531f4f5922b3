//! When each billing cycle is due. Pure: no IO, no clock; `now` is always an argument.
//!
//! Interval schedules are computed from the anchor every time, in the subscription's time zone,
//! so a month-end anchor never drifts: Jan 31 → Feb 28 (29) → Mar 31 → Apr 30. Cron schedules
//! are the alternative: cycle 1 is the first occurrence at or after the anchor.

use std::str::FromStr;

use chrono::{DateTime, Days, Months, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// A cycle number, 1-based: cycle 1 is due at the anchor (or the first cron time after it).
pub type Cycle = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalUnit {
    Day,
    Week,
    Month,
    Year,
}

impl FromStr for IntervalUnit {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "day" => Ok(IntervalUnit::Day),
            "week" => Ok(IntervalUnit::Week),
            "month" => Ok(IntervalUnit::Month),
            "year" => Ok(IntervalUnit::Year),
            other => Err(ScheduleError::new(
                "interval_unit",
                format!("{other:?} is not one of day, week, month, year"),
            )),
        }
    }
}

impl IntervalUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            IntervalUnit::Day => "day",
            IntervalUnit::Week => "week",
            IntervalUnit::Month => "month",
            IntervalUnit::Year => "year",
        }
    }
}

/// A schedule that could not be built; names the column or option at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub problem: String,
}

impl ScheduleError {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

#[derive(Clone, Debug)]
enum Rule {
    Every { unit: IntervalUnit, count: u32 },
    Cron(Box<croner::Cron>),
}

/// What happens to cycles missed while nicebill was down (or a subscription was inserted with
/// an anchor far in the past).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Charge only the latest due cycle; the earlier missed ones are recorded as skipped.
    #[default]
    Latest,
    /// Charge every missed cycle, one after another (never two in one go).
    All,
}

/// The rule, the anchor, the time zone and the end conditions of one subscription.
#[derive(Clone, Debug)]
pub struct Schedule {
    rule: Rule,
    anchor: DateTime<Utc>,
    tz: Tz,
    max_cycles: Option<Cycle>,
    ends_at: Option<DateTime<Utc>>,
}

/// The cycle to charge now, and the cycles passed over to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub cycle: Cycle,
    pub due_at: DateTime<Utc>,
    pub skipped: Vec<(Cycle, DateTime<Utc>)>,
}

/// How far catch-up walks before giving up on listing skipped cycles one by one: a daily
/// schedule that was down for years still finishes quickly.
const MAX_CATCH_UP_STEPS: usize = 10_000;

pub fn parse_timezone(field: &'static str, name: &str) -> Result<Tz, ScheduleError> {
    name.trim().parse::<Tz>().map_err(|_| {
        ScheduleError::new(
            field,
            format!("{name:?} is not an IANA time zone (e.g. Asia/Seoul)"),
        )
    })
}

pub fn parse_cron(text: &str) -> Result<croner::Cron, ScheduleError> {
    croner::Cron::from_str(text.trim()).map_err(|e| {
        ScheduleError::new(
            "cron",
            format!("{text:?} is not a cron expression (5 fields, or 6 with seconds first): {e}"),
        )
    })
}

impl Schedule {
    pub fn every(
        unit: IntervalUnit,
        count: i64,
        anchor: DateTime<Utc>,
        tz: Tz,
    ) -> Result<Self, ScheduleError> {
        let count = u32::try_from(count)
            .ok()
            .filter(|c| (1..=1000).contains(c))
            .ok_or_else(|| {
                ScheduleError::new(
                    "interval_count",
                    format!("{count} is not between 1 and 1000"),
                )
            })?;
        Ok(Self {
            rule: Rule::Every { unit, count },
            anchor,
            tz,
            max_cycles: None,
            ends_at: None,
        })
    }

    pub fn cron(expression: &str, anchor: DateTime<Utc>, tz: Tz) -> Result<Self, ScheduleError> {
        let cron = parse_cron(expression)?;
        let schedule = Self {
            rule: Rule::Cron(Box::new(cron)),
            anchor,
            tz,
            max_cycles: None,
            ends_at: None,
        };
        if schedule.first_cron_time().is_none() {
            return Err(ScheduleError::new(
                "cron",
                format!("{expression:?} never occurs after the anchor"),
            ));
        }
        Ok(schedule)
    }

    pub fn with_end(
        mut self,
        max_cycles: Option<i64>,
        ends_at: Option<DateTime<Utc>>,
    ) -> Result<Self, ScheduleError> {
        self.max_cycles = match max_cycles {
            None => None,
            Some(m) => Some(u32::try_from(m).ok().filter(|m| *m >= 1).ok_or_else(|| {
                ScheduleError::new(
                    "max_cycles",
                    format!("{m} is not a positive number of cycles"),
                )
            })?),
        };
        self.ends_at = ends_at;
        Ok(self)
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    fn first_cron_time(&self) -> Option<DateTime<Utc>> {
        let Rule::Cron(cron) = &self.rule else {
            return None;
        };
        cron.find_next_occurrence(&self.anchor.with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Local wall time → UTC; in a DST gap the time moves forward past the gap, in a fold the
    /// earlier instant is taken.
    fn resolve_local(&self, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
        for shift in 0..=3 {
            let candidate = naive + chrono::Duration::hours(shift);
            if let Some(t) = self.tz.from_local_datetime(&candidate).earliest() {
                return Some(t.with_timezone(&Utc));
            }
        }
        None
    }

    /// The due time of `cycle` ignoring end conditions.
    fn raw_due(&self, cycle: Cycle) -> Option<DateTime<Utc>> {
        if cycle == 0 {
            return None;
        }
        match &self.rule {
            Rule::Every { unit, count } => {
                let steps = (cycle - 1).checked_mul(*count)?;
                let local = self.anchor.with_timezone(&self.tz).naive_local();
                let shifted = match unit {
                    IntervalUnit::Day => local.checked_add_days(Days::new(steps.into()))?,
                    IntervalUnit::Week => {
                        local.checked_add_days(Days::new(u64::from(steps) * 7))?
                    }
                    IntervalUnit::Month => local.checked_add_months(Months::new(steps))?,
                    IntervalUnit::Year => {
                        local.checked_add_months(Months::new(steps.checked_mul(12)?))?
                    }
                };
                self.resolve_local(shifted)
            }
            Rule::Cron(cron) => {
                let mut t = self.first_cron_time()?;
                for _ in 1..cycle {
                    t = cron
                        .find_next_occurrence(&t.with_timezone(&self.tz), false)
                        .ok()?
                        .with_timezone(&Utc);
                }
                Some(t)
            }
        }
    }

    fn within_end(&self, cycle: Cycle, due: DateTime<Utc>) -> bool {
        self.max_cycles.is_none_or(|m| cycle <= m) && self.ends_at.is_none_or(|e| due <= e)
    }

    /// When `cycle` is due, or `None` when the subscription has ended before it.
    pub fn due_at(&self, cycle: Cycle) -> Option<DateTime<Utc>> {
        self.raw_due(cycle)
            .filter(|due| self.within_end(cycle, *due))
    }

    /// The cycle after `cycle` (due at `due`), or `None` when the subscription ends first.
    pub fn next(&self, cycle: Cycle, due: DateTime<Utc>) -> Option<(Cycle, DateTime<Utc>)> {
        let next_cycle = cycle.checked_add(1)?;
        let next_due = match &self.rule {
            Rule::Every { .. } => self.raw_due(next_cycle)?,
            Rule::Cron(cron) => cron
                .find_next_occurrence(&due.with_timezone(&self.tz), false)
                .ok()?
                .with_timezone(&Utc),
        };
        self.within_end(next_cycle, next_due)
            .then_some((next_cycle, next_due))
    }

    /// Given the next uncharged cycle (due at `due`), what to charge at `now` under `policy`.
    /// `None` when nothing is due yet. Never more than one cycle.
    pub fn due_now(
        &self,
        cycle: Cycle,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        policy: CatchUp,
    ) -> Option<Due> {
        if due > now {
            return None;
        }
        let mut current = (cycle, due);
        let mut skipped = Vec::new();
        if policy == CatchUp::Latest {
            for _ in 0..MAX_CATCH_UP_STEPS {
                match self.next(current.0, current.1) {
                    Some(next) if next.1 <= now => {
                        skipped.push(current);
                        current = next;
                    }
                    _ => break,
                }
            }
        }
        Some(Due {
            cycle: current.0,
            due_at: current.1,
            skipped,
        })
    }

    /// The next `count` due times from cycle 1, for previews.
    pub fn preview(&self, count: usize) -> Vec<(Cycle, DateTime<Utc>)> {
        let mut out = Vec::with_capacity(count);
        let mut current = self.due_at(1).map(|d| (1, d));
        while let Some(c) = current {
            if out.len() == count {
                break;
            }
            out.push(c);
            current = self.next(c.0, c.1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
    }

    fn seoul(s: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").unwrap();
        chrono_tz::Asia::Seoul
            .from_local_datetime(&naive)
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Check the first due times of an interval schedule, anchored in Seoul local time.
    fn check_every(unit: IntervalUnit, count: i64, anchor: &str, want: &[&str]) {
        let s = Schedule::every(unit, count, seoul(anchor), chrono_tz::Asia::Seoul).unwrap();
        let got: Vec<DateTime<Utc>> = s.preview(want.len()).into_iter().map(|c| c.1).collect();
        let want: Vec<DateTime<Utc>> = want.iter().map(|w| seoul(w)).collect();
        assert_eq!(got, want, "{unit:?}×{count} from {anchor}");
    }

    #[test]
    fn month_ends_never_drift() {
        check_every(
            IntervalUnit::Month,
            1,
            "2026-01-31 09:00",
            &[
                "2026-01-31 09:00",
                "2026-02-28 09:00",
                "2026-03-31 09:00",
                "2026-04-30 09:00",
                "2026-05-31 09:00",
            ],
        );
        check_every(
            IntervalUnit::Month,
            1,
            "2027-12-31 00:30",
            &[
                "2027-12-31 00:30",
                "2028-01-31 00:30",
                "2028-02-29 00:30",
                "2028-03-31 00:30",
            ],
        );
        check_every(
            IntervalUnit::Month,
            3,
            "2026-11-30 12:00",
            &[
                "2026-11-30 12:00",
                "2027-02-28 12:00",
                "2027-05-30 12:00",
                "2027-08-30 12:00",
            ],
        );
        check_every(
            IntervalUnit::Month,
            1,
            "2026-03-29 10:00",
            &["2026-03-29 10:00", "2026-04-29 10:00"],
        );
    }

    #[test]
    fn weeks_days_and_leap_years() {
        check_every(
            IntervalUnit::Week,
            1,
            "2026-12-28 09:00",
            &["2026-12-28 09:00", "2027-01-04 09:00", "2027-01-11 09:00"],
        );
        check_every(
            IntervalUnit::Week,
            2,
            "2026-02-26 09:00",
            &["2026-02-26 09:00", "2026-03-12 09:00"],
        );
        check_every(
            IntervalUnit::Day,
            10,
            "2028-02-25 23:59",
            &["2028-02-25 23:59", "2028-03-06 23:59"],
        );
        check_every(
            IntervalUnit::Year,
            1,
            "2028-02-29 09:00",
            &[
                "2028-02-29 09:00",
                "2029-02-28 09:00",
                "2030-02-28 09:00",
                "2031-02-28 09:00",
                "2032-02-29 09:00",
            ],
        );
    }

    #[test]
    fn local_time_zone_decides_the_day() {
        // 2026-01-31 20:00 UTC is Feb 1 in Seoul: the monthly anchor is the 1st there.
        let s = Schedule::every(
            IntervalUnit::Month,
            1,
            utc("2026-01-31 20:00:00"),
            chrono_tz::Asia::Seoul,
        )
        .unwrap();
        assert_eq!(s.due_at(2), Some(utc("2026-02-28 20:00:00")));
        // The same instant in UTC is the 31st, so the next cycle clamps to Feb 28.
        let s = Schedule::every(
            IntervalUnit::Month,
            1,
            utc("2026-01-31 20:00:00"),
            chrono_tz::UTC,
        )
        .unwrap();
        assert_eq!(s.due_at(2), Some(utc("2026-02-28 20:00:00")));
        assert_eq!(s.due_at(3), Some(utc("2026-03-31 20:00:00")));
        // Across a DST change the local wall time is kept.
        let ny = chrono_tz::America::New_York;
        let s = Schedule::every(IntervalUnit::Week, 1, utc("2026-03-02 14:00:00"), ny).unwrap();
        assert_eq!(s.due_at(2), Some(utc("2026-03-09 13:00:00")));
        // A wall time that does not exist (spring forward) moves past the gap.
        let s = Schedule::every(IntervalUnit::Day, 1, utc("2026-03-07 07:30:00"), ny).unwrap();
        assert_eq!(s.due_at(2), Some(utc("2026-03-08 07:30:00")));
    }

    #[test]
    fn cron_schedules() {
        // 09:00 Seoul on the 1st of each month, anchored mid-month.
        let s = Schedule::cron(
            "0 9 1 * *",
            seoul("2026-01-15 00:00"),
            chrono_tz::Asia::Seoul,
        )
        .unwrap();
        let got: Vec<_> = s.preview(3).into_iter().map(|c| c.1).collect();
        assert_eq!(
            got,
            vec![
                seoul("2026-02-01 09:00"),
                seoul("2026-03-01 09:00"),
                seoul("2026-04-01 09:00")
            ]
        );
        assert_eq!(s.due_at(3), Some(seoul("2026-04-01 09:00")));
        // Six fields: seconds first. An anchor exactly on an occurrence counts.
        let s = Schedule::cron(
            "0 0 9 * * MON",
            seoul("2026-11-30 09:00"),
            chrono_tz::Asia::Seoul,
        )
        .unwrap();
        assert_eq!(s.due_at(1), Some(seoul("2026-11-30 09:00")));
        assert_eq!(s.due_at(2), Some(seoul("2026-12-07 09:00")));
        for bad in ["", "* *", "61 * * * *", "0 9 31 2 *", "every day"] {
            let err =
                Schedule::cron(bad, seoul("2026-01-01 00:00"), chrono_tz::Asia::Seoul).unwrap_err();
            assert_eq!(err.field, "cron", "{bad:?}");
        }
    }

    #[test]
    fn end_conditions() {
        let s = Schedule::every(
            IntervalUnit::Month,
            1,
            seoul("2026-01-10 09:00"),
            chrono_tz::Asia::Seoul,
        )
        .unwrap()
        .with_end(Some(3), None)
        .unwrap();
        assert_eq!(s.preview(10).len(), 3);
        assert_eq!(s.next(3, seoul("2026-03-10 09:00")), None);
        let s = Schedule::every(
            IntervalUnit::Month,
            1,
            seoul("2026-01-10 09:00"),
            chrono_tz::Asia::Seoul,
        )
        .unwrap()
        .with_end(None, Some(seoul("2026-04-10 09:00")))
        .unwrap();
        assert_eq!(s.preview(10).len(), 4, "ends_at is inclusive");
        assert!(
            Schedule::every(
                IntervalUnit::Month,
                1,
                seoul("2026-01-10 09:00"),
                chrono_tz::Asia::Seoul
            )
            .unwrap()
            .with_end(Some(0), None)
            .is_err()
        );
        for bad in [0, -1, 1001] {
            let err = Schedule::every(
                IntervalUnit::Day,
                bad,
                seoul("2026-01-10 09:00"),
                chrono_tz::Asia::Seoul,
            )
            .unwrap_err();
            assert_eq!(err.field, "interval_count");
        }
        assert_eq!(
            "fortnight".parse::<IntervalUnit>().unwrap_err().field,
            "interval_unit"
        );
        assert_eq!(
            parse_timezone("timezone", "Mars/Olympus")
                .unwrap_err()
                .field,
            "timezone"
        );
    }

    #[test]
    fn catch_up_charges_one_cycle() {
        let s = Schedule::every(
            IntervalUnit::Month,
            1,
            seoul("2026-01-31 09:00"),
            chrono_tz::Asia::Seoul,
        )
        .unwrap();
        let now = seoul("2026-05-01 00:00");
        let due = s
            .due_now(1, seoul("2026-01-31 09:00"), now, CatchUp::Latest)
            .unwrap();
        assert_eq!((due.cycle, due.due_at), (4, seoul("2026-04-30 09:00")));
        assert_eq!(
            due.skipped,
            vec![
                (1, seoul("2026-01-31 09:00")),
                (2, seoul("2026-02-28 09:00")),
                (3, seoul("2026-03-31 09:00"))
            ]
        );
        let due = s
            .due_now(1, seoul("2026-01-31 09:00"), now, CatchUp::All)
            .unwrap();
        assert_eq!((due.cycle, due.skipped.len()), (1, 0));
        assert_eq!(
            s.due_now(5, seoul("2026-05-31 09:00"), now, CatchUp::Latest),
            None
        );
        // Ends cut catch-up short too.
        let ended = s.clone().with_end(Some(2), None).unwrap();
        let due = ended
            .due_now(1, seoul("2026-01-31 09:00"), now, CatchUp::Latest)
            .unwrap();
        assert_eq!(due.cycle, 2);
    }
}
