//! PostgreSQL restarted under a running `nicebill run`: the daemon is not restarted, it must
//! reconnect by itself, drain the backlog, and pass the campaign's verdict (no cycle charged
//! twice, none left uncharged, no attempt unresolved, ledger and `charges` agree).
//!
//! Its own test binary, because restarting the server breaks whatever else is using it. It
//! needs root and the machine's own cluster (`pg_ctlcluster`), so it runs only when both
//! `NICEBILL_TEST_POSTGRES_URL` and `NICEBILL_TEST_PG_RESTART=1` are set (`.ci/run` sets the
//! latter). `NICEBILL_CAMPAIGN=full` raises 300 subscriptions to 3,000.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::campaign::*;
use support::process::*;
use support::sim_api::*;

fn pg_isready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1"])
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_run() {
    if std::env::var("NICEBILL_TEST_POSTGRES_URL").map_or(true, |u| u.is_empty()) {
        eprintln!("pg_restart: skipped (NICEBILL_TEST_POSTGRES_URL is not set)");
        return;
    }
    if std::env::var("NICEBILL_TEST_PG_RESTART").as_deref() != Ok("1") {
        eprintln!(
            "pg_restart: skipped (NICEBILL_TEST_PG_RESTART=1 is not set; the test restarts the \
             machine's PostgreSQL cluster and needs root)"
        );
        return;
    }
    let scale = Scale::from_env();
    let db = support::databases("pg_restart")
        .await
        .into_iter()
        .find(|db| db.label == "postgres")
        .expect("a PostgreSQL database");
    let label = db.label;
    let started = Instant::now();
    let n = scale.restart_charges;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_sim, url) = start_sim(20, &[], None);
    let config = write_config(dir, "daemon", &url, &db.url, 2, false);
    let bids = issue_billkeys(&url, &card_numbers(5, n), "pg").await;
    insert_due(&db.store, "pg-restart", &bids).await;
    let log = dir.join("daemon.log");
    let mut daemon = spawn_run(&config, &log, "info", "nicebill run");

    // Some charges land, then the server restarts under the daemon.
    let deadline = Instant::now() + scale.patience;
    while approved_count(&db.store).await < n / 10 {
        assert!(Instant::now() < deadline, "{label}: nothing charged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = approved_count(&db.store).await;
    let restart_at = Instant::now();
    let restart = Command::new("sh")
        .args([
            "-c",
            "pg_ctlcluster --skip-systemctl-redirect \"$(ls /etc/postgresql | head -n1)\" main restart",
        ])
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "pg_ctlcluster restart: {}{}",
        String::from_utf8_lossy(&restart.stdout),
        String::from_utf8_lossy(&restart.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pg_isready() {
        assert!(
            Instant::now() < deadline,
            "PostgreSQL does not accept connections again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let down_for = restart_at.elapsed();
    assert!(
        before < n,
        "{label}: everything was charged before the restart ({before})"
    );

    wait_approved(label, &db.store, n, scale.patience).await;
    let drained = restart_at.elapsed();
    assert!(daemon.running(), "{label}: the daemon exited");
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{label}: nicebill run after SIGTERM"
    );

    let ledger = ledger(&url).await;
    let tally = verdict(label, &db.store, &ledger).await;
    assert_eq!((tally.approved, ledger.len()), (n, n), "{label}: {tally:?}");
    // The restart hit a running daemon: it saw the database go away (its connections broke),
    // and went on charging after that.
    let logs = std::fs::read_to_string(&log).unwrap();
    let timestamp = |line: &str| line.split(' ').next().unwrap_or_default().to_owned();
    let first_error = logs
        .lines()
        .find(|l| l.contains(" ERROR "))
        .map(timestamp)
        .unwrap_or_else(|| panic!("{label}: the daemon never noticed the restart:\n{logs}"));
    let charged_after = logs
        .lines()
        .filter(|l| l.contains("charge attempt") && timestamp(l) > first_error)
        .count();
    let errors = logs.lines().filter(|l| l.contains(" ERROR ")).count();
    eprintln!(
        "pg_restart: {before} of {n} charged when the restart began; PostgreSQL accepted \
         connections again after {down_for:?}; the daemon logged {errors} error lines from \
         {first_error} on, and {charged_after} charge attempts after the first; backlog drained \
         {drained:?} after the restart began; {tally:?}; {:?} in all",
        started.elapsed()
    );
    assert!(
        charged_after > 0,
        "{label}: no charge after the database went away; the restart came too late"
    );
}
