//! Operating the real binary: health file and `nicebill health`, Prometheus file, JSON logs with
//! one line per charge attempt, `check-config`, `charge-now` (twice charges once), the demo.

mod support;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

#[allow(unused_imports)]
use nicebill::gateway::ApiKind;
use nicebill::gateway::nicepay::{Charset, EdiType};
use support::*;

fn write_config(dir: &Path, base_url: &str, db_url: &str, key: &str) -> std::path::PathBuf {
    ConfigFile::new(base_url)
        .key(key)
        .nicepay(config::TIMEOUTS_1S)
        .database(db_url)
        .sections(&format!(
            r#"[scheduler]
tick = "* * * * * *"
settle_margin = "1s"

[retry]
transient_max_elapsed = "1s"

[health]
file = "{dir}/health.json"
prometheus_file = "{dir}/nicebill.prom"

[log]
format = "json"
level = "info"
"#,
            dir = dir.display()
        ))
        .write(dir)
}

fn run(config: &Path, args: &[&str]) -> Output {
    nicebill(None)
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_logs_check_config_and_charge_now() {
    for db in databases("operating").await {
        let label = db.label;
        let (_sim, sim_url) = spawn_sim(&[]);
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &sim_url, &db.url, KEY);
        let health = dir.path().join("health.json");

        // check-config, with and without the gateway.
        let out = run(&config, &["check-config", "--gateway"]);
        assert!(out.status.success(), "{label}: {}", text(&out));
        assert!(
            text(&out).contains("ok   NICEPAY"),
            "{label}: {}",
            text(&out)
        );

        // A subscription due now; the daemon charges it, logs one JSON line for the attempt
        // and writes the health file.
        let client = nicebill::gateway::nicepay::NicepayClient::new(
            settings(&sim_url, Charset::EucKr, EdiType::Json),
            std::sync::Arc::new(nicebill::clock::SystemClock),
        )
        .unwrap();
        let bid = issue(&client, "9410123456780000", &format!("op-{label}")).await;
        let anchor = chrono::Utc::now() - chrono::Duration::minutes(1);
        let id = db
            .store
            .insert_subscription(monthly("op-1", &bid, 9_900, anchor))
            .await
            .unwrap();
        let log_path = dir.path().join("daemon.log");
        let daemon = Killed(
            nicebill(None)
                .args(["run", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .unwrap(),
        );
        wait_for("the health file", || health.exists()).await;
        let out = run(&config, &["health"]);
        assert_eq!(out.status.code(), Some(0), "{label}: {}", text(&out));
        assert!(text(&out).starts_with("OK"), "{label}: {}", text(&out));
        wait_for("the charge", || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("charge attempt")
        })
        .await;
        // The log line comes before the outcome's commit: wait for the commit.
        for _ in 0..100 {
            let charges = db.store.charges(Some(id)).await.unwrap();
            if charges.iter().any(|c| c.state == "approved") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let prom = std::fs::read_to_string(dir.path().join("nicebill.prom")).unwrap();
        assert!(prom.contains("nicebill_status 0"), "{label}: {prom}");
        drop(daemon);

        let logs = std::fs::read_to_string(&log_path).unwrap();
        let attempt: serde_json::Value = logs
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["message"] == "charge attempt")
            .unwrap_or_else(|| panic!("{label}: no JSON charge attempt line in\n{logs}"));
        let f = &attempt["fields"];
        for key in [
            "subscription",
            "external_id",
            "cycle",
            "attempt",
            "moid",
            "tid",
            "amount",
            "result_code",
            "class",
            "duration_ms",
        ] {
            assert!(
                !f[key].is_null(),
                "{label}: charge attempt line lacks {key}: {attempt}"
            );
        }
        assert_eq!(f["external_id"], "op-1");
        assert_eq!(f["result_code"], "3001");
        for secret in [KEY, &KEY[..16], "9410123456780000"] {
            assert!(!logs.contains(secret), "{label}: a secret reached the log");
        }

        // Stale: the daemon is gone.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let out = run(&config, &["health", "--max-age", "1"]);
        assert_eq!(out.status.code(), Some(2), "{label}: {}", text(&out));
        assert!(text(&out).contains("stale"), "{label}: {}", text(&out));

        // charge-now: the next cycle is not due, nothing is charged; twice, still nothing.
        for _ in 0..2 {
            let out = run(&config, &["charge-now", "op-1"]);
            assert_eq!(out.status.code(), Some(0), "{label}: {}", text(&out));
            assert!(
                text(&out).contains("nothing due now"),
                "{label}: {}",
                text(&out)
            );
        }
        // A declining card in dunning: charge-now retries at once instead of waiting a day.
        let declining = issue(&client, "4000000000000005", &format!("op-dun-{label}")).await;
        let dun = db
            .store
            .insert_subscription(monthly("op-dunning", &declining, 5_000, anchor))
            .await
            .unwrap();
        let out = run(&config, &["run", "--once"]);
        assert!(out.status.success(), "{label}: {}", text(&out));
        let states: Vec<String> = db
            .store
            .charges(Some(dun))
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.state)
            .collect();
        assert_eq!(states, vec!["declined"], "{label}");
        let out = run(&config, &["charge-now", &dun.to_string()]);
        assert_eq!(out.status.code(), Some(0), "{label}: {}", text(&out));
        assert!(text(&out).contains("approved"), "{label}: {}", text(&out));
        let out = run(&config, &["charge-now", &dun.to_string()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{label}: second charge-now: {}",
            text(&out)
        );
        let approved = db
            .store
            .charges(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.state == "approved")
            .count();
        assert_eq!(approved, 2, "{label}: op-1 once, op-dunning once");
        let _ = id;

        // The gateway down: charges fail to connect, health says degraded (exit 1).
        let closed = process::free_port();
        let down_dir = tempfile::tempdir().unwrap();
        let down = write_config(
            down_dir.path(),
            &format!("http://127.0.0.1:{closed}"),
            &db.url,
            KEY,
        );
        let third = issue(&client, "9410123456780000", &format!("op-down-{label}")).await;
        for i in 0..4 {
            db.store
                .insert_subscription(monthly(&format!("op-down-{i}"), &third, 1_000, anchor))
                .await
                .unwrap();
        }
        let down_health = down_dir.path().join("health.json");
        let daemon = Killed(
            nicebill(None)
                .args(["run", "--config"])
                .arg(&down)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("a degraded health file", || {
            std::fs::read_to_string(&down_health)
                .unwrap_or_default()
                .contains("\"degraded\"")
        })
        .await;
        let out = run(&down, &["health"]);
        assert_eq!(out.status.code(), Some(1), "{label}: {}", text(&out));
        drop(daemon);
        let out = run(&down, &["check-config", "--gateway"]);
        assert_eq!(out.status.code(), Some(2), "{label}: {}", text(&out));
        assert!(
            text(&out).contains("FAIL NICEPAY"),
            "{label}: {}",
            text(&out)
        );
    }
}

/// `charge-now` on a subscription the merchant just wrote, before any pass has seen it: charged
/// once (it used to be refused as "being charged right now").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charge_now_charges_a_subscription_no_pass_has_seen() {
    for (api, db) in every_api_and_db("charge_now_new").await {
        let label = format!("{} on {api}", db.label);
        let (_sim, sim_url) = spawn_sim(&[]);
        let dir = tempfile::tempdir().unwrap();
        let config = ConfigFile::new(&sim_url)
            .api(api)
            .nicepay(config::TIMEOUTS_1S)
            .database(&db.url)
            .write(dir.path());
        let gateway = gateway_for(
            api,
            &sim_url,
            std::sync::Arc::new(nicebill::clock::SystemClock),
        );
        let bid = issue_on(&gateway, "9410123456780000", &format!("cn-{}", db.label)).await;
        let anchor = chrono::Utc::now() - chrono::Duration::minutes(1);
        let id = db
            .store
            .insert_subscription(monthly("cn-new", &bid, 2_000, anchor))
            .await
            .unwrap();
        let out = run(&config, &["charge-now", "cn-new"]);
        assert_eq!(out.status.code(), Some(0), "{label}: {}", text(&out));
        assert!(text(&out).contains("approved"), "{label}: {}", text(&out));
        let out = run(&config, &["charge-now", "cn-new"]);
        assert_eq!(out.status.code(), Some(0), "{label}: {}", text(&out));
        assert!(
            text(&out).contains("nothing due now"),
            "{label}: {}",
            text(&out)
        );
        let charges = db.store.charges(Some(id)).await.unwrap();
        assert_eq!(charges.len(), 1, "{label}: {charges:?}");
        assert_eq!(charges[0].state, "approved", "{label}");
        assert_eq!(ledger(&sim_url).await.len(), 1, "{label}");
    }
}

#[test]
fn the_demo_runs_and_its_ledger_agrees() {
    let out = nicebill(None)
        .args(["demo", "--months", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("they agree"), "{stdout}");
    for name in [
        "demo-month-end",
        "demo-recovers",
        "demo-lost-card",
        "demo-cancelled",
        "removed (F101)",
        "card_invalid",
    ] {
        assert!(stdout.contains(name), "demo output lacks {name}:\n{stdout}");
    }
    assert!(stdout.contains("Jan 31, Feb 28, Mar 31"), "{stdout}");
    // The story, not the log: no INFO line unless `--verbose`.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("INFO"), "demo logs INFO lines:\n{stderr}");
    let out = nicebill(None)
        .args(["demo", "--months", "1", "--verbose"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("INFO"),
        "demo --verbose logs no INFO line:\n{stderr}"
    );
    for verbose in [false, true] {
        let mut cmd = nicebill(None);
        cmd.args(["demo", "--protocol"]);
        if verbose {
            cmd.arg("--verbose");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("refund (signature verified)"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("INFO"),
            verbose,
            "demo --protocol (verbose: {verbose}):\n{stderr}"
        );
    }
}

#[test]
fn the_demo_tells_the_same_story_on_v1() {
    let out = nicebill(None)
        .args(["demo", "--api", "v1", "--months", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("REST API v1, shop nicv1sbx0m"), "{stdout}");
    assert!(stdout.contains("they agree"), "{stdout}");
    // The same story as on the web API: 11 approvals in three months, the same statuses.
    assert!(
        stdout.contains("simulator ledger: 11 approvals"),
        "{stdout}"
    );
    for name in ["removed (0000)", "card_invalid", "past_due"] {
        assert!(stdout.contains(name), "demo output lacks {name}:\n{stdout}");
    }
    assert!(stdout.contains("Jan 31, Feb 28, Mar 31"), "{stdout}");
    let out = nicebill(None)
        .args(["demo", "--api", "v1", "--protocol"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for step in [
        "status lookup by order id",
        "0000 Some(Approved)",
        "0000 CancelAmt=9900 RemainAmt=0",
        "0000 Some(Cancelled)",
        "[permanent_card]",
    ] {
        assert!(
            stdout.contains(step),
            "demo --protocol on v1 lacks {step:?}:\n{stdout}"
        );
    }
    // The web API's answer format does not apply to v1.
    let out = nicebill(None)
        .args(["demo", "--api", "v1", "--charset", "utf-8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--charset"), "{}", text(&out));
}

/// The benchmark command works end to end (its figures are not judged here: timing belongs to
/// `bench/RESULTS.md`, not to tests).
#[test]
fn the_benchmark_runs_and_charges_everything() {
    let mut args = vec![
        "bench",
        "--due",
        "300",
        "--total",
        "1000",
        "--concurrency",
        "16",
        "--latency-ms",
        "2",
        "--json",
    ];
    let pg = std::env::var("NICEBILL_TEST_POSTGRES_URL").ok();
    let mut runs = vec![args.clone()];
    if let Some(url) = pg.as_deref() {
        args.extend(["--database-url", url]);
        runs.push(args);
    }
    for args in runs {
        let out = nicebill(None).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (r["charged"].as_u64(), r["ledger"].as_u64()),
            (Some(300), Some(300)),
            "{r}"
        );
        for key in [
            "wall_s",
            "ideal_s",
            "efficiency",
            "cpu_us_per_charge",
            "peak_rss_mb",
            "find_due_batch_ms",
        ] {
            assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {r}");
        }
    }
}

/// `schedule preview` by flags (month ends, local time) and `migrate` / `auto_migrate = false`.
#[test]
fn schedule_preview_and_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let config = write_config(dir.path(), "http://127.0.0.1:9", &db_url, KEY);
    let out = run(
        &config,
        &[
            "schedule",
            "preview",
            "--anchor",
            "2027-01-31 09:00",
            "--interval",
            "1month",
            "--count",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for day in [
        "2027-01-31 09:00:00",
        "2027-02-28 09:00:00",
        "2027-03-31 09:00:00",
        "2027-04-30 09:00:00",
    ] {
        assert!(stdout.contains(day), "{day} missing in\n{stdout}");
    }
    assert!(stdout.contains("Asia/Seoul"), "{stdout}");
    let out = run(
        &config,
        &[
            "schedule",
            "preview",
            "--anchor",
            "2027-01-01",
            "--cron",
            "0 9 1 * *",
            "--count",
            "2",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2027-02-01 09:00:00"),
        "{}",
        text(&out)
    );
    let out = run(
        &config,
        &[
            "schedule",
            "preview",
            "--anchor",
            "2027-01-01",
            "--interval",
            "1fortnight",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // --count is 1 to 10000: anything else is a usage error naming it, not an allocation.
    for count in ["0", "10001", "18446744073709551615", "many"] {
        let out = run(
            &config,
            &[
                "schedule",
                "preview",
                "--anchor",
                "2027-01-01",
                "--count",
                count,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{count}: {}", text(&out));
        assert!(text(&out).contains("--count"), "{count}: {}", text(&out));
    }
    let out = run(
        &config,
        &[
            "schedule",
            "preview",
            "--anchor",
            "2027-01-01",
            "--interval",
            "1day",
            "--count",
            "10000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with("cycle"))
            .count(),
        10_000
    );

    // With auto_migrate off, `run` refuses a database that is not migrated, and says how.
    let text_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text_config.replace("[database]\n", "[database]\nauto_migrate = false\n"),
    )
    .unwrap();
    let out = run(&config, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("nicebill migrate"), "{}", text(&out));
    let out = run(&config, &["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(&config, &["migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("schema up to date"),
        "{}",
        text(&out)
    );
    let out = run(&config, &["check-config"]);
    assert!(out.status.success(), "{}", text(&out));
}
