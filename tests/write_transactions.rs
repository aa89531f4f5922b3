//! `Store::write` on SQLite and PostgreSQL: a write transaction that reads, and meanwhile sees
//! another of nicebill's writes commit, still runs once and commits.
//!
//! On SQLite a deferred `BEGIN` reads from a snapshot; when another connection commits before
//! the transaction's first write, that write cannot be upgraded (`SQLITE_BUSY_SNAPSHOT`,
//! "database is locked", with no wait in the busy handler), and the transaction was retried
//! after sleeping 40, 80, 160, 320 and 640 ms, then failed. The bench saw an attempt batch's
//! commit take 1.27 s that way, behind the outcome writer, and passes ending in an error.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use nicebill::storage::{AnyConnection, StoreError};
use support::*;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn count(c: &mut AnyConnection, sql: &str) -> Result<i64, StoreError> {
    let rows: Vec<Count> = match c {
        AnyConnection::Sqlite(c) => diesel::sql_query(sql).load(c)?,
        AnyConnection::Postgres(c) => diesel::sql_query(sql).load(c)?,
    };
    Ok(rows[0].n)
}

fn insert(c: &mut AnyConnection, who: &str) -> Result<(), StoreError> {
    c.batch_execute(&format!("INSERT INTO nb_writes (who) VALUES ('{who}')"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_overtaken_by_another_commit_runs_once() {
    for db in databases("write_overtaken").await {
        let store = db.store.clone();
        store
            .run(|c| {
                c.batch_execute("CREATE TABLE nb_writes (who TEXT NOT NULL)")
                    .map_err(Into::into)
            })
            .await
            .unwrap();
        // The other writer commits whenever it is asked to (at most ten times).
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let other = {
            let store = store.clone();
            tokio::spawn(async move {
                let go_rx = Arc::new(std::sync::Mutex::new(go_rx));
                for _ in 0..10 {
                    let rx = Arc::clone(&go_rx);
                    let asked = tokio::task::spawn_blocking(move || {
                        rx.lock().unwrap().recv_timeout(Duration::from_secs(20))
                    })
                    .await
                    .unwrap();
                    if asked.is_err() {
                        break;
                    }
                    store.write(|c| insert(c, "other")).await.unwrap();
                    let _ = done_tx.send(());
                }
            })
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&runs);
        let done_rx = Arc::new(std::sync::Mutex::new(done_rx));
        let result = store
            .write(move |c| {
                seen.fetch_add(1, Ordering::SeqCst);
                let before = count(c, "SELECT COUNT(*) AS n FROM nb_writes")?;
                // Another write commits (or, if this transaction already holds the write
                // lock, waits for it) before this one writes.
                go_tx.send(()).unwrap();
                let _ = done_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_millis(300));
                insert(c, "mine")?;
                Ok(before)
            })
            .await;
        assert!(result.is_ok(), "{}: {result:?}", db.label);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "{}: the transaction ran more than once",
            db.label
        );
        other.abort();
        let _ = other.await;
        let mine = store
            .run(|c| count(c, "SELECT COUNT(*) AS n FROM nb_writes WHERE who = 'mine'"))
            .await
            .unwrap();
        assert_eq!(mine, 1, "{}", db.label);
    }
}
