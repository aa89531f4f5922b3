//! Bad rows, whatever their bytes (issue 8, item 4, and reproduced case 2), on SQLite and
//! PostgreSQL: a merchant value the driver cannot read or that fails validation makes that one
//! row `invalid`, naming the column in `billing_state.status_reason`, in an `invalid` event and
//! in the log, while every other row is charged in the same pass; a timestamp written with an
//! offset is converted, never shifted. Also (g): a `[scheduler] batch` at the configuration's
//! maximum charges a large backlog in one pass (statements chunked below each backend's
//! parameter limit).
//!
//! Rows are written with raw SQL (`diesel::sql_query` on a connection of the test's `Store`),
//! so each gets exactly the bytes a merchant application could write. On PostgreSQL the typed
//! columns refuse most garbage at INSERT: such a value cannot exist there, and the table says
//! so (and checks it).
//!
//! - `bad_values_make_one_row_invalid_and_the_rest_are_charged`: the table (`CASES`, each bad
//!   row between good ones; `ACCEPTED`, odd values billed exactly like their clean twin).
//! - `offsets_are_converted_never_shifted`: '+09:00', '+0900', 'Z', … due at 00:00 UTC.
//! - `random_values_in_one_row_never_stop_the_good_rows`: the property test
//!   (`NICEBILL_PROPTEST_CASES`, default 24 per backend).
//! - `the_reproduced_date_only_anchor_no_longer_stops_billing`: the issue's case against the
//!   real binary (`nicebill run --once`, `nicebill sim`).
//! - `a_maximal_batch_charges_a_large_backlog_in_one_pass`, `the_binary_with_batch_10000_…`:
//!   (g), batch = 10000.
//! - `the_servers_date_style_changes_nothing`: PostgreSQL's DateStyle does not change what a
//!   timestamp reads as.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use nicebill::billing::engine::{Engine, EngineSettings, PassReport};
use nicebill::billing::model::{SubscriptionId, SubscriptionStatus};
use nicebill::billing::plan::Policy;
use nicebill::clock::{ManualClock, SharedClock};
use nicebill::domain::Bid;
use nicebill::gateway::nicepay::{Charset, EdiType, NicepayClient};
use nicebill::schedule::Cycle;
use nicebill::sim::{LedgerEntry, SimConfig, SimHandle};
use nicebill::storage::{AnyConnection, DbUrl, Store, StoreError};
use support::*;

// ---- logs --------------------------------------------------------------------------------

/// Every ERROR line the engine logs in this test binary (one global subscriber: the engine's
/// work runs on tokio and blocking-pool threads).
fn log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Captured(Arc::clone(&buf));
        let _ = tracing_subscriber::fmt()
            .with_env_filter("nicebill=error")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    })
}

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log written since `mark` (a length of the buffer taken earlier).
fn log_since(mark: usize) -> String {
    let buf = log().lock().unwrap();
    String::from_utf8_lossy(&buf[mark.min(buf.len())..]).into_owned()
}

fn log_mark() -> usize {
    log().lock().unwrap().len()
}

// ---- raw SQL -----------------------------------------------------------------------------

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// One statement of raw SQL, as a merchant application would send it.
async fn execute(store: &Store, sql: String) -> Result<usize, StoreError> {
    store
        .run(move |c| {
            Ok(match c {
                AnyConnection::Sqlite(c) => diesel::sql_query(sql).execute(c)?,
                AnyConnection::Postgres(c) => diesel::sql_query(sql).execute(c)?,
            })
        })
        .await
}

/// An `INSERT … RETURNING id`.
async fn insert(store: &Store, sql: String) -> Result<i64, StoreError> {
    store
        .run(move |c| {
            let rows: Vec<Id> = match c {
                AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
                AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
            };
            Ok(rows[0].id)
        })
        .await
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The merchant's columns, in the order the statements below write them.
const COLUMNS: [&str; 18] = [
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

/// The clock of the in-process passes, and the anchor of every good row (due, cycle 1).
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2027, 3, 1, 1, 0, 0).unwrap()
}
const GOOD_ANCHOR: &str = "'2027-03-01 00:55:00'";
const GOOD_AMOUNT: i64 = 5_000;

/// The SQL literals of a good monthly row, due at `GOOD_ANCHOR`.
fn good_values(pg: bool, external_id: &str, bid: &str) -> Vec<String> {
    let no = if pg { "FALSE" } else { "0" };
    [
        quote(external_id),
        quote(bid),
        GOOD_AMOUNT.to_string(),
        quote("월간 구독"),
        "NULL".into(),
        "NULL".into(),
        "NULL".into(),
        quote("00"),
        quote("0"),
        quote("month"),
        "1".into(),
        "NULL".into(),
        "NULL".into(),
        GOOD_ANCHOR.into(),
        "NULL".into(),
        "NULL".into(),
        quote("active"),
        no.into(),
    ]
    .into()
}

/// `INSERT` of a good row with `column` set to the SQL expression `value`.
fn row_sql(pg: bool, external_id: &str, bid: &str, column: Option<(&str, &str)>) -> String {
    let mut values = good_values(pg, external_id, bid);
    if let Some((column, value)) = column {
        let i = COLUMNS.iter().position(|c| *c == column).expect("a column");
        values[i] = value.replace("{bid}", bid);
    }
    format!(
        "INSERT INTO subscriptions ({}) VALUES ({}) RETURNING id",
        COLUMNS.join(", "),
        values.join(", ")
    )
}

/// A merchant who altered the schema: no NOT NULL on the merchant's columns, so that a NULL
/// where nicebill needs a value can exist (with the schema as shipped, both backends refuse
/// it at INSERT). PostgreSQL: `ALTER COLUMN … DROP NOT NULL`. SQLite cannot drop a NOT NULL:
/// the table is rebuilt (empty, before any row), as SQLite's documentation describes, and its
/// triggers and index are made again.
async fn loosen_not_null(store: &Store) {
    store
        .run(|c| {
            match c {
                AnyConnection::Postgres(pg) => {
                    let alter: Vec<String> = COLUMNS
                        .iter()
                        .map(|col| format!("ALTER COLUMN {col} DROP NOT NULL"))
                        .collect();
                    pg.batch_execute(&format!(
                        "ALTER TABLE subscriptions {}",
                        alter.join(", ")
                    ))?;
                }
                AnyConnection::Sqlite(lite) => {
                    #[derive(QueryableByName)]
                    struct Create {
                        #[diesel(sql_type = Text)]
                        sql: String,
                    }
                    let create: Vec<Create> = diesel::sql_query(
                        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subscriptions'",
                    )
                    .load(lite)?;
                    let sql = &create[0].sql;
                    let open = sql.find('(').expect("a column list");
                    let loose = format!(
                        "CREATE TABLE subscriptions_loose {}",
                        sql[open..].replace(" NOT NULL", "")
                    );
                    lite.batch_execute(&format!(
                        "{loose};
                         DROP TABLE subscriptions;
                         ALTER TABLE subscriptions_loose RENAME TO subscriptions;
                         CREATE TRIGGER subscriptions_inserted AFTER INSERT ON subscriptions
                         BEGIN
                             INSERT INTO subscription_changes (subscription_id) VALUES (NEW.id);
                         END;
                         CREATE TRIGGER subscriptions_updated AFTER UPDATE ON subscriptions
                         BEGIN
                             INSERT INTO subscription_changes (subscription_id) VALUES (NEW.id);
                         END;
                         CREATE INDEX subscriptions_bid ON subscriptions (bid);"
                    ))?;
                }
            }
            Ok(())
        })
        .await
        .unwrap();
}

// ---- the in-process world ----------------------------------------------------------------

struct World {
    sim: SimHandle,
    client: Arc<NicepayClient>,
    clock: ManualClock,
    store: Store,
    label: &'static str,
    pg: bool,
    bid: Bid,
}

async fn world(db: &TestDb, start: DateTime<Utc>) -> World {
    world_on(db.store.clone(), db.label, start).await
}

async fn world_on(store: Store, label: &'static str, start: DateTime<Utc>) -> World {
    let clock = ManualClock::new(start);
    // The simulator keeps real time, so its billkey TIDs never collide with the engine's TIDs
    // minted under the frozen test clock.
    let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    let client = Arc::new(
        NicepayClient::new(
            settings(&sim.base_url(), Charset::Utf8, EdiType::Json),
            Arc::new(clock.clone()),
        )
        .unwrap(),
    );
    // One customer's card for every row: a bad row never reaches NICEPAY anyway, and a
    // billkey shared by many rows is ordinary.
    let bid = issue(&client, "9410123456780000", &format!("bk-{label}")).await;
    World {
        sim,
        client,
        clock,
        store,
        label,
        pg: label == "postgres",
        bid,
    }
}

impl World {
    fn engine(&self, owner: &str, batch: i64) -> Engine {
        let mut s = EngineSettings::new(owner.into(), Policy::default(), Duration::from_secs(4));
        s.concurrency = 16;
        s.batch = batch;
        let clock: SharedClock = Arc::new(self.clock.clone());
        Engine::new(self.store.clone(), self.client.clone(), clock, s)
    }

    async fn good(&self, external_id: &str) -> i64 {
        insert(
            &self.store,
            row_sql(self.pg, external_id, self.bid.as_str(), None),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: a good row: {e}", self.label))
    }

    /// Approvals at the simulator, by subscription id (from the Moid `S<id>-C<n>-A<m>`).
    fn ledger_by_subscription(&self) -> BTreeMap<i64, Vec<LedgerEntry>> {
        by_subscription(self.sim.ledger())
    }
}

fn by_subscription(ledger: Vec<LedgerEntry>) -> BTreeMap<i64, Vec<LedgerEntry>> {
    let mut out: BTreeMap<i64, Vec<LedgerEntry>> = BTreeMap::new();
    for entry in ledger {
        let id: i64 = entry.moid[1..entry.moid.find('-').unwrap()]
            .parse()
            .unwrap();
        out.entry(id).or_default().push(entry);
    }
    out
}

/// The row is `invalid` naming `column` in `billing_state.status_reason`, in an `invalid`
/// event (the same text) and, when `log` is given, in an ERROR log line of that subscription.
/// Returns the reason.
async fn assert_invalid(
    store: &Store,
    label: &str,
    id: i64,
    column: &str,
    what: &str,
    log: Option<&str>,
) -> String {
    let state = store
        .billing_state(SubscriptionId(id))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{label}: {what}: row {id} was never noticed"));
    let reason = state.status_reason.clone().unwrap_or_default();
    assert_eq!(
        state.status,
        SubscriptionStatus::Invalid,
        "{label}: {what} ({column}): {state:?}"
    );
    assert!(
        reason.starts_with(&format!("{column}: ")),
        "{label}: {what}: the reason names another column: {reason}"
    );
    let events = store.events(Some(id)).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "invalid" && e.detail == reason),
        "{label}: {what}: no invalid event with the reason: {events:?}"
    );
    if let Some(log) = log {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("subscription={id} "))
                    && l.contains(&format!("reason={reason}"))),
            "{label}: {what}: no log line names subscription {id} and {reason:?}"
        );
    }
    reason
}

// ---- 1. the table ------------------------------------------------------------------------

/// What becomes of a value on PostgreSQL.
#[derive(Clone, Copy, Debug)]
enum OnPg {
    /// The same literal stays there, as the bad value it is.
    Bad,
    /// This literal stays there, as the bad value it is.
    BadAs(&'static str),
    /// PostgreSQL refuses it at INSERT: it cannot exist there (checked).
    Refused,
    /// Written as this literal, PostgreSQL refuses it (checked).
    RefusedAs(&'static str),
    /// PostgreSQL turns it into a real value of the column's type at INSERT, which nicebill
    /// then reads as that value: no bad row there (checked: the row is not `invalid` for it).
    Kept,
}

/// A bad value: on SQLite the literal is stored as written (SQLite's column types are only
/// affinities); `pg` says what PostgreSQL makes of it.
struct Case {
    column: &'static str,
    sqlite: &'static str,
    pg: OnPg,
    what: &'static str,
}

const fn case(column: &'static str, sqlite: &'static str, pg: OnPg, what: &'static str) -> Case {
    Case {
        column,
        sqlite,
        pg,
        what,
    }
}

use OnPg::{Bad, BadAs, Kept, Refused, RefusedAs};

/// Text that is not UTF-8, written on PostgreSQL (which refuses it in a UTF-8 database).
const NOT_UTF8_PG: &str = r"convert_from('\xfffe'::bytea, 'UTF8')";

#[rustfmt::skip]
const CASES: &[Case] = &[
    // anchor_at: TIMESTAMP (NUMERIC affinity) on SQLite, TIMESTAMPTZ on PostgreSQL.
    case("anchor_at", "'2026-12-01'", Kept, "a date with no time (PostgreSQL: midnight UTC)"),
    case("anchor_at", "'now'", Kept, "'now' (PostgreSQL: the time of the INSERT)"),
    case("anchor_at", "1764547200", Refused, "an epoch integer"),
    case("anchor_at", "1764547200.5", Refused, "an epoch real"),
    case("anchor_at", "'infinity'", Bad, "infinity"),
    case("anchor_at", "'-infinity'", Bad, "-infinity"),
    case("anchor_at", "''", Refused, "an empty string"),
    case("anchor_at", "'2027-02-30 00:00:00'", Refused, "a day February does not have"),
    case("anchor_at", "'2027-03-01 25:00:00'", Refused, "hour 25"),
    case("anchor_at", "'0001-01-01 00:00:00'", Bad, "year 1"),
    case("anchor_at", "'10000-01-01 00:00:00'", Bad, "year 10000"),
    case("anchor_at", "'0044-03-15 00:00:00 BC'", Bad, "a year BC"),
    // PostgreSQL reads this by the session's DateStyle: nicebill's sessions (YMD) refuse it; a
    // merchant's session in MDY would store a real time.
    case("anchor_at", "'12/01/2026 09:00:00'", Refused, "a US date"),
    case("anchor_at", "'2026-12-01 09:00:00 KST'", Kept, "a zone abbreviation (PostgreSQL knows KST)"),
    case("anchor_at", "'2026-12-01 09:00:00+9'", Kept, "a one-digit offset (PostgreSQL reads +9 h)"),
    case("anchor_at", "X'FFFE'", Refused, "bytes that are not UTF-8"),
    case("anchor_at", "'2026-12-01 09:00:0🕴'", Refused, "a multi-byte character where the offset starts"),
    case("anchor_at", "NULL", Bad, "NULL"),
    // ends_at: nullable, else as anchor_at.
    case("ends_at", "'infinity'", Bad, "infinity"),
    case("ends_at", "'now'", Kept, "'now'"),
    case("ends_at", "''", Refused, "an empty string"),
    case("ends_at", "'2027-06'", Refused, "a month"),
    case("ends_at", "1798761600", Refused, "an epoch integer"),
    // amount: BIGINT (INTEGER affinity on SQLite: text that is no number stays text).
    case("amount", "'9,900'", Refused, "a thousands separator (SQLite's own reading: 9)"),
    case("amount", "'9900.5'", Refused, "a fraction"),
    case("amount", "9900.5", Kept, "a fraction (PostgreSQL rounds it to 9901 at INSERT)"),
    case("amount", "''", Refused, "an empty string"),
    case("amount", "'abc'", Refused, "letters"),
    case("amount", "'99999999999999999999'", Refused, "beyond 64 bits (SQLite: a REAL 1e20)"),
    case("amount", "9223372036854775807", Bad, "the largest BIGINT, too large for NICEPAY"),
    case("amount", "0", Bad, "zero"),
    case("amount", "-5", Bad, "negative"),
    case("amount", "X'FFFE'", Refused, "bytes"),
    case("amount", "NULL", Bad, "NULL"),
    // interval_count, max_cycles: INTEGER.
    case("interval_count", "0", Bad, "zero"),
    case("interval_count", "-1", Bad, "negative"),
    case("interval_count", "2147483647", Bad, "huge"),
    case("interval_count", "'two'", Refused, "a word"),
    case("interval_count", "''", Refused, "an empty string"),
    case("interval_count", "'99999999999999999999'", Refused, "beyond 64 bits"),
    case("interval_count", "1.5", Kept, "a fraction (PostgreSQL rounds it to 2)"),
    case("interval_count", "NULL", Bad, "NULL"),
    case("max_cycles", "-1", Bad, "negative"),
    case("max_cycles", "0", Bad, "zero"),
    case("max_cycles", "'ten'", Refused, "a word"),
    // cancel_at_period_end: BOOLEAN (NUMERIC affinity on SQLite). 'true'/'false' are read as
    // booleans (PostgreSQL's text form); see ACCEPTED.
    case("cancel_at_period_end", "'yes'", Kept, "yes (PostgreSQL: a boolean input)"),
    case("cancel_at_period_end", "2", Refused, "2"),
    case("cancel_at_period_end", "'TRUE'", Kept, "TRUE as text (PostgreSQL: true)"),
    case("cancel_at_period_end", "''", Refused, "an empty string"),
    case("cancel_at_period_end", "X'01'", Refused, "a byte"),
    case("cancel_at_period_end", "NULL", Bad, "NULL"),
    // status: the merchant's intent.
    case("status", "'frozen'", Bad, "an unknown status"),
    case("status", "'Active'", Bad, "capitalised"),
    case("status", "'active '", Bad, "white space after"),
    case("status", "'past_due'", Bad, "nicebill's verdict, not a merchant's intent"),
    case("status", "''", Bad, "an empty string"),
    case("status", "X'FFFE'", RefusedAs(NOT_UTF8_PG), "not UTF-8"),
    case("status", "NULL", Bad, "NULL"),
    // bid: never trimmed.
    case("bid", "' {bid}'", Bad, "white space before"),
    case("bid", "'{bid} '", Bad, "white space after"),
    case("bid", "''", Bad, "an empty string"),
    case("bid", "'BIKY-not-a-billkey!'", Bad, "not alphanumeric"),
    case("bid", "'BIKYnictest04m26110112000012345'", Bad, "31 characters"),
    case("bid", "X'FFFE'", RefusedAs(NOT_UTF8_PG), "not UTF-8"),
    case("bid", "NULL", Bad, "NULL"),
    // goods_name: EUC-KR, at most 40 bytes.
    case("goods_name", "'구독 🎉'", Bad, "an emoji (not EUC-KR)"),
    case("goods_name", "'가가가가가가가가가가가가가가가가가가가가가'", Bad, "42 EUC-KR bytes"),
    case("goods_name", "''", Bad, "an empty string"),
    case("goods_name", "'   '", Bad, "blanks"),
    case("goods_name", "X'FFFE'", RefusedAs(NOT_UTF8_PG), "not UTF-8"),
    case("goods_name", "NULL", Bad, "NULL"),
    // Schedule columns.
    case("timezone", "'Mars/Olympus'", Bad, "an unknown time zone"),
    case("timezone", "'Asia/Seul'", Bad, "a misspelt time zone"),
    case("timezone", "X'FFFE'", RefusedAs(NOT_UTF8_PG), "not UTF-8"),
    case("cron", "'every day'", Bad, "an unparsable cron"),
    case("cron", "'61 * * * *'", Bad, "minute 61"),
    case("interval_unit", "'fortnight'", Bad, "an unknown unit"),
    case("interval_unit", "''", Bad, "an empty string"),
    case("interval_unit", "NULL", Bad, "NULL"),
    // Card options.
    case("card_quota", "'1'", Bad, "one digit"),
    case("card_quota", "'01'", Bad, "01 months"),
    case("card_quota", "''", Bad, "an empty string"),
    case("card_quota", "NULL", Bad, "NULL"),
    case("card_interest", "'yes'", Bad, "yes"),
    case("card_interest", "'2'", Bad, "2"),
    case("card_interest", "NULL", Bad, "NULL"),
    // Buyer columns: optional, EUC-KR and byte limits.
    case("buyer_name", "'🎉'", Bad, "an emoji"),
    case("buyer_email", "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@x.kr'", Bad, "61 bytes"),
    case("buyer_tel", "X'FFFE'", RefusedAs(NOT_UTF8_PG), "not UTF-8"),
    case("buyer_tel", "X'30313000'", BadAs("'010' || 1234567890123456789"), "over 20 bytes (PG) / NUL byte (SQLite)"),
    // external_id.
    case("external_id", "''", Bad, "an empty string"),
    case("external_id", "'   '", Bad, "blanks"),
    case("external_id", "X'FFFE'", RefusedAs(NOT_UTF8_PG), "not UTF-8"),
    case("external_id", "NULL", Bad, "NULL"),
];

/// Odd but readable values nicebill reads as what they say: each such row is billed exactly
/// like a twin row holding the `clean` value. `pg: None`: the value cannot be written on
/// PostgreSQL.
struct Accepted {
    column: &'static str,
    sqlite: &'static str,
    pg: Option<&'static str>,
    clean_sqlite: &'static str,
    clean_pg: &'static str,
    what: &'static str,
}

#[rustfmt::skip]
const ACCEPTED: &[Accepted] = &[
    // The boolean parser takes 0/1 (SQLite's booleans) and true/false (PostgreSQL's text form):
    // 'true' and 'false' written as text on SQLite mean what they say. ('yes', 'TRUE' as text,
    // 2 are refused: see CASES.)
    Accepted { column: "cancel_at_period_end", sqlite: "'true'", pg: Some("'true'"), clean_sqlite: "1", clean_pg: "TRUE", what: "'true' as text" },
    Accepted { column: "cancel_at_period_end", sqlite: "'false'", pg: Some("'false'"), clean_sqlite: "0", clean_pg: "FALSE", what: "'false' as text" },
    Accepted { column: "cancel_at_period_end", sqlite: "TRUE", pg: Some("TRUE"), clean_sqlite: "1", clean_pg: "TRUE", what: "the keyword TRUE" },
    // SQLite's INTEGER affinity turns these into the integer 9900 as they are written (and
    // PostgreSQL's bigint input trims blanks): the bytes nicebill reads are "9900".
    Accepted { column: "amount", sqlite: "' 9900 '", pg: Some("' 9900 '"), clean_sqlite: "9900", clean_pg: "9900", what: "blanks around digits" },
    Accepted { column: "amount", sqlite: "'9900.0'", pg: None, clean_sqlite: "9900", clean_pg: "9900", what: "a whole REAL" },
    // A text column holding a BLOB of the right bytes (a driver binding bytes): read as those
    // bytes, exactly as the text.
    Accepted { column: "bid", sqlite: "CAST('{bid}' AS BLOB)", pg: None, clean_sqlite: "'{bid}'", clean_pg: "'{bid}'", what: "the billkey as a BLOB" },
    Accepted { column: "status", sqlite: "CAST('active' AS BLOB)", pg: None, clean_sqlite: "'active'", clean_pg: "'active'", what: "'active' as a BLOB" },
    Accepted { column: "goods_name", sqlite: "CAST('월간 구독' AS BLOB)", pg: None, clean_sqlite: "'월간 구독'", clean_pg: "'월간 구독'", what: "goods_name as a BLOB" },
    // Offsets are converted (see also offsets_are_converted_never_shifted).
    Accepted { column: "anchor_at", sqlite: "'2027-03-01 09:55:00+09:00'", pg: Some("'2027-03-01 09:55:00+09:00'"), clean_sqlite: GOOD_ANCHOR, clean_pg: GOOD_ANCHOR, what: "an offset" },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_make_one_row_invalid_and_the_rest_are_charged() {
    assert!(CASES.len() >= 30);
    for db in databases("bad_values").await {
        let w = world(&db, now()).await;
        loosen_not_null(&w.store).await;
        let mut good = Vec::new();
        let mut bad = Vec::new();
        let mut kept = Vec::new();
        let mut accepted = Vec::new();
        good.push(w.good("good-first").await);
        for (n, c) in CASES.iter().enumerate() {
            let (sql, expect_refused) = match (w.pg, c.pg) {
                (false, _) => (c.sqlite, false),
                (true, Bad | Kept) => (c.sqlite, false),
                (true, BadAs(lit)) => (lit, false),
                (true, Refused) => (c.sqlite, true),
                (true, RefusedAs(lit)) => (lit, true),
            };
            let external_id = if c.column == "external_id" {
                None
            } else {
                Some(format!("bad-{n}"))
            };
            let statement = row_sql(
                w.pg,
                external_id.as_deref().unwrap_or("unused"),
                w.bid.as_str(),
                Some((c.column, sql)),
            );
            let written = insert(&w.store, statement).await;
            if expect_refused {
                assert!(
                    written.is_err(),
                    "{}: {} {} ({}) was expected to be refused by PostgreSQL",
                    w.label,
                    c.column,
                    sql,
                    c.what
                );
                continue;
            }
            let id = written
                .unwrap_or_else(|e| panic!("{}: {} {sql} ({}): {e}", w.label, c.column, c.what));
            if w.pg && matches!(c.pg, Kept) {
                kept.push((id, c));
            } else {
                bad.push((id, c, sql));
            }
            // Each bad row sits among good rows.
            good.push(w.good(&format!("good-{n}")).await);
        }
        for (n, a) in ACCEPTED.iter().enumerate() {
            let sql = match (w.pg, a.pg) {
                (false, _) => a.sqlite,
                (true, Some(lit)) => lit,
                (true, None) => continue,
            };
            let statement = row_sql(
                w.pg,
                &format!("accepted-{n}"),
                w.bid.as_str(),
                Some((a.column, sql)),
            );
            let id = insert(&w.store, statement)
                .await
                .unwrap_or_else(|e| panic!("{}: {} {sql}: {e}", w.label, a.column));
            let clean = if w.pg { a.clean_pg } else { a.clean_sqlite };
            let statement = row_sql(
                w.pg,
                &format!("accepted-{n}-twin"),
                w.bid.as_str(),
                Some((a.column, clean)),
            );
            let twin = insert(&w.store, statement).await.unwrap();
            accepted.push((id, twin, a, sql));
        }
        eprintln!(
            "{}: {} bad rows, {} kept by PostgreSQL as real values, {} odd but readable, {} good",
            w.label,
            bad.len(),
            kept.len(),
            accepted.len(),
            good.len()
        );

        // One pass.
        let mark = log_mark();
        let engine = w.engine("bad-values", 16);
        let report = engine
            .pass()
            .await
            .unwrap_or_else(|e| panic!("{}: the pass failed: {e}", w.label));
        let log = log_since(mark);
        let ledger = w.ledger_by_subscription();

        // Every good row charged exactly once, cycle 1, its amount.
        for id in &good {
            let entries = ledger.get(id).map(Vec::as_slice).unwrap_or_default();
            let moids: Vec<&str> = entries.iter().map(|e| e.moid.as_str()).collect();
            assert_eq!(
                moids,
                vec![format!("S{id}-C1-A1")],
                "{}: good row {id}",
                w.label
            );
            assert_eq!(entries[0].amount, GOOD_AMOUNT, "{}", w.label);
        }
        for (id, twin, a, sql) in &accepted {
            let billed = |id: i64| {
                let ledger = &ledger;
                let store = w.store.clone();
                async move {
                    let state = store.billing_state(SubscriptionId(id)).await.unwrap();
                    let charges: Vec<(String, i64)> = ledger
                        .get(&id)
                        .map(|v| {
                            v.iter()
                                .map(|e| (e.moid.replacen(&format!("S{id}-"), "", 1), e.amount))
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        charges,
                        state.map(|s| (s.status, s.next_cycle, s.next_charge_at)),
                    )
                }
            };
            let (odd, clean) = (billed(*id).await, billed(*twin).await);
            assert_eq!(
                odd, clean,
                "{}: {} {sql} ({}) is not billed like its clean twin",
                w.label, a.column, a.what
            );
            eprintln!("{}: {} {sql} ({}) -> {odd:?}", w.label, a.column, a.what);
        }
        // Every bad row invalid, naming its column; never charged.
        for (id, c, sql) in &bad {
            assert!(
                !ledger.contains_key(id),
                "{}: {} {sql} was charged",
                w.label,
                c.column
            );
            let what = format!("{} {sql} ({})", c.column, c.what);
            let reason = assert_invalid(&w.store, w.label, *id, c.column, &what, Some(&log)).await;
            eprintln!("{}: {what} -> {reason}", w.label);
        }
        // PostgreSQL's own readings are real values: nicebill does not call them bad, and
        // charges such a row at most once.
        for (id, c) in &kept {
            let state = w.store.billing_state(SubscriptionId(*id)).await.unwrap();
            let reason = state.as_ref().and_then(|s| s.status_reason.clone());
            assert!(
                !reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with(&format!("{}:", c.column))),
                "{}: {} {} is a real value on PostgreSQL: {reason:?}",
                w.label,
                c.column,
                c.sqlite
            );
            assert!(ledger.get(id).map_or(0, Vec::len) <= 1, "{}", w.label);
        }
        assert_eq!(report.invalid, bad.len(), "{}: {report:?}", w.label);

        // A second pass charges nothing more and fails nothing.
        let before = w.sim.ledger().len();
        engine.pass().await.unwrap();
        assert_eq!(w.sim.ledger().len(), before, "{}", w.label);
        w.sim.shutdown().await;
    }
}

// ---- 2. offsets --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_converted_never_shifted() {
    let due = Utc.with_ymd_and_hms(2027, 3, 1, 0, 0, 0).unwrap();
    // The same instant, written six ways; on PostgreSQL (TIMESTAMPTZ) the server converts,
    // on SQLite (text) nicebill does. A naive value is UTC (on PostgreSQL: the session's
    // zone, UTC on nicebill's connections).
    let written = [
        "'2027-03-01 00:00:00'",
        "'2027-03-01 09:00:00+09:00'",
        "'2027-03-01T09:00:00+0900'",
        "'2027-03-01 09:00:00+09'",
        "'2027-03-01T00:00:00Z'",
        "'2027-02-28 19:00:00-05:00'",
        "'2027-03-01 09:00:00.000+09:00'",
    ];
    for db in databases("bad_values_offsets").await {
        // Before the due time: the pass schedules cycle 1 and charges nothing.
        let w = world(&db, due - chrono::Duration::hours(12)).await;
        let mut ids = Vec::new();
        for (n, anchor) in written.iter().enumerate() {
            let sql = row_sql(
                w.pg,
                &format!("offset-{n}"),
                w.bid.as_str(),
                Some(("anchor_at", anchor)),
            );
            ids.push((insert(&w.store, sql).await.unwrap(), *anchor));
        }
        let engine = w.engine("offsets", 16);
        engine.pass().await.unwrap();
        for (id, anchor) in &ids {
            let state = w
                .store
                .billing_state(SubscriptionId(*id))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                (state.status, state.next_cycle, state.next_charge_at),
                (SubscriptionStatus::Active, Some(Cycle(1)), Some(due)),
                "{}: anchor_at {anchor}",
                w.label
            );
        }
        // One second before: nothing. At the instant: every row, once.
        w.clock.set(due - chrono::Duration::seconds(1));
        engine.pass().await.unwrap();
        assert!(w.sim.ledger().is_empty(), "{}", w.label);
        w.clock.set(due);
        engine.pass().await.unwrap();
        let ledger = w.ledger_by_subscription();
        for (id, anchor) in &ids {
            let moids: Vec<String> = ledger
                .get(id)
                .map(|v| v.iter().map(|e| e.moid.clone()).collect())
                .unwrap_or_default();
            assert_eq!(moids, vec![format!("S{id}-C1-A1")], "{}: {anchor}", w.label);
        }
        w.sim.shutdown().await;
    }
}

// ---- 3. property test --------------------------------------------------------------------

mod prop {
    use proptest::prelude::*;

    /// A value a merchant application might write into any column.
    #[derive(Clone, Debug)]
    pub enum Value {
        Null,
        Bytes(Vec<u8>),
        Text(String),
        Int(i64),
        Real(f64),
    }

    impl Value {
        /// The SQL expression; on PostgreSQL bytes are written as the text they read as
        /// (PostgreSQL refuses text that is not UTF-8).
        pub fn literal(&self, pg: bool) -> String {
            match self {
                Value::Null => "NULL".into(),
                Value::Bytes(b) if !pg => format!("X'{}'", hex::encode_upper(b)),
                Value::Bytes(b) => super::quote(&String::from_utf8_lossy(b).replace('\0', "")),
                Value::Text(t) => super::quote(t),
                Value::Int(i) => i.to_string(),
                Value::Real(r) => format!("{r:?}"),
            }
        }
    }

    pub fn value() -> impl Strategy<Value = Value> {
        let text = "\\PC{0,24}".prop_map(|s: String| s.replace('\0', ""));
        let date_ish = proptest::string::string_regex(
            "[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}([ T][0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2}(\\.[0-9]{1,7})?)?)?( ?(Z|UTC|KST|[+-][0-9]{1,2}(:?[0-9]{2})?))?",
        )
        .unwrap();
        let words = prop_oneof![
            Just("now"),
            Just("today"),
            Just("infinity"),
            Just("-infinity"),
            Just("epoch"),
            Just("true"),
            Just("yes"),
            Just(""),
            Just(" "),
            Just("NaN"),
            Just("9,900"),
            Just("1e400"),
            Just("active"),
            Just("paused"),
            Just("cancelled"),
        ]
        .prop_map(|s| Value::Text(s.to_owned()));
        prop_oneof![
            1 => Just(Value::Null),
            3 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Bytes),
            3 => text.prop_map(Value::Text),
            3 => date_ish.prop_map(Value::Text),
            2 => any::<i64>().prop_map(Value::Int),
            1 => (-5i64..5).prop_map(Value::Int),
            1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::Real),
            2 => words,
        ]
    }

    pub fn column() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(super::COLUMNS.to_vec())
    }
}

#[test]
fn random_values_in_one_row_never_stop_the_good_rows() {
    use proptest::test_runner::{Config, TestRunner};
    let cases: u32 = std::env::var("NICEBILL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for db in rt.block_on(databases("bad_values_prop")) {
        let w = rt.block_on(async {
            let w = world(&db, now()).await;
            loosen_not_null(&w.store).await;
            w
        });
        let engine = w.engine("prop", 16);
        let counter = AtomicUsize::new(0);
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&(prop::column(), prop::value()), |(column, value)| {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            rt.block_on(async {
                let good1 = w.good(&format!("p{n}-good-1")).await;
                let literal = value.literal(w.pg);
                let external_id = format!("p{n}-random");
                let sql = row_sql(w.pg, &external_id, w.bid.as_str(), Some((column, &literal)));
                // A value the database refuses cannot exist: that row is simply not there.
                let random = insert(&w.store, sql).await.ok();
                let good2 = w.good(&format!("p{n}-good-2")).await;
                let report = engine.pass().await;
                assert!(
                    report.is_ok(),
                    "{}: {column} = {literal}: the pass failed: {report:?}",
                    w.label
                );
                let ledger = w.ledger_by_subscription();
                for id in [good1, good2] {
                    let moids: Vec<&str> = ledger
                        .get(&id)
                        .map(|v| v.iter().map(|e| e.moid.as_str()).collect())
                        .unwrap_or_default();
                    assert_eq!(
                        moids,
                        vec![format!("S{id}-C1-A1")],
                        "{}: {column} = {literal}: good row {id}",
                        w.label
                    );
                }
                if let Some(id) = random {
                    assert!(
                        ledger.get(&id).map_or(0, Vec::len) <= 1,
                        "{}: {column} = {literal}",
                        w.label
                    );
                    let state = w.store.billing_state(SubscriptionId(id)).await.unwrap();
                    if let Some(state) = state
                        && state.status == SubscriptionStatus::Invalid
                    {
                        let reason = state.status_reason.unwrap_or_default();
                        assert!(
                            reason.starts_with(&format!("{column}: ")),
                            "{}: {column} = {literal}: the reason names another column: {reason}",
                            w.label
                        );
                    }
                }
            });
            Ok(())
        });
        if let Err(e) = result {
            panic!("{}: {e}", w.label);
        }
        eprintln!(
            "{}: {} random rows among good ones, {} approvals",
            w.label,
            counter.load(Ordering::Relaxed),
            w.sim.ledger().len()
        );
        rt.block_on(w.sim.shutdown());
    }
}

// ---- 4. the reproduced case, against the real binary ---------------------------------------

fn write_config(dir: &Path, sim_url: &str, db_url: &str, batch: i64) -> std::path::PathBuf {
    ConfigFile::new(sim_url)
        .nicepay("connect_timeout = \"2s\"\nread_timeout = \"2s\"\n")
        .database(db_url)
        .sections(&format!(
            r#"[scheduler]
tick = "* * * * * *"
concurrency = 16
batch = {batch}
# An attempt that waits longer than this for a free slot is not sent (and charged again only
# after `resend_after`): a claim is up to 500 attempts, so leave room on a loaded machine.
settle_margin = "30s"

[retry]
transient_max_elapsed = "1s"

[log]
format = "json"
level = "info"
"#
        ))
        .write(dir)
}

fn run_once(config: &Path) -> std::process::Output {
    nicebill(None)
        .args(["run", "--once", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

/// A billkey from the simulator process, once the wall clock has left the second it was
/// issued in. The simulator mints the registration's TID in the billing format (MID, 0116,
/// the second, 4 digits) and remembers it: an approval TID the daemon mints in that same
/// second may collide with it (A225, then a lookup and a second attempt A2).
async fn billkey(sim_url: &str, moid: &str) -> Bid {
    let bid = issue(&client_at(sim_url), "9410123456780000", moid).await;
    let issued = Utc::now().timestamp();
    while Utc::now().timestamp() == issued {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bid
}

fn sql_time(t: DateTime<Utc>) -> String {
    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reproduced_date_only_anchor_no_longer_stops_billing() {
    for db in databases("bad_values_binary").await {
        let label = db.label;
        let pg = label == "postgres";
        let (_sim, sim_url) = spawn_sim(&[]);
        let bid = billkey(&sim_url, &format!("rep-{label}")).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &sim_url, &db.url, 16);
        let anchor = sql_time(Utc::now() - chrono::Duration::minutes(1));
        let good_sql = row_sql(pg, "good", bid.as_str(), Some(("anchor_at", &anchor)));
        let good = insert(&db.store, good_sql).await.unwrap();
        // The issue's row: a date with no time. PostgreSQL's TIMESTAMPTZ takes '2026-12-01' as
        // midnight UTC, a real time nicebill rightly charges; the value PostgreSQL keeps there
        // that nicebill must refuse is 'infinity' (the old code's diesel read of it failed the
        // whole query, like the date on SQLite).
        let bad_value = if pg { "'infinity'" } else { "'2026-12-01'" };
        let bad_sql = row_sql(pg, "bad", bid.as_str(), Some(("anchor_at", bad_value)));
        let bad = insert(&db.store, bad_sql).await.unwrap();
        let good_after_sql = row_sql(pg, "good-after", bid.as_str(), Some(("anchor_at", &anchor)));
        let good_after = insert(&db.store, good_after_sql).await.unwrap();

        let out = run_once(&config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{label}: run --once failed: {stderr}");
        let ledger = by_subscription(ledger(&sim_url).await);
        let charged: Vec<(i64, Vec<String>)> = ledger
            .iter()
            .map(|(id, v)| (*id, v.iter().map(|e| e.moid.clone()).collect()))
            .collect();
        assert_eq!(
            charged,
            vec![
                (good, vec![format!("S{good}-C1-A1")]),
                (good_after, vec![format!("S{good_after}-C1-A1")])
            ],
            "{label}"
        );
        let reason = assert_invalid(&db.store, label, bad, "anchor_at", bad_value, None).await;
        // The log names the subscription and the column, at ERROR.
        let logged = stderr.lines().any(|l| {
            let Ok(line) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            let fields = &line["fields"];
            line["level"] == "ERROR"
                && fields["subscription"] == bad
                && fields["reason"].as_str() == Some(reason.as_str())
        });
        assert!(
            logged,
            "{label}: no ERROR line names subscription {bad} and {reason:?}: {stderr}"
        );
        let row = db.store.subscription(bad).await.unwrap().unwrap();
        assert_eq!(row.status, "invalid", "{label}");
    }
}

// ---- 5. (g) a batch at the configuration's maximum ------------------------------------------

/// Subscriptions due in the one-pass test: enough that a statement carrying a whole claim
/// would pass the backend's limit of bound parameters (charges are inserted with 9 or 10
/// parameters a row): SQLite's 32,766 at 4,000 rows, PostgreSQL's 65,535 at 7,500. The code
/// before issue 8 claimed `batch` rows at once and sent each multi-row statement whole: there
/// this pass fails with "too many SQL variables" (SQLite) or "number of parameters must be
/// between 0 and 65535" (PostgreSQL). `NICEBILL_BATCH_ROWS` overrides both.
fn batch_rows(pg: bool) -> usize {
    std::env::var("NICEBILL_BATCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if pg { 7_500 } else { 4_000 })
}

/// Inserts `n` due rows with multi-row INSERTs of literals (no parameters).
async fn insert_many(store: &Store, pg: bool, bid: &str, prefix: &str, anchor: &str, n: usize) {
    let mut start = 0;
    while start < n {
        let end = (start + 250).min(n);
        let rows: Vec<String> = (start..end)
            .map(|i| {
                let mut v = good_values(pg, &format!("{prefix}-{i}"), bid);
                v[13] = anchor.to_owned();
                format!("({})", v.join(", "))
            })
            .collect();
        execute(
            store,
            format!(
                "INSERT INTO subscriptions ({}) VALUES {}",
                COLUMNS.join(", "),
                rows.join(", ")
            ),
        )
        .await
        .unwrap();
        start = end;
    }
}

fn assert_each_charged_once(label: &str, ledger: Vec<LedgerEntry>, n: usize) {
    let per = by_subscription(ledger);
    assert_eq!(per.len(), n, "{label}: subscriptions charged");
    for (id, entries) in per {
        let moids: Vec<&str> = entries.iter().map(|e| e.moid.as_str()).collect();
        assert_eq!(moids, vec![format!("S{id}-C1-A1")], "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maximal_batch_charges_a_large_backlog_in_one_pass() {
    for db in databases("bad_values_batch").await {
        let w = world(&db, now()).await;
        let n = batch_rows(w.pg);
        insert_many(&w.store, w.pg, w.bid.as_str(), "many", GOOD_ANCHOR, n).await;
        let engine = w.engine("batch", 10_000);
        let report: PassReport = engine
            .pass()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", w.label));
        assert_eq!(report.charged, n, "{}: {report:?}", w.label);
        assert_each_charged_once(w.label, w.sim.ledger(), n);
        w.sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_with_batch_10000_charges_every_due_row() {
    // The configuration's maximum batch through the real binary: `run --once` exits 0 with
    // every due row charged once (the limits themselves are proven in process, above).
    let n = 1_500;
    for db in databases("bad_values_batch_bin").await {
        let label = db.label;
        let pg = label == "postgres";
        let (_sim, sim_url) = spawn_sim(&[]);
        let bid = billkey(&sim_url, &format!("b-{label}")).await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &sim_url, &db.url, 10_000);
        let anchor = sql_time(Utc::now() - chrono::Duration::hours(1));
        insert_many(&db.store, pg, bid.as_str(), "bin", &anchor, n).await;
        let out = run_once(&config);
        assert!(
            out.status.success(),
            "{label}: run --once: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_each_charged_once(label, ledger(&sim_url).await, n);
    }
}

// ---- the server's DateStyle --------------------------------------------------------------

/// PostgreSQL renders a TIMESTAMPTZ as text in the session's DateStyle (`ALTER DATABASE … SET
/// datestyle`, `ALTER ROLE`, PGDATESTYLE or `options=-c datestyle=…` all set it). nicebill
/// reads the merchant's times in that text form, so it must fix the style on its connections:
/// otherwise under 'German' ("01.03.2027 00:55:00 UTC") or 'SQL, DMY' every row is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_date_style_changes_nothing() {
    for db in databases("bad_values_datestyle").await {
        if db.label != "postgres" {
            eprintln!("the_servers_date_style_changes_nothing: PostgreSQL only");
            continue;
        }
        for style in ["German", "SQL%2CDMY", "Postgres%2CMDY"] {
            let url = format!("{}%20-c%20datestyle%3D{style}", db.url);
            let store = Store::open(DbUrl::parse(&url).unwrap(), 2).unwrap();
            let w = world_on(store, "postgres", now()).await;
            let a = w.good(&format!("style-{style}-a")).await;
            let b = w.good(&format!("style-{style}-b")).await;
            w.engine("style", 16).pass().await.unwrap();
            let ledger = w.ledger_by_subscription();
            for id in [a, b] {
                let state = w.store.billing_state(SubscriptionId(id)).await.unwrap();
                assert_eq!(
                    ledger.get(&id).map_or(0, Vec::len),
                    1,
                    "DateStyle {style}: row {id}: {state:?}"
                );
            }
            w.sim.shutdown().await;
        }
    }
}

// ---- a panic in a database task ----------------------------------------------------------

/// Should a bad value still find a panic in the code that reads it (as the multi-byte
/// character in `CASES` once did), the pass fails, but the pooled connection must not go back
/// to the pool with its transaction open: the next "committed" write would then be a savepoint
/// inside it, never committed (an attempt recorded only there would be sent unrecorded), and on
/// SQLite the open transaction keeps the write lock from every other connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_database_task_leaves_no_transaction_open() {
    for db in databases("bad_values_panic").await {
        let label = db.label;
        let pg = label == "postgres";
        // One connection, so the write after the panic gets the same one if it is kept.
        let store = Store::open(DbUrl::parse(&db.url).unwrap(), 1).unwrap();
        let insert_row = move |external_id: &'static str| {
            let sql = row_sql(pg, external_id, "BIKYnictest04m2611251200001234", None);
            move |c: &mut AnyConnection| -> Result<(), StoreError> {
                match c {
                    AnyConnection::Sqlite(c) => diesel::sql_query(sql.clone()).execute(c)?,
                    AnyConnection::Postgres(c) => diesel::sql_query(sql.clone()).execute(c)?,
                };
                Ok(())
            }
        };
        let panicking = insert_row("written-then-panicked");
        let failed: Result<(), StoreError> = store
            .write(move |c| {
                panicking(c)?;
                panic!("a bug met a bad value");
            })
            .await;
        assert!(failed.is_err(), "{label}");
        store.write(insert_row("after")).await.unwrap();
        // What another connection sees: the write after the panic, committed; nothing of the
        // panicked one.
        #[derive(QueryableByName)]
        struct Name {
            #[diesel(sql_type = Text)]
            external_id: String,
        }
        let names: Vec<String> = db
            .store
            .run(|c| {
                let sql = "SELECT external_id FROM subscriptions ORDER BY id";
                let rows: Vec<Name> = match c {
                    AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
                    AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
                };
                Ok(rows.into_iter().map(|r| r.external_id).collect())
            })
            .await
            .unwrap();
        assert_eq!(names, vec!["after".to_owned()], "{label}");
    }
}
