//! The hot path's statements find their rows by key, whatever the planner's statistics say.
//!
//! On PostgreSQL the attempt commit's bookkeeping (`UPDATE billing_state … FROM (VALUES …)
//! WHERE subscription_id = v.id AND claimed_by = $owner`) was planned from statistics gathered
//! while no row was claimed: `claimed_by = $owner` looked like one row, so the planner scanned
//! the whole of `billing_state` and joined every row it kept against every row of the batch.
//! At 10,000 subscriptions that was 18–28 ms a statement, about 220 µs of the server's CPU per
//! charge, and it grew with the table (bench/RESULTS.md, session 9). The defect shows as
//! sequential scans of `billing_state` during a pass, counted here by PostgreSQL's own
//! statistics; on SQLite (which has no such counters, and reads the batch and looks each row up
//! by key) the same pass runs for its outcome.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use nicebill::billing::engine::{Engine, EngineSettings};
use nicebill::billing::plan::Policy;
use nicebill::clock::{ManualClock, SharedClock};
use nicebill::gateway::nicepay::{Charset, EdiType, NicepayClient};
use nicebill::storage::{AnyConnection, Store, StoreError};
use support::*;

const TOTAL: i64 = 4_000;
const DUE: i64 = 1_000;

/// `billing_state` as PostgreSQL's statistics count it.
#[derive(QueryableByName, Clone, Copy, Debug, PartialEq)]
struct Counters {
    #[diesel(sql_type = BigInt)]
    seq_scan: i64,
    #[diesel(sql_type = BigInt)]
    n_tup_upd: i64,
    #[diesel(sql_type = BigInt)]
    n_tup_ins: i64,
}

async fn counters(store: &Store) -> Counters {
    store
        .run(|c| -> Result<Counters, StoreError> {
            let AnyConnection::Postgres(pg) = c else {
                unreachable!("PostgreSQL only")
            };
            let rows: Vec<Counters> = diesel::sql_query(
                "SELECT seq_scan, n_tup_upd, n_tup_ins FROM pg_stat_user_tables \
                 WHERE relname = 'billing_state' AND schemaname = current_schema()",
            )
            .load(pg)?;
            Ok(rows[0])
        })
        .await
        .unwrap()
}

/// The counters once every earlier write (the migrations, the seeding) is counted: a backend
/// reports its counts when it goes idle, at most once a second, so they are read until the
/// seeded rows are in and two reads 1.1 s apart agree.
async fn settled(store: &Store, seeded: i64) -> Counters {
    let mut last = counters(store).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let now = counters(store).await;
        if now == last && now.n_tup_ins >= seeded {
            return now;
        }
        last = now;
    }
    panic!("PostgreSQL's statistics did not settle: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_finds_its_rows_by_key_with_stale_statistics() {
    for db in databases("query_plans").await {
        let pg = db.label == "postgres";
        let start = Utc.with_ymd_and_hms(2026, 11, 30, 15, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let shared: SharedClock = Arc::new(clock.clone());
        let sim = sim().await;
        let client = Arc::new(
            NicepayClient::new(
                settings(&sim.base_url(), Charset::Utf8, EdiType::Json),
                shared.clone(),
            )
            .unwrap(),
        );
        let mut bids = Vec::new();
        for i in 0..4 {
            bids.push(
                issue(
                    &client,
                    &format!("941012345678{:04}", 100 + i),
                    &format!("qp-bk-{i}"),
                )
                .await,
            );
        }
        let seeded = db
            .store
            .seed_bench(TOTAL, DUE, &bids, start - chrono::Duration::minutes(1))
            .await
            .unwrap();
        assert_eq!(seeded as i64, TOTAL, "{}", db.label);
        if pg {
            // Statistics as a deployment has them before its first busy pass: gathered while
            // no row was claimed and no attempt written.
            db.store
                .run(|c| {
                    c.batch_execute("ANALYZE billing_state; ANALYZE charges; ANALYZE subscriptions")
                        .map_err(Into::into)
                })
                .await
                .unwrap();
        }
        let before = if pg {
            Some(settled(&db.store, TOTAL).await)
        } else {
            None
        };

        let mut s = EngineSettings::new("plans".into(), Policy::default(), Duration::from_secs(30));
        s.concurrency = 32;
        s.batch = 128;
        let engine = Engine::new(db.store.clone(), client.clone(), shared.clone(), s);
        let report = engine.pass().await.unwrap();
        assert_eq!(report.charged as i64, DUE, "{}: {report:?}", db.label);
        assert_eq!(sim.ledger().len() as i64, DUE, "{}", db.label);
        drop(engine);

        let Some(before) = before else {
            eprintln!(
                "a_pass_finds_its_rows_by_key: sqlite has no scan counters; the pass charged every due row once"
            );
            continue;
        };
        // Each backend reports its counts when it goes idle, within a second or so (at most
        // ten): wait until the pass's updates are counted (a claim, the attempt's bookkeeping
        // and the outcome: at least two updates a charge), so that the scans are too.
        let mut after = counters(&db.store).await;
        for _ in 0..150 {
            if after.n_tup_upd - before.n_tup_upd >= 2 * DUE {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            after = counters(&db.store).await;
        }
        assert!(
            after.n_tup_upd - before.n_tup_upd >= 2 * DUE,
            "PostgreSQL's statistics never counted the pass's updates: {before:?} → {after:?}"
        );
        assert_eq!(
            after.seq_scan - before.seq_scan,
            0,
            "sequential scans of billing_state during a pass of {DUE} charges (of {TOTAL} rows): \
             a hot-path statement stopped finding its rows by key"
        );
    }
}
