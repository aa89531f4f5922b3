//! Clock skew: two `nicebill run` instances on ONE PostgreSQL database whose wall clocks differ
//! by 5 minutes (the second runs with Debian's libfaketime as `faketime -m -f +5m` sets it up, its
//! monotonic clock left alone: `FAKETIME_DONT_FAKE_MONOTONIC=1`), with
//! lost answers and approvals that land late within the settle window, and a short settle
//! window. Leases and settle windows are judged on the database's clock, so:
//!
//! - nothing is concluded `not_charged` early: every attempt concluded on "not found" was
//!   concluded at least `settle` after it was committed, on the database's own clock (a trigger
//!   records `clock_timestamp()` at the commit and at the conclusion; the `charges` rows'
//!   `resolved_at − created_at` say the same);
//! - nothing is charged twice: the simulator's ledger has one approval per (subscription,
//!   cycle), and every subscription moved on to cycle 2;
//! - the skewed instance warned that its clock differs from the database's.
//!
//! Why this fails on a per-host clock (nicebill before the database clock, commit 32aa734,
//! which used `SystemClock`/`Utc::now()`): instance A commits an attempt at T and sends it; the
//! simulator holds it 3 s (`hold_before`; settle is 6 s) or loses it (`drop_before`); A's
//! lookup answers "not found" and schedules the next lookup for T + settle on A's clock. The
//! skewed instance B reads T + 5 min as "now", so its next pass (within a second) claims that
//! attempt, gets "not found" again, and concludes `not_charged` at once, about 5 minutes early.
//! The cycle is then charged again by attempt 2, and the held attempt 1 is approved 3 s after
//! it was sent: a double charge in the ledger, and the trigger's times show the conclusion
//! 1–2 s after the commit instead of ≥ 6 s. (The rows' own `resolved_at − created_at` would not
//! show it: each instance stamps them with its own clock, hence the trigger.) B's leases also
//! look 5 minutes long to A while A's look expired to B, so A may be starved of work. With the
//! daemon switched back to `SystemClock`, this test failed in every run: cycles charged twice
//! in the ledger, an attempt concluded 0.1 s after its commit by the database's clock, or the
//! honest instance starved (0 attempts).
//!
//! PostgreSQL only: SQLite is one file on one host, so there is no second host with its own
//! clock to disagree with it. Skipped (and says so) without `NICEBILL_TEST_POSTGRES_URL`, or
//! when `faketime` is not installed (`apt-get install faketime`; `.ci/run` installs it).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Text};
use serde_json::Value;
use support::*;

const SUBSCRIPTIONS: usize = 24;
/// The settle window of a configuration, as the daemon computes it
/// ([`nicebill::config::settle_window`]): 6 s for these tests' configurations.
fn settle_secs(config: &Path) -> f64 {
    nicebill::config::Config::load(config)
        .unwrap()
        .engine_settings("probe".into())
        .settle()
        .as_secs_f64()
}
/// Held approvals land within the settle window: 1 s to send at most, 3 s held.
const HOLD_MS: &str = "3000";
const PATIENCE: Duration = Duration::from_secs(120);

/// The environment `faketime -m -f +5m` gives a program: libfaketime preloaded, 5 minutes
/// ahead. The daemon is started with it directly rather than under the `faketime` wrapper,
/// which forks and would leave the daemon behind when signalled. `None`: no faketime here.
fn faketime_env() -> Option<Vec<(String, String)>> {
    let out = Command::new("faketime")
        .args(["-m", "-f", "+5m", "env"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let env = String::from_utf8_lossy(&out.stdout);
    let preload = env
        .lines()
        .find_map(|l| l.strip_prefix("LD_PRELOAD="))
        .filter(|p| p.contains("faketime"))?;
    Some(vec![
        ("LD_PRELOAD".into(), preload.into()),
        ("FAKETIME".into(), "+5m".into()),
        // Only the wall clock moves: the monotonic clock, on which nicebill reads the
        // database's time, is the host's.
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ])
}

/// `concurrency`: approvals in flight at once (also the claim batch).
fn write_config(
    dir: &Path,
    name: &str,
    concurrency: usize,
    sim_url: &str,
    db_url: &str,
) -> PathBuf {
    ConfigFile::new(sim_url)
        .name(name)
        .nicepay(config::TIMEOUTS_1S)
        .database(db_url)
        .sections(&format!(
            r#"[scheduler]
tick = "* * * * * *"
concurrency = {concurrency}
batch = {concurrency}
settle_margin = "1s"
lease = "2s"

[retry]
resend_after = "1s"
transient_max_elapsed = "1s"
lookup_max_interval = "1s"

[log]
format = "json"
"#
        ))
        .write(dir)
}

/// Log lines (JSON) of one instance.
fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn messages<'a>(lines: &'a [Value], prefix: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
        })
        .collect()
}

/// The database's own record of when each charge was committed and when it changed state.
const AUDIT: &str = r#"
CREATE TABLE charge_audit (
    charge_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION charge_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        INSERT INTO charge_audit (charge_id, state) VALUES (NEW.id, NEW.state);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER charge_audit AFTER INSERT OR UPDATE ON charges
    FOR EACH ROW EXECUTE FUNCTION charge_audit();
"#;

#[derive(QueryableByName, Debug)]
struct Concluded {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    tid: String,
    /// Seconds from the commit to the `not_charged` conclusion, on the database's clock.
    #[diesel(sql_type = Double)]
    db_secs: f64,
    /// The same from the row's own `resolved_at − created_at`.
    #[diesel(sql_type = Double)]
    row_secs: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_five_minutes_apart_conclude_nothing_early_and_charge_once() {
    const TEST: &str = "clock_skew";
    if postgres_url(TEST).is_none() {
        eprintln!(
            "{TEST}: skipped entirely: it needs PostgreSQL (SQLite has no clock shared across hosts)"
        );
        return;
    }
    let Some(faked) = faketime_env() else {
        eprintln!(
            "{TEST}: SKIPPED: `faketime` is not installed (apt-get install faketime); \
             the clock skew test did not run"
        );
        return;
    };
    let started = Instant::now();
    let db = databases(TEST)
        .await
        .into_iter()
        .find(|d| d.label == "postgres")
        .expect("a PostgreSQL database");
    db.store
        .run(|c| {
            use diesel::connection::SimpleConnection;
            c.batch_execute(AUDIT).map_err(Into::into)
        })
        .await
        .unwrap();

    // Lost answers after the charge, requests lost before it, and approvals that land 3 s
    // late (within the settle window: a lookup meanwhile answers "not found").
    let (_sim, sim_url) = spawn_sim(&[
        "--seed",
        "29",
        // Each answer takes a while, so that a pass over everything due takes seconds and
        // both instances charge side by side.
        "--latency-ms",
        "150",
        "--fault",
        "drop_after:approve:0.15",
        "--fault",
        "drop_before:approve:0.25",
        "--fault",
        "hold_before:approve:0.25",
        "--hold-ms",
        HOLD_MS,
    ]);
    let client = client_at(&sim_url);
    let anchor = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut bids = Vec::new();
    for i in 0..SUBSCRIPTIONS {
        bids.push(issue(&client, "9410123456780000", &format!("skew-{i}")).await);
    }

    let dir = tempfile::tempdir().unwrap();
    let settle = settle_secs(&write_config(dir.path(), "probe", 1, &sim_url, &db.url));
    // The honest instance sends one approval at a time, the skewed one (slowed down a little
    // by libfaketime) four: neither can take all the work before the other's first pass.
    let spawn = |name: &str, skewed: bool| {
        let concurrency = if skewed { 4 } else { 1 };
        let config = write_config(dir.path(), name, concurrency, &sim_url, &db.url);
        let log = dir.path().join(format!("{name}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nicebill"));
        if skewed {
            cmd.envs(faked.iter().cloned());
        }
        cmd.env_remove("NICEBILL_CONFIG")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        (Killed(cmd.spawn().unwrap()), log)
    };
    // Both instances are up (each has read the database's time) before anything is due, so
    // that they charge side by side: the skewed one then meets attempts of the honest one in
    // flight (answers lost, approvals held), which a skewed clock would conclude early.
    let (honest, honest_log) = spawn("honest", false);
    let (skewed, skewed_log) = spawn("skewed", true);
    let deadline = Instant::now() + PATIENCE;
    for log in [&honest_log, &skewed_log] {
        while messages(&log_lines(log), "nicebill starting").is_empty() {
            assert!(Instant::now() < deadline, "{} did not start", log.display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut ids = Vec::new();
    for (i, bid) in bids.iter().enumerate() {
        ids.push(
            db.store
                .insert_subscription(monthly(&format!("skew-{i}"), bid, 1_000 + i as i64, anchor))
                .await
                .unwrap(),
        );
    }

    // Until every subscription is on cycle 2 with nothing unresolved.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let subs = db.store.subscriptions().await.unwrap();
        let unresolved = db.store.unresolved().await.unwrap();
        let moved_on = subs.iter().filter(|s| s.next_cycle == Some(2)).count();
        if moved_on == SUBSCRIPTIONS && unresolved.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{moved_on} of {SUBSCRIPTIONS} charged, {} unresolved after {PATIENCE:?}",
            unresolved.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (a, b) = tokio::task::spawn_blocking(move || (terminate(honest), terminate(skewed)))
        .await
        .unwrap();
    assert_eq!(
        (a.code(), b.code()),
        (Some(0), Some(0)),
        "exit after SIGTERM"
    );

    // Nothing charged twice: one approval per (subscription, cycle) in the simulator's ledger.
    let ledger = ledger(&sim_url).await;
    let mut per_cycle: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for e in &ledger {
        let (cycle, _) = e.moid.rsplit_once("-A").unwrap();
        per_cycle.entry(cycle.to_owned()).or_default().push(&e.moid);
    }
    let twice: Vec<_> = per_cycle.values().filter(|m| m.len() > 1).collect();
    assert!(twice.is_empty(), "charged twice: {twice:?}");
    assert_eq!(per_cycle.len(), SUBSCRIPTIONS, "{per_cycle:?}");
    for id in &ids {
        assert!(
            per_cycle.contains_key(&format!("S{id}-C1")),
            "S{id} not charged"
        );
    }
    let charges = db.store.charges(None).await.unwrap();
    assert!(
        charges.iter().all(|c| c.state != "double"),
        "a late check found a double charge"
    );
    assert_eq!(
        charges.iter().filter(|c| c.state == "approved").count(),
        SUBSCRIPTIONS
    );

    // Nothing concluded early: every attempt concluded `not_charged` on "not found" (it was
    // looked up; one never sent has no lookup) was concluded ≥ settle after its commit.
    let concluded: Vec<Concluded> = db
        .store
        .run(|c| {
            diesel::sql_query(
                "SELECT c.id, c.tid, \
                   EXTRACT(EPOCH FROM (MIN(done.at) - MIN(made.at)))::float8 AS db_secs, \
                   EXTRACT(EPOCH FROM (c.resolved_at - c.created_at))::float8 AS row_secs \
                 FROM charges c \
                 JOIN charge_audit made ON made.charge_id = c.id AND made.state = 'pending' \
                 JOIN charge_audit done ON done.charge_id = c.id AND done.state = 'not_charged' \
                 WHERE c.state = 'not_charged' AND c.lookups > 0 \
                 GROUP BY c.id, c.tid, c.resolved_at, c.created_at ORDER BY c.id",
            )
            .load(c)
            .map_err(Into::into)
        })
        .await
        .unwrap();
    let looked_up_not_charged = charges
        .iter()
        .filter(|c| c.state == "not_charged" && c.lookups > 0)
        .count();
    assert_eq!(
        concluded.len(),
        looked_up_not_charged,
        "every concluded attempt is in the audit"
    );
    for c in &concluded {
        // The row's own times are the database's clock as nicebill reads it: exact.
        assert!(
            c.row_secs >= settle,
            "charge {} ({}) concluded not_charged {:.3} s after its commit (settle {settle} s)",
            c.id,
            c.tid,
            c.row_secs
        );
        // The database's clock_timestamp() at the commit and the conclusion: the commit's
        // statement runs a moment after nicebill read the time, hence a small allowance.
        assert!(
            c.db_secs >= settle - 0.5,
            "charge {} ({}) concluded not_charged {:.3} s after its commit by the database's \
             clock (settle {settle} s)",
            c.id,
            c.tid,
            c.db_secs
        );
    }
    // The skewed instance noticed its clock; the honest one had nothing to say.
    let skewed_lines = log_lines(&skewed_log);
    let honest_lines = log_lines(&honest_log);
    let warned = messages(
        &skewed_lines,
        "this host's clock differs from the database's",
    );
    assert_eq!(warned.len(), 1, "the skewed instance did not warn");
    let skew_ms = warned[0]["fields"]["skew_ms"].as_i64().unwrap();
    assert!(
        (290_000..=310_000).contains(&skew_ms),
        "skew_ms {skew_ms}: faketime did not move the clock by 5 minutes"
    );
    assert!(
        messages(&honest_lines, "this host's clock differs").is_empty(),
        "the honest instance warned about its clock"
    );
    // Both instances charged.
    let attempts = |lines: &[Value]| messages(lines, "charge attempt").len();
    let (by_honest, by_skewed) = (attempts(&honest_lines), attempts(&skewed_lines));
    assert!(
        by_honest > 0 && by_skewed > 0,
        "both instances should have charged: {by_honest} and {by_skewed} attempts"
    );

    // The scenario did exercise what matters: answers lost, approvals found by lookup, and
    // attempts concluded on "not found" (then charged by a later attempt).
    let looked_up_approved = charges
        .iter()
        .filter(|c| c.state == "approved" && c.lookups > 0)
        .count();
    assert!(
        !concluded.is_empty() && looked_up_approved > 0,
        "the faults did not bite: {} concluded not found, {looked_up_approved} approvals found by lookup",
        concluded.len()
    );
    let mut states: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &charges {
        *states.entry(c.state.as_str()).or_default() += 1;
    }
    let min = |f: fn(&Concluded) -> f64| concluded.iter().map(f).fold(f64::INFINITY, f64::min);
    eprintln!(
        "{TEST}: {} attempts {states:?} ({by_honest} by the honest instance, {by_skewed} by the skewed one), \
         {looked_up_approved} approvals found by lookup, {} concluded not found \
         (earliest {:.2} s by the database's clock, {:.2} s by the rows; settle {settle} s), \
         in {:?}",
        charges.len(),
        concluded.len(),
        min(|c| c.db_secs),
        min(|c| c.row_secs),
        started.elapsed()
    );
}
