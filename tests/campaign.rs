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
//! `tests/pg_restart.rs` (PostgreSQL restarted under a running daemon) includes this file for
//! its helpers. It defines its own `crate::campaign_case` as an attribute that makes no test,
//! so the cases below only run in this binary.

pub mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use nicebill::domain::{Bid, CardDetails, Moid};
use nicebill::gateway::nicepay::{Buyer, Charset, EdiType, IssueRequest, NicepayClient};
use nicebill::sim::{LedgerEntry, LedgerState, RemovalEntry};
use nicebill::storage::models::NewSubscription;
use nicebill::storage::{AnyConnection, Store};
use rand::{Rng, SeedableRng};
use support::{KEY, TestDb};

/// The test attribute of the cases below (see the module documentation).
#[allow(unused_imports)]
pub(crate) use tokio::test as campaign_case;

// ---------------------------------------------------------------------------------------------
// Scale

/// How big the campaign is: small by default, full with `NICEBILL_CAMPAIGN=full`.
#[derive(Clone, Debug)]
pub struct Scale {
    pub full: bool,
    /// Case a: subscriptions due when the gateway goes down, and how long it stays down.
    pub outage_subscriptions: usize,
    pub outage: Duration,
    /// Case b: charges, SIGKILLs, and the range of the random time before each kill (ms).
    pub kill_charges: usize,
    pub kills: usize,
    pub kill_after_ms: (u64, u64),
    /// Case c: charges shared by three instances.
    pub instance_charges: usize,
    /// `tests/pg_restart.rs`: subscriptions due when PostgreSQL restarts.
    pub restart_charges: usize,
    /// Case e: subscriptions at the start, merchant writes, the pause between writes (ms),
    /// and at least this many SIGKILLs while the merchant writes.
    pub merchant_subscriptions: usize,
    pub merchant_writes: usize,
    pub merchant_pace_ms: u64,
    pub merchant_kills: usize,
    /// The longest any wait for the backlog may take before the case fails.
    pub patience: Duration,
}

impl Scale {
    pub fn from_env() -> Scale {
        let full = std::env::var("NICEBILL_CAMPAIGN").is_ok_and(|v| v == "full");
        let scale = if full {
            Scale {
                full,
                outage_subscriptions: 2_000,
                outage: Duration::from_secs(60),
                kill_charges: 2_000,
                kills: 25,
                kill_after_ms: (500, 2_500),
                instance_charges: 5_000,
                restart_charges: 3_000,
                merchant_subscriptions: 300,
                merchant_writes: 2_000,
                merchant_pace_ms: 30,
                merchant_kills: 25,
                patience: Duration::from_secs(900),
            }
        } else {
            Scale {
                full,
                outage_subscriptions: 200,
                outage: Duration::from_secs(5),
                kill_charges: 150,
                kills: 8,
                kill_after_ms: (300, 1_500),
                instance_charges: 300,
                restart_charges: 300,
                merchant_subscriptions: 40,
                merchant_writes: 200,
                merchant_pace_ms: 30,
                merchant_kills: 5,
                patience: Duration::from_secs(120),
            }
        };
        eprintln!(
            "campaign scale: {} (NICEBILL_CAMPAIGN=full for the full one)",
            if full { "full" } else { "small" }
        );
        scale
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process, SIGKILLed and reaped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then its exit status (SIGKILLed after `patience`).
    pub async fn terminate(mut self, patience: Duration) -> ExitStatus {
        let term = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(term.success(), "kill -TERM {}", self.name);
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {patience:?} of SIGTERM",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary with `RUST_LOG` set and nothing inherited that would change its behaviour.
pub fn bin(rust_log: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nicebill"));
    cmd.env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .env_remove("NICEBILL_CONFIG")
        .env_remove("JOURNAL_STREAM");
    cmd
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).unwrap())
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `nicebill sim` on `listen` (logging at debug into `log`, if given); returns it and
/// its base URL, or `None` when it did not come up (the port was taken, say).
pub fn try_start_sim(
    listen: &str,
    latency_ms: u64,
    faults: &[&str],
    log: Option<&Path>,
) -> Option<(Proc, String)> {
    let mut cmd = bin(if log.is_some() { "debug" } else { "warn" });
    cmd.args([
        "sim",
        "--listen",
        listen,
        "--seed",
        "7",
        "--latency-ms",
        &latency_ms.to_string(),
    ]);
    for f in faults {
        cmd.args(["--fault", f]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(log.map_or_else(Stdio::null, log_file))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let proc = Proc {
        name: format!("nicebill sim {listen}"),
        child,
    };
    let url = line.trim().rsplit(' ').next()?.to_owned();
    url.starts_with("http://127.0.0.1:").then_some((proc, url))
}

/// Starts `nicebill sim` on a free loopback port.
pub fn start_sim(latency_ms: u64, faults: &[&str], log: Option<&Path>) -> (Proc, String) {
    for _ in 0..5 {
        let listen = format!("127.0.0.1:{}", free_port());
        if let Some(started) = try_start_sim(&listen, latency_ms, faults, log) {
            return started;
        }
    }
    panic!("nicebill sim did not start");
}

/// Starts `nicebill run` (with `args`, e.g. `--once`) logging into `log`.
pub fn spawn_run(config: &Path, log: &Path, rust_log: &str, name: &str) -> Proc {
    let child = bin(rust_log)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log_file(log))
        .spawn()
        .unwrap();
    Proc {
        name: name.into(),
        child,
    }
}

/// Writes a daemon configuration named `name` into `dir`: timeouts and settle times as short
/// as the crash tests use, a pass every second, a health file `{name}-health.json`.
pub fn write_config(
    dir: &Path,
    name: &str,
    sim_url: &str,
    db_url: &str,
    concurrency: usize,
    json_logs: bool,
) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("merchant.key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"[nicepay]
mid = "nictest04m"
merchant_key_file = "{key}"
base_url = "{sim_url}"
connect_timeout = "1s"
read_timeout = "1s"

[database]
url = "{db_url}"

[scheduler]
tick = "* * * * * *"
concurrency = {concurrency}
batch = {concurrency}
settle_margin = "1s"
lease = "2s"

[retry]
resend_after = "1s"
transient_max_elapsed = "2s"
lookup_max_interval = "2s"

[health]
file = "{health}"
prometheus_file = "{prom}"

[log]
format = "{format}"
level = "info"
"#,
            key = key.display(),
            health = health_path(&config).display(),
            prom = dir.join(format!("{name}.prom")).display(),
            format = if json_logs { "json" } else { "text" },
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    config
}

/// The health file `write_config` configured next to `config`.
pub fn health_path(config: &Path) -> PathBuf {
    let name = config.file_stem().unwrap().to_string_lossy();
    config.with_file_name(format!("{name}-health.json"))
}

/// The `status` the health file says, if it can be read.
pub fn health_status(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(health_path(config)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["status"].as_str()?.to_owned())
}

/// `nicebill health`: its exit code and output.
pub fn health_command(config: &Path) -> (Option<i32>, String) {
    let out = bin("warn")
        .args(["health", "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

// ---------------------------------------------------------------------------------------------
// The simulator's control endpoints

pub async fn ledger(sim_url: &str) -> Vec<LedgerEntry> {
    let body = reqwest::get(format!("{sim_url}/_sim/ledger"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Every billkey removal the simulator carried out.
pub async fn removals(sim_url: &str) -> Vec<RemovalEntry> {
    let body = reqwest::get(format!("{sim_url}/_sim/removals"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Replaces the simulator's fault rules (a JSON array of `{"mode", "api", …}`).
pub async fn set_faults(sim_url: &str, rules: &str) {
    let response = reqwest::Client::new()
        .post(format!("{sim_url}/_sim/faults"))
        .body(rules.to_owned())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{rules}: {response:?}");
}

/// Ledgers of two simulator lifetimes, as one: each TID once (TIDs are unique, so a TID in
/// both must be the same approval).
pub fn union_ledgers(before: Vec<LedgerEntry>, after: Vec<LedgerEntry>) -> Vec<LedgerEntry> {
    let mut seen: HashMap<String, LedgerEntry> = HashMap::new();
    let mut all = Vec::new();
    for entry in before.into_iter().chain(after) {
        match seen.get(&entry.tid) {
            Some(prior) => assert_eq!(prior, &entry, "TID {} differs", entry.tid),
            None => {
                seen.insert(entry.tid.clone(), entry.clone());
                all.push(entry);
            }
        }
    }
    all
}

// ---------------------------------------------------------------------------------------------
// Cards, billkeys, subscriptions

/// The IDNo (a business number) every campaign card is issued with: the secret scan looks
/// for it.
pub const ID_NO: &str = "2148673091";

/// Distinct 16-digit card numbers that the simulator approves (none ends in 0002…0005).
pub fn card_numbers(series: u32, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("9{series:03}{i:08}7391")).collect()
}

pub fn client_at(url: &str) -> Arc<NicepayClient> {
    Arc::new(
        NicepayClient::new(
            support::settings(url, Charset::EucKr, EdiType::Json),
            Arc::new(nicebill::clock::SystemClock),
        )
        .unwrap(),
    )
}

/// Issues a billkey per card, 16 at a time, in-process.
pub async fn issue_billkeys(client: &Arc<NicepayClient>, cards: &[String], tag: &str) -> Vec<Bid> {
    let permits = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, number) in cards.iter().enumerate() {
        let client = Arc::clone(client);
        let permits = Arc::clone(&permits);
        let number = number.clone();
        let moid = format!("bk-{tag}-{i}");
        tasks.spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            let reply = client
                .issue_billkey(&IssueRequest {
                    moid: Moid::new(moid).unwrap(),
                    card: CardDetails::new(&number, "30", "01", ID_NO, "37").unwrap(),
                    buyer: Buyer::default(),
                })
                .await
                .expect("billkey issue answered");
            assert_eq!(reply.result_code, "F100", "{}", reply.result_msg);
            (i, reply.data.expect("F100 carries a BID").bid)
        });
    }
    let mut bids: Vec<Option<Bid>> = vec![None; cards.len()];
    while let Some(done) = tasks.join_next().await {
        let (i, bid) = done.unwrap();
        bids[i] = Some(bid);
    }
    bids.into_iter().map(Option::unwrap).collect()
}

/// Issues billkeys with `nicebill billkey issue` (card details on stdin, logs at debug into
/// `dir/cli-issue-{tag}-{i}.log`), all at once.
pub fn issue_billkeys_cli(config: &Path, cards: &[String], tag: &str, dir: &Path) -> Vec<Bid> {
    let children: Vec<Child> = cards
        .iter()
        .enumerate()
        .map(|(i, number)| {
            let mut child = bin("debug")
                .args(["billkey", "issue", "--moid", &format!("cli-{tag}-{i}")])
                .arg("--config")
                .arg(config)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log_file(&dir.join(format!("cli-issue-{tag}-{i}.log"))))
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            write!(
                stdin,
                "CardNo={number}\nExpYear=30\nExpMonth=01\nIDNo={ID_NO}\nCardPw=37\n"
            )
            .unwrap();
            drop(stdin);
            child
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "billkey issue: {:?}", out.status);
            Bid::new(String::from_utf8(out.stdout).unwrap().trim().to_owned()).unwrap()
        })
        .collect()
}

/// Monthly subscriptions due an hour ago, one per billkey, inserted in one transaction (so a
/// running daemon sees all of them at once); returns their ids.
pub async fn insert_due(store: &Store, tag: &str, bids: &[Bid]) -> Vec<i64> {
    use nicebill::storage::schema::subscriptions;
    let anchor = chrono::Utc::now() - chrono::Duration::hours(1);
    let rows: Vec<NewSubscription> = bids
        .iter()
        .enumerate()
        .map(|(i, bid)| support::monthly(&format!("{tag}-{i}"), bid, 1_000 + i as i64, anchor))
        .collect();
    store
        .write(move |c| {
            let mut ids = Vec::with_capacity(rows.len());
            for row in &rows {
                ids.push(
                    diesel::insert_into(subscriptions::table)
                        .values(row)
                        .returning(subscriptions::id)
                        .get_result::<i64>(c)?,
                );
            }
            Ok(ids)
        })
        .await
        .unwrap()
}

/// Approved charges in the database.
pub async fn approved_count(store: &Store) -> usize {
    use nicebill::storage::schema::charges;
    store
        .run(|c| {
            Ok(charges::table
                .filter(charges::state.eq("approved"))
                .count()
                .get_result::<i64>(c)?)
        })
        .await
        .unwrap() as usize
}

/// Waits until `n` charges are approved; fails after `patience`, showing what is left.
pub async fn wait_approved(label: &str, store: &Store, n: usize, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let approved = approved_count(store).await;
        if approved >= n {
            return;
        }
        if Instant::now() >= deadline {
            let unresolved = store.unresolved().await.unwrap();
            panic!(
                "{label}: only {approved} of {n} charged after {patience:?}; unresolved: {:?}",
                unresolved.iter().take(10).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The subscriptions without an approved charge, their attempts and events (for failures).
pub async fn describe_uncharged(store: &Store) -> String {
    let charges = store.charges(None).await.unwrap();
    let events = store.events(None).await.unwrap();
    let mut out = String::new();
    let uncharged = store
        .subscriptions()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| {
            !charges
                .iter()
                .any(|c| c.subscription_id == s.id && c.state == "approved")
        });
    for s in uncharged.take(8) {
        out.push_str(&format!(
            "\n  S{} {} next_cycle {:?} next_charge_at {:?} attempts {} claimed_until {:?}",
            s.id, s.status, s.next_cycle, s.next_charge_at, s.cycle_attempts, s.claimed_until
        ));
        for c in charges.iter().filter(|c| c.subscription_id == s.id) {
            out.push_str(&format!(
                "\n    {} {} lookups {} created {} resolved {:?} check_after {:?} {:?} {:?}",
                c.moid,
                c.state,
                c.lookups,
                c.created_at,
                c.resolved_at,
                c.check_after,
                c.result_msg,
                c.error
            ));
        }
        for e in events.iter().filter(|e| e.subscription_id == Some(s.id)) {
            out.push_str(&format!("\n    event {} {} {}", e.at, e.kind, e.detail));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The verdict

/// What the verdict counted, for the report.
#[derive(Debug, Default)]
pub struct Tally {
    pub subscriptions: usize,
    pub attempts: usize,
    pub approved: usize,
    pub looked_up: usize,
    pub retries: usize,
}

/// `S{id}-C{cycle}-A{attempt}` → (id, cycle, attempt).
pub fn parse_moid(moid: &str) -> Option<(i64, i32, i32)> {
    let rest = moid.strip_prefix('S')?;
    let (id, rest) = rest.split_once("-C")?;
    let (cycle, attempt) = rest.split_once("-A")?;
    Some((id.parse().ok()?, cycle.parse().ok()?, attempt.parse().ok()?))
}

/// The campaign's verdict, from the simulator's ledger (every approval NICEPAY made) and the
/// database: no cycle charged twice, no due cycle left uncharged without a recorded reason, no
/// attempt left unresolved, every ledger TID recorded as `approved` with its Moid and amount
/// (and nothing recorded as approved that the gateway never approved). Panics listing every
/// problem found.
pub async fn verdict(label: &str, store: &Store, ledger: &[LedgerEntry]) -> Tally {
    let (failures, tally) = verdict_findings(store, ledger).await;
    if !failures.is_empty() {
        panic!(
            "{label}: the verdict found {} problem(s):\n  {}",
            failures.len(),
            failures
                .iter()
                .take(40)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    tally
}

/// The verdict's findings (empty when all is well) and counts.
pub async fn verdict_findings(store: &Store, ledger: &[LedgerEntry]) -> (Vec<String>, Tally) {
    let charges = store.charges(None).await.unwrap();
    let subscriptions = store.subscriptions().await.unwrap();
    let events = store.events(None).await.unwrap();
    let now = chrono::Utc::now().naive_utc();
    let mut failures: Vec<String> = Vec::new();

    // No attempt left unresolved.
    for c in &charges {
        if c.state == "pending" || c.state == "unknown" {
            failures.push(format!(
                "attempt {} ({}, TID {}) left {}",
                c.id, c.moid, c.tid, c.state
            ));
        }
        if parse_moid(&c.moid) != Some((c.subscription_id, c.cycle, c.attempt)) {
            failures.push(format!(
                "attempt {} has Moid {} for S{}-C{}-A{}",
                c.id, c.moid, c.subscription_id, c.cycle, c.attempt
            ));
        }
    }

    // No cycle charged twice: at most one approval per (subscription, cycle) at the gateway,
    // and in the database.
    let mut at_gateway: BTreeMap<(i64, i32), Vec<&LedgerEntry>> = BTreeMap::new();
    for e in ledger {
        match parse_moid(&e.moid) {
            Some((id, cycle, _)) => at_gateway.entry((id, cycle)).or_default().push(e),
            None => failures.push(format!("ledger Moid {} is not S…-C…-A…", e.moid)),
        }
        if e.mid != "nictest04m" || e.state != LedgerState::Approved {
            failures.push(format!(
                "ledger entry {} is {:?} for {}",
                e.tid, e.state, e.mid
            ));
        }
    }
    for ((id, cycle), entries) in &at_gateway {
        if entries.len() > 1 {
            let tids: Vec<_> = entries.iter().map(|e| (&e.moid, &e.tid)).collect();
            failures.push(format!(
                "subscription {id} cycle {cycle} charged {} times at the gateway: {tids:?}",
                entries.len()
            ));
        }
    }
    let mut approved_cycles: BTreeMap<(i64, i32), usize> = BTreeMap::new();
    for c in charges.iter().filter(|c| c.state == "approved") {
        *approved_cycles
            .entry((c.subscription_id, c.cycle))
            .or_default() += 1;
    }
    for ((id, cycle), n) in &approved_cycles {
        if *n > 1 {
            failures.push(format!(
                "subscription {id} cycle {cycle} recorded approved {n} times"
            ));
        }
    }

    // Every ledger TID recorded as approved, same Moid and amount; and nothing approved in
    // the database that the gateway did not approve.
    let by_tid: HashMap<&str, _> = charges.iter().map(|c| (c.tid.as_str(), c)).collect();
    let ledger_tids: HashSet<&str> = ledger.iter().map(|e| e.tid.as_str()).collect();
    for e in ledger {
        match by_tid.get(e.tid.as_str()) {
            None => failures.push(format!(
                "approval {} ({}) at the gateway has no attempt in the database",
                e.tid, e.moid
            )),
            Some(c) if c.state != "approved" => failures.push(format!(
                "approval {} ({}) at the gateway is recorded as {}",
                e.tid, e.moid, c.state
            )),
            Some(c) if (c.moid.as_str(), c.amount) != (e.moid.as_str(), e.amount) => {
                failures.push(format!(
                    "approval {}: gateway says {} {} KRW, database {} {} KRW",
                    e.tid, e.moid, e.amount, c.moid, c.amount
                ))
            }
            Some(_) => {}
        }
    }
    for c in charges.iter().filter(|c| c.state == "approved") {
        if !ledger_tids.contains(c.tid.as_str()) {
            failures.push(format!(
                "attempt {} ({}, TID {}) recorded approved, but the gateway has no such approval",
                c.id, c.moid, c.tid
            ));
        }
    }

    // No due cycle left uncharged without a recorded reason.
    let mut events_of: HashMap<i64, Vec<_>> = HashMap::new();
    for e in &events {
        if let Some(id) = e.subscription_id {
            events_of.entry(id).or_default().push(e);
        }
    }
    let no_events = Vec::new();
    for s in &subscriptions {
        let evs = events_of.get(&s.id).unwrap_or(&no_events);
        let next_cycle = s.next_cycle.unwrap_or(1);
        for cycle in 1..next_cycle {
            let skipped = evs.iter().any(|e| {
                e.kind == "cycle_skipped"
                    && skipped_cycles(&e.detail).is_some_and(|(a, b)| (a..=b).contains(&cycle))
            });
            if !approved_cycles.contains_key(&(s.id, cycle)) && !skipped {
                failures.push(format!(
                    "subscription {} ({}) moved past cycle {cycle} without charging or skipping it",
                    s.id, s.external_id
                ));
            }
        }
        if s.status == "active" {
            // Its current cycle is due (or has been tried and waits for another try): an
            // attempt of that cycle must have said why it did not charge.
            let due_now = s.next_charge_at.is_none_or(|at| at <= now);
            if due_now || s.cycle_attempts > 0 {
                let said = evs.iter().any(|e| {
                    e.detail
                        .starts_with(&format!("cycle {next_cycle} attempt "))
                });
                if !said {
                    failures.push(format!(
                        "subscription {} ({}) has cycle {next_cycle} {} and uncharged, with no \
                         event saying why",
                        s.id,
                        s.external_id,
                        if due_now { "due" } else { "tried" }
                    ));
                }
            }
        } else {
            // Stopped: the merchant's own status, or nicebill's with its reason on record.
            let explained = matches!(s.status.as_str(), "paused" | "cancelled")
                || s.status_reason.as_deref().is_some_and(|r| !r.is_empty())
                || evs.iter().any(|e| e.kind == s.status);
            if !explained {
                failures.push(format!(
                    "subscription {} ({}) is {} with no recorded reason",
                    s.id, s.external_id, s.status
                ));
            }
        }
    }

    let tally = Tally {
        subscriptions: subscriptions.len(),
        attempts: charges.len(),
        approved: approved_cycles.len(),
        looked_up: charges.iter().filter(|c| c.lookups > 0).count(),
        retries: charges.iter().filter(|c| c.attempt > 1).count(),
    };
    (failures, tally)
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

#[crate::campaign_case(flavor = "multi_thread", worker_threads = 2)]
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
    bids.extend(issue_billkeys(&client_at(&url), &cards[via_cli..], &format!("a-{label}")).await);
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
    let new_bids = issue_billkeys(&client_at(&url), &new_cards, &format!("b-{label}")).await;
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

#[crate::campaign_case(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_and_sigkills() {
    let scale = Scale::from_env();
    for db in support::databases("campaign_kills").await {
        kills(&scale, db).await;
    }
}

async fn kills(scale: &Scale, db: TestDb) {
    let label = db.label;
    let started = Instant::now();
    let n = scale.kill_charges;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (_sim, url) = start_sim(50, &["drop_after:approve:0.05"], None);
    let config = write_config(dir, "daemon", &url, &db.url, 4, false);
    let bids = issue_billkeys(&client_at(&url), &card_numbers(3, n), &format!("k-{label}")).await;
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
        (tally.approved, ledger.len()),
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

#[crate::campaign_case(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_the_work() {
    let scale = Scale::from_env();
    for db in support::databases("campaign_three").await {
        three_instances(&scale, db).await;
    }
}

async fn three_instances(scale: &Scale, db: TestDb) {
    let label = db.label;
    let started = Instant::now();
    let n = scale.instance_charges;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Answers slow enough that one instance alone needs several ticks: new rows are noticed
    // by one instance, and the others join at their next tick.
    let (_sim, url) = start_sim(40, &[], None);
    let bids = issue_billkeys(&client_at(&url), &card_numbers(4, n), &format!("t-{label}")).await;

    let names = ["one", "two", "three"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|name| write_config(dir, name, &url, &db.url, 8, true))
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
    assert_eq!((tally.approved, ledger.len()), (n, n), "{label}: {tally:?}");

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
    if label == "postgres" {
        let busy = per_instance.iter().filter(|n| **n > 0).count();
        assert!(
            busy >= 2,
            "{label}: only {busy} instance(s) charged anything: {per_instance:?}"
        );
    }
}

/// The cycles a `cycle_skipped` event names: `cycle 5 due …` or `cycles 2-9 (8 cycles, …)`.
fn skipped_cycles(detail: &str) -> Option<(i32, i32)> {
    if let Some(rest) = detail.strip_prefix("cycles ") {
        let (range, _) = rest.split_once(' ')?;
        let (a, b) = range.split_once('-')?;
        return Some((a.parse().ok()?, b.parse().ok()?));
    }
    let rest = detail.strip_prefix("cycle ")?;
    let n = rest.split_once(' ')?.0.parse().ok()?;
    Some((n, n))
}

// ---------------------------------------------------------------------------------------------
// e. The merchant's application writes while nicebill charges.

#[crate::campaign_case(flavor = "multi_thread", worker_threads = 2)]
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
    let mut bids = issue_billkeys(&client_at(&url), &cards, &format!("m-{label}")).await;
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
    tokio::time::sleep(Duration::from_secs(1)).await;
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
    let tally = verdict(label, &db.store, &ledger).await;
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
