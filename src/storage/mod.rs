//! The database: SQLite (embedded default) or PostgreSQL, one schema, embedded migrations per
//! backend. Only this module knows diesel and SQL.
//!
//! Every write that decides money happens in one transaction with a condition that makes it
//! safe to run twice or from two instances: claims are compare-and-set with a lease (and
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL), an attempt is committed before it is sent, and an
//! outcome is recorded only while its charge is still unresolved.

mod admin;
mod batch;
pub mod models;
pub mod schema;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ManageConnection, Pool, PooledConnection};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Text, Timestamp};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::domain::FieldError;
use models::{
    ChargeRow, EventRow, NewCharge, NewEvent, NewSubscription, RemovalRow, SubscriptionRow,
};
use schema::{billkey_removals, charges, events, subscriptions};

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
            return Ok(DbUrl::Postgres(text.to_owned()));
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
                conn.batch_execute(
                    "SET statement_timeout = '30s'; SET lock_timeout = '10s'; \
                     SET idle_in_transaction_session_timeout = '60s'; SET TIME ZONE 'UTC';",
                )
                .map_err(|e| fail(e.to_string()))?;
                Ok(AnyConnection::Postgres(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        conn.batch_execute("SELECT 1").map_err(StoreError::from)
    }

    fn has_broken(&self, _conn: &mut AnyConnection) -> bool {
        false
    }
}

type Conn = PooledConnection<Manager>;

/// A pool of connections to one database.
#[derive(Clone)]
pub struct Store {
    pool: Pool<Manager>,
    url: DbUrl,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

fn naive(t: DateTime<Utc>) -> NaiveDateTime {
    t.naive_utc()
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct Event {
    pub subscription_id: Option<i64>,
    pub charge_id: Option<i64>,
    pub kind: &'static str,
    pub detail: String,
}

impl Event {
    pub fn sub(subscription_id: i64, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            subscription_id: Some(subscription_id),
            charge_id: None,
            kind,
            detail: detail.into(),
        }
    }
}

/// The subscription columns nicebill keeps, as one update.
#[derive(Clone, Debug, PartialEq)]
pub struct Bookkeeping {
    pub next_cycle: i32,
    pub next_charge_at: Option<DateTime<Utc>>,
    pub cycle_attempts: i32,
    pub cycle_declines: i32,
    /// `Some((status, reason))` to change the status.
    pub status: Option<(String, String)>,
    /// What to leave in `paused_since`: `None` (the usual) ends the pause handling; `Some`
    /// keeps a pause whose skipped cycles are not all passed over yet.
    pub paused_since: Option<DateTime<Utc>>,
}

/// An attempt to commit before sending.
#[derive(Clone, Debug)]
pub struct StartAttempt {
    pub subscription_id: i64,
    pub cycle: i32,
    pub attempt: i32,
    pub moid: String,
    pub amount: i64,
    /// The cycle's scheduled due time (kept as next_charge_at while the attempt runs).
    pub due_at: DateTime<Utc>,
    /// When a lookup may conclude the attempt never happened (crash recovery).
    pub check_after: DateTime<Utc>,
    pub events: Vec<Event>,
}

/// A decision about a claimed subscription that charges nothing.
#[derive(Clone, Debug)]
pub struct Reschedule {
    pub subscription_id: i64,
    pub bookkeeping: Bookkeeping,
    pub events: Vec<Event>,
    /// Also queue billkey removal (a cancellation decided by nicebill).
    pub remove_billkey: Option<String>,
}

/// The settled or still-open result of one attempt.
#[derive(Clone, Debug, Default)]
pub struct ChargeResult {
    pub state: String,
    pub result_code: Option<String>,
    pub result_msg: Option<String>,
    pub auth_code: Option<String>,
    pub auth_date: Option<String>,
    pub card_no: Option<String>,
    pub error_class: Option<String>,
    pub error: Option<String>,
    /// For an unresolved result: when to look it up.
    pub check_after: Option<DateTime<Utc>>,
    pub lookups: i32,
}

/// An outcome to record: the charge's new state and, when settled, the subscription's.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub charge_id: i64,
    pub subscription_id: i64,
    pub cycle: i32,
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
    pub invalid: Vec<(i64, String)>,
}

const KNOWN_STATUSES: &str =
    "'active','paused','cancelled','past_due','card_invalid','ended','invalid'";

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
        Ok(Store { pool, url })
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
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut AnyConnection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run(move |conn| {
            let mut tries = 0;
            loop {
                match conn.transaction(|c| f(c)) {
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

    // ---- merchant-side rows (tests, CLI) ----

    pub async fn insert_subscription(&self, new: NewSubscription) -> Result<i64, StoreError> {
        self.write(move |c| {
            Ok(diesel::insert_into(subscriptions::table)
                .values(&new)
                .returning(subscriptions::id)
                .get_result(c)?)
        })
        .await
    }

    pub async fn subscription(&self, id: i64) -> Result<Option<SubscriptionRow>, StoreError> {
        self.run(move |c| {
            Ok(subscriptions::table
                .find(id)
                .select(SubscriptionRow::as_select())
                .first(c)
                .optional()?)
        })
        .await
    }

    /// Benchmark setup: `total` active monthly subscriptions on the given billkeys, already
    /// scheduled as the daemon would have them; the first `due` are due at `due_at`, the rest
    /// spread over the following 30 days. Generated inside the database, in one statement.
    pub async fn seed_bench(
        &self,
        total: i64,
        due: i64,
        bids: &[crate::domain::Bid],
        due_at: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let due_at = naive(due_at);
        // BIDs are validated alphanumeric, so they can stand in the SQL text.
        let pick = format!(
            "CASE n % {} {} END",
            bids.len().max(1),
            bids.iter()
                .enumerate()
                .map(|(i, b)| format!("WHEN {i} THEN '{}'", b.as_str()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let columns = "external_id, bid, amount, goods_name, anchor_at, status, next_cycle, \
                       next_charge_at, seen_status, created_at, updated_at";
        self.write(move |c| {
            let n = match c {
                AnyConnection::Sqlite(c) => {
                    let sql = format!(
                        "WITH RECURSIVE seq(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq WHERE n + 1 < {total}) \
                         INSERT INTO subscriptions ({columns}) \
                         SELECT 'bench-' || n, {pick}, 1000 + n % 9000, '벤치마크 구독', t, 'active', 1, t, 'active', t, t \
                         FROM (SELECT n, CASE WHEN n < {due} THEN ?1 \
                               ELSE datetime(?1, '+' || (n * 2592 / 1000) || ' seconds') END AS t FROM seq)"
                    );
                    diesel::sql_query(sql).bind::<Timestamp, _>(due_at).execute(c)?
                }
                AnyConnection::Postgres(c) => {
                    let sql = format!(
                        "INSERT INTO subscriptions ({columns}) \
                         SELECT 'bench-' || n, {pick}, 1000 + n % 9000, '벤치마크 구독', t, 'active', 1, t, 'active', t, t \
                         FROM (SELECT n, CASE WHEN n < {due} THEN $1 \
                               ELSE $1 + (n::bigint * 2592 / 1000) * interval '1 second' END AS t \
                               FROM generate_series(0, {total} - 1) AS n) AS g"
                    );
                    diesel::sql_query(sql).bind::<Timestamp, _>(due_at).execute(c)?
                }
            };
            // Fresh statistics, as a database in service has them.
            c.batch_execute("ANALYZE")?;
            Ok(n)
        })
        .await
    }

    /// Times the query that finds a batch of due subscriptions (without claiming them).
    pub async fn probe_due(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<(usize, Duration), StoreError> {
        let now = naive(now);
        self.run(move |c| {
            let started = std::time::Instant::now();
            let ids: Vec<i64> = subscriptions::table
                .filter(subscriptions::status.eq("active"))
                .filter(subscriptions::next_charge_at.le(now))
                .filter(
                    subscriptions::claimed_until
                        .is_null()
                        .or(subscriptions::claimed_until.lt(now)),
                )
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    charges::table
                        .filter(charges::subscription_id.eq(subscriptions::id))
                        .filter(charges::state.eq_any(["pending", "unknown"])),
                )))
                .order((subscriptions::next_charge_at, subscriptions::id))
                .limit(limit)
                .select(subscriptions::id)
                .load(c)?;
            Ok((ids.len(), started.elapsed()))
        })
        .await
    }

    /// Claims one subscription for `owner` if it is active, unclaimed (or its claim expired) and
    /// has no unresolved attempt. Returns the row when claimed.
    pub async fn claim_one(
        &self,
        id: i64,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<SubscriptionRow>, StoreError> {
        let owner = owner.to_owned();
        let now_n = naive(now);
        let until = naive(crate::clock::later(now, lease));
        self.write(move |c| {
            let n = diesel::update(subscriptions::table.find(id))
                .filter(subscriptions::status.eq("active"))
                .filter(
                    subscriptions::claimed_until
                        .is_null()
                        .or(subscriptions::claimed_until.lt(now_n)),
                )
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    charges::table
                        .filter(charges::subscription_id.eq(id))
                        .filter(charges::state.eq_any(["pending", "unknown"])),
                )))
                .set((
                    subscriptions::claimed_by.eq(Some(&owner)),
                    subscriptions::claimed_until.eq(Some(until)),
                ))
                .execute(c)?;
            if n == 0 {
                return Ok(None);
            }
            Ok(subscriptions::table
                .find(id)
                .select(SubscriptionRow::as_select())
                .first(c)
                .optional()?)
        })
        .await
    }

    /// Sets a subscription's status as a merchant application would.
    pub async fn set_status(&self, id: i64, status: &str) -> Result<usize, StoreError> {
        let status = status.to_owned();
        self.write(move |c| {
            Ok(diesel::update(subscriptions::table.find(id))
                .set(subscriptions::status.eq(&status))
                .execute(c)?)
        })
        .await
    }

    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionRow>, StoreError> {
        self.run(|c| {
            Ok(subscriptions::table
                .order(subscriptions::id)
                .select(SubscriptionRow::as_select())
                .load(c)?)
        })
        .await
    }

    pub async fn charges(&self, subscription: Option<i64>) -> Result<Vec<ChargeRow>, StoreError> {
        self.run(move |c| {
            let mut q = charges::table
                .order(charges::id)
                .select(ChargeRow::as_select())
                .into_boxed();
            if let Some(id) = subscription {
                q = q.filter(charges::subscription_id.eq(id));
            }
            Ok(q.load(c)?)
        })
        .await
    }

    pub async fn events(&self, subscription: Option<i64>) -> Result<Vec<EventRow>, StoreError> {
        self.run(move |c| {
            let mut q = events::table
                .order(events::id)
                .select(EventRow::as_select())
                .into_boxed();
            if let Some(id) = subscription {
                q = q.filter(events::subscription_id.eq(id));
            }
            Ok(q.load(c)?)
        })
        .await
    }

    pub async fn removals(&self) -> Result<Vec<RemovalRow>, StoreError> {
        self.run(|c| {
            Ok(billkey_removals::table
                .order(billkey_removals::subscription_id)
                .select(RemovalRow::as_select())
                .load(c)?)
        })
        .await
    }

    // ---- the engine ----

    /// Looks at rows whose status changed since nicebill last did: new rows, pauses,
    /// resumptions, cancellations and unknown statuses.
    pub async fn notice(&self, now: DateTime<Utc>) -> Result<Noticed, StoreError> {
        let now = naive(now);
        self.write(move |c| {
            let predicate = match c {
                AnyConnection::Sqlite(_) => "seen_status IS NOT status",
                AnyConnection::Postgres(_) => "seen_status IS DISTINCT FROM status",
            };
            let rows: Vec<SubscriptionRow> = {
                let sql =
                    format!("SELECT * FROM subscriptions WHERE {predicate} ORDER BY id LIMIT 1000");
                match c {
                    AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
                    AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
                }
            };
            let mut noticed = Noticed::default();
            let mut evs = Vec::new();
            for row in rows {
                let id = row.id;
                let seen = row.seen_status.as_deref();
                let mut status = row.status.clone();
                match row.status.as_str() {
                    "active" if seen.is_none() => noticed.new += 1,
                    "active" => {
                        // Resumed after a pause, or reactivated after nicebill stopped it
                        // (e.g. a new card after card_invalid): due now, so the planner
                        // reschedules it at once; a fresh start for dunning.
                        if seen == Some("paused") {
                            noticed.resumed += 1;
                            evs.push(Event::sub(id, "resumed", "status set to active"));
                        } else {
                            evs.push(Event::sub(
                                id,
                                "reactivated",
                                format!("status set from {} to active", seen.unwrap_or("?")),
                            ));
                        }
                        diesel::update(subscriptions::table.find(id))
                            .set((
                                subscriptions::next_charge_at.eq(Some(now)),
                                subscriptions::cycle_declines.eq(0),
                                subscriptions::status_reason.eq(None::<String>),
                            ))
                            .execute(c)?;
                    }
                    "paused" => {
                        noticed.paused += 1;
                        evs.push(Event::sub(id, "paused", "status set to paused"));
                        diesel::update(subscriptions::table.find(id))
                            .filter(subscriptions::paused_since.is_null())
                            .set(subscriptions::paused_since.eq(Some(now)))
                            .execute(c)?;
                    }
                    "cancelled" => {
                        noticed.cancelled += 1;
                        evs.push(Event::sub(
                            id,
                            "cancelled",
                            row.status_reason
                                .clone()
                                .unwrap_or_else(|| "status set to cancelled".into()),
                        ));
                        queue_removal(c, id, &row.bid, now)?;
                    }
                    s if !KNOWN_STATUSES.contains(&format!("'{s}'")) => {
                        let reason =
                            format!("status: {s:?} is not one of active, paused, cancelled");
                        evs.push(Event::sub(id, "invalid", reason.clone()));
                        noticed.invalid.push((id, reason.clone()));
                        status = "invalid".to_owned();
                        diesel::update(subscriptions::table.find(id))
                            .set((
                                subscriptions::status.eq("invalid"),
                                subscriptions::status_reason.eq(Some(reason)),
                                subscriptions::updated_at.eq(now),
                            ))
                            .execute(c)?;
                    }
                    _ => {}
                }
                diesel::update(subscriptions::table.find(id))
                    .set(subscriptions::seen_status.eq(Some(status)))
                    .execute(c)?;
            }
            insert_events(c, now, &evs)?;
            Ok(noticed)
        })
        .await
    }

    /// Claims up to `limit` active subscriptions that are due (or not yet scheduled) and have
    /// no unresolved attempt, for `lease`.
    pub async fn claim_due(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<SubscriptionRow>, StoreError> {
        let owner = owner.to_owned();
        let now_n = naive(now);
        let until = naive(crate::clock::later(now, lease));
        self.write(move |c| {
            let mut claimed = Vec::new();
            for due_clause in [
                "s.next_charge_at IS NULL",
                "s.next_charge_at <= {now}",
            ] {
                let remaining = limit - claimed.len() as i64;
                if remaining <= 0 {
                    break;
                }
                let rows: Vec<SubscriptionRow> = match c {
                    AnyConnection::Postgres(c) => {
                        let sql = format!(
                            "UPDATE subscriptions SET claimed_by = $1, claimed_until = $2 \
                             WHERE id = ANY(ARRAY(SELECT s.id FROM subscriptions s \
                               WHERE s.status = 'active' AND {} \
                               AND (s.claimed_until IS NULL OR s.claimed_until < $3) \
                               AND NOT EXISTS (SELECT 1 FROM charges ch WHERE ch.subscription_id = s.id AND ch.state IN ('pending','unknown')) \
                               ORDER BY s.next_charge_at, s.id LIMIT $4 FOR UPDATE SKIP LOCKED)) \
                             RETURNING *",
                            due_clause.replace("{now}", "$3")
                        );
                        diesel::sql_query(sql)
                            .bind::<Text, _>(&owner)
                            .bind::<Timestamp, _>(until)
                            .bind::<Timestamp, _>(now_n)
                            .bind::<BigInt, _>(remaining)
                            .load(c)?
                    }
                    AnyConnection::Sqlite(c) => {
                        // SQLite runs one writer at a time, so the sub-select and the update
                        // are one atomic compare-and-set.
                        let sql = format!(
                            "UPDATE subscriptions SET claimed_by = ?, claimed_until = ? \
                             WHERE id IN (SELECT s.id FROM subscriptions s \
                               WHERE s.status = 'active' AND {} \
                               AND (s.claimed_until IS NULL OR s.claimed_until < ?) \
                               AND NOT EXISTS (SELECT 1 FROM charges ch WHERE ch.subscription_id = s.id AND ch.state IN ('pending','unknown')) \
                               ORDER BY s.next_charge_at, s.id LIMIT ?) \
                             RETURNING *",
                            due_clause.replace("{now}", "?")
                        );
                        let q = diesel::sql_query(sql)
                            .bind::<Text, _>(&owner)
                            .bind::<Timestamp, _>(until);
                        if due_clause.contains("{now}") {
                            q.bind::<Timestamp, _>(now_n)
                                .bind::<Timestamp, _>(now_n)
                                .bind::<BigInt, _>(remaining)
                                .load(c)?
                        } else {
                            q.bind::<Timestamp, _>(now_n)
                                .bind::<BigInt, _>(remaining)
                                .load(c)?
                        }
                    }
                };
                claimed.extend(rows);
            }
            Ok(claimed)
        })
        .await
    }

    /// Commits attempts before they are sent: per attempt, the subscription's bookkeeping
    /// (only while this owner still holds it and it is still active) and a `pending` charge
    /// with its TID. Returns `(index, charge id, tid)` of the attempts committed; a TID that
    /// collides with one already stored is replaced by `new_tid()`.
    pub async fn start_attempts(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        attempts: Vec<StartAttempt>,
        new_tid: impl Fn() -> String + Send + Sync + 'static,
    ) -> Result<Vec<(usize, i64, String)>, StoreError> {
        let owner = owner.to_owned();
        let now = naive(now);
        self.write(move |c| {
            let rows: Vec<_> = attempts
                .iter()
                .map(|a| (a.subscription_id, a.cycle, naive(a.due_at), a.attempt))
                .collect();
            let updated = batch::start_bookkeeping(c, &owner, now, &rows)?;
            let mut pending: Vec<(usize, NewCharge)> = attempts
                .iter()
                .enumerate()
                .filter(|(_, a)| updated.contains(&a.subscription_id))
                .map(|(i, a)| {
                    (
                        i,
                        NewCharge {
                            subscription_id: a.subscription_id,
                            cycle: a.cycle,
                            attempt: a.attempt,
                            moid: a.moid.clone(),
                            tid: new_tid(),
                            amount: a.amount,
                            state: "pending".into(),
                            check_after: Some(naive(a.check_after)),
                            created_at: now,
                        },
                    )
                })
                .collect();
            let mut started = Vec::with_capacity(pending.len());
            let mut evs = Vec::new();
            // A TID that another instance took is replaced and the row tried again.
            for _ in 0..5 {
                if pending.is_empty() {
                    break;
                }
                let rows: Vec<NewCharge> = pending.iter().map(|(_, n)| n.clone()).collect();
                let inserted = batch::insert_charges(c, &rows)?;
                let mut again = Vec::new();
                for (i, mut new) in pending {
                    if let Some(id) = inserted.get(&new.tid) {
                        evs.extend(attempts[i].events.iter().cloned());
                        started.push((i, *id, new.tid));
                        continue;
                    }
                    let tid_taken: i64 = charges::table
                        .filter(charges::tid.eq(&new.tid))
                        .count()
                        .get_result(c)?;
                    if tid_taken == 0 {
                        // The same attempt is stored already: not started twice.
                        tracing::warn!(
                            subscription = new.subscription_id,
                            moid = %new.moid,
                            "attempt already stored; not started again"
                        );
                        continue;
                    }
                    new.tid = new_tid();
                    again.push((i, new));
                }
                pending = again;
            }
            insert_events(c, now, &evs)?;
            Ok(started)
        })
        .await
    }

    /// Applies decisions that charge nothing (invalid rows, ends, waits), releasing the claim.
    pub async fn reschedule(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        items: Vec<Reschedule>,
    ) -> Result<usize, StoreError> {
        let owner = owner.to_owned();
        let now = naive(now);
        self.write(move |c| {
            let mut done = 0;
            let mut evs = Vec::new();
            for item in &items {
                let n = apply_bookkeeping(
                    c,
                    item.subscription_id,
                    &item.bookkeeping,
                    Some(&owner),
                    None,
                    now,
                )?;
                if n == 0 {
                    continue;
                }
                if let Some(bid) = &item.remove_billkey {
                    queue_removal(c, item.subscription_id, bid, now)?;
                }
                evs.extend(item.events.iter().cloned());
                done += 1;
            }
            insert_events(c, now, &evs)?;
            Ok(done)
        })
        .await
    }

    /// Records outcomes in one transaction. An outcome counts only while its charge is still
    /// unresolved (`pending`/`unknown`); the subscription moves on only with a settled charge.
    /// Returns how many outcomes were applied.
    pub async fn record_outcomes(
        &self,
        now: DateTime<Utc>,
        outcomes: Vec<Outcome>,
    ) -> Result<usize, StoreError> {
        let now = naive(now);
        self.write(move |c| {
            let updates: Vec<batch::ChargeUpdate<'_>> = outcomes
                .iter()
                .map(|o| batch::ChargeUpdate {
                    id: o.charge_id,
                    result: &o.result,
                    resolved_at: o.result.check_after.is_none().then_some(now),
                })
                .collect();
            let applied = batch::update_charges(c, &updates)?;
            let mine: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| applied.contains(&o.charge_id))
                .collect();
            let advancing: Vec<(i64, i32, &Bookkeeping)> = mine
                .iter()
                .filter_map(|o| {
                    o.bookkeeping
                        .as_ref()
                        .map(|b| (o.subscription_id, o.cycle, b))
                })
                .collect();
            let advanced = batch::advance_subscriptions(c, now, &advancing)?;
            let mut evs = Vec::new();
            for o in &mine {
                match &o.bookkeeping {
                    Some(b) => {
                        if let Some((status, reason)) = &b.status
                            && advanced.contains(&o.subscription_id)
                        {
                            set_status_if_active(c, o.subscription_id, status, reason)?;
                        }
                    }
                    None => {
                        release(c, o.subscription_id, now)?;
                    }
                }
                if let Some(bid) = &o.remove_billkey {
                    queue_removal(c, o.subscription_id, bid, now)?;
                }
                evs.extend(o.events.iter().cloned().map(|mut e| {
                    e.charge_id = Some(o.charge_id);
                    e
                }));
            }
            insert_events(c, now, &evs)?;
            Ok(mine.len())
        })
        .await
    }

    /// Unresolved attempts with an id above `after_id` whose lookup is due by `horizon`, in id
    /// order, each leased to the caller by moving its `check_after` to `now + lease` (so two
    /// instances do not look up the same one).
    pub async fn claim_unresolved(
        &self,
        after_id: i64,
        now: DateTime<Utc>,
        horizon: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ChargeRow>, StoreError> {
        let now_n = naive(horizon);
        let until = naive(crate::clock::later(now, lease));
        self.write(move |c| {
            let due: Vec<ChargeRow> = charges::table
                .filter(charges::state.eq_any(["pending", "unknown"]))
                .filter(charges::check_after.le(now_n))
                .filter(charges::id.gt(after_id))
                .order(charges::id)
                .limit(limit)
                .select(ChargeRow::as_select())
                .load(c)?;
            let mut mine = Vec::with_capacity(due.len());
            for row in due {
                let n = diesel::update(charges::table.find(row.id))
                    .filter(charges::check_after.eq(row.check_after))
                    .filter(charges::state.eq(&row.state))
                    .set(charges::check_after.eq(Some(until)))
                    .execute(c)?;
                if n == 1 {
                    mine.push(row);
                }
            }
            Ok(mine)
        })
        .await
    }

    /// When the last claim held on a due, active subscription expires (another instance's, or
    /// a dead one's); `None` when no due subscription is claimed.
    pub async fn due_claims_expire(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = naive(now);
        self.run(move |c| {
            let t: Option<NaiveDateTime> = subscriptions::table
                .filter(subscriptions::status.eq("active"))
                .filter(
                    subscriptions::next_charge_at
                        .is_null()
                        .or(subscriptions::next_charge_at.le(now)),
                )
                .filter(subscriptions::claimed_until.gt(now))
                .select(diesel::dsl::max(subscriptions::claimed_until))
                .first(c)?;
            Ok(t.map(|t| t.and_utc()))
        })
        .await
    }

    /// Figures for the health file: active subscriptions due at `now`, unresolved attempts,
    /// and when the oldest unresolved attempt was committed.
    pub async fn health_figures(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(u64, u64, Option<DateTime<Utc>>), StoreError> {
        let now = naive(now);
        self.run(move |c| {
            let due: i64 = subscriptions::table
                .filter(subscriptions::status.eq("active"))
                .filter(
                    subscriptions::next_charge_at
                        .is_null()
                        .or(subscriptions::next_charge_at.le(now)),
                )
                .count()
                .get_result(c)?;
            let unresolved: i64 = charges::table
                .filter(charges::state.eq_any(["pending", "unknown"]))
                .count()
                .get_result(c)?;
            let oldest: Option<NaiveDateTime> = charges::table
                .filter(charges::state.eq_any(["pending", "unknown"]))
                .select(diesel::dsl::min(charges::created_at))
                .first(c)?;
            Ok((
                due.max(0) as u64,
                unresolved.max(0) as u64,
                oldest.map(|t| t.and_utc()),
            ))
        })
        .await
    }

    /// The earliest time by `until` at which an active subscription is due again for a cycle
    /// that has an attempt found not charged (never sent, or proven never approved).
    pub async fn next_resend(
        &self,
        until: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let until = naive(until);
        self.run(move |c| {
            let t: Option<NaiveDateTime> = subscriptions::table
                .filter(subscriptions::status.eq("active"))
                .filter(subscriptions::next_charge_at.le(until))
                .filter(diesel::dsl::exists(
                    charges::table
                        .filter(charges::subscription_id.eq(subscriptions::id))
                        .filter(charges::cycle.nullable().eq(subscriptions::next_cycle))
                        .filter(charges::state.eq("not_charged")),
                ))
                .select(diesel::dsl::min(subscriptions::next_charge_at))
                .first(c)?;
            Ok(t.map(|t| t.and_utc()))
        })
        .await
    }

    /// Every unresolved attempt (for `--once` and health).
    pub async fn unresolved(&self) -> Result<Vec<ChargeRow>, StoreError> {
        self.run(|c| {
            Ok(charges::table
                .filter(charges::state.eq_any(["pending", "unknown"]))
                .order(charges::id)
                .select(ChargeRow::as_select())
                .load(c)?)
        })
        .await
    }

    /// The earliest time anything becomes due: a subscription, an unresolved lookup, or a
    /// billkey removal. `None` when nothing is scheduled.
    pub async fn next_wakeup(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.run(|c| {
            let sub: Option<NaiveDateTime> = subscriptions::table
                .filter(subscriptions::status.eq("active"))
                .select(diesel::dsl::min(subscriptions::next_charge_at))
                .first(c)?;
            let unscheduled: i64 = subscriptions::table
                .filter(subscriptions::status.eq("active"))
                .filter(subscriptions::next_charge_at.is_null())
                .count()
                .get_result(c)?;
            let charge: Option<NaiveDateTime> = charges::table
                .filter(charges::state.eq_any(["pending", "unknown"]))
                .select(diesel::dsl::min(charges::check_after))
                .first(c)?;
            let removal: Option<NaiveDateTime> = billkey_removals::table
                .filter(billkey_removals::state.eq("pending"))
                .select(diesel::dsl::min(billkey_removals::next_attempt_at))
                .first(c)?;
            let earliest = [sub, charge, removal].into_iter().flatten().min();
            Ok(if unscheduled > 0 {
                Some(DateTime::<Utc>::MIN_UTC)
            } else {
                earliest.map(|t| t.and_utc())
            })
        })
        .await
    }

    /// Claims billkey removals that are due and whose subscription has no unresolved attempt.
    pub async fn claim_removals(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<RemovalRow>, StoreError> {
        let owner = owner.to_owned();
        let now_n = naive(now);
        let until = naive(crate::clock::later(now, lease));
        self.write(move |c| {
            let due: Vec<RemovalRow> = billkey_removals::table
                .filter(billkey_removals::state.eq("pending"))
                .filter(billkey_removals::next_attempt_at.le(now_n))
                .filter(
                    billkey_removals::claimed_until
                        .is_null()
                        .or(billkey_removals::claimed_until.lt(now_n)),
                )
                .filter(diesel::dsl::not(diesel::dsl::exists(
                    charges::table
                        .filter(charges::subscription_id.eq(billkey_removals::subscription_id))
                        .filter(charges::state.eq_any(["pending", "unknown"])),
                )))
                .order(billkey_removals::next_attempt_at)
                .limit(limit)
                .select(RemovalRow::as_select())
                .load(c)?;
            let mut mine = Vec::with_capacity(due.len());
            for row in due {
                let mut q = diesel::update(billkey_removals::table.find(row.subscription_id))
                    .filter(billkey_removals::state.eq("pending"))
                    .into_boxed();
                q = match row.claimed_until {
                    Some(t) => q.filter(billkey_removals::claimed_until.eq(t)),
                    None => q.filter(billkey_removals::claimed_until.is_null()),
                };
                let n = q
                    .set((
                        billkey_removals::claimed_by.eq(Some(&owner)),
                        billkey_removals::claimed_until.eq(Some(until)),
                    ))
                    .execute(c)?;
                if n == 1 {
                    mine.push(row);
                }
            }
            Ok(mine)
        })
        .await
    }

    /// Records one removal attempt: done, or pending again at `retry_at`.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_removal(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        subscription_id: i64,
        moid: String,
        done: bool,
        result_code: Option<String>,
        result_msg: Option<String>,
        retry_at: DateTime<Utc>,
        event: Event,
    ) -> Result<bool, StoreError> {
        let owner = owner.to_owned();
        let now = naive(now);
        self.write(move |c| {
            let n = diesel::update(billkey_removals::table.find(subscription_id))
                .filter(billkey_removals::claimed_by.eq(&owner))
                .filter(billkey_removals::state.eq("pending"))
                .set((
                    billkey_removals::state.eq(if done { "done" } else { "pending" }),
                    billkey_removals::attempts.eq(billkey_removals::attempts + 1),
                    billkey_removals::moid.eq(Some(&moid)),
                    billkey_removals::result_code.eq(&result_code),
                    billkey_removals::result_msg.eq(&result_msg),
                    billkey_removals::next_attempt_at.eq(naive(retry_at)),
                    billkey_removals::claimed_by.eq(None::<String>),
                    billkey_removals::claimed_until.eq(None::<NaiveDateTime>),
                    billkey_removals::done_at.eq(done.then_some(now)),
                ))
                .execute(c)?;
            if n == 1 {
                insert_events(c, now, std::slice::from_ref(&event))?;
            }
            Ok(n == 1)
        })
        .await
    }
}

fn insert_events(
    c: &mut AnyConnection,
    now: NaiveDateTime,
    evs: &[Event],
) -> Result<(), StoreError> {
    if evs.is_empty() {
        return Ok(());
    }
    let rows: Vec<NewEvent> = evs
        .iter()
        .map(|e| NewEvent {
            at: now,
            subscription_id: e.subscription_id,
            charge_id: e.charge_id,
            kind: e.kind.to_owned(),
            detail: e.detail.clone(),
        })
        .collect();
    // One statement per row: multi-row inserts are not available over both backends at
    // once, and events are few next to charges.
    for row in &rows {
        diesel::insert_into(events::table).values(row).execute(c)?;
    }
    Ok(())
}

/// Queues billkey removal unless one exists already.
fn queue_removal(
    c: &mut AnyConnection,
    id: i64,
    bid: &str,
    now: NaiveDateTime,
) -> Result<(), StoreError> {
    let exists: i64 = billkey_removals::table
        .filter(billkey_removals::subscription_id.eq(id))
        .count()
        .get_result(c)?;
    if exists == 0 {
        diesel::insert_into(billkey_removals::table)
            .values((
                billkey_removals::subscription_id.eq(id),
                billkey_removals::bid.eq(bid),
                billkey_removals::state.eq("pending"),
                billkey_removals::attempts.eq(0),
                billkey_removals::next_attempt_at.eq(now),
                billkey_removals::created_at.eq(now),
            ))
            .execute(c)?;
    }
    Ok(())
}

fn release(c: &mut AnyConnection, id: i64, now: NaiveDateTime) -> Result<usize, StoreError> {
    Ok(diesel::update(subscriptions::table.find(id))
        .set((
            subscriptions::claimed_by.eq(None::<String>),
            subscriptions::claimed_until.eq(None::<NaiveDateTime>),
            subscriptions::updated_at.eq(now),
        ))
        .execute(c)?)
}

/// Writes nicebill's columns of one subscription and releases its claim, in one statement. With `owner`, only
/// while that owner holds the claim; with `cycle`, only while the row is still on that cycle.
/// A status change never overwrites a merchant's cancellation or pause made meanwhile.
fn apply_bookkeeping(
    c: &mut AnyConnection,
    id: i64,
    b: &Bookkeeping,
    owner: Option<&str>,
    cycle: Option<i32>,
    now: NaiveDateTime,
) -> Result<usize, StoreError> {
    let mut q = diesel::update(subscriptions::table.find(id)).into_boxed();
    if let Some(owner) = owner {
        q = q.filter(subscriptions::claimed_by.eq(owner.to_owned()));
    }
    if let Some(cycle) = cycle {
        q = q.filter(subscriptions::next_cycle.eq(cycle));
    }
    let n = q
        .set((
            subscriptions::next_cycle.eq(Some(b.next_cycle)),
            subscriptions::next_charge_at.eq(b.next_charge_at.map(naive)),
            subscriptions::cycle_attempts.eq(b.cycle_attempts),
            subscriptions::cycle_declines.eq(b.cycle_declines),
            subscriptions::paused_since.eq(b.paused_since.map(naive)),
            subscriptions::updated_at.eq(now),
            subscriptions::claimed_by.eq(None::<String>),
            subscriptions::claimed_until.eq(None::<NaiveDateTime>),
        ))
        .execute(c)?;
    if n == 0 {
        return Ok(0);
    }
    if let Some((status, reason)) = &b.status {
        set_status_if_active(c, id, status, reason)?;
    }
    Ok(n)
}

/// nicebill's status change, made only while the merchant has not changed the status meanwhile.
fn set_status_if_active(
    c: &mut AnyConnection,
    id: i64,
    status: &str,
    reason: &str,
) -> Result<usize, StoreError> {
    Ok(diesel::update(subscriptions::table.find(id))
        .filter(subscriptions::status.eq("active"))
        .set((
            subscriptions::status.eq(status),
            subscriptions::seen_status.eq(Some(status)),
            subscriptions::status_reason.eq(Some(reason)),
        ))
        .execute(c)?)
}
