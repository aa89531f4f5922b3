//! The merchant's rows, read whatever bytes they hold.
//!
//! The merchant's application may write anything into `subscriptions`: a date with no time, an
//! epoch integer or `'now'` in a timestamp column, `'9,900'` in `amount` (which SQLite would
//! read as 9), `'infinity'` on PostgreSQL, bytes that are not UTF-8. So every merchant column
//! is read as raw bytes (`CAST(col AS BLOB)` on SQLite, the text form on PostgreSQL) and parsed
//! here, strictly: a value that does not parse makes that one row invalid, naming the column,
//! and never fails a query that other rows share.

use std::collections::HashMap;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Nullable};

use super::{AnyConnection, StoreError};
use crate::billing::model::{MerchantRow, SubscriptionId};
use crate::domain::FieldError;

/// The merchant's columns, in the order `RawRow` holds them.
pub const COLUMNS: [&str; 18] = [
    "external_id",
    "bid",
    "amount",
    "goods_name",
    "buyer_name",
    "buyer_email",
    "buyer_tel",
    "card_quota",
    "card_interest",
    "interval_unit",
    "interval_count",
    "cron",
    "timezone",
    "anchor_at",
    "max_cycles",
    "ends_at",
    "status",
    "cancel_at_period_end",
];

/// One merchant row as bytes, column by column (`None` for SQL NULL).
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct RawRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<Binary>)]
    pub external_id: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub bid: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub amount: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub goods_name: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub buyer_name: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub buyer_email: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub buyer_tel: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub card_quota: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub card_interest: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub interval_unit: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub interval_count: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub cron: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub timezone: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub anchor_at: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub max_cycles: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub ends_at: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub status: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Binary>)]
    pub cancel_at_period_end: Option<Vec<u8>>,
}

impl RawRow {
    /// The columns' bytes in `COLUMNS` order.
    pub fn values(&self) -> [&Option<Vec<u8>>; 18] {
        [
            &self.external_id,
            &self.bid,
            &self.amount,
            &self.goods_name,
            &self.buyer_name,
            &self.buyer_email,
            &self.buyer_tel,
            &self.card_quota,
            &self.card_interest,
            &self.interval_unit,
            &self.interval_count,
            &self.cron,
            &self.timezone,
            &self.anchor_at,
            &self.max_cycles,
            &self.ends_at,
            &self.status,
            &self.cancel_at_period_end,
        ]
    }

    /// A column as text for display: invalid UTF-8 shown with replacement characters.
    pub fn lossy(&self, column: &str) -> Option<String> {
        let i = COLUMNS.iter().position(|c| *c == column)?;
        self.values()[i]
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

/// `SELECT id, <each merchant column as bytes> FROM subscriptions s`, for a backend.
pub fn select_raw(c: &AnyConnection) -> String {
    let cols: Vec<String> = COLUMNS
        .iter()
        .map(|col| match c {
            AnyConnection::Sqlite(_) => format!("CAST(s.{col} AS BLOB) AS {col}"),
            // The text form, as bytes: PostgreSQL's own rendering of the stored value
            // (timestamptz in the session's UTC zone, booleans as true/false).
            AnyConnection::Postgres(_) => format!("textsend(s.{col}::text) AS {col}"),
        })
        .collect();
    format!(
        "SELECT s.id AS id, {} FROM subscriptions s",
        cols.join(", ")
    )
}

/// The raw rows of the given subscriptions, in id order; ids with no row are left out.
pub fn load_raw(c: &mut AnyConnection, ids: &[i64]) -> Result<Vec<RawRow>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(super::MAX_IDS_PER_STATEMENT) {
        if chunk.is_empty() {
            continue;
        }
        // Ids are integers: they stand in the SQL text safely.
        let list = super::id_list(chunk);
        let sql = format!("{} WHERE s.id IN ({list}) ORDER BY s.id", select_raw(c));
        let rows: Vec<RawRow> = match c {
            AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
            AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
        };
        out.extend(rows);
    }
    Ok(out)
}

/// The `bid` column of the given subscriptions as it stands now, as bytes (NULL as `None`);
/// ids with no row are left out.
pub fn load_bids(
    c: &mut AnyConnection,
    ids: &[i64],
) -> Result<HashMap<i64, Option<Vec<u8>>>, StoreError> {
    load_column(c, ids, "bid")
}

/// The `external_id` of the given subscriptions as text (bytes that are not UTF-8 shown
/// lossily, NULL as empty).
pub fn load_external_ids(
    c: &mut AnyConnection,
    ids: &[i64],
) -> Result<HashMap<i64, String>, StoreError> {
    Ok(load_column(c, ids, "external_id")?
        .into_iter()
        .map(|(id, v)| {
            let text = v.map(|b| String::from_utf8_lossy(&b).into_owned());
            (id, text.unwrap_or_default())
        })
        .collect())
}

/// One merchant column of the given subscriptions as bytes, read as [`select_raw`] reads it.
fn load_column(
    c: &mut AnyConnection,
    ids: &[i64],
    column: &'static str,
) -> Result<HashMap<i64, Option<Vec<u8>>>, StoreError> {
    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Nullable<Binary>)]
        value: Option<Vec<u8>>,
    }
    debug_assert!(COLUMNS.contains(&column));
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(super::MAX_IDS_PER_STATEMENT) {
        if chunk.is_empty() {
            continue;
        }
        // Ids are integers and the column one of ours: they stand in the SQL text safely.
        let list = super::id_list(chunk);
        let expr = match c {
            AnyConnection::Sqlite(_) => format!("CAST({column} AS BLOB)"),
            AnyConnection::Postgres(_) => format!("textsend({column}::text)"),
        };
        let sql = format!("SELECT id, {expr} AS value FROM subscriptions WHERE id IN ({list})");
        let rows: Vec<Value> = match c {
            AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
            AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
        };
        out.extend(rows.into_iter().map(|r| (r.id, r.value)));
    }
    Ok(out)
}

/// Parses a raw row strictly; the error names the first column that does not parse.
pub fn parse(raw: &RawRow) -> Result<MerchantRow, FieldError> {
    Ok(MerchantRow {
        id: SubscriptionId(raw.id),
        external_id: text("external_id", &raw.external_id)?,
        bid: text("bid", &raw.bid)?,
        amount: integer("amount", &raw.amount)?,
        goods_name: text("goods_name", &raw.goods_name)?,
        buyer_name: opt(&raw.buyer_name, |v| text("buyer_name", v))?,
        buyer_email: opt(&raw.buyer_email, |v| text("buyer_email", v))?,
        buyer_tel: opt(&raw.buyer_tel, |v| text("buyer_tel", v))?,
        card_quota: text("card_quota", &raw.card_quota)?,
        card_interest: text("card_interest", &raw.card_interest)?,
        interval_unit: text("interval_unit", &raw.interval_unit)?,
        interval_count: integer("interval_count", &raw.interval_count)?,
        cron: opt(&raw.cron, |v| text("cron", v))?,
        timezone: opt(&raw.timezone, |v| text("timezone", v))?,
        anchor_at: timestamp("anchor_at", &raw.anchor_at)?,
        max_cycles: opt(&raw.max_cycles, |v| integer("max_cycles", v))?,
        ends_at: opt(&raw.ends_at, |v| timestamp("ends_at", v))?,
        status: text("status", &raw.status)?,
        cancel_at_period_end: boolean("cancel_at_period_end", &raw.cancel_at_period_end)?,
    })
}

fn opt<T>(
    value: &Option<Vec<u8>>,
    f: impl FnOnce(&Option<Vec<u8>>) -> Result<T, FieldError>,
) -> Result<Option<T>, FieldError> {
    match value {
        None => Ok(None),
        some => f(some).map(Some),
    }
}

/// A value for an error message: short, and printable whatever the bytes.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(40).collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    format!("{out:?}")
}

fn text(field: &'static str, value: &Option<Vec<u8>>) -> Result<String, FieldError> {
    let bytes = value
        .as_ref()
        .ok_or_else(|| FieldError::new(field, "is NULL; a value is required"))?;
    String::from_utf8(bytes.clone()).map_err(|e| {
        FieldError::new(
            field,
            format!(
                "holds bytes that are not UTF-8 (at byte {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// A whole number written in plain digits (an optional minus sign, nothing else).
fn integer(field: &'static str, value: &Option<Vec<u8>>) -> Result<i64, FieldError> {
    let raw = value
        .as_ref()
        .ok_or_else(|| FieldError::new(field, "is NULL; a value is required"))?;
    let digits = raw.strip_prefix(b"-").unwrap_or(raw);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(FieldError::new(
            field,
            format!("{} is not a whole number", shown(raw)),
        ));
    }
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| FieldError::new(field, format!("{} is out of range", shown(raw))))
}

/// `0`/`1` (SQLite's booleans) or `true`/`false` (PostgreSQL's text form).
fn boolean(field: &'static str, value: &Option<Vec<u8>>) -> Result<bool, FieldError> {
    match value.as_deref() {
        Some(b"1") | Some(b"true") => Ok(true),
        Some(b"0") | Some(b"false") => Ok(false),
        Some(other) => Err(FieldError::new(
            field,
            format!("{} is not a boolean (0/1 or true/false)", shown(other)),
        )),
        None => Err(FieldError::new(field, "is NULL; a value is required")),
    }
}

/// The earliest and latest times nicebill accepts in the merchant's columns.
const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// `YYYY-MM-DD HH:MM:SS[.fraction]` (a `T` may stand for the space), UTC unless an offset
/// follows (`Z`, `+09`, `+09:00`, `+0900`), which is converted, never dropped. A date with no
/// time, `'now'`, a number, `'infinity'` or anything else is refused.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    let t = text.trim();
    let bad = |why: &str| format!("{:?} {why}", t.chars().take(40).collect::<String>());
    // Every form accepted below is ASCII; checking first also keeps the byte offsets below on
    // character boundaries (a multi-byte character there would panic the slicing).
    if !t.is_ascii() {
        return Err(bad("is not a date-time like 2026-12-01 09:00:00"));
    }
    if t.len() < 19 {
        if t.len() == 10 && t.as_bytes()[4] == b'-' {
            return Err(bad(
                "is a date with no time of day; write YYYY-MM-DD HH:MM:SS",
            ));
        }
        return Err(bad("is not a date-time like 2026-12-01 09:00:00"));
    }
    let mut s = t.to_owned();
    if s.as_bytes()[10] == b'T' || s.as_bytes()[10] == b't' {
        s.replace_range(10..11, " ");
    }
    let (body, offset) = split_offset(&s).ok_or_else(|| bad("has an offset that is not +HH:MM"))?;
    let naive = NaiveDateTime::parse_from_str(body, "%Y-%m-%d %H:%M:%S%.f")
        .map_err(|_| bad("is not a date-time like 2026-12-01 09:00:00"))?;
    let utc = match offset {
        None => naive.and_utc(),
        Some(off) => naive
            .and_local_timezone(off)
            .single()
            .ok_or_else(|| bad("cannot be placed in time"))?
            .with_timezone(&Utc),
    };
    use chrono::Datelike;
    if !YEARS.contains(&utc.year()) {
        return Err(bad("is outside the years 1970 to 9999"));
    }
    Ok(utc)
}

/// Splits a trailing `Z` or `±HH[[:]MM]` off the date-time text.
fn split_offset(s: &str) -> Option<(&str, Option<FixedOffset>)> {
    let body_end = 19; // "YYYY-MM-DD HH:MM:SS"
    let tail_start = s[body_end..]
        .find(['+', '-', 'Z', 'z', ' '])
        .map(|i| i + body_end);
    let Some(at) = tail_start else {
        return Some((s, None));
    };
    let (body, tail) = s.split_at(at);
    let tail = tail.trim_start();
    if tail.eq_ignore_ascii_case("z") || tail.eq_ignore_ascii_case("utc") {
        return Some((body, FixedOffset::east_opt(0)));
    }
    let sign = match tail.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = tail[1..].chars().filter(|c| *c != ':').collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) || !(digits.len() == 2 || digits.len() == 4) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    if hours > 23 || minutes > 59 || (tail[1..].contains(':') && digits.len() != 4) {
        return None;
    }
    Some((
        body,
        FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60)),
    ))
}

fn timestamp(field: &'static str, value: &Option<Vec<u8>>) -> Result<DateTime<Utc>, FieldError> {
    let raw = value
        .as_ref()
        .ok_or_else(|| FieldError::new(field, "is NULL; a value is required"))?;
    let text = std::str::from_utf8(raw)
        .map_err(|_| FieldError::new(field, format!("{} is not a date-time", shown(raw))))?;
    parse_timestamp(text).map_err(|p| FieldError::new(field, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
    }

    #[test]
    fn timestamps() {
        let ok = [
            ("2026-12-01 09:00:00", "2026-12-01 09:00:00"),
            ("2026-12-01T09:00:00", "2026-12-01 09:00:00"),
            ("2026-12-01 09:00:00.5", "2026-12-01 09:00:00"),
            ("2026-12-01 09:00:00Z", "2026-12-01 09:00:00"),
            ("2026-12-01 09:00:00+00", "2026-12-01 09:00:00"),
            ("2026-12-01 09:00:00+09:00", "2026-12-01 00:00:00"),
            ("2026-12-01T09:00:00+0900", "2026-12-01 00:00:00"),
            ("2026-12-01 09:00:00-05", "2026-12-01 14:00:00"),
            ("2026-12-01 09:00:00 UTC", "2026-12-01 09:00:00"),
        ];
        for (text, want) in ok {
            let got = parse_timestamp(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got.trunc_subsecs_to_seconds(), utc(want), "{text}");
        }
        let bad = [
            "2026-12-01",
            "now",
            "1764547200",
            "infinity",
            "-infinity",
            "",
            "2026-13-01 09:00:00",
            "2026-02-30 09:00:00",
            "2026-12-01 25:00:00",
            "2026-12-01 09:00:00+25:00",
            "2026-12-01 09:00:00+9",
            "2026-12-01 09:00:00 KST",
            "0001-01-01 00:00:00",
            "12/01/2026 09:00:00",
            // Multi-byte characters where offsets are sliced.
            "2026-12-01 09:00:0🕴",
            "2026-12-01 09:00:00🕴",
            "2026-12-01T09:00:00＋09:00",
            "２０２６-12-01 09:00:00",
        ];
        for text in bad {
            assert!(parse_timestamp(text).is_err(), "{text:?} must be refused");
        }
    }

    trait Trunc {
        fn trunc_subsecs_to_seconds(self) -> Self;
    }
    impl Trunc for DateTime<Utc> {
        fn trunc_subsecs_to_seconds(self) -> Self {
            use chrono::SubsecRound;
            self.trunc_subsecs(0)
        }
    }

    #[test]
    fn integers_and_booleans() {
        let v = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(integer("amount", &v("9900")), Ok(9900));
        assert_eq!(integer("amount", &v("-5")), Ok(-5));
        for bad in [
            "9,900",
            "9900.0",
            "",
            "-",
            " 9900",
            "1e4",
            "99999999999999999999",
        ] {
            let e = integer("amount", &v(bad)).unwrap_err();
            assert_eq!(e.field, "amount", "{bad}");
        }
        assert!(integer("amount", &None).is_err());
        assert_eq!(boolean("b", &v("1")), Ok(true));
        assert_eq!(boolean("b", &v("false")), Ok(false));
        for bad in ["yes", "TRUE", "2", ""] {
            assert!(boolean("b", &v(bad)).is_err(), "{bad}");
        }
        assert!(text("goods_name", &Some(vec![0xff, 0xfe])).is_err());
    }
}
