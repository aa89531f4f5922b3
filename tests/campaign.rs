//! The fault campaign: the real `nicebill` binary against `nicebill sim`, with the gateway
//! going down mid-run, answers lost and the daemon SIGKILLed over and over, three daemons
//! sharing one database, and the merchant's application writing its rows (stale full-row
//! saves, pauses, cancellations, new cards, bad values) while daemons are SIGKILLed; then a
//! scan of everything the processes wrote for secrets. Each case
//! ends with the same [`verdict`] from the simulator's ledger and the `charges` table: no cycle
//! charged twice, no due cycle left uncharged without a recorded reason, no attempt left
//! unresolved, and every approval at the gateway recorded as `approved` with its Moid and
//! amount. Every case runs on SQLite, and on PostgreSQL when `NICEBILL_TEST_POSTGRES_URL` is
//! set.
//!
//! Small scale by default (seconds per case in a debug build). The full scale — 2,000
//! subscriptions and a 60 s outage, 25 SIGKILLs during 2,000 charges, 5,000 charges over three
//! instances, 2,000 merchant writes during at least 25 SIGKILLs — is one command:
//!
//! ```sh
//! NICEBILL_CAMPAIGN=full cargo test --release --test campaign -- --nocapture
//! ```
//!
//! The scale, the daemon configuration and the verdict are in `tests/support/campaign.rs`,
//! which `tests/pg_restart.rs` (PostgreSQL restarted under a running daemon) shares.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use nicebill::domain::Bid;
use nicebill::gateway::ApiKind;
use nicebill::sim::LedgerState;
use nicebill::sim::RemovalEntry;
use nicebill::storage::models::NewSubscription;
use nicebill::storage::{AnyConnection, Store};
use rand::{Rng, SeedableRng};
use support::campaign::*;
use support::process::*;
use support::sim_api::*;
use support::{KEY, TestDb};

/// Approvals the gateway holds now (a netcancelled one is in the ledger as cancelled).
fn standing(ledger: &[nicebill::sim::LedgerEntry]) -> usize {
    ledger
        .iter()
        .filter(|e| e.state != LedgerState::Cancelled)
        .count()
}

// ---------------------------------------------------------------------------------------------
// The secret scan

/// Every row of every table in the store's PostgreSQL schema, as JSON text.
pub async fn postgres_rows(store: &Store) -> String {
    #[derive(QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    store
        .run(|c| {
            let AnyConnection::Postgres(pg) = c else {
                panic!("not PostgreSQL");
            };
            let tables: Vec<Text> = diesel::sql_query(
                "SELECT table_name::text AS t FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
            )
            .load(pg)?;
            assert!(tables.len() >= 4, "tables: {}", tables.len());
            let mut all = String::new();
            for table in tables {
                let rows: Vec<Text> = diesel::sql_query(format!(
                    "SELECT row_to_json(x)::text AS t FROM \"{}\" x",
                    table.t
                ))
                .load(pg)?;
                for row in rows {
                    all.push_str(&row.t);
                    all.push('\n');
                }
            }
            Ok(all)
        })
        .await
        .unwrap()
}

/// What the secret scan looks for.
pub struct Secrets {
    /// Strings that must appear nowhere (merchant key, its first 16 chars, IDNo, `CardPw=`).
    pub strings: Vec<(String, String)>,
    /// Full card numbers (16 digits) that must appear nowhere.
    pub cards: HashSet<String>,
}

/// Finds secrets in one text: returns what was found, by name.
pub fn secrets_in(text: &str, secrets: &Secrets) -> Vec<String> {
    let mut found: Vec<String> = secrets
        .strings
        .iter()
        .filter(|(_, s)| text.contains(s.as_str()))
        .map(|(name, _)| name.clone())
        .collect();
    // Card numbers: every 16-digit window of every run of digits.
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i - start >= 16 {
            for w in start..=i - 16 {
                let window = &text[w..w + 16];
                if secrets.cards.contains(window) {
                    found.push(format!("card number {window}"));
                }
            }
        }
    }
    found
}

/// Scans every file in `files` (missing ones are an error) and every named text.
pub fn scan_for_secrets(
    label: &str,
    files: &[PathBuf],
    texts: &[(String, String)],
    secrets: &Secrets,
) -> usize {
    let mut scanned = 0;
    let mut leaks = Vec::new();
    for path in files {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("{label}: {}: {e}", path.display()));
        scanned += bytes.len();
        for what in secrets_in(&String::from_utf8_lossy(&bytes), secrets) {
            leaks.push(format!("{what} in {}", path.display()));
        }
    }
    for (name, text) in texts {
        scanned += text.len();
        for what in secrets_in(text, secrets) {
            leaks.push(format!("{what} in {name}"));
        }
    }
    assert!(
        leaks.is_empty(),
        "{label}: secrets leaked:\n{}",
        leaks.join("\n")
    );
    scanned
}

// ---------------------------------------------------------------------------------------------
// a + d. The gateway goes down mid-run and comes back; then nothing written holds a secret.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_down_mid_run_then_no_secrets_anywhere() {
    let scale = Scale::from_env();
    let mut problems = Vec::new();
    for db in support::databases("campaign_outage").await {
        problems.extend(gateway_outage(&scale, db).await);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Runs case a and then d; returns a health problem seen during the outage (reported after
/// the rest has run).
async fn gateway_outage(scale: &Scale, db: TestDb) -> Option<String> {
    let label = db.label;
    let started = Instant::now();
    let n = scale.outage_subscriptions;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut outputs: Vec<(String, String)> = Vec::new();

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (sim_a, url) =
        try_start_sim(&listen, 20, &[], Some(&dir.join("sim-a.log"))).expect("simulator starts");
    let config = write_config(dir, "daemon", &url, &db.url, 4, false);

    // Billkeys: a few through `nicebill billkey issue` (card data on stdin, its logs scanned
    // below), the rest in-process.
    let cards = card_numbers(1, n);
    let via_cli = 4.min(n);
    let mut bids = issue_billkeys_cli(&config, &cards[..via_cli], label, dir);
    bids.extend(issue_billkeys(&url, &cards[via_cli..], &format!("a-{label}")).await);
    let ids = insert_due(&db.store, "outage", &bids).await;
    assert_eq!(ids.len(), n);

    let daemon = spawn_run(&config, &dir.join("daemon.log"), "debug", "nicebill run");
    // Some charges land.
    let deadline = Instant::now() + scale.patience;
    while approved_count(&db.store).await < n / 8 {
        assert!(Instant::now() < deadline, "{label}: nothing charged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Down. First the simulator stops processing anything (every approval and lookup is
    // dropped unprocessed), so that the ledger read next is final; then it is killed, and
    // connections are refused.
    set_faults(
        &url,
        r#"[{"mode":"drop_before","api":"approve"},{"mode":"drop_before","api":"status"}]"#,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = ledger(&url).await;
    sim_a.kill();
    let down_at = Instant::now();
    eprintln!(
        "{label}: gateway down after {} of {n} approvals",
        before.len()
    );
    assert!(
        before.len() < n,
        "{label}: everything was charged before the outage"
    );

    // During the outage: the health file says degraded, `nicebill health` exits 1.
    let mut degraded_after = None;
    while down_at.elapsed() < scale.outage {
        if degraded_after.is_none() && health_status(&config).as_deref() == Some("degraded") {
            let (code, text) = health_command(&config);
            assert_eq!(code, Some(1), "{label}: nicebill health: {text}");
            assert!(text.starts_with("DEGRADED"), "{label}: {text}");
            outputs.push(("nicebill health (outage)".into(), text));
            degraded_after = Some(down_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Checked at the end, so that a health problem does not hide what the rest finds.
    let health_problem = degraded_after.is_none().then(|| {
        format!(
            "{label}: the health file never said degraded during {:?} of connection refused \
             (health file: {:?})",
            scale.outage,
            std::fs::read_to_string(health_path(&config))
        )
    });

    // Back, on the same port. The new simulator remembers nothing: no ledger (the union
    // below), and no billkeys either, which the real NICEPAY would still have. So it comes up
    // still dropping approvals and lookups; the merchant's rows get billkeys issued on it;
    // every attempt planned with an old billkey finishes against the dropping simulator; only
    // then does the gateway answer again.
    let (sim_b, url_b) = try_start_sim(
        &listen,
        20,
        &["drop_before:approve", "drop_before:status"],
        Some(&dir.join("sim-b.log")),
    )
    .unwrap_or_else(|| panic!("{label}: the simulator cannot listen on {listen} again"));
    assert_eq!(url_b, url);
    let new_cards = card_numbers(2, n);
    let new_bids = issue_billkeys(&url, &new_cards, &format!("b-{label}")).await;
    let rebound = ids.clone();
    db.store
        .write(move |c| {
            use nicebill::storage::schema::subscriptions;
            for (id, bid) in rebound.iter().zip(&new_bids) {
                diesel::update(subscriptions::table.find(*id))
                    .set(subscriptions::bid.eq(bid.to_string()))
                    .execute(c)?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let rebound_at = chrono::Utc::now().naive_utc();
    tokio::time::sleep(Duration::from_secs(2)).await;
    loop {
        let in_flight = db
            .store
            .charges(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|c| {
                c.state == "pending" && c.created_at <= rebound_at + chrono::Duration::seconds(1)
            })
            .count();
        if in_flight == 0 {
            break;
        }
        assert!(
            down_at.elapsed() < scale.outage + scale.patience,
            "{label}: attempts stay pending"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    set_faults(&url, "[]").await;
    let outage = down_at.elapsed();

    // The backlog drains, health returns to ok.
    wait_approved(label, &db.store, n, scale.patience).await;
    let drained = down_at.elapsed() - outage;
    let deadline = Instant::now() + Duration::from_secs(30);
    while health_status(&config).as_deref() != Some("ok") {
        assert!(
            Instant::now() < deadline,
            "{label}: health stays {:?}",
            health_status(&config)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, text) = health_command(&config);
    assert_eq!(code, Some(0), "{label}: nicebill health: {text}");
    outputs.push(("nicebill health (after)".into(), text));

    let after = ledger(&url).await;
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{label}: nicebill run after SIGTERM"
    );
    sim_b.kill();

    let all = union_ledgers(before, after);
    let tally = verdict(label, &db.store, &all).await;
    assert_eq!((tally.approved, all.len()), (n, n), "{label}: {tally:?}");
    eprintln!(
        "{label}: outage case: health degraded {} into the outage, gateway back after \
         {outage:?}, backlog drained {drained:?} later; {tally:?}; {:?} in all",
        degraded_after.map_or("never".into(), |d| format!("{d:?}")),
        started.elapsed()
    );

    // d. Nothing any process wrote holds the merchant key, a card number, the IDNo or CardPw.
    let scan_started = Instant::now();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".log") || name.ends_with(".json") || name.ends_with(".prom")
        })
        .collect();
    files.sort();
    assert!(
        files.iter().any(|p| p.ends_with("daemon.log"))
            && files.iter().any(|p| p.ends_with("daemon-health.json"))
            && files.iter().any(|p| p.ends_with("sim-b.log")),
        "{label}: {files:?}"
    );
    let daemon_log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    assert!(
        daemon_log.contains("DEBUG") && daemon_log.contains("charge attempt"),
        "{label}: the daemon did not log at debug"
    );
    match label {
        "sqlite" => {
            let db_file = PathBuf::from(db.url.strip_prefix("sqlite://").unwrap());
            for suffix in ["", "-wal", "-shm"] {
                let mut name = db_file.clone().into_os_string();
                name.push(suffix);
                let path = PathBuf::from(name);
                if path.exists() {
                    files.push(path);
                }
            }
        }
        _ => outputs.push(("PostgreSQL rows".into(), postgres_rows(&db.store).await)),
    }
    let secrets = Secrets {
        strings: vec![
            ("the merchant key".into(), KEY.into()),
            ("the merchant key's first 16 chars".into(), KEY[..16].into()),
            ("the IDNo".into(), ID_NO.into()),
            ("CardPw=".into(), "CardPw=".into()),
        ],
        cards: cards.iter().chain(&new_cards).cloned().collect(),
    };
    // The scan finds what it looks for.
    assert_eq!(
        secrets_in(&format!("x {} y{ID_NO}", cards[0]), &secrets).len(),
        2
    );
    let bytes = scan_for_secrets(label, &files, &outputs, &secrets);
    eprintln!(
        "{label}: secret scan: {} files and {} other texts, {bytes} bytes, clean ({:?})",
        files.len(),
        outputs.len(),
        scan_started.elapsed()
    );
    health_problem
}

// ---------------------------------------------------------------------------------------------
// b. Lost answers and SIGKILLs at random moments, then `run --once`.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_and_sigkills() {
    let scale = Scale::from_env();
    for (api, db) in support::every_api_and_db("campaign_kills").await {
        kills(&scale, db, api).await;
    }
}

async fn kills(scale: &Scale, db: TestDb, api: ApiKind) {
    let label = format!("{} on {api}", db.label);
    let label = label.as_str();
    let started = Instant::now();
    let n = scale.kill_charges;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_sim, url) = start_sim(50, &["drop_after:approve:0.05"], None);
    let config = write_config_on(api, dir, "daemon", &url, &db.url, 4, false);
    let bids = issue_billkeys_on(api, &url, &card_numbers(3, n), &format!("k-{}", db.label)).await;
    insert_due(&db.store, "kills", &bids).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(2027);
    let mut progress = Vec::new();
    for k in 0..scale.kills {
        let run = spawn_run(
            &config,
            &dir.join(format!("run-{k}.log")),
            "warn",
            "nicebill run",
        );
        let (lo, hi) = scale.kill_after_ms;
        tokio::time::sleep(Duration::from_millis(rng.random_range(lo..hi))).await;
        run.kill();
        progress.push(approved_count(&db.store).await);
    }
    let kills_done = started.elapsed();
    let once = || {
        let out = bin("warn")
            .args(["run", "--once", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, stderr) = once();
    assert!(
        status.success(),
        "{label}: run --once: {stderr}\nunresolved: {:?}",
        db.store.unresolved().await.unwrap()
    );
    let tally = verdict(label, &db.store, &ledger(&url).await).await;

    // `run --once` also waits for cycles it found not charged (an attempt committed just before
    // a SIGKILL and never sent) to come due again: one run charges everything.
    let left_by_once = n - tally.approved;
    assert_eq!(
        left_by_once,
        0,
        "{label}: run --once left due cycles:{}",
        describe_uncharged(&db.store).await
    );

    let ledger = ledger(&url).await;
    let tally = verdict(label, &db.store, &ledger).await;
    assert_eq!(
        (tally.approved, standing(&ledger)),
        (n, n),
        "{label}: {tally:?}{}",
        describe_uncharged(&db.store).await
    );
    assert!(
        tally.looked_up > 0,
        "{label}: no lost answer was exercised: {tally:?}"
    );
    let killed_while_charging = progress.iter().filter(|p| **p < n).count();
    eprintln!(
        "{label}: kill case: approvals at each of {} SIGKILLs: {progress:?} \
         ({killed_while_charging} while charges were left, {kills_done:?}); {tally:?}; \
         {left_by_once} left by the first run --once; {:?} in all",
        scale.kills,
        started.elapsed()
    );
    assert!(
        killed_while_charging >= scale.kills / 2,
        "{label}: most SIGKILLs came after the charging was over: {progress:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// c. Three instances on one database.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_work() {
    let scale = Scale::from_env();
    for (api, db) in support::every_api_and_db("campaign_three").await {
        three_instances(&scale, db, api).await;
    }
}

async fn three_instances(scale: &Scale, db: TestDb, api: ApiKind) {
    let label = format!("{} on {api}", db.label);
    let label = label.as_str();
    let started = Instant::now();
    let n = scale.instance_charges;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Answers slow enough that one instance alone needs several ticks: new rows are noticed
    // by one instance, and the others join at their next tick.
    let (_sim, url) = start_sim(40, &[], None);
    let bids = issue_billkeys_on(api, &url, &card_numbers(4, n), &format!("t-{}", db.label)).await;

    let names = ["one", "two", "three"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|name| write_config_on(api, dir, name, &url, &db.url, 8, true))
        .collect();
    let logs: Vec<PathBuf> = names
        .iter()
        .map(|name| dir.join(format!("{name}.log")))
        .collect();
    let daemons: Vec<Proc> = names
        .iter()
        .enumerate()
        .map(|(i, name)| spawn_run(&configs[i], &logs[i], "info", name))
        .collect();
    // All three are up (each wrote its health file after a first, empty pass) before the
    // subscriptions appear, all at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !configs.iter().all(|c| health_path(c).exists()) {
        assert!(
            Instant::now() < deadline,
            "{label}: instances did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let charging = Instant::now();
    insert_due(&db.store, "three", &bids).await;
    wait_approved(label, &db.store, n, scale.patience).await;
    let drained = charging.elapsed();
    for daemon in daemons {
        let name = daemon.name.clone();
        let status = daemon.terminate(Duration::from_secs(30)).await;
        assert_eq!(status.code(), Some(0), "{label}: instance {name}");
    }

    let ledger = ledger(&url).await;
    let tally = verdict(label, &db.store, &ledger).await;
    assert_eq!(
        (tally.approved, standing(&ledger)),
        (n, n),
        "{label}: {tally:?}"
    );

    // The verdict finds what it looks for: a second approval of a cycle at the gateway, and an
    // approval recorded that the gateway never made.
    let mut doctored = ledger.clone();
    let mut twice = doctored[0].clone();
    twice.tid = format!("{}x", twice.tid);
    twice.moid = twice.moid.replace("-A1", "-A2");
    doctored.push(twice);
    let missing = doctored.remove(1);
    let (findings, _) = verdict_findings(&db.store, &doctored).await;
    let said = |what: &str| findings.iter().any(|f| f.contains(what));
    assert!(
        said("charged 2 times at the gateway")
            && said("has no attempt in the database")
            && said(&format!("TID {}) recorded approved, but", missing.tid)),
        "{label}: {findings:#?}"
    );

    // Who charged what: every attempt is one JSON line "charge attempt" with its Moid and
    // state in the log of the process that sent it.
    let mut per_instance = Vec::new();
    let mut moids_seen: BTreeSet<String> = BTreeSet::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        let mut approved = 0;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let f = &v["fields"];
            if f["message"] == "charge attempt" && f["state"] == "approved" {
                approved += 1;
                let moid = f["moid"].as_str().unwrap_or_default().to_owned();
                assert!(
                    moids_seen.insert(moid.clone()),
                    "{label}: {moid} approved twice"
                );
            }
        }
        per_instance.push(approved);
    }
    eprintln!(
        "{label}: three instances: approvals per instance {per_instance:?}, drained in \
         {drained:?}; {tally:?}; {:?} in all",
        started.elapsed()
    );
    if db.label == "postgres" {
        let busy = per_instance.iter().filter(|n| **n > 0).count();
        assert!(
            busy >= 2,
            "{label}: only {busy} instance(s) charged anything: {per_instance:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// e. The merchant's application writes while nicebill charges.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merchant_application_writes_while_charging() {
    let scale = Scale::from_env();
    for db in support::databases("campaign_merchant").await {
        merchant_mode(&scale, db).await;
    }
}

/// Every merchant column of a row, written whole (an ORM's save of its in-memory object).
#[derive(AsChangeset)]
#[diesel(table_name = nicebill::storage::schema::subscriptions, treat_none_as_null = true)]
struct FullRow {
    external_id: String,
    bid: String,
    amount: i64,
    goods_name: String,
    buyer_name: Option<String>,
    buyer_email: Option<String>,
    buyer_tel: Option<String>,
    card_quota: String,
    card_interest: String,
    interval_unit: String,
    interval_count: i32,
    cron: Option<String>,
    timezone: Option<String>,
    anchor_at: chrono::NaiveDateTime,
    max_cycles: Option<i32>,
    ends_at: Option<chrono::NaiveDateTime>,
    status: String,
    cancel_at_period_end: bool,
    updated_at: chrono::NaiveDateTime,
}

impl From<&NewSubscription> for FullRow {
    fn from(r: &NewSubscription) -> Self {
        FullRow {
            external_id: r.external_id.clone(),
            bid: r.bid.clone(),
            amount: r.amount,
            goods_name: r.goods_name.clone(),
            buyer_name: r.buyer_name.clone(),
            buyer_email: r.buyer_email.clone(),
            buyer_tel: r.buyer_tel.clone(),
            card_quota: r.card_quota.clone(),
            card_interest: r.card_interest.clone(),
            interval_unit: r.interval_unit.clone(),
            interval_count: r.interval_count,
            cron: r.cron.clone(),
            timezone: r.timezone.clone(),
            anchor_at: r.anchor_at,
            max_cycles: r.max_cycles,
            ends_at: r.ends_at,
            status: r.status.clone(),
            cancel_at_period_end: r.cancel_at_period_end,
            updated_at: chrono::Utc::now().naive_utc(),
        }
    }
}

/// One row as the merchant's application holds it: the copy it saved last, and a copy it
/// loaded earlier and may still save back whole.
struct HeldRow {
    current: NewSubscription,
    stale: NewSubscription,
    cron: bool,
}

/// The merchant's application, as case e plays it: what it wrote, and what it knows.
#[derive(Default)]
struct MerchantApp {
    rows: BTreeMap<i64, HeldRow>,
    /// Billkeys issued and not yet given to a row.
    spare: Vec<Bid>,
    /// Billkey → when the last row that could still be charged with it let it go (a
    /// cancellation, a new card), taken before that write began. A billkey let go is never
    /// given to a row again. A billkey not here is in use.
    let_go: HashMap<String, chrono::DateTime<chrono::Utc>>,
    /// Rows written with a bad value, and the column that is bad.
    bad: Vec<(i64, &'static str)>,
    writes: BTreeMap<&'static str, usize>,
}

impl MerchantApp {
    fn total_writes(&self) -> usize {
        self.writes.values().sum()
    }

    /// Rows the merchant means to charge or has paused (not cancelled, not bad).
    fn live(&self, status: Option<&str>) -> Vec<i64> {
        self.rows
            .iter()
            .filter(|(_, r)| match status {
                Some(s) => r.current.status == s,
                None => r.current.status != "cancelled",
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether a live row other than `except` holds `bid`.
    fn held_elsewhere(&self, bid: &str, except: i64) -> bool {
        self.rows
            .iter()
            .any(|(id, r)| *id != except && r.current.status != "cancelled" && r.current.bid == bid)
    }

    /// Saves `row` whole as row `id`; `kind` counts the write. `let_go` is a billkey the
    /// write leaves no live row with.
    async fn save(&mut self, store: &Store, id: i64, row: NewSubscription, kind: &'static str) {
        use nicebill::storage::schema::subscriptions;
        let old_bid = self.rows[&id].current.bid.clone();
        let letting_go = (row.bid != old_bid || row.status == "cancelled")
            && self.rows[&id].current.status != "cancelled"
            && !self.held_elsewhere(&old_bid, id);
        let at = chrono::Utc::now();
        let changes = FullRow::from(&row);
        let n = store
            .write(move |c| {
                Ok(diesel::update(subscriptions::table.find(id))
                    .set(&changes)
                    .execute(c)?)
            })
            .await
            .unwrap();
        assert_eq!(n, 1, "{kind} of row {id}");
        if letting_go {
            self.let_go.entry(old_bid).or_insert(at);
        }
        self.rows.get_mut(&id).unwrap().current = row;
        *self.writes.entry(kind).or_default() += 1;
    }

    async fn insert(
        &mut self,
        store: &Store,
        row: NewSubscription,
        cron: bool,
        kind: &'static str,
    ) -> i64 {
        use nicebill::storage::schema::subscriptions;
        let new = row.clone();
        let id = store
            .write(move |c| {
                Ok(diesel::insert_into(subscriptions::table)
                    .values(&new)
                    .returning(subscriptions::id)
                    .get_result::<i64>(c)?)
            })
            .await
            .unwrap();
        self.rows.insert(
            id,
            HeldRow {
                current: row.clone(),
                stale: row,
                cron,
            },
        );
        *self.writes.entry(kind).or_default() += 1;
        id
    }
}

/// A new row: every 5 seconds from now (cron), or monthly and due an hour ago.
fn merchant_row(name: &str, bid: &Bid, amount: i64, cron: bool) -> NewSubscription {
    let now = chrono::Utc::now();
    let mut row = support::monthly(name, bid, amount, now - chrono::Duration::hours(1));
    if cron {
        row.cron = Some("*/5 * * * * *".into());
        row.anchor_at = now.naive_utc();
    }
    row
}

/// Bad values every backend stores as written, and the column each must be named by.
const BAD_VALUES: [&str; 8] = [
    "status",
    "amount",
    "goods_name",
    "bid",
    "interval_unit",
    "interval_count",
    "timezone",
    "cron",
];

fn spoil(row: &mut NewSubscription, column: &str) {
    match column {
        "status" => row.status = "frozen".into(),
        "amount" => row.amount = 1_000_000_000_000,
        "goods_name" => row.goods_name = String::new(),
        "bid" => row.bid = format!(" {} ", row.bid),
        "interval_unit" => row.interval_unit = "fortnight".into(),
        "interval_count" => row.interval_count = 0,
        "timezone" => row.timezone = Some("Mars/Olympus".into()),
        "cron" => row.cron = Some("every other tuesday".into()),
        _ => unreachable!("{column}"),
    }
}

/// Plays the merchant's application: `writes` writes, `pace` apart, of every kind merchant
/// applications make.
async fn play_merchant(
    store: Store,
    mut app: MerchantApp,
    writes: usize,
    pace: Duration,
    seed: u64,
) -> MerchantApp {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0usize;
    while app.total_writes() < writes {
        n += 1;
        let pick = |rng: &mut rand::rngs::StdRng, ids: &[i64]| -> Option<i64> {
            (!ids.is_empty()).then(|| ids[rng.random_range(0..ids.len())])
        };
        let roll = rng.random_range(0..100);
        match roll {
            // A stale full-row save: an object loaded earlier, saved back whole with a new
            // e-mail address. Status and billkey are the app's own current intent (saving back
            // a cancelled status or a card it replaced is the app losing its own update, which
            // no billing daemon can undo).
            0..=24 => {
                let Some(id) = pick(&mut rng, &app.live(None)) else {
                    continue;
                };
                let held = &app.rows[&id];
                let mut row = held.stale.clone();
                row.status = held.current.status.clone();
                row.bid = held.current.bid.clone();
                row.buyer_email = Some(format!("buyer{n}@example.com"));
                app.save(&store, id, row, "stale full-row save").await;
            }
            // The app loads a fresh copy (no write).
            25..=34 => {
                if let Some(id) = pick(&mut rng, &app.live(None)) {
                    let held = app.rows.get_mut(&id).unwrap();
                    held.stale = held.current.clone();
                }
                continue;
            }
            35..=46 => {
                let Some(id) = pick(&mut rng, &app.live(Some("active"))) else {
                    continue;
                };
                let mut row = app.rows[&id].current.clone();
                row.status = "paused".into();
                app.save(&store, id, row, "pause").await;
            }
            47..=58 => {
                let Some(id) = pick(&mut rng, &app.live(Some("paused"))) else {
                    continue;
                };
                let mut row = app.rows[&id].current.clone();
                row.status = "active".into();
                app.save(&store, id, row, "resume").await;
            }
            59..=64 => {
                let Some(id) = pick(&mut rng, &app.live(None)) else {
                    continue;
                };
                let mut row = app.rows[&id].current.clone();
                row.status = "cancelled".into();
                app.save(&store, id, row, "cancel").await;
            }
            // A cancelled row reactivated with a new card.
            65..=68 => {
                let cancelled: Vec<i64> = app
                    .rows
                    .iter()
                    .filter(|(_, r)| r.current.status == "cancelled")
                    .map(|(id, _)| *id)
                    .collect();
                let Some(id) = pick(&mut rng, &cancelled) else {
                    continue;
                };
                let Some(bid) = app.spare.pop() else { continue };
                let mut row = app.rows[&id].current.clone();
                row.status = "active".into();
                row.bid = bid.to_string();
                app.save(&store, id, row, "reactivate with a new card")
                    .await;
            }
            69..=78 => {
                let Some(id) = pick(&mut rng, &app.live(None)) else {
                    continue;
                };
                let Some(bid) = app.spare.pop() else { continue };
                let mut row = app.rows[&id].current.clone();
                row.bid = bid.to_string();
                app.save(&store, id, row, "new card").await;
            }
            // The card of another live row (one customer, two products).
            79..=82 => {
                let live = app.live(None);
                let (Some(id), Some(other)) = (pick(&mut rng, &live), pick(&mut rng, &live)) else {
                    continue;
                };
                let bid = app.rows[&other].current.bid.clone();
                if other == id || bid == app.rows[&id].current.bid {
                    continue;
                }
                let mut row = app.rows[&id].current.clone();
                row.bid = bid;
                app.save(&store, id, row, "card shared with another row")
                    .await;
            }
            83..=92 => {
                let Some(id) = pick(&mut rng, &app.live(None)) else {
                    continue;
                };
                let mut row = app.rows[&id].current.clone();
                row.amount = rng.random_range(1_000..100_000);
                app.save(&store, id, row, "new amount").await;
            }
            93..=96 => {
                let Some(bid) = app.spare.pop() else { continue };
                let cron = rng.random_bool(0.5);
                let row = merchant_row(&format!("m-new-{n}"), &bid, 2_000 + n as i64, cron);
                app.insert(&store, row, cron, "new row").await;
            }
            _ => {
                let Some(bid) = app.spare.pop() else { continue };
                let column = BAD_VALUES[rng.random_range(0..BAD_VALUES.len())];
                let mut row = merchant_row(&format!("m-bad-{n}"), &bid, 3_000, false);
                spoil(&mut row, column);
                let id = app
                    .insert(&store, row, false, "new row with a bad value")
                    .await;
                app.rows.remove(&id);
                app.bad.push((id, column));
            }
        }
        tokio::time::sleep(pace).await;
    }
    app
}

/// Billkeys removed at NICEPAY before the merchant's application let them go (or never let go).
fn removal_findings(
    removed: &[RemovalEntry],
    let_go: &HashMap<String, chrono::DateTime<chrono::Utc>>,
    rows: &BTreeMap<i64, HeldRow>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for r in removed {
        let tail = &r.bid[r.bid.len().saturating_sub(4)..];
        match let_go.get(&r.bid) {
            Some(at) if *at <= r.removed_at => {}
            Some(at) => failures.push(format!(
                "billkey …{tail} removed at {} before the merchant let it go at {at}",
                r.removed_at
            )),
            None => failures.push(format!(
                "billkey …{tail} removed at {} while live rows hold it: {:?}",
                r.removed_at,
                rows.iter()
                    .filter(|(_, h)| h.current.bid == r.bid && h.current.status != "cancelled")
                    .map(|(id, h)| (*id, h.current.status.clone(), h.cron))
                    .collect::<Vec<_>>()
            )),
        }
    }
    failures
}

/// Case e: while daemons charge (and are SIGKILLed, with 5 % of answers lost), the merchant's
/// application saves stale rows whole, pauses, resumes, cancels and reactivates, changes cards
/// and amounts, shares cards between rows, and adds rows, some with bad values. The verdict is
/// the campaign's, and: no billkey removed at NICEPAY while a row that could be charged with it
/// held it (nor any attempt sent with a removed billkey), every bad row `invalid` naming its
/// column and never charged, and every row the merchant left active charged.
async fn merchant_mode(scale: &Scale, db: TestDb) {
    let label = db.label;
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_sim, url) = start_sim(20, &["drop_after:approve:0.05"], None);
    let n = scale.merchant_subscriptions;
    // Enough billkeys for the rows and for every write that may want a new one.
    let cards = card_numbers(5, n + scale.merchant_writes / 3 + 50);
    let mut bids = issue_billkeys(&url, &cards, &format!("m-{label}")).await;
    let mut app = MerchantApp::default();
    for i in 0..n {
        let bid = bids.pop().unwrap();
        let cron = i % 2 == 0;
        let row = merchant_row(&format!("m-{i}"), &bid, 1_000 + i as i64, cron);
        app.insert(&db.store, row, cron, "initial row").await;
    }
    app.writes.clear();
    app.spare = bids;

    // One instance on SQLite, two side by side on PostgreSQL; all SIGKILLed at random moments
    // while the merchant writes.
    let names: &[&str] = if label == "postgres" {
        &["m1", "m2"]
    } else {
        &["m1"]
    };
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|name| write_config(dir, name, &url, &db.url, 4, false))
        .collect();
    let merchant = tokio::spawn(play_merchant(
        db.store.clone(),
        app,
        scale.merchant_writes,
        Duration::from_millis(scale.merchant_pace_ms),
        2028,
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(2029);
    let mut kills = 0;
    let mut round = 0;
    while !merchant.is_finished() || kills < scale.merchant_kills {
        let daemons: Vec<Proc> = configs
            .iter()
            .zip(names)
            .map(|(config, name)| {
                spawn_run(
                    config,
                    &dir.join(format!("{name}-{round}.log")),
                    "warn",
                    name,
                )
            })
            .collect();
        let (lo, hi) = scale.kill_after_ms;
        tokio::time::sleep(Duration::from_millis(rng.random_range(lo..hi))).await;
        for daemon in daemons {
            daemon.kill();
        }
        kills += 1;
        round += 1;
        assert!(
            started.elapsed() < scale.patience * 2,
            "{label}: the merchant's writes did not finish"
        );
    }
    let mut app = merchant.await.unwrap();

    // The cron rows end now, so that the run below can finish what is due. An ended row is
    // charged no more: a billkey only ended rows hold may go from now on.
    let ending = chrono::Utc::now();
    let only_ended: Vec<String> = app
        .rows
        .values()
        .filter(|r| r.current.status != "cancelled" && !app.let_go.contains_key(&r.current.bid))
        .map(|r| r.current.bid.clone())
        .filter(|bid| {
            app.rows
                .values()
                .all(|r| r.cron || r.current.status == "cancelled" || r.current.bid != *bid)
        })
        .collect();
    for bid in only_ended {
        app.let_go.insert(bid, ending);
    }
    let cron_rows: Vec<i64> = app
        .rows
        .iter()
        .filter(|(_, r)| r.cron)
        .map(|(id, _)| *id)
        .collect();
    for id in cron_rows {
        let mut row = app.rows[&id].current.clone();
        row.ends_at = Some(chrono::Utc::now().naive_utc());
        app.save(&db.store, id, row, "end").await;
    }
    // Past the lease (2 s) of whatever the last killed daemons had claimed, and the settle
    // margin (1 s) of their unresolved attempts: the run below must be free to finish them all.
    // (At 1 s, a loaded machine once left a row claimed by a killed daemon at the verdict.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = bin("warn")
        .args(["run", "--once", "--config"])
        .arg(&configs[0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{label}: run --once: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ledger = ledger(&url).await;
    let (findings, tally) = verdict_findings(&db.store, &ledger).await;
    if !findings.is_empty() {
        // Everything known about the rows named, for a failure that does not reproduce.
        let mut detail = String::new();
        for f in &findings {
            let Some(id) = f
                .strip_prefix("subscription ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            detail.push_str(&format!(
                "\n{:?}\n{:?}\n{:?}",
                db.store.subscription(id).await,
                db.store.charges(Some(id)).await,
                db.store.events(Some(id)).await
            ));
        }
        panic!(
            "{label}: the verdict found {} problem(s):\n  {}{detail}\nrun --once said: {}",
            findings.len(),
            findings.join("\n  "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut failures = Vec::new();

    // No attempt went out with a billkey NICEPAY had removed, or did not know.
    let charges = db.store.charges(None).await.unwrap();
    for c in &charges {
        if matches!(c.result_code.as_deref(), Some("A124" | "A126")) {
            failures.push(format!(
                "attempt {} was sent with a removed or unknown billkey: {:?} {:?}",
                c.moid, c.result_code, c.result_msg
            ));
        }
    }
    // No billkey removed while a row that could be charged with it held it; and that check
    // finds what it looks for (every removal is a finding when nothing was let go).
    let removed = removals(&url).await;
    failures.extend(removal_findings(&removed, &app.let_go, &app.rows));
    assert!(
        removed.is_empty()
            || removal_findings(&removed, &HashMap::new(), &app.rows).len() == removed.len(),
        "{label}: the removal check finds nothing"
    );
    // Every bad row invalid, naming its column, and never charged; every row the merchant
    // left active charged (or ended), paused rows paused, cancelled rows cancelled.
    let subscriptions = db.store.subscriptions().await.unwrap();
    let by_id: HashMap<i64, _> = subscriptions.iter().map(|s| (s.id, s)).collect();
    for (id, column) in &app.bad {
        let s = by_id[id];
        let reason = s.status_reason.clone().unwrap_or_default();
        if s.status != "invalid" || !reason.starts_with(column) {
            failures.push(format!(
                "bad row {id} ({column}) is {} ({reason})",
                s.status
            ));
        }
        if charges.iter().any(|c| c.subscription_id == *id) {
            failures.push(format!("bad row {id} ({column}) has attempts"));
        }
    }
    for (id, held) in &app.rows {
        let s = by_id[id];
        let allowed: &[&str] = match held.current.status.as_str() {
            "active" => &["active", "ended"],
            "paused" => &["paused", "ended"],
            _ => &["cancelled"],
        };
        if !allowed.contains(&s.status.as_str()) {
            failures.push(format!(
                "row {id}, {} for the merchant, is {} ({:?})",
                held.current.status, s.status, s.status_reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} problem(s):\n  {}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    let total = app.total_writes();
    assert!(
        total >= scale.merchant_writes && kills >= scale.merchant_kills,
        "{label}: {total} writes, {kills} kills"
    );
    eprintln!(
        "{label}: merchant case: {total} merchant writes {:?}, {kills} SIGKILL rounds of {} \
         instance(s), {} approvals, {} bad rows invalid, {} billkeys removed at NICEPAY; \
         {tally:?}; {:?} in all",
        app.writes,
        names.len(),
        ledger.len(),
        app.bad.len(),
        removed.len(),
        started.elapsed()
    );
}
