//! Late checks end to end, against the real binary (`nicebill run` with a config file, and
//! `nicebill sim` as a separate process), on SQLite and on PostgreSQL when its URL is set.
//!
//! The simulator's `hold_before` fault makes NICEPAY approve LATE: the first two approval
//! requests are held for longer than the settle window before they are processed, and status
//! lookups answer `Status=9` (not found) meanwhile. So the engine concludes attempt 1 of each
//! cycle `not_charged` on "not found" and sends attempt 2; then attempt 1 is approved after all.
//! The late check (`[retry] late_check_after`) looks attempt 1 up once more and finds it:
//!
//! - subscription "double": attempt 2 was approved too, so the cycle is charged twice. The
//!   charge gets state `double`, a `double_charge` event names both TIDs, the log has an error,
//!   the health file turns degraded, the Prometheus file counts it, and `nicebill charges
//!   doubles` lists it (with both TIDs and a refund hint). Nothing is refunded.
//! - subscription "late": its card declines every other attempt, so attempt 2 (which reaches
//!   the card first) is declined and the held attempt 1 is approved. Attempt 1 becomes the
//!   cycle's approval (`approved_late`), the subscription moves on to cycle 2, and no third
//!   attempt is made (dunning would retry only after an hour).
//!
//! Timing: settle = 2 × (0.5 s + 0.5 s) + transient 1 s + margin 1 s = 4 s after the commit;
//! the hold is 10 s; the late check runs 9 s after the "not found" conclusion (about 13 s after
//! the commit). Each gap is a few seconds, so that a busy machine does not change the story.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const HOLD_MS: &str = "10000";
const LATE_CHECK_AFTER: &str = "9s";
/// Bound on the whole story per backend (it takes about 15 s).
const PATIENCE: Duration = Duration::from_secs(90);

fn write_config(dir: &Path, sim_url: &str, db_url: &str) -> PathBuf {
    ConfigFile::new(sim_url)
        .nicepay("connect_timeout = \"500ms\"\nread_timeout = \"500ms\"\n")
        .database(db_url)
        .sections(&format!(
            r#"[scheduler]
tick = "* * * * * *"
concurrency = 4
batch = 4
settle_margin = "1s"
lease = "2s"

[retry]
retry_after = ["1h"]
resend_after = "1s"
transient_max_elapsed = "1s"
lookup_max_interval = "1s"
late_check_after = "{LATE_CHECK_AFTER}"

[health]
file = "{health}"
prometheus_file = "{metrics}"

[log]
format = "json"
"#,
            health = dir.join("health.json").display(),
            metrics = dir.join("metrics.prom").display(),
        ))
        .write(dir)
}

/// Runs an operator command; its exit code and stdout.
fn operator(config: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = nicebill(Some("warn"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_approvals_are_found_doubles_reported_and_single_ones_recorded() {
    let stories: Vec<_> = databases("late_checks")
        .await
        .into_iter()
        .map(|db| tokio::spawn(late_story(db)))
        .collect();
    for story in stories {
        story.await.unwrap();
    }
}

async fn late_story(db: TestDb) {
    let label = db.label;
    let started = Instant::now();
    // The first two approval requests are held past the settle window.
    let (_sim, sim_url) = spawn_sim(&[
        "--seed",
        "5",
        "--fault",
        "hold_before:approve:1:2",
        "--hold-ms",
        HOLD_MS,
    ]);
    let client = client_at(&sim_url);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &sim_url, &db.url);

    let anchor = chrono::Utc::now() - chrono::Duration::hours(1);
    let approving = issue(&client, "9410123456780000", &format!("late-{label}-1")).await;
    let every_second = issue(&client, "4000000000000005", &format!("late-{label}-2")).await;
    let double = db
        .store
        .insert_subscription(monthly("double", &approving, 9_900, anchor))
        .await
        .unwrap();
    let late = db
        .store
        .insert_subscription(monthly("late", &every_second, 5_500, anchor))
        .await
        .unwrap();

    let (code, out) = operator(&config, &["charges", "doubles"]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), "no double charges"),
        "{label}"
    );

    let log = dir.path().join("run.log");
    let run = Killed(
        nicebill(Some("info"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );

    // Until the late checks have found both held approvals, and the health and metrics files
    // written after that pass say so.
    let health_path = dir.path().join("health.json");
    let metrics_path = dir.path().join("metrics.prom");
    let deadline = Instant::now() + PATIENCE;
    let (health, metrics) = loop {
        let charges = db.store.charges(None).await.unwrap();
        let found_double = charges
            .iter()
            .any(|c| c.subscription_id == double && c.state == "double");
        let found_late = charges
            .iter()
            .any(|c| c.subscription_id == late && c.attempt == 1 && c.state == "approved");
        // The pass after the late approval plans cycle 2, a month away.
        let planned = db
            .store
            .subscription(late)
            .await
            .unwrap()
            .and_then(|s| s.next_charge_at)
            .is_some_and(|t| t.and_utc() > chrono::Utc::now() + chrono::Duration::days(20));
        let health: Option<Value> = std::fs::read(&health_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let metrics = std::fs::read_to_string(&metrics_path).unwrap_or_default();
        if found_double
            && found_late
            && planned
            && let Some(h) = health.filter(|h| h["double_charges"] == 1)
            && metrics.contains("nicebill_double_charges 1\n")
        {
            break (h, metrics);
        }
        assert!(
            Instant::now() < deadline,
            "{label}: the late checks did not find both late approvals within {PATIENCE:?}: \
             {charges:#?}\nlog:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let status = tokio::task::spawn_blocking(move || terminate(run))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{label}: exit after SIGTERM");
    let log_text = std::fs::read_to_string(&log).unwrap();

    // The gateway charged the "double" cycle twice (the premise), the "late" one once.
    let ledger = ledger(&sim_url).await;
    let moids = |id: i64| -> Vec<String> {
        let mut m: Vec<String> = ledger
            .iter()
            .filter(|e| e.moid.starts_with(&format!("S{id}-")))
            .map(|e| e.moid.clone())
            .collect();
        m.sort();
        m
    };
    assert_eq!(
        moids(double),
        [format!("S{double}-C1-A1"), format!("S{double}-C1-A2")],
        "{label}"
    );
    assert_eq!(moids(late), [format!("S{late}-C1-A1")], "{label}");

    // "double": attempt 1 is `double`, attempt 2 `approved`; the event names both TIDs.
    let charges = db.store.charges(Some(double)).await.unwrap();
    let states: Vec<(i32, &str)> = charges
        .iter()
        .map(|c| (c.attempt, c.state.as_str()))
        .collect();
    assert_eq!(states.len(), 2, "{label}: {charges:#?}");
    let first = charges.iter().find(|c| c.attempt == 1).unwrap();
    let second = charges.iter().find(|c| c.attempt == 2).unwrap();
    assert_eq!(
        (first.state.as_str(), second.state.as_str()),
        ("double", "approved"),
        "{label}"
    );
    // Attempt 1 was concluded on "not found", then looked up once more.
    assert!(first.lookups >= 2, "{label}: {first:?}");
    assert!(first.auth_code.is_some(), "{label}: {first:?}");
    let events = db.store.events(Some(double)).await.unwrap();
    let doubles: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "double_charge")
        .collect();
    assert_eq!(doubles.len(), 1, "{label}: {events:#?}");
    assert!(
        doubles[0].detail.contains(first.tid.as_deref().unwrap())
            && doubles[0].detail.contains(second.tid.as_deref().unwrap()),
        "{label}: {}",
        doubles[0].detail
    );
    assert_eq!(doubles[0].charge_id, Some(first.id), "{label}");

    // The log has it at error, with both TIDs.
    let error = log_text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["level"] == "ERROR"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("double charge"))
        })
        .unwrap_or_else(|| panic!("{label}: no error line for the double charge:\n{log_text}"));
    assert_eq!(
        error["fields"]["tid"],
        first.tid.as_deref().unwrap(),
        "{label}"
    );
    assert_eq!(
        error["fields"]["other_tid"],
        second.tid.as_deref().unwrap(),
        "{label}"
    );

    // Health degraded, metric 1.
    assert_eq!(health["status"], "degraded", "{label}: {health}");
    assert!(
        health["reason"]
            .as_str()
            .is_some_and(|r| r.contains("double charge")),
        "{label}: {health}"
    );
    assert!(
        metrics.contains("nicebill_status 1\n"),
        "{label}: {metrics}"
    );
    let (code, _) = operator(
        &config,
        &[
            "health",
            "--file",
            health_path.to_str().unwrap(),
            "--max-age",
            "600",
        ],
    );
    assert_eq!(
        code,
        Some(1),
        "{label}: nicebill health exits 1 when degraded"
    );

    // `charges doubles`: both TIDs, the amount, the refund hint; JSON for scripts.
    let (code, table) = operator(&config, &["charges", "doubles"]);
    assert_eq!(code, Some(0), "{label}");
    for want in [
        first.tid.as_deref().unwrap(),
        second.tid.as_deref().unwrap(),
        "9,900",
        "double",
        "nicebill refund",
    ] {
        assert!(
            table.contains(want),
            "{label}: {want:?} missing from\n{table}"
        );
    }
    let (code, json) = operator(&config, &["charges", "doubles", "--json"]);
    assert_eq!(code, Some(0), "{label}");
    let json: Value = serde_json::from_str(&json).unwrap();
    let listed = json.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{label}: {json}");
    let d = &listed[0];
    assert_eq!(
        (
            d["subscription_id"].as_i64(),
            d["external_id"].as_str(),
            d["cycle"].as_i64(),
            d["amount"].as_i64(),
            d["tid"].as_str(),
            d["approved_tid"].as_str()
        ),
        (
            Some(double),
            Some("double"),
            Some(1),
            Some(9_900),
            Some(first.tid.as_deref().unwrap()),
            Some(second.tid.as_deref().unwrap())
        ),
        "{label}: {d}"
    );
    assert!(d["found_at"].is_string(), "{label}: {d}");
    // `charges list --state double` finds the same row.
    let (code, json) = operator(&config, &["charges", "list", "--state", "double", "--json"]);
    assert_eq!(code, Some(0), "{label}");
    let json: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(1), "{label}: {json}");

    // "late": attempt 1 approved late is the cycle's charge; attempt 2 declined; no attempt 3.
    let charges = db.store.charges(Some(late)).await.unwrap();
    let states: Vec<(i32, &str)> = charges
        .iter()
        .map(|c| (c.attempt, c.state.as_str()))
        .collect();
    let mut sorted = states.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [(1, "approved"), (2, "declined")],
        "{label}: {charges:#?}"
    );
    let events = db.store.events(Some(late)).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"approved_late"), "{label}: {kinds:?}");
    assert!(!kinds.contains(&"double_charge"), "{label}: {kinds:?}");
    let state = db
        .store
        .subscription(late)
        .await
        .unwrap()
        .expect("the subscription is there");
    assert_eq!(
        (state.status.as_str(), state.next_cycle),
        ("active", Some(2)),
        "{label}: the subscription moved on to cycle 2: {state:?}"
    );
    eprintln!("{label}: late checks story in {:?}", started.elapsed());
}
