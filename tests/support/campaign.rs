//! The fault campaign's shared part (`tests/campaign.rs`, `tests/pg_restart.rs`): its scale,
//! the daemon configuration, cards and billkeys, due subscriptions, and the verdict.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use nicebill::domain::{Bid, CardDetails, Moid};
use nicebill::gateway::nicepay::{Buyer, IssueRequest};
use nicebill::sim::{LedgerEntry, LedgerState};
use nicebill::storage::Store;
use nicebill::storage::models::NewSubscription;

use super::V1_SHOP;
use super::config::{ConfigFile, TIMEOUTS_1S};
use super::process::{bin, log_file};
use nicebill::clock::SystemClock;
use nicebill::gateway::ApiKind;

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
    write_config_on(
        ApiKind::Webapi,
        dir,
        name,
        sim_url,
        db_url,
        concurrency,
        json_logs,
    )
}

/// [`write_config`] for either NICEPAY API.
pub fn write_config_on(
    api: ApiKind,
    dir: &Path,
    name: &str,
    sim_url: &str,
    db_url: &str,
    concurrency: usize,
    json_logs: bool,
) -> PathBuf {
    let config = dir.join(format!("{name}.toml"));
    ConfigFile::new(sim_url)
        .api(api)
        .name(name)
        .nicepay(TIMEOUTS_1S)
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
transient_max_elapsed = "2s"
lookup_max_interval = "2s"

[health]
file = "{health}"
prometheus_file = "{prom}"

[log]
format = "{format}"
level = "info"
"#,
            health = health_path(&config).display(),
            prom = dir.join(format!("{name}.prom")).display(),
            format = if json_logs { "json" } else { "text" },
        ))
        .write(dir)
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
// Cards, billkeys, subscriptions

/// The IDNo (a business number) every campaign card is issued with: the secret scan looks
/// for it.
pub const ID_NO: &str = "2148673091";

/// Distinct 16-digit card numbers that the simulator approves (none ends in 0002…0005).
pub fn card_numbers(series: u32, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("9{series:03}{i:08}7391")).collect()
}

/// Issues a billkey per card at the simulator at `sim_url`, 16 at a time, in-process.
pub async fn issue_billkeys(sim_url: &str, cards: &[String], tag: &str) -> Vec<Bid> {
    issue_billkeys_on(ApiKind::Webapi, sim_url, cards, tag).await
}

/// [`issue_billkeys`] through either NICEPAY API.
pub async fn issue_billkeys_on(
    api: ApiKind,
    sim_url: &str,
    cards: &[String],
    tag: &str,
) -> Vec<Bid> {
    let client = &Arc::new(super::gateway_for(api, sim_url, Arc::new(SystemClock)));
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
            let bid = reply
                .data
                .unwrap_or_else(|| panic!("no BID: {} {}", reply.result_code, reply.result_msg))
                .bid;
            (i, bid)
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
        .map(|(i, bid)| super::monthly(&format!("{tag}-{i}"), bid, 1_000 + i as i64, anchor))
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
            use nicebill::storage::schema::charges;
            let unresolved = store.unresolved().await.unwrap();
            // Every attempt that is not an approval, with what it came to.
            let others: Vec<(i64, String, Option<String>, Option<String>)> = store
                .run(|c| {
                    Ok(charges::table
                        .filter(charges::state.ne("approved"))
                        .select((
                            charges::subscription_id,
                            charges::state,
                            charges::result_code,
                            charges::error,
                        ))
                        .load(c)?)
                })
                .await
                .unwrap();
            panic!(
                "{label}: only {approved} of {n} charged after {patience:?}; unresolved: {:?}; \
                 other attempts: {others:?}",
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
    // On v1 an approval that landed after its lookup found nothing is netcancelled: it stays
    // in the ledger as cancelled, and its attempt must not be recorded as approved.
    let (cancelled, ledger): (Vec<LedgerEntry>, Vec<LedgerEntry>) = ledger
        .iter()
        .cloned()
        .partition(|e| e.mid == V1_SHOP && e.state == LedgerState::Cancelled);
    let ledger = ledger.as_slice();
    let subscriptions = store.subscriptions().await.unwrap();
    let events = store.events(None).await.unwrap();
    let now = chrono::Utc::now().naive_utc();
    let mut failures: Vec<String> = Vec::new();

    // No attempt left unresolved.
    for c in &charges {
        if c.state == "pending" || c.state == "unknown" {
            failures.push(format!(
                "attempt {} ({}, {}) left {}",
                c.id,
                c.moid,
                c.label(),
                c.state
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
        if !matches!(e.mid.as_str(), "nictest04m" | V1_SHOP) || e.state != LedgerState::Approved {
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
    let by_tid: HashMap<&str, _> = charges
        .iter()
        .filter_map(|c| Some((c.tid.as_deref()?, c)))
        .collect();
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
    for e in &cancelled {
        match charges.iter().find(|c| c.moid == e.moid) {
            None => failures.push(format!(
                "netcancelled approval {} ({}) has no attempt in the database",
                e.tid, e.moid
            )),
            Some(c) if c.state == "approved" => failures.push(format!(
                "netcancelled approval {} ({}) is recorded as approved",
                e.tid, e.moid
            )),
            Some(_) => {}
        }
    }
    for c in charges.iter().filter(|c| c.state == "approved") {
        if !c.tid.as_deref().is_some_and(|t| ledger_tids.contains(t)) {
            failures.push(format!(
                "attempt {} ({}, {}) recorded approved, but the gateway has no such approval",
                c.id,
                c.moid,
                c.label()
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

/// The cycles a `cycle_skipped` event names: `cycle 5 due …` or `cycles 2-9 (8 cycles, …)`.
pub fn skipped_cycles(detail: &str) -> Option<(i32, i32)> {
    if let Some(rest) = detail.strip_prefix("cycles ") {
        let (range, _) = rest.split_once(' ')?;
        let (a, b) = range.split_once('-')?;
        return Some((a.parse().ok()?, b.parse().ok()?));
    }
    let rest = detail.strip_prefix("cycle ")?;
    let n = rest.split_once(' ')?.0.parse().ok()?;
    Some((n, n))
}
