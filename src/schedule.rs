//! When each billing cycle is due. Pure: no IO, no clock; `now` is always an argument.
//!
//! Interval schedules are computed from the anchor every time, in the subscription's time zone,
//! so a month-end anchor never drifts: Jan 31 → Feb 28 (29) → Mar 31 → Apr 30. Cron schedules
//! are the alternative: cycle 1 is the first occurrence at or after the anchor.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, Months, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// A cycle number, 1-based: cycle 1 is due at the anchor (or the first cron time after it).
/// Stored in signed 32-bit columns (`charges.cycle`, `billing_state.next_cycle`), so never
/// above [`MAX_CYCLE`] + 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Cycle(pub u32);

impl Cycle {
    /// The first cycle.
    pub const FIRST: Cycle = Cycle(1);

    /// The cycle after this one, unless that would pass [`MAX_CYCLE`].
    pub fn next(self) -> Option<Cycle> {
        self.0.checked_add(1).map(Cycle).filter(|c| *c <= MAX_CYCLE)
    }

    /// The number after this one, at most one past [`MAX_CYCLE`] (where every schedule has
    /// ended): what `next_cycle` holds once this cycle is charged.
    pub fn saturating_next(self) -> Cycle {
        Cycle(self.0.saturating_add(1).min(MAX_CYCLE.0 + 1))
    }

    /// This cycle as its database column holds it (every cycle fits).
    pub fn column(self) -> i32 {
        i32::try_from(self.0).unwrap_or(i32::MAX)
    }

    /// A cycle from its database column; `None` for a value no cycle can have (below 1).
    pub fn from_column(value: i32) -> Option<Cycle> {
        u32::try_from(value).ok().filter(|v| *v >= 1).map(Cycle)
    }
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

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
    /// The anchor's wall time in `tz`; `None` only for an anchor so close to the limits of
    /// chrono's calendar that its local time cannot be represented (no cycle is due then).
    anchor_local: Option<NaiveDateTime>,
    tz: Tz,
    /// The number of cycles, when limited.
    max_cycles: Option<u32>,
    ends_at: Option<DateTime<Utc>>,
}

/// The largest cycle number. `next_cycle` is stored in a signed 32-bit column and must hold one
/// past the last cycle charged, so every schedule ends here at the latest: a cycle number that
/// would go past it means "no further cycle", never a wrap or a panic.
pub const MAX_CYCLE: Cycle = Cycle((i32::MAX - 1) as u32);

/// How many cron occurrences one call steps through at most. Cron times can only be found one
/// after another (about 1 to 50 µs each), so a call that would need more returns an
/// `Unfinished` answer and the caller continues from there in a later call. Interval schedules
/// jump arithmetically and never need it.
pub const CRON_STEPS_PER_CALL: u32 = 100_000;

/// A cycle with its due time, and the cycles passed over to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    pub cycle: Cycle,
    pub due_at: DateTime<Utc>,
    pub skipped: Skipped,
}

/// Cycles passed over. They are always consecutive, so a summary says it all: a skip of a
/// million cycles costs no more than a skip of one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skipped {
    pub count: u64,
    pub first: Option<(Cycle, DateTime<Utc>)>,
    pub last: Option<(Cycle, DateTime<Utc>)>,
}

impl Skipped {
    /// The cycles from `first` through `last` (none when `last` is `None` or before `first`).
    fn through(first: (Cycle, DateTime<Utc>), last: Option<(Cycle, DateTime<Utc>)>) -> Self {
        match last {
            Some(last) if last.0 >= first.0 => Skipped {
                count: u64::from(last.0.0 - first.0.0) + 1,
                first: Some(first),
                last: Some(last),
            },
            _ => Skipped::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `count` for counters (saturating where `usize` is narrower).
    pub fn len(&self) -> usize {
        usize::try_from(self.count).unwrap_or(usize::MAX)
    }
}

/// `cycle 5 due …`, or `cycles 2-9999 (9998 cycles, first due …, last due …)`.
impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.first, self.last) {
            (Some((a, at)), Some((b, _))) if a == b => write!(f, "cycle {a} due {at}"),
            (Some((a, first)), Some((b, last))) => write!(
                f,
                "cycles {a}-{b} ({} cycles, first due {first}, last due {last})",
                self.count
            ),
            _ => f.write_str("no cycle"),
        }
    }
}

/// What to charge now; see [`Schedule::due_now`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DueNow {
    /// The next uncharged cycle is not due yet.
    NotYet,
    /// Charge this cycle; `skipped` are the earlier ones the catch-up policy passes over.
    Charge(Due),
    /// The step budget ran out before the latest due cycle was found (cron schedules only).
    /// The cycles in `skipped` are passed over; the cycle given is due but may not be the
    /// latest: store it as the next uncharged cycle and ask again (in a later pass).
    Unfinished(Due),
}

/// The first cycle due after a time; see [`Schedule::first_after`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirstAfter {
    /// This cycle is the first one due after the time; `skipped` are those passed over.
    Next(Due),
    /// The subscription ends before a cycle is due after the time; every remaining cycle is
    /// passed over.
    Ended(Skipped),
    /// The step budget ran out (cron schedules only): `skipped` are passed over, the cycle
    /// given is due by the time and not yet decided. Store it and ask again.
    Unfinished(Due),
}

/// Where a search for the last cycle due by some time stopped.
enum Reach {
    /// `at` is that cycle; `before` the one before it, when the search moved at all.
    Done {
        at: (Cycle, DateTime<Utc>),
        before: Option<(Cycle, DateTime<Utc>)>,
    },
    /// The step budget ran out: `at` is due by then, and so is every cycle up to `before`.
    Unfinished {
        at: (Cycle, DateTime<Utc>),
        before: (Cycle, DateTime<Utc>),
    },
}

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

/// The wall time of `t` in `tz`, or `None` where it falls outside chrono's calendar (within a
/// day of its limits). chrono's own `naive_local` panics there.
fn local_time(tz: Tz, t: DateTime<Utc>) -> Option<NaiveDateTime> {
    let offset = tz.offset_from_utc_datetime(&t.naive_utc()).fix();
    t.naive_utc().checked_add_offset(offset)
}

impl Schedule {
    fn new(rule: Rule, anchor: DateTime<Utc>, tz: Tz) -> Self {
        Self {
            rule,
            anchor,
            anchor_local: local_time(tz, anchor),
            tz,
            max_cycles: None,
            ends_at: None,
        }
    }

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
        Ok(Self::new(Rule::Every { unit, count }, anchor, tz))
    }

    pub fn cron(expression: &str, anchor: DateTime<Utc>, tz: Tz) -> Result<Self, ScheduleError> {
        let cron = parse_cron(expression)?;
        let schedule = Self::new(Rule::Cron(Box::new(cron)), anchor, tz);
        if schedule.first_cron_time().is_none() {
            return Err(ScheduleError::new(
                "cron",
                format!("{expression:?} never occurs after the anchor"),
            ));
        }
        Ok(schedule)
    }

    /// End conditions. A `max_cycles` beyond [`MAX_CYCLE`] is no limit at all.
    pub fn with_end(
        mut self,
        max_cycles: Option<i64>,
        ends_at: Option<DateTime<Utc>>,
    ) -> Result<Self, ScheduleError> {
        self.max_cycles = match max_cycles {
            None => None,
            Some(m) if m >= 1 => Some(u32::try_from(m).unwrap_or(u32::MAX)),
            Some(m) => {
                return Err(ScheduleError::new(
                    "max_cycles",
                    format!("{m} is not a positive number of cycles"),
                ));
            }
        };
        self.ends_at = ends_at;
        Ok(self)
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// `t` in the schedule's time zone, when its wall time is representable (see `local_time`).
    fn in_tz(&self, t: DateTime<Utc>) -> Option<DateTime<Tz>> {
        local_time(self.tz, t)?;
        Some(t.with_timezone(&self.tz))
    }

    fn first_cron_time(&self) -> Option<DateTime<Utc>> {
        let Rule::Cron(cron) = &self.rule else {
            return None;
        };
        cron.find_next_occurrence(&self.in_tz(self.anchor)?, true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The cron occurrence after `t`.
    fn cron_after(&self, cron: &croner::Cron, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        cron.find_next_occurrence(&self.in_tz(t)?, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// Local wall time → UTC; in a DST gap the time moves forward past the gap (a whole hour
    /// at a time; up to two days, for the day Samoa skipped), in a fold the earlier instant is
    /// taken. `None` only at the limits of chrono's calendar.
    fn resolve_local(&self, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
        (0..=48).find_map(|shift| {
            let candidate = naive.checked_add_signed(chrono::Duration::hours(shift))?;
            self.tz
                .from_local_datetime(&candidate)
                .earliest()
                .map(|t| t.with_timezone(&Utc))
        })
    }

    /// The wall time of `cycle` of an interval schedule (cycle ≥ 1), computed from the anchor.
    fn interval_local(
        &self,
        unit: IntervalUnit,
        count: u32,
        cycle: Cycle,
    ) -> Option<NaiveDateTime> {
        let local = self.anchor_local?;
        let steps = u64::from(cycle.0.checked_sub(1)?).checked_mul(u64::from(count))?;
        match unit {
            IntervalUnit::Day => local.checked_add_days(Days::new(steps)),
            IntervalUnit::Week => local.checked_add_days(Days::new(steps.checked_mul(7)?)),
            IntervalUnit::Month => {
                local.checked_add_months(Months::new(u32::try_from(steps).ok()?))
            }
            IntervalUnit::Year => {
                local.checked_add_months(Months::new(u32::try_from(steps.checked_mul(12)?).ok()?))
            }
        }
    }

    /// The due time of `cycle` ignoring end conditions (other than [`MAX_CYCLE`]). For cron
    /// schedules this steps from cycle 1, so it costs `cycle` steps.
    fn raw_due(&self, cycle: Cycle) -> Option<DateTime<Utc>> {
        if cycle.0 == 0 || cycle > MAX_CYCLE {
            return None;
        }
        match &self.rule {
            Rule::Every { unit, count } => {
                self.resolve_local(self.interval_local(*unit, *count, cycle)?)
            }
            Rule::Cron(cron) => {
                let mut t = self.first_cron_time()?;
                for _ in 1..cycle.0 {
                    t = self.cron_after(cron, t)?;
                }
                Some(t)
            }
        }
    }

    fn within_end(&self, cycle: Cycle, due: DateTime<Utc>) -> bool {
        (Cycle::FIRST..=MAX_CYCLE).contains(&cycle)
            && self.max_cycles.is_none_or(|m| cycle.0 <= m)
            && self.ends_at.is_none_or(|e| due <= e)
    }

    /// When `cycle` is due, or `None` when the subscription has ended before it.
    pub fn due_at(&self, cycle: Cycle) -> Option<DateTime<Utc>> {
        self.raw_due(cycle)
            .filter(|due| self.within_end(cycle, *due))
    }

    /// The cycle after `cycle` (due at `due`), or `None` when the subscription ends first.
    pub fn next(&self, cycle: Cycle, due: DateTime<Utc>) -> Option<(Cycle, DateTime<Utc>)> {
        let next_cycle = cycle.next()?;
        let next_due = match &self.rule {
            Rule::Every { .. } => self.raw_due(next_cycle)?,
            Rule::Cron(cron) => self.cron_after(cron, due)?,
        };
        self.within_end(next_cycle, next_due)
            .then_some((next_cycle, next_due))
    }

    /// Given the next uncharged cycle (due at `due`), what to charge at `now` under `policy`.
    /// Never more than one cycle. Any number of missed cycles is caught up at once for interval
    /// schedules; cron schedules step at most [`CRON_STEPS_PER_CALL`] occurrences per call.
    pub fn due_now(
        &self,
        cycle: Cycle,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        policy: CatchUp,
    ) -> DueNow {
        self.due_now_within(cycle, due, now, policy, CRON_STEPS_PER_CALL)
    }

    fn due_now_within(
        &self,
        cycle: Cycle,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        policy: CatchUp,
        budget: u32,
    ) -> DueNow {
        let from = (cycle, due);
        if due > now {
            return DueNow::NotYet;
        }
        if policy == CatchUp::All {
            return DueNow::Charge(Due {
                cycle,
                due_at: due,
                skipped: Skipped::default(),
            });
        }
        match self.last_due_by(from, now, budget) {
            Reach::Done { at, before } => DueNow::Charge(Due {
                cycle: at.0,
                due_at: at.1,
                skipped: Skipped::through(from, before),
            }),
            Reach::Unfinished { at, before } => DueNow::Unfinished(Due {
                cycle: at.0,
                due_at: at.1,
                skipped: Skipped::through(from, Some(before)),
            }),
        }
    }

    /// Given the next uncharged cycle (due at `due`), the first cycle due after `t`, passing
    /// over every cycle due at or before it (a pause). As fast, and as bounded, as
    /// [`Schedule::due_now`].
    pub fn first_after(&self, cycle: Cycle, due: DateTime<Utc>, t: DateTime<Utc>) -> FirstAfter {
        self.first_after_within(cycle, due, t, CRON_STEPS_PER_CALL)
    }

    fn first_after_within(
        &self,
        cycle: Cycle,
        due: DateTime<Utc>,
        t: DateTime<Utc>,
        budget: u32,
    ) -> FirstAfter {
        let from = (cycle, due);
        if due > t {
            return FirstAfter::Next(Due {
                cycle,
                due_at: due,
                skipped: Skipped::default(),
            });
        }
        match self.last_due_by(from, t, budget) {
            Reach::Unfinished { at, before } => FirstAfter::Unfinished(Due {
                cycle: at.0,
                due_at: at.1,
                skipped: Skipped::through(from, Some(before)),
            }),
            Reach::Done { at, .. } => {
                let skipped = Skipped::through(from, Some(at));
                match self.next(at.0, at.1) {
                    Some((cycle, due_at)) => FirstAfter::Next(Due {
                        cycle,
                        due_at,
                        skipped,
                    }),
                    None => FirstAfter::Ended(skipped),
                }
            }
        }
    }

    /// The last cycle, from `from` on, that is due at or before `t` and within the end
    /// conditions; `from` itself (taken as given) when no later one is.
    fn last_due_by(&self, from: (Cycle, DateTime<Utc>), t: DateTime<Utc>, budget: u32) -> Reach {
        match &self.rule {
            Rule::Every { unit, count } => self.interval_last_due_by(*unit, *count, from, t),
            Rule::Cron(_) => self.step_last_due_by(from, t, budget),
        }
    }

    /// One cycle at a time, at most `budget` (at least one) steps.
    fn step_last_due_by(
        &self,
        from: (Cycle, DateTime<Utc>),
        t: DateTime<Utc>,
        budget: u32,
    ) -> Reach {
        let mut at = from;
        let mut before = None;
        for _ in 0..budget {
            match self.next(at.0, at.1) {
                Some(next) if next.1 <= t => {
                    before = Some(at);
                    at = next;
                }
                _ => return Reach::Done { at, before },
            }
        }
        match self.next(at.0, at.1) {
            Some(next) if next.1 <= t => Reach::Unfinished {
                at: next,
                before: at,
            },
            _ => Reach::Done { at, before },
        }
    }

    /// Arithmetic: estimate the cycle from the calendar distance between the anchor and `t`,
    /// then correct it. Due times grow with the cycle number (each cycle is at least a day
    /// after the previous one in local time, more than any offset change), so "due by `t`"
    /// holds for a run of cycles and then never again: gallop from the estimate to bracket the
    /// boundary, then bisect. Usually two or three due-time computations, never more than
    /// about 64, whatever the distance.
    fn interval_last_due_by(
        &self,
        unit: IntervalUnit,
        count: u32,
        from: (Cycle, DateTime<Utc>),
        t: DateTime<Utc>,
    ) -> Reach {
        let limit = self.ends_at.map_or(t, |e| e.min(t));
        let top = u64::from(self.max_cycles.unwrap_or(MAX_CYCLE.0).min(MAX_CYCLE.0));
        let floor = u64::from(from.0.0);
        let stay = Reach::Done {
            at: from,
            before: None,
        };
        if floor >= top {
            return stay;
        }
        let due = |k: u64| u32::try_from(k).ok().and_then(|k| self.raw_due(Cycle(k)));
        let by_limit = |k: u64| due(k).is_some_and(|d| d <= limit);
        // `lo` is due by the limit (the floor is taken as given), `hi` is not (top + 1 is past
        // the end).
        let guess = self.estimate(unit, count, limit).clamp(floor, top);
        let (mut lo, mut hi) = (floor, top + 1);
        let mut step = 1u64;
        if guess == floor || by_limit(guess) {
            lo = guess;
            while let Some(probe) = lo.checked_add(step).filter(|p| *p <= top) {
                if by_limit(probe) {
                    lo = probe;
                    step = step.saturating_mul(2);
                } else {
                    hi = probe;
                    break;
                }
            }
        } else {
            hi = guess;
            while let Some(probe) = hi.checked_sub(step).filter(|p| *p > floor) {
                if by_limit(probe) {
                    lo = probe;
                    break;
                }
                hi = probe;
                step = step.saturating_mul(2);
            }
        }
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if by_limit(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let (Ok(last), Some(last_due)) = (u32::try_from(lo).map(Cycle), due(lo)) else {
            return stay;
        };
        if last <= from.0 {
            return stay;
        }
        let previous = Cycle(last.0 - 1);
        let before = if previous == from.0 {
            Some(from)
        } else {
            self.raw_due(previous).map(|d| (previous, d))
        };
        Reach::Done {
            at: (last, last_due),
            before,
        }
    }

    /// Roughly the last cycle due by `t`: whole units between the anchor's local date and
    /// `t`'s, divided by the interval. Off by a step or so (time of day, month ends, DST).
    fn estimate(&self, unit: IntervalUnit, count: u32, t: DateTime<Utc>) -> u64 {
        let Some(anchor) = self.anchor_local else {
            return 0;
        };
        let local = local_time(self.tz, t).unwrap_or(t.naive_utc());
        let count = i64::from(count);
        let units = match unit {
            IntervalUnit::Day | IntervalUnit::Week => {
                let days = local.date().signed_duration_since(anchor.date()).num_days();
                let per = if unit == IntervalUnit::Week { 7 } else { 1 };
                days.div_euclid(count * per)
            }
            IntervalUnit::Month | IntervalUnit::Year => {
                let month_index =
                    |d: NaiveDateTime| i64::from(d.year()) * 12 + i64::from(d.month0());
                let months = month_index(local) - month_index(anchor);
                let per = if unit == IntervalUnit::Year { 12 } else { 1 };
                months.div_euclid(count * per)
            }
        };
        u64::try_from(units.saturating_add(1)).unwrap_or(0)
    }

    /// The first `count` cycles and their due times, for previews. Allocates only for the
    /// cycles that exist.
    pub fn preview(&self, count: usize) -> Vec<(Cycle, DateTime<Utc>)> {
        std::iter::successors(self.due_at(Cycle::FIRST).map(|d| (Cycle::FIRST, d)), |c| {
            self.next(c.0, c.1)
        })
        .take(count)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!(s.due_at(Cycle(2)), Some(utc("2026-02-28 20:00:00")));
        // The same instant in UTC is the 31st, so the next cycle clamps to Feb 28.
        let s = Schedule::every(
            IntervalUnit::Month,
            1,
            utc("2026-01-31 20:00:00"),
            chrono_tz::UTC,
        )
        .unwrap();
        assert_eq!(s.due_at(Cycle(2)), Some(utc("2026-02-28 20:00:00")));
        assert_eq!(s.due_at(Cycle(3)), Some(utc("2026-03-31 20:00:00")));
        // Across a DST change the local wall time is kept.
        let ny = chrono_tz::America::New_York;
        let s = Schedule::every(IntervalUnit::Week, 1, utc("2026-03-02 14:00:00"), ny).unwrap();
        assert_eq!(s.due_at(Cycle(2)), Some(utc("2026-03-09 13:00:00")));
        // A wall time that does not exist (spring forward) moves past the gap.
        let s = Schedule::every(IntervalUnit::Day, 1, utc("2026-03-07 07:30:00"), ny).unwrap();
        assert_eq!(s.due_at(Cycle(2)), Some(utc("2026-03-08 07:30:00")));
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
        assert_eq!(s.due_at(Cycle(3)), Some(seoul("2026-04-01 09:00")));
        // Six fields: seconds first. An anchor exactly on an occurrence counts.
        let s = Schedule::cron(
            "0 0 9 * * MON",
            seoul("2026-11-30 09:00"),
            chrono_tz::Asia::Seoul,
        )
        .unwrap();
        assert_eq!(s.due_at(Cycle(1)), Some(seoul("2026-11-30 09:00")));
        assert_eq!(s.due_at(Cycle(2)), Some(seoul("2026-12-07 09:00")));
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
        assert_eq!(s.next(Cycle(3), seoul("2026-03-10 09:00")), None);
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
        let DueNow::Charge(due) =
            s.due_now(Cycle(1), seoul("2026-01-31 09:00"), now, CatchUp::Latest)
        else {
            panic!("nothing due")
        };
        assert_eq!(
            (due.cycle, due.due_at),
            (Cycle(4), seoul("2026-04-30 09:00"))
        );
        assert_eq!(
            due.skipped,
            Skipped {
                count: 3,
                first: Some((Cycle(1), seoul("2026-01-31 09:00"))),
                last: Some((Cycle(3), seoul("2026-03-31 09:00"))),
            }
        );
        let DueNow::Charge(due) = s.due_now(Cycle(1), seoul("2026-01-31 09:00"), now, CatchUp::All)
        else {
            panic!("nothing due")
        };
        assert_eq!((due.cycle, due.skipped.count), (Cycle(1), 0));
        assert!(due.skipped.is_empty());
        assert_eq!(
            s.due_now(Cycle(5), seoul("2026-05-31 09:00"), now, CatchUp::Latest),
            DueNow::NotYet
        );
        // Ends cut catch-up short too.
        let ended = s.clone().with_end(Some(2), None).unwrap();
        let DueNow::Charge(due) =
            ended.due_now(Cycle(1), seoul("2026-01-31 09:00"), now, CatchUp::Latest)
        else {
            panic!("nothing due")
        };
        assert_eq!((due.cycle, due.skipped.count), (Cycle(2), 1));
        let ended = s
            .clone()
            .with_end(None, Some(seoul("2026-03-31 08:59")))
            .unwrap();
        let DueNow::Charge(due) =
            ended.due_now(Cycle(1), seoul("2026-01-31 09:00"), now, CatchUp::Latest)
        else {
            panic!("nothing due")
        };
        assert_eq!((due.cycle, due.skipped.count), (Cycle(2), 1));
    }

    #[test]
    fn skipped_ranges_read_well() {
        let one = Skipped::through(
            (Cycle(7), utc("2026-01-01 00:00:00")),
            Some((Cycle(7), utc("2026-01-01 00:00:00"))),
        );
        assert_eq!(one.to_string(), "cycle 7 due 2026-01-01 00:00:00 UTC");
        let many = Skipped::through(
            (Cycle(2), utc("2026-01-02 00:00:00")),
            Some((Cycle(9_999), utc("2053-05-18 00:00:00"))),
        );
        assert_eq!(
            many.to_string(),
            "cycles 2-9999 (9998 cycles, first due 2026-01-02 00:00:00 UTC, last due 2053-05-18 00:00:00 UTC)"
        );
        assert_eq!((many.count, many.len()), (9_998, 9_998));
        assert!(
            Skipped::through(
                (Cycle(5), utc("2026-01-02 00:00:00")),
                Some((Cycle(4), utc("2026-01-01 00:00:00")))
            )
            .is_empty()
        );
        assert_eq!(Skipped::default().to_string(), "no cycle");
    }

    /// Step by step, as catch-up used to work: the reference the arithmetic must match.
    fn slow_latest(
        s: &Schedule,
        from: (Cycle, DateTime<Utc>),
        t: DateTime<Utc>,
    ) -> (Cycle, DateTime<Utc>, Skipped) {
        let mut at = from;
        let mut passed = Vec::new();
        while let Some(next) = s.next(at.0, at.1).filter(|n| n.1 <= t) {
            passed.push(at);
            at = next;
        }
        (at.0, at.1, summary(&passed))
    }

    /// The pause rule step by step: skip every cycle due by `t`.
    fn slow_first_after(
        s: &Schedule,
        from: (Cycle, DateTime<Utc>),
        t: DateTime<Utc>,
    ) -> FirstAfter {
        let mut passed = Vec::new();
        let mut at = from;
        loop {
            if at.1 > t {
                return FirstAfter::Next(Due {
                    cycle: at.0,
                    due_at: at.1,
                    skipped: summary(&passed),
                });
            }
            passed.push(at);
            match s.next(at.0, at.1) {
                Some(next) => at = next,
                None => return FirstAfter::Ended(summary(&passed)),
            }
        }
    }

    fn summary(passed: &[(Cycle, DateTime<Utc>)]) -> Skipped {
        Skipped {
            count: passed.len() as u64,
            first: passed.first().copied(),
            last: passed.last().copied(),
        }
    }

    fn daily_from_2026() -> (Schedule, DateTime<Utc>) {
        let anchor = seoul("2026-01-01 09:00");
        let s = Schedule::every(IntervalUnit::Day, 1, anchor, chrono_tz::Asia::Seoul).unwrap();
        (s, anchor)
    }

    #[test]
    fn catch_up_after_50_000_missed_days() {
        let (s, anchor) = daily_from_2026();
        let now = anchor + chrono::Duration::days(50_000) + chrono::Duration::hours(1);
        let DueNow::Charge(due) = s.due_now(Cycle(1), anchor, now, CatchUp::Latest) else {
            panic!("nothing due")
        };
        assert_eq!(
            (due.cycle, due.due_at),
            (Cycle(50_001), anchor + chrono::Duration::days(50_000))
        );
        assert_eq!(
            due.skipped,
            Skipped {
                count: 50_000,
                first: Some((Cycle(1), anchor)),
                last: Some((Cycle(50_000), anchor + chrono::Duration::days(49_999))),
            }
        );
        assert_eq!(
            slow_latest(&s, (Cycle(1), anchor), now),
            (due.cycle, due.due_at, due.skipped)
        );
        // From the middle, and a second before the next cycle.
        let from = (Cycle(40_000), s.due_at(Cycle(40_000)).unwrap());
        let just_before = anchor + chrono::Duration::days(50_000) - chrono::Duration::seconds(1);
        let DueNow::Charge(due) = s.due_now(from.0, from.1, just_before, CatchUp::Latest) else {
            panic!("nothing due")
        };
        assert_eq!((due.cycle, due.skipped.count), (Cycle(50_000), 10_000));
    }

    #[test]
    fn catch_up_after_a_million_missed_days() {
        let (s, anchor) = daily_from_2026();
        let now = anchor + chrono::Duration::days(1_000_000);
        let started = std::time::Instant::now();
        let DueNow::Charge(due) = s.due_now(Cycle(1), anchor, now, CatchUp::Latest) else {
            panic!("nothing due")
        };
        assert_eq!((due.cycle, due.due_at), (Cycle(1_000_001), now));
        assert_eq!(due.skipped.count, 1_000_000);
        assert_eq!(
            due.skipped.last,
            Some((Cycle(1_000_000), anchor + chrono::Duration::days(999_999)))
        );
        // A pause over the same years: one summary, the first cycle after now next.
        let FirstAfter::Next(next) = s.first_after(Cycle(1), anchor, now) else {
            panic!("ended")
        };
        assert_eq!(
            (next.cycle, next.due_at, next.skipped.count),
            (Cycle(1_000_002), now + chrono::Duration::days(1), 1_000_001)
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        // Ended meanwhile: every remaining cycle skipped, nothing next.
        let ended = s.clone().with_end(Some(700_000), None).unwrap();
        assert_eq!(
            ended.first_after(Cycle(1), anchor, now),
            FirstAfter::Ended(Skipped {
                count: 700_000,
                first: Some((Cycle(1), anchor)),
                last: Some((Cycle(700_000), anchor + chrono::Duration::days(699_999))),
            })
        );
    }

    #[test]
    fn cron_catch_up_resumes_across_calls() {
        let anchor = seoul("2026-01-01 00:00");
        let s = Schedule::cron("0 * * * *", anchor, chrono_tz::Asia::Seoul).unwrap();
        let now = anchor + chrono::Duration::hours(1000) + chrono::Duration::minutes(30);
        let (want_cycle, want_due, want_skipped) = slow_latest(&s, (Cycle(1), anchor), now);
        assert_eq!((want_cycle, want_skipped.count), (Cycle(1001), 1000));
        for budget in [1, 7, 64, 999, 1000, 5000] {
            let mut at = (Cycle(1), anchor);
            let mut skipped: Vec<Skipped> = Vec::new();
            let mut calls = 0;
            let due = loop {
                calls += 1;
                match s.due_now_within(at.0, at.1, now, CatchUp::Latest, budget) {
                    DueNow::Charge(due) => break due,
                    DueNow::Unfinished(reached) => {
                        assert!(reached.due_at <= now);
                        assert_eq!(
                            reached.skipped.count,
                            u64::from(budget) + 1,
                            "budget {budget}"
                        );
                        at = (reached.cycle, reached.due_at);
                        skipped.push(reached.skipped);
                    }
                    DueNow::NotYet => panic!("due"),
                }
            };
            skipped.push(due.skipped);
            assert_eq!(
                (due.cycle, due.due_at),
                (want_cycle, want_due),
                "budget {budget}"
            );
            assert_eq!(calls, 1000 / (budget as usize + 1) + 1, "budget {budget}");
            // The ranges join up: together they are exactly the cycles passed over.
            let total: u64 = skipped.iter().map(|k| k.count).sum();
            assert_eq!(total, 1000);
            assert_eq!(skipped[0].first, want_skipped.first);
            let last_range = skipped.iter().rev().find(|k| !k.is_empty()).unwrap();
            assert_eq!(last_range.last, want_skipped.last);
            skipped.retain(|k| !k.is_empty());
            for pair in skipped.windows(2) {
                if let (Some(a), Some(b)) = (pair[0].last, pair[1].first) {
                    assert_eq!(a.0.next(), Some(b.0));
                }
            }
            // The pause rule continues the same way.
            let mut at = (Cycle(1), anchor);
            let mut passed = 0;
            let next = loop {
                match s.first_after_within(at.0, at.1, now, budget) {
                    FirstAfter::Next(next) => break next,
                    FirstAfter::Unfinished(reached) => {
                        passed += reached.skipped.count;
                        at = (reached.cycle, reached.due_at);
                    }
                    FirstAfter::Ended(_) => panic!("ended"),
                }
            };
            assert_eq!(
                (next.cycle, next.due_at, passed + next.skipped.count),
                (Cycle(1002), want_due + chrono::Duration::hours(1), 1001)
            );
        }
    }

    /// Anchors at the ends of chrono's calendar, huge counts and cycle numbers: answers, no
    /// panics.
    #[test]
    fn extremes_do_not_panic() {
        let day = chrono::Duration::days(1);
        let anchors = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MIN_UTC + day,
            utc("1970-01-01 00:00:00"),
            DateTime::<Utc>::MAX_UTC - day * 400,
            DateTime::<Utc>::MAX_UTC - day,
            DateTime::<Utc>::MAX_UTC,
        ];
        let zones = [
            chrono_tz::Asia::Seoul,
            chrono_tz::America::New_York,
            chrono_tz::Pacific::Kiritimati,
            chrono_tz::Etc::GMTPlus12,
        ];
        let units = [
            IntervalUnit::Day,
            IntervalUnit::Week,
            IntervalUnit::Month,
            IntervalUnit::Year,
        ];
        for anchor in anchors {
            for tz in zones {
                let mut schedules = Vec::new();
                for unit in units {
                    for count in [1, 1000] {
                        schedules.push(Schedule::every(unit, count, anchor, tz).unwrap());
                    }
                    for bad in [i64::MIN, -1, 0, 1001, i64::from(u32::MAX) + 1, i64::MAX] {
                        assert!(Schedule::every(unit, bad, anchor, tz).is_err());
                    }
                }
                if let Ok(cron) = Schedule::cron("0 9 1 * *", anchor, tz) {
                    schedules.push(cron);
                }
                for s in schedules {
                    for m in [None, Some(1), Some(i64::from(MAX_CYCLE.0)), Some(i64::MAX)] {
                        let s = s.clone().with_end(m, None).unwrap();
                        exercise(&s, anchor);
                    }
                }
            }
        }
        assert!(
            Schedule::every(
                IntervalUnit::Day,
                1,
                utc("2026-01-01 00:00:00"),
                chrono_tz::UTC
            )
            .unwrap()
            .with_end(Some(i64::MIN), None)
            .is_err()
        );
    }

    fn exercise(s: &Schedule, anchor: DateTime<Utc>) {
        let ends = [DateTime::<Utc>::MIN_UTC, anchor, DateTime::<Utc>::MAX_UTC];
        let max = MAX_CYCLE.0;
        for cycle in [0, 1, 2, max - 1, max, max + 1, u32::MAX].map(Cycle) {
            if matches!(s.rule, Rule::Cron(_)) && cycle > Cycle(2) {
                continue; // due_at steps from cycle 1
            }
            let _ = s.due_at(cycle);
        }
        for cycle in [1, max - 1, max, u32::MAX].map(Cycle) {
            for due in ends {
                let _ = s.next(cycle, due);
                for now in ends {
                    for policy in [CatchUp::Latest, CatchUp::All] {
                        let _ = s.due_now_within(cycle, due, now, policy, 10);
                    }
                    let _ = s.first_after_within(cycle, due, now, 10);
                }
            }
        }
        if let Some(first) = s.due_at(Cycle(1)) {
            let DueNow::Charge(due) = s.due_now_within(
                Cycle(1),
                first,
                DateTime::<Utc>::MAX_UTC,
                CatchUp::Latest,
                10,
            ) else {
                if matches!(s.rule, Rule::Cron(_)) {
                    return;
                }
                panic!("interval catch-up is never unfinished")
            };
            assert!(due.cycle <= MAX_CYCLE && due.due_at >= first);
            assert!(
                s.next(due.cycle, due.due_at)
                    .is_none_or(|n| n.1 > DateTime::<Utc>::MAX_UTC)
            );
        }
        assert!(s.preview(3).len() <= 3);
    }

    #[test]
    fn cycle_numbers_end_at_max_cycle() {
        let (s, anchor) = daily_from_2026();
        let Some(due) = s.due_at(MAX_CYCLE) else {
            // Cycle MAX_CYCLE of a daily schedule is beyond chrono's calendar.
            assert_eq!(s.next(MAX_CYCLE, anchor), None);
            assert_eq!(s.next(Cycle(u32::MAX), anchor), None);
            assert_eq!(s.due_at(MAX_CYCLE.saturating_next()), None);
            return;
        };
        assert_eq!(s.next(MAX_CYCLE, due), None);
    }

    #[test]
    fn preview_allocates_only_what_exists() {
        let (s, _) = daily_from_2026();
        let s = s.with_end(Some(3), None).unwrap();
        let got = s.preview(usize::MAX);
        assert_eq!(got.len(), 3);
        assert!(got.capacity() < 1000);
    }

    fn zone() -> impl Strategy<Value = Tz> {
        prop_oneof![
            Just(chrono_tz::Asia::Seoul),
            Just(chrono_tz::America::New_York),
            Just(chrono_tz::UTC),
            Just(chrono_tz::Europe::London),
            Just(chrono_tz::Australia::Lord_Howe),
            Just(chrono_tz::Pacific::Apia),
            Just(chrono_tz::America::Sao_Paulo),
        ]
    }

    fn unit() -> impl Strategy<Value = IntervalUnit> {
        prop_oneof![
            Just(IntervalUnit::Day),
            Just(IntervalUnit::Week),
            Just(IntervalUnit::Month),
            Just(IntervalUnit::Year),
        ]
    }

    /// A wall time, often at a month end or in the small hours (where DST changes happen).
    fn wall_time() -> impl Strategy<Value = NaiveDateTime> {
        (
            1900i32..2200,
            1u32..=12,
            prop_oneof![1u32..=31, 28u32..=31],
            prop_oneof![0u32..24, 0u32..4],
            prop_oneof![Just(0u32), 0u32..60],
        )
            .prop_map(|(y, m, d, h, min)| {
                (0..4)
                    .find_map(|back| chrono::NaiveDate::from_ymd_opt(y, m, d - back.min(d - 1)))
                    .and_then(|date| date.and_hms_opt(h, min, 0))
                    .expect("some day of the month exists")
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Catch-up and the pause rule agree with stepping one cycle at a time.
        #[test]
        fn arithmetic_matches_stepping(
            tz in zone(),
            unit in unit(),
            count in prop_oneof![1i64..=3, 1i64..=1000],
            anchor in wall_time(),
            start in prop_oneof![Just(1u32), 1u32..50],
            cycles_ahead in 0u32..400,
            jitter in prop_oneof![Just(0i64), -3 * 86_400i64..3 * 86_400],
            max_cycles in prop::option::of(1i64..500),
            ends_ahead in prop::option::of((0u32..500, -86_400i64..86_400)),
        ) {
            let Some(anchor) = tz.from_local_datetime(&anchor).earliest() else {
                return Ok(()); // a wall time in a DST gap: not an anchor anyone stores
            };
            let base = Schedule::every(unit, count, anchor.with_timezone(&Utc), tz).unwrap();
            let ends_at = ends_ahead.and_then(|(ahead, secs)| {
                base.raw_due(Cycle(start + ahead)).map(|t| t + chrono::Duration::seconds(secs))
            });
            let s = base.clone().with_end(max_cycles, ends_at).unwrap();
            let Some(due) = s.due_at(Cycle(start)) else {
                return Ok(());
            };
            let Some(now) = base.raw_due(Cycle(start + cycles_ahead)) else {
                return Ok(());
            };
            let now = now + chrono::Duration::seconds(jitter);
            let start = Cycle(start);
            let from = (start, due);
            match s.due_now(start, due, now, CatchUp::Latest) {
                DueNow::NotYet => prop_assert!(due > now),
                DueNow::Charge(got) => {
                    prop_assert!(due <= now);
                    let (cycle, due_at, skipped) = slow_latest(&s, from, now);
                    prop_assert_eq!((got.cycle, got.due_at, got.skipped), (cycle, due_at, skipped));
                }
                DueNow::Unfinished(_) => prop_assert!(false, "interval catch-up is never unfinished"),
            }
            prop_assert_eq!(s.first_after(start, due, now), slow_first_after(&s, from, now));
        }
    }
}
