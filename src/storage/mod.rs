//! The database: SQLite (embedded default) or PostgreSQL, one schema, embedded migrations per
//! backend. Only this module knows diesel and SQL.
//!
//! Every write that decides money happens in one transaction with a condition that makes it
//! safe to run twice or from two instances: claims are compare-and-set with a lease (and
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL), an attempt is committed before it is sent, and an
//! outcome is recorded only while its charge is still unresolved.

mod admin;
mod batch;
mod claims;
mod figures;
mod lanes;
pub mod merchant;
pub mod models;
mod notice;
pub mod outbox;
pub mod recording;
pub mod schema;
pub mod upcoming;

pub use claims::Claimed;
pub use figures::HealthFigures;
pub use lanes::TID_LANES;
pub use recording::{LateFinding, NewTid, Started};

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ManageConnection, Pool, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::Text;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::billing::model::{ChargeId, ChargeState, EventKind, SubscriptionId, SubscriptionStatus};
use crate::domain::FieldError;
use crate::schedule::Cycle;
use models::NewEvent;
use schema::{billkey_removals, events};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// One connection type over both backends.
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgres(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

/// Where the database is, from `[database] url`.
#[derive(Clone, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl DbUrl {
    /// `sqlite://relative.db`, `sqlite:///absolute/path.db` or `postgres://…`.
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(FieldError::new(
                    "database.url",
                    "sqlite:// needs a file path",
                ));
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let env_sslmode = std::env::var_os("PGSSLMODE").is_some();
            return Ok(DbUrl::Postgres(with_default_sslmode(text, env_sslmode)));
        }
        Err(FieldError::new(
            "database.url",
            format!(
                "{:?}: expected sqlite://relative.db, sqlite:///absolute/path.db or postgres://user@host/db",
                redact(text)
            ),
        ))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            DbUrl::Sqlite(_) => "sqlite",
            DbUrl::Postgres(_) => "postgres",
        }
    }
}

/// A PostgreSQL URL naming a host that is not this machine, and no `sslmode`, gets
/// `sslmode=require`: the connection carries the merchant's billing data and must not go in
/// clear text over a network. An explicit `sslmode` in the URL, or libpq's `PGSSLMODE` in the
/// environment (`env_sslmode`), wins; loopback hosts (`localhost`, 127.0.0.0/8, `::1`) and Unix
/// sockets (no host, or a `host=/dir` parameter) are left as written. A URL the `url` crate
/// cannot read is left for libpq to judge.
fn with_default_sslmode(text: &str, env_sslmode: bool) -> String {
    let Ok(url) = url::Url::parse(text) else {
        return text.to_owned();
    };
    if env_sslmode {
        return text.to_owned();
    }
    let mut host = url.host_str().unwrap_or_default().to_owned();
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "sslmode" => return text.to_owned(),
            "host" | "hostaddr" => host = value.into_owned(),
            _ => {}
        }
    }
    let local = host.is_empty() || host.starts_with('/') || crate::domain::is_loopback_host(&host);
    if local {
        return text.to_owned();
    }
    let sep = if url.query().is_some() { '&' } else { '?' };
    match text.split_once('#') {
        Some((head, fragment)) => format!("{head}{sep}sslmode=require#{fragment}"),
        None => format!("{text}{sep}sslmode=require"),
    }
}

/// The URL with any password replaced by `***`.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            DbUrl::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("database: {0}")]
    Query(#[from] DieselError),
    #[error("database migrations: {0}")]
    Migration(String),
    #[error("database task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// Lock contention worth retrying the whole transaction for.
    fn is_contention(&self) -> bool {
        match self {
            StoreError::Query(DieselError::DatabaseError(kind, info)) => {
                matches!(kind, DatabaseErrorKind::SerializationFailure)
                    || info.message().contains("database is locked")
                    || info.message().contains("deadlock detected")
            }
            _ => false,
        }
    }
}

/// Opens connections by URL scheme (so errors name the backend the operator chose) and sets
/// each one up: durable commits and a busy timeout on SQLite, timeouts on PostgreSQL.
#[derive(Debug)]
struct Manager {
    url: DbUrl,
}

impl ManageConnection for Manager {
    type Connection = AnyConnection;
    type Error = StoreError;

    fn connect(&self) -> Result<AnyConnection, StoreError> {
        let fail = |message: String| StoreError::Connect {
            url: self.url.to_string(),
            message,
        };
        match &self.url {
            DbUrl::Sqlite(path) => {
                let path = path
                    .to_str()
                    .ok_or_else(|| fail("path is not UTF-8".into()))?;
                let mut conn =
                    diesel::SqliteConnection::establish(path).map_err(|e| fail(e.to_string()))?;
                // WAL lets readers run beside the writer; synchronous=FULL makes every commit
                // durable across power loss, not only across a crash of nicebill.
                conn.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
                )
                .map_err(|e| fail(e.to_string()))?;
                Ok(AnyConnection::Sqlite(conn))
            }
            DbUrl::Postgres(url) => {
                let mut conn =
                    diesel::PgConnection::establish(url).map_err(|e| fail(e.to_string()))?;
                // synchronous_commit on: "committed before sent" must not depend on the
                // server's default. DateStyle ISO: the merchant's columns are read in their
                // text form (`storage::merchant`), which for a timestamp follows the session's
                // DateStyle; a server, database or role set to 'German' or 'SQL, DMY' would
                // otherwise make every row's anchor_at unreadable.
                conn.batch_execute(
                    "SET statement_timeout = '30s'; SET lock_timeout = '10s'; \
                     SET idle_in_transaction_session_timeout = '60s'; SET TIME ZONE 'UTC'; \
                     SET DateStyle = 'ISO, YMD'; SET synchronous_commit = on;",
                )
                .map_err(|e| fail(e.to_string()))?;
                Ok(AnyConnection::Postgres(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        conn.batch_execute("SELECT 1").map_err(StoreError::from)
    }

    /// A connection dropped while its thread panics, or with a transaction still open, goes:
    /// back in the pool it would keep that transaction (and on SQLite the write lock) open
    /// for every later user.
    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        use diesel::connection::TransactionManager;
        std::thread::panicking()
            || <AnyConnection as Connection>::TransactionManager::is_broken_transaction_manager(
                conn,
            )
    }
}

type Conn = PooledConnection<Manager>;

/// A pool of connections to one database.
#[derive(Clone)]
pub struct Store {
    pool: Pool<Manager>,
    url: DbUrl,
    /// SQLite only: this process's write transactions take turns here, first come first
    /// served, rather than in SQLite's busy handler (which sleeps and polls, so a waiting
    /// writer can lose the lock to a busier one again and again).
    writer: Option<std::sync::Arc<tokio::sync::Mutex<()>>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

/// Most ids one statement names (`IN (…)` lists, multi-row VALUES): far below SQLite's 32,766
/// and PostgreSQL's 65,535 parameters, whatever `[scheduler] batch` says.
pub const MAX_IDS_PER_STATEMENT: usize = 500;

/// An event to append.
#[derive(Clone, Debug)]
pub struct Event {
    pub subscription_id: Option<SubscriptionId>,
    pub charge_id: Option<ChargeId>,
    pub kind: EventKind,
    pub detail: String,
}

impl Event {
    pub fn sub(
        subscription_id: SubscriptionId,
        kind: EventKind,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            subscription_id: Some(subscription_id),
            charge_id: None,
            kind,
            detail: detail.into(),
        }
    }
}

/// nicebill's bookkeeping of one subscription, as one update of `billing_state`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bookkeeping {
    pub next_cycle: Cycle,
    pub next_charge_at: Option<DateTime<Utc>>,
    pub cycle_attempts: u32,
    pub cycle_declines: u32,
    /// `Some((status, reason))` to change the status (only while it is `active`).
    pub status: Option<(SubscriptionStatus, String)>,
}

/// An attempt to commit before sending.
#[derive(Clone, Debug)]
pub struct StartAttempt {
    pub subscription_id: SubscriptionId,
    pub cycle: Cycle,
    pub attempt: u32,
    pub moid: String,
    pub amount: i64,
    pub bid: String,
    /// The cycle's scheduled due time (kept as next_charge_at while the attempt runs).
    pub due_at: DateTime<Utc>,
    /// When a lookup may conclude the attempt never happened (crash recovery).
    pub check_after: DateTime<Utc>,
    pub events: Vec<Event>,
}

/// A decision about a claimed subscription that charges nothing.
#[derive(Clone, Debug)]
pub struct Reschedule {
    pub subscription_id: SubscriptionId,
    pub bookkeeping: Bookkeeping,
    /// The pause this decision consumed: cleared only if it is still the one the decision
    /// saw (a pause noticed meanwhile is kept).
    pub consumed_pause: Option<DateTime<Utc>>,
    pub events: Vec<Event>,
    /// Also queue billkey removal (a cancellation decided by nicebill).
    pub remove_billkey: Option<String>,
}

/// The settled or still-open result of one attempt.
#[derive(Clone, Debug)]
pub struct ChargeResult {
    pub state: ChargeState,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub auth_code: Option<String>,
    pub auth_date: Option<String>,
    pub card_no: Option<String>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    /// For an unresolved result: when to look it up.
    pub check_after: Option<DateTime<Utc>>,
    /// For a `not_charged` concluded from "not found": when to look once more.
    pub late_check_at: Option<DateTime<Utc>>,
    pub lookups: i32,
    /// NICEPAY's tid learnt with the outcome (v1, where NICEPAY makes it): stored when the
    /// charge has none yet, never replacing one.
    pub tid: Option<String>,
}

impl ChargeResult {
    pub fn new(state: ChargeState) -> Self {
        Self {
            state,
            result_code: None,
            result_msg: None,
            auth_code: None,
            auth_date: None,
            card_no: None,
            error_class: None,
            error: None,
            check_after: None,
            late_check_at: None,
            lookups: 0,
            tid: None,
        }
    }
}

/// An outcome to record: the charge's new state and, when settled, the subscription's.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub charge_id: ChargeId,
    pub subscription_id: SubscriptionId,
    pub cycle: Cycle,
    pub result: ChargeResult,
    pub bookkeeping: Option<Bookkeeping>,
    pub events: Vec<Event>,
    pub remove_billkey: Option<String>,
}

/// What the notice pass found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Noticed {
    pub new: usize,
    pub paused: usize,
    pub resumed: usize,
    pub cancelled: usize,
    pub billkeys_changed: usize,
    pub invalid: Vec<(SubscriptionId, String)>,
}

impl Store {
    /// Opens a pool; connects once so that a wrong URL fails here, clearly.
    pub fn open(url: DbUrl, max_connections: u32) -> Result<Store, StoreError> {
        // Switch a new SQLite file to WAL once, before the pool opens connections side by
        // side (each would otherwise race to change the journal mode).
        if let DbUrl::Sqlite(_) = url {
            Manager { url: url.clone() }.connect()?;
        }
        let pool = Pool::builder()
            .max_size(max_connections.max(1))
            .connection_timeout(Duration::from_secs(15))
            .build(Manager { url: url.clone() })
            .map_err(|e| StoreError::Connect {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        let writer = matches!(url, DbUrl::Sqlite(_))
            .then(|| std::sync::Arc::new(tokio::sync::Mutex::new(())));
        Ok(Store { pool, url, writer })
    }

    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    fn conn(&self) -> Result<Conn, StoreError> {
        self.pool.get().map_err(|e| StoreError::Connect {
            url: self.url.to_string(),
            message: e.to_string(),
        })
    }

    /// Runs `f` on a pooled connection in a blocking thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut AnyConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = store.conn()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs `f` in one write transaction, retried a few times on lock contention.
    ///
    /// On SQLite the transaction begins `IMMEDIATE`, taking the write lock before it reads:
    /// a deferred one reads from a snapshot, and if another connection commits before its
    /// first write, that write cannot go ahead ("database is locked", at once, without the
    /// busy timeout) and the whole transaction would have to start again. In this process
    /// writers queue for the lock in order (`writer`); another process waits in the busy
    /// handler.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut AnyConnection) -> Result<T, StoreError> + Send + 'static,
    {
        let turn = match &self.writer {
            Some(writer) => Some(std::sync::Arc::clone(writer).lock_owned().await),
            None => None,
        };
        self.run(move |conn| {
            let _turn = turn;
            let mut tries = 0;
            loop {
                match write_transaction(conn, &f) {
                    Err(e) if e.is_contention() && tries < 5 => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20 << tries));
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    /// Applies pending migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<String>, StoreError> {
        self.run(|conn| {
            let applied = match conn {
                AnyConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS),
                AnyConnection::Postgres(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS),
            }
            .map_err(|e| StoreError::Migration(e.to_string()))?;
            Ok(applied.iter().map(|v| v.to_string()).collect())
        })
        .await
    }

    /// Migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<Vec<String>, StoreError> {
        self.run(|conn| {
            let names = match conn {
                AnyConnection::Sqlite(c) => c
                    .pending_migrations(SQLITE_MIGRATIONS)
                    .map(|p| p.iter().map(|m| m.name().to_string()).collect()),
                AnyConnection::Postgres(c) => c
                    .pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|p| p.iter().map(|m| m.name().to_string()).collect()),
            };
            names.map_err(|e| StoreError::Migration(e.to_string()))
        })
        .await
    }
}

impl Store {
    /// The database's own clock: the one time every instance shares.
    pub async fn database_time(&self) -> Result<DateTime<Utc>, StoreError> {
        #[derive(QueryableByName)]
        struct Now {
            #[diesel(sql_type = Text)]
            now: String,
        }
        self.run(|c| {
            let sql = match c {
                // Millisecond precision, UTC.
                AnyConnection::Sqlite(_) => "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now') AS now",
                AnyConnection::Postgres(_) => {
                    "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
                     'YYYY-MM-DD HH24:MI:SS.US') AS now"
                }
            };
            let row: Now = match c {
                AnyConnection::Sqlite(c) => diesel::sql_query(sql).get_result(c)?,
                AnyConnection::Postgres(c) => diesel::sql_query(sql).get_result(c)?,
            };
            NaiveDateTime::parse_from_str(&row.now, "%Y-%m-%d %H:%M:%S%.f")
                .map(|t| t.and_utc())
                .map_err(|e| StoreError::Task(format!("database time {:?}: {e}", row.now)))
        })
        .await
    }
}

pub(crate) use crate::clock::later;

/// Ids as a comma-separated list to stand in SQL text (`… IN (1,2,3)`): integers cannot carry
/// anything else into the statement.
fn id_list(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

fn insert_events(
    c: &mut AnyConnection,
    now: NaiveDateTime,
    evs: &[Event],
) -> Result<(), StoreError> {
    // One statement per row: multi-row inserts are not available over both backends at
    // once, and events are few next to charges.
    for e in evs {
        let row = NewEvent {
            at: now,
            subscription_id: e.subscription_id.map(|s| s.0),
            charge_id: e.charge_id.map(|c| c.0),
            kind: e.kind.as_str().to_owned(),
            detail: e.detail.clone(),
        };
        diesel::insert_into(events::table).values(&row).execute(c)?;
    }
    // The webhooks they stand for, in the same transaction.
    outbox::for_events(c, now, evs)
}

/// Queues removal of `bid` for subscription `id` unless it is queued (or done) already.
/// Whether it may really be removed is decided when it is due (`claim_removals`).
///
/// Text that is not a billkey NICEPAY could have issued (empty, white space around it, …) is
/// not queued: it can never be sent (the engine refuses it as a `Bid`, so the removal would
/// fail and be retried for ever), nothing was ever charged with it (such a row is invalid),
/// and trimming it into a billkey would be deciding for the merchant which card was meant.
fn queue_removal(
    c: &mut AnyConnection,
    id: SubscriptionId,
    bid: &str,
    reason: &str,
    now: NaiveDateTime,
) -> Result<(), StoreError> {
    if crate::domain::Bid::new(bid).is_err() {
        return Ok(());
    }
    let exists: i64 = billkey_removals::table
        .filter(billkey_removals::subscription_id.eq(id.0))
        .filter(billkey_removals::bid.eq(bid))
        .count()
        .get_result(c)?;
    if exists == 0 {
        diesel::insert_into(billkey_removals::table)
            .values((
                billkey_removals::subscription_id.eq(id.0),
                billkey_removals::bid.eq(bid),
                billkey_removals::reason.eq(reason),
                billkey_removals::state.eq("pending"),
                billkey_removals::attempts.eq(0),
                billkey_removals::next_attempt_at.eq(now),
                billkey_removals::created_at.eq(now),
            ))
            .execute(c)?;
    } else {
        // A pending removal held for another subscription is looked at again now.
        diesel::update(billkey_removals::table)
            .filter(billkey_removals::subscription_id.eq(id.0))
            .filter(billkey_removals::bid.eq(bid))
            .filter(billkey_removals::state.eq("pending"))
            .set(billkey_removals::next_attempt_at.eq(now))
            .execute(c)?;
    }
    Ok(())
}

/// The last four characters of a billkey, for events and logs.
pub fn bid_suffix(bid: &str) -> String {
    let chars: Vec<char> = bid.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(4)..].iter().collect();
    format!("…{tail}")
}

/// One write transaction: `BEGIN IMMEDIATE` on SQLite (see [`Store::write`]), the
/// connection's own `BEGIN` on PostgreSQL.
fn write_transaction<T>(
    conn: &mut AnyConnection,
    f: &impl Fn(&mut AnyConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    if let AnyConnection::Sqlite(lite) = &mut *conn {
        AnsiTransactionManager::begin_transaction_sql(lite, "BEGIN IMMEDIATE")?;
    } else {
        return conn.transaction(|c| f(c));
    }
    let result = f(conn);
    let AnyConnection::Sqlite(lite) = conn else {
        return Err(StoreError::Task("the connection changed backend".into()));
    };
    match result {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(lite)?;
            Ok(value)
        }
        Err(e) => match AnsiTransactionManager::rollback_transaction(lite) {
            Ok(()) | Err(DieselError::BrokenTransactionManager) => Err(e),
            Err(rollback) => Err(rollback.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::DbUrl;

    fn pg(text: &str) -> String {
        match DbUrl::parse(text) {
            Ok(DbUrl::Postgres(url)) => url,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn remote_postgres_requires_tls_unless_told_otherwise() {
        for (given, want) in [
            (
                "postgres://nb@db.example.com/nb",
                "postgres://nb@db.example.com/nb?sslmode=require",
            ),
            (
                "postgresql://nb:pw@10.0.0.5:5433/nb?application_name=x",
                "postgresql://nb:pw@10.0.0.5:5433/nb?application_name=x&sslmode=require",
            ),
            (
                "postgres://nb@[2001:db8::1]/nb",
                "postgres://nb@[2001:db8::1]/nb?sslmode=require",
            ),
            (
                "postgres:///nb?host=db.example.com",
                "postgres:///nb?host=db.example.com&sslmode=require",
            ),
            // An explicit sslmode wins, whatever it is.
            (
                "postgres://nb@db.example.com/nb?sslmode=disable",
                "postgres://nb@db.example.com/nb?sslmode=disable",
            ),
            (
                "postgres://nb@db.example.com/nb?sslmode=verify-full",
                "postgres://nb@db.example.com/nb?sslmode=verify-full",
            ),
            // This machine: loopback and Unix sockets.
            (
                "postgres://postgres@127.0.0.1:5432/nb",
                "postgres://postgres@127.0.0.1:5432/nb",
            ),
            (
                "postgres://postgres@127.8.0.1/nb",
                "postgres://postgres@127.8.0.1/nb",
            ),
            (
                "postgres://postgres@localhost/nb",
                "postgres://postgres@localhost/nb",
            ),
            (
                "postgres://postgres@[::1]/nb",
                "postgres://postgres@[::1]/nb",
            ),
            ("postgres:///nb", "postgres:///nb"),
            (
                "postgres:///nb?host=/var/run/postgresql",
                "postgres:///nb?host=/var/run/postgresql",
            ),
        ] {
            assert_eq!(pg(given), want, "{given}");
        }
        // PGSSLMODE in the environment is an explicit choice too.
        assert_eq!(
            super::with_default_sslmode("postgres://nb@db.example.com/nb", true),
            "postgres://nb@db.example.com/nb"
        );
    }
}

/// The v1 migration rebuilds SQLite's `charges` table: rows, their ids and every rule the
/// indexes enforce must come through; PostgreSQL only drops a NOT NULL.
#[cfg(test)]
mod v1_migration {
    use diesel::connection::SimpleConnection;
    use diesel::migration::MigrationSource;
    use diesel::prelude::*;
    use diesel::sqlite::{Sqlite, SqliteConnection};
    use diesel_migrations::MigrationHarness;

    use super::SQLITE_MIGRATIONS;

    #[test]
    fn sqlite_charges_keep_their_rows_and_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nb.sqlite");
        let mut c = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        c.batch_execute("PRAGMA foreign_keys = ON").unwrap();
        let all = MigrationSource::<Sqlite>::migrations(&SQLITE_MIGRATIONS).unwrap();
        // Every migration before the v1 one, then rows, then the rest.
        let v1 = all
            .iter()
            .position(|m| m.name().to_string().ends_with("_v1"))
            .expect("the v1 migration");
        for _ in &all[..v1] {
            c.run_next_migration(SQLITE_MIGRATIONS).unwrap();
        }
        c.batch_execute(
            "INSERT INTO subscriptions (id, external_id, bid, amount, goods_name, anchor_at) \
             VALUES (1, 'm-1', 'BIKYnictest04m0001', 5000, 'plan', '2026-01-01 00:00:00');
             INSERT INTO charges (id, subscription_id, cycle, attempt, moid, tid, amount, state, \
             created_at, bid) VALUES \
             (7, 1, 1, 1, 'S1-C1-A1', 'nictest04m01162601010000000001', 5000, 'approved', \
              '2026-01-01 00:00:00', 'BIKYnictest04m0001'), \
             (9, 1, 2, 1, 'S1-C2-A1', 'nictest04m01162602010000000001', 5000, 'unknown', \
              '2026-02-01 00:00:00', 'BIKYnictest04m0001');",
        )
        .unwrap();
        c.run_pending_migrations(SQLITE_MIGRATIONS).unwrap();

        #[derive(QueryableByName, Debug, PartialEq)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            tid: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Text)]
            api: String,
        }
        let rows: Vec<Row> = diesel::sql_query("SELECT id, tid, api FROM charges ORDER BY id")
            .load(&mut c)
            .unwrap();
        assert_eq!(
            rows,
            vec![
                Row {
                    id: 7,
                    tid: Some("nictest04m01162601010000000001".into()),
                    api: "webapi".into()
                },
                Row {
                    id: 9,
                    tid: Some("nictest04m01162602010000000001".into()),
                    api: "webapi".into()
                },
            ]
        );
        let insert = |c: &mut SqliteConnection, moid: &str, cycle: i32, tid: &str, api: &str| {
            c.batch_execute(&format!(
                "INSERT INTO charges (subscription_id, cycle, attempt, moid, tid, amount, state, \
                 created_at, api) VALUES (1, {cycle}, 9, '{moid}', {tid}, 5000, 'declined', \
                 '2026-03-01 00:00:00', '{api}')"
            ))
        };
        // A v1 attempt has no tid until NICEPAY answers; several may be without one.
        insert(&mut c, "S1-C3-A9", 3, "NULL", "v1").unwrap();
        insert(&mut c, "S1-C4-A9", 4, "NULL", "v1").unwrap();
        // A web API attempt always has one; an API we do not know is refused.
        assert!(insert(&mut c, "S1-C5-A9", 5, "NULL", "webapi").is_err());
        assert!(insert(&mut c, "S1-C5-A9", 5, "'T5'", "v2").is_err());
        // Moids and tids stay unique.
        assert!(insert(&mut c, "S1-C1-A1", 6, "'T6'", "v1").is_err());
        assert!(
            insert(
                &mut c,
                "S1-C6-A9",
                6,
                "'nictest04m01162601010000000001'",
                "v1"
            )
            .is_err()
        );
        // One live attempt per cycle, one unresolved per subscription.
        assert!(
            c.batch_execute(
                "INSERT INTO charges (subscription_id, cycle, attempt, moid, amount, state, \
                 created_at, api) VALUES (1, 1, 2, 'S1-C1-A2', 5000, 'pending', \
                 '2026-03-01 00:00:00', 'v1')"
            )
            .is_err()
        );
        assert!(
            c.batch_execute(
                "INSERT INTO charges (subscription_id, cycle, attempt, moid, amount, state, \
                 created_at, api) VALUES (1, 8, 1, 'S1-C8-A1', 5000, 'pending', \
                 '2026-03-01 00:00:00', 'v1')"
            )
            .is_err()
        );
        // New ids continue after the old ones.
        #[derive(QueryableByName)]
        struct Max {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            id: i64,
        }
        let max: Max = diesel::sql_query("SELECT MIN(id) AS id FROM charges WHERE api = 'v1'")
            .get_result(&mut c)
            .unwrap();
        assert!(max.id > 9, "{}", max.id);
    }
}
