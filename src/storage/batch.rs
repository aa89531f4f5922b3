//! Multi-row statements for the hot path: one round trip for a whole batch of attempts or
//! outcomes instead of one per row. The same SQL runs on both backends (`WITH v AS (VALUES …)`
//! and `UPDATE … FROM v … RETURNING`); only placeholders (and PostgreSQL's casts) differ.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamp};

use super::{AnyConnection, StoreError};
use crate::storage::models::{ChargeRow, NewCharge};

/// Rows in the largest multi-row statement [`shapes`] makes: at most 14 parameters a row
/// keeps every statement far below SQLite's 32,766 and PostgreSQL's 65,535 parameters.
const LARGEST_SHAPE: usize = 256;

/// The lengths to split `len` rows into: powers of two, largest first, at most
/// [`LARGEST_SHAPE`]. A multi-row statement's text depends on its row count; cut this way a
/// batch's statements come in at most nine shapes, which stay prepared in the connection's
/// statement cache, instead of a new text (parsed and planned again) for every batch size.
pub(super) fn shapes(len: usize) -> Vec<usize> {
    let mut left = len;
    let mut out = Vec::new();
    while left > 0 {
        let size = if left >= LARGEST_SHAPE {
            LARGEST_SHAPE
        } else {
            1 << (usize::BITS - 1 - left.leading_zeros())
        };
        out.push(size);
        left -= size;
    }
    out
}

/// `rows` cut into [`shapes`].
pub(super) fn shaped<T>(rows: &[T]) -> Vec<&[T]> {
    let mut rest = rows;
    shapes(rows.len())
        .into_iter()
        .map(|n| {
            let (head, tail) = rest.split_at(n);
            rest = tail;
            head
        })
        .collect()
}

/// A bound value.
enum Value {
    I64(i64),
    OptI64(Option<i64>),
    I32(i32),
    Text(Option<String>),
    Ts(Option<NaiveDateTime>),
}

impl Value {
    fn pg_type(&self) -> &'static str {
        match self {
            Value::I64(_) | Value::OptI64(_) => "bigint",
            Value::I32(_) => "integer",
            Value::Text(_) => "text",
            Value::Ts(_) => "timestamp",
        }
    }
}

/// SQL text with its parameters, written once for both backends.
struct Sql {
    pg: bool,
    /// The text without placeholders: each value's placeholder goes at its offset in `at`.
    text: String,
    at: Vec<usize>,
    values: Vec<Value>,
}

impl Sql {
    fn new(c: &AnyConnection) -> Self {
        Self {
            pg: matches!(c, AnyConnection::Postgres(_)),
            text: String::new(),
            at: Vec::new(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value` (typed on PostgreSQL, so VALUES lists infer right).
    fn param(&mut self, value: Value) -> &mut Self {
        self.at.push(self.text.len());
        if self.pg {
            self.text.push_str("::");
            self.text.push_str(value.pg_type());
        }
        self.values.push(value);
        self
    }

    /// Appends `(p, p, …)` for one row.
    fn row(&mut self, values: Vec<Value>) -> &mut Self {
        self.push("(");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.param(v);
        }
        self.push(")")
    }

    /// On PostgreSQL, `AND {key} = ANY(ARRAY(SELECT id FROM v))`: an `UPDATE … FROM v` then
    /// finds its rows through `key`'s index whatever the statistics say. Without it the planner
    /// can take a filter such as `claimed_by = $owner` for rare (the statistics were gathered
    /// while no row was claimed), scan the whole table instead and join each row it keeps
    /// against every row of `v`: 18–28 ms a statement at 10,000 subscriptions and growing with
    /// the table, about 220 µs of server CPU per charge (bench/RESULTS.md, session 9). SQLite
    /// reads `v` and looks each row up by key already.
    fn by_key_of_v(&mut self, key: &str) -> &mut Self {
        if self.pg {
            self.push(" AND ")
                .push(key)
                .push(" = ANY(ARRAY(SELECT id FROM v))");
        }
        self
    }

    fn prepared(self) -> Prepared {
        Prepared {
            sql: self.text,
            at: self.at,
            values: self.values,
        }
    }

    /// Runs a statement that returns nothing; returns the rows it touched.
    fn execute(self, c: &mut AnyConnection) -> Result<usize, StoreError> {
        let q = self.prepared();
        Ok(match c {
            AnyConnection::Sqlite(c) => q.execute(c)?,
            AnyConnection::Postgres(c) => q.execute(c)?,
        })
    }

    fn load_ids(self, c: &mut AnyConnection) -> Result<Vec<Returned>, StoreError> {
        self.load(c)
    }

    fn load<T>(self, c: &mut AnyConnection) -> Result<Vec<T>, StoreError>
    where
        T: QueryableByName<diesel::sqlite::Sqlite> + QueryableByName<diesel::pg::Pg> + 'static,
    {
        let q = self.prepared();
        Ok(match c {
            AnyConnection::Sqlite(c) => q.load::<T>(c)?,
            AnyConnection::Postgres(c) => q.load::<T>(c)?,
        })
    }
}

/// SQL text and its bound values as a statement the connection keeps prepared.
///
/// diesel's `sql_query` marks every statement unsafe to cache, so each run is parsed and
/// planned again (on SQLite about a tenth of a charge's CPU). These texts come in a few fixed
/// [`shapes`] with only placeholders for values, so caching them by text is safe: the cache
/// keys a statement by its SQL and bind types.
struct Prepared {
    sql: String,
    at: Vec<usize>,
    values: Vec<Value>,
}

impl diesel::query_builder::QueryId for Prepared {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for Prepared {
    type SqlType = diesel::sql_types::Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Prepared {}

macro_rules! prepared_for {
    ($db:ty) => {
        impl diesel::query_builder::QueryFragment<$db> for Prepared {
            fn walk_ast<'b>(
                &'b self,
                mut out: diesel::query_builder::AstPass<'_, 'b, $db>,
            ) -> QueryResult<()> {
                let mut from = 0;
                for (&at, v) in self.at.iter().zip(&self.values) {
                    out.push_sql(&self.sql[from..at]);
                    from = at;
                    match v {
                        Value::I64(x) => out.push_bind_param::<BigInt, _>(x)?,
                        Value::OptI64(x) => out.push_bind_param::<Nullable<BigInt>, _>(x)?,
                        Value::I32(x) => out.push_bind_param::<Integer, _>(x)?,
                        Value::Text(x) => out.push_bind_param::<Nullable<Text>, _>(x)?,
                        Value::Ts(x) => out.push_bind_param::<Nullable<Timestamp>, _>(x)?,
                    }
                }
                out.push_sql(&self.sql[from..]);
                Ok(())
            }
        }
    };
}
prepared_for!(diesel::sqlite::Sqlite);
prepared_for!(diesel::pg::Pg);

/// What the statements return: a row id and, for inserts, the order id (Moid).
#[derive(QueryableByName)]
struct Returned {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    key: Option<String>,
}

/// Bookkeeping of a batch of attempts just committed: applied only to rows this owner still
/// holds. Returns the subscription ids updated.
pub(super) fn start_bookkeeping(
    c: &mut AnyConnection,
    owner: &str,
    now: NaiveDateTime,
    rows: &[(i64, i32, NaiveDateTime, i32)],
) -> Result<HashSet<i64>, StoreError> {
    let mut done = HashSet::new();
    for chunk in shaped(rows) {
        done.extend(start_bookkeeping_chunk(c, owner, now, chunk)?);
    }
    Ok(done)
}

fn start_bookkeeping_chunk(
    c: &mut AnyConnection,
    owner: &str,
    now: NaiveDateTime,
    rows: &[(i64, i32, NaiveDateTime, i32)],
) -> Result<HashSet<i64>, StoreError> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sql = Sql::new(c);
    sql.push("WITH v(id, cycle, due, attempt) AS (VALUES ");
    for (i, (id, cycle, due, attempt)) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.row(vec![
            Value::I64(*id),
            Value::I32(*cycle),
            Value::Ts(Some(*due)),
            Value::I32(*attempt),
        ]);
    }
    sql.push(
        ") UPDATE billing_state SET \
         cycle_declines = CASE WHEN billing_state.next_cycle = v.cycle \
                          THEN billing_state.cycle_declines ELSE 0 END, \
         next_cycle = v.cycle, next_charge_at = v.due, cycle_attempts = v.attempt, \
         updated_at = ",
    )
    .param(Value::Ts(Some(now)))
    .push(" FROM v WHERE billing_state.subscription_id = v.id AND billing_state.claimed_by = ")
    .param(Value::Text(Some(owner.to_owned())))
    .by_key_of_v("billing_state.subscription_id")
    .push(" RETURNING billing_state.subscription_id AS id, NULL AS key");
    Ok(sql.load_ids(c)?.into_iter().map(|r| r.id).collect())
}

/// Inserts a batch of charges in one statement; a row a unique index refuses is skipped.
/// Returns Moid → id of the rows inserted.
pub(super) fn insert_charges(
    c: &mut AnyConnection,
    rows: &[NewCharge],
) -> Result<HashMap<String, i64>, StoreError> {
    let mut done = HashMap::new();
    for chunk in shaped(rows) {
        done.extend(insert_charges_chunk(c, chunk)?);
    }
    Ok(done)
}

fn insert_charges_chunk(
    c: &mut AnyConnection,
    rows: &[NewCharge],
) -> Result<HashMap<String, i64>, StoreError> {
    if rows.is_empty() {
        return Ok(HashMap::new());
    }
    let mut sql = Sql::new(c);
    sql.push(
        "INSERT INTO charges (subscription_id, cycle, attempt, moid, tid, amount, bid, state, \
         check_after, created_at, api) VALUES ",
    );
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        sql.row(vec![
            Value::I64(r.subscription_id),
            Value::I32(r.cycle),
            Value::I32(r.attempt),
            Value::Text(Some(r.moid.clone())),
            Value::Text(r.tid.clone()),
            Value::I64(r.amount),
            Value::Text(r.bid.clone()),
            Value::Text(Some(r.state.clone())),
            Value::Ts(r.check_after),
            Value::Ts(Some(r.created_at)),
            Value::Text(Some(r.api.clone())),
        ]);
    }
    sql.push(" ON CONFLICT DO NOTHING RETURNING id, moid AS key");
    Ok(sql
        .load_ids(c)?
        .into_iter()
        .filter_map(|r| r.key.map(|moid| (moid, r.id)))
        .collect())
}

/// The new state of one charge.
pub(super) struct ChargeUpdate<'a> {
    pub id: i64,
    pub result: &'a super::ChargeResult,
    pub resolved_at: Option<NaiveDateTime>,
    pub last_lookup_at: Option<NaiveDateTime>,
}

/// Records outcomes of a batch of charges in one UPDATE, only on charges still unresolved.
/// Returns the rows updated, as they are now (what their webhooks tell, without reading them
/// again).
///
/// The state test is a `CASE` so that PostgreSQL cannot answer it from the partial indexes on
/// unresolved charges (`charges_by_bid`, …): with statistics that count a few unresolved rows
/// it scanned every attempt in flight (hundreds to thousands) for each batch of outcomes,
/// instead of looking the batch's rows up by id.
pub(super) fn update_charges(
    c: &mut AnyConnection,
    rows: &[ChargeUpdate<'_>],
) -> Result<Vec<ChargeRow>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(c);
    sql.push(
        "WITH v(id, state, result_code, result_msg, auth_code, auth_date, card_no, \
         error_class, error, lookups, check_after, resolved_at, late_check_at, \
         last_lookup_at, tid) AS (VALUES ",
    );
    for (i, u) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        let r = u.result;
        sql.row(vec![
            Value::I64(u.id),
            Value::Text(Some(r.state.as_str().to_owned())),
            Value::Text(r.result_code.clone()),
            Value::Text(r.result_msg.clone()),
            Value::Text(r.auth_code.clone()),
            Value::Text(r.auth_date.clone()),
            Value::Text(r.card_no.clone()),
            Value::Text(r.error_class.clone()),
            Value::Text(r.error.clone()),
            Value::I32(r.lookups),
            Value::Ts(r.check_after.map(|t| t.naive_utc())),
            Value::Ts(u.resolved_at),
            Value::Ts(r.late_check_at.map(|t| t.naive_utc())),
            Value::Ts(u.last_lookup_at),
            Value::Text(r.tid.clone()),
        ]);
    }
    sql.push(
        ") UPDATE charges SET state = v.state, result_code = v.result_code, \
         result_msg = v.result_msg, auth_code = v.auth_code, auth_date = v.auth_date, \
         card_no = v.card_no, error_class = v.error_class, error = v.error, \
         lookups = v.lookups, check_after = v.check_after, resolved_at = v.resolved_at, \
         late_check_at = v.late_check_at, \
         last_lookup_at = COALESCE(v.last_lookup_at, charges.last_lookup_at), \
         tid = COALESCE(charges.tid, v.tid) \
         FROM v WHERE charges.id = v.id \
         AND CASE WHEN charges.state IN ('pending', 'unknown') THEN 1 ELSE 0 END = 1",
    )
    .by_key_of_v("charges.id");
    // The updated table's columns only: SQLite's `*` is those, PostgreSQL's would add `v`'s
    // (and SQLite refuses `charges.*` there).
    let returning = if sql.pg {
        " RETURNING charges.*"
    } else {
        " RETURNING *"
    };
    sql.push(returning);
    sql.load(c)
}

/// Moves subscriptions on after settled attempts, releasing their claims, in one UPDATE; only
/// rows still on the attempt's cycle. Status changes are not made here (see the caller), and
/// `paused_since` is never touched: a pause noticed while the attempt was in flight stays.
pub(super) fn advance_subscriptions(
    c: &mut AnyConnection,
    now: NaiveDateTime,
    rows: &[(i64, i32, &super::Bookkeeping)],
    longest_lead: Option<i64>,
) -> Result<HashSet<i64>, StoreError> {
    if rows.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sql = Sql::new(c);
    sql.push(
        "WITH v(id, on_cycle, next_cycle, next_charge_at, attempts, declines, notice_at) \
         AS (VALUES ",
    );
    for (i, (id, on_cycle, b)) in rows.iter().enumerate() {
        if i > 0 {
            sql.push(", ");
        }
        let notice_at = match (longest_lead, b.next_charge_at) {
            (Some(lead), Some(due)) => Some((due - chrono::Duration::seconds(lead)).naive_utc()),
            _ => None,
        };
        sql.row(vec![
            Value::I64(*id),
            Value::I32(*on_cycle),
            Value::I32(b.next_cycle.column()),
            Value::Ts(b.next_charge_at.map(|t| t.naive_utc())),
            Value::I32(b.cycle_attempts as i32),
            Value::I32(b.cycle_declines as i32),
            Value::Ts(notice_at),
        ]);
    }
    sql.push(
        ") UPDATE billing_state SET next_cycle = v.next_cycle, \
         next_charge_at = v.next_charge_at, cycle_attempts = v.attempts, \
         cycle_declines = v.declines, claimed_by = NULL, \
         claimed_until = NULL, ",
    );
    if longest_lead.is_some() {
        // The upcoming-notice plan, made here rather than by the next pass's scan (one write
        // per charge, not two): a new cycle's first notice is due its longest lead before it;
        // a cycle that stays (a decline) has begun, and is told nothing more. The right-hand
        // sides read the row as it was before this update.
        sql.push(
            "notice_cycle = v.next_cycle, notice_due = v.next_charge_at, \
             notice_lead = CASE WHEN billing_state.notice_cycle = v.next_cycle \
                           THEN billing_state.notice_lead END, \
             notice_at = CASE WHEN billing_state.next_cycle = v.next_cycle THEN NULL \
                         ELSE v.notice_at END, ",
        );
    }
    sql.push("updated_at = ")
        .param(Value::Ts(Some(now)))
        .push(
            " FROM v WHERE billing_state.subscription_id = v.id \
             AND billing_state.next_cycle = v.on_cycle",
        )
        .by_key_of_v("billing_state.subscription_id")
        .push(" RETURNING billing_state.subscription_id AS id, NULL AS key");
    Ok(sql.load_ids(c)?.into_iter().map(|r| r.id).collect())
}

/// New notice plans `(subscription, shortest lead told, next notice at)`: each made for the
/// row's cycle and due time as they stand (copied in SQL, so that the stale-plan index's
/// comparison is of identical values). The caller holds the rows (PostgreSQL: locked).
pub(super) fn set_notice_plans(
    c: &mut AnyConnection,
    rows: &[(i64, Option<i64>, Option<NaiveDateTime>)],
) -> Result<(), StoreError> {
    for chunk in shaped(rows) {
        if chunk.is_empty() {
            continue;
        }
        let mut sql = Sql::new(c);
        sql.push("WITH v(id, lead, at) AS (VALUES ");
        for (i, (id, lead, at)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.row(vec![Value::I64(*id), Value::OptI64(*lead), Value::Ts(*at)]);
        }
        sql.push(
            ") UPDATE billing_state SET notice_cycle = billing_state.next_cycle, \
             notice_due = billing_state.next_charge_at, notice_lead = v.lead, notice_at = v.at \
             FROM v WHERE billing_state.subscription_id = v.id",
        )
        .by_key_of_v("billing_state.subscription_id")
        .push(" RETURNING billing_state.subscription_id AS id, NULL AS key");
        sql.load_ids(c)?;
    }
    Ok(())
}

/// One row of `webhook_outbox` to write.
pub(super) struct OutboxInsert {
    pub event_id: String,
    pub dedupe_key: Option<String>,
    pub subscription_id: Option<i64>,
    pub kind: &'static str,
    pub body: String,
    pub created_at: NaiveDateTime,
    pub state: &'static str,
}

/// Writes outbox rows, a statement per [`shapes`]; a row whose `dedupe_key` (or
/// event id) is taken already is skipped. Each is due at once.
pub(super) fn insert_outbox(
    c: &mut AnyConnection,
    rows: Vec<OutboxInsert>,
) -> Result<(), StoreError> {
    let sizes = shapes(rows.len());
    let mut rows = rows.into_iter();
    for size in sizes {
        let mut sql = Sql::new(c);
        sql.push(
            "INSERT INTO webhook_outbox (event_id, dedupe_key, subscription_id, kind, body, \
             created_at, state, next_attempt_at) VALUES ",
        );
        for (i, r) in rows.by_ref().take(size).enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.row(vec![
                Value::Text(Some(r.event_id)),
                Value::Text(r.dedupe_key),
                Value::OptI64(r.subscription_id),
                Value::Text(Some(r.kind.to_owned())),
                Value::Text(Some(r.body)),
                Value::Ts(Some(r.created_at)),
                Value::Text(Some(r.state.to_owned())),
                Value::Ts(Some(r.created_at)),
            ]);
        }
        sql.push(" ON CONFLICT DO NOTHING");
        sql.execute(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_cut_into_few_shapes() {
        assert_eq!(shapes(0), Vec::<usize>::new());
        assert_eq!(shapes(1), vec![1]);
        assert_eq!(shapes(300), vec![256, 32, 8, 4]);
        assert_eq!(shapes(1024), vec![256; 4]);
        let rows: Vec<u32> = (0..1000).collect();
        let mut sizes = std::collections::BTreeSet::new();
        let mut joined = Vec::new();
        for n in 0..=1000 {
            for part in shaped(&rows[..n]) {
                assert!(part.len().is_power_of_two() && part.len() <= LARGEST_SHAPE);
                sizes.insert(part.len());
                if n == 1000 {
                    joined.extend_from_slice(part);
                }
            }
        }
        assert_eq!(sizes.len(), 9, "{sizes:?}");
        assert_eq!(joined, rows);
    }
}
