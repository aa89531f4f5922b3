//! `nicebill bench --instances K`: K `nicebill run` processes on one PostgreSQL database
//! against one simulator process.
//!
//! The order: a fresh schema, migrated; billkeys at the simulator; K daemons, each with a
//! configuration of its own (a tick every second, `[scheduler] concurrency = C`, a health
//! file), each waited for until it has written its health file (READY: its startup is over);
//! then the N due subscriptions are committed in one transaction and the clock starts, as on
//! a billing day in service, when the daemons are already running. The clock stops when the
//! database holds every outcome (nothing due, nothing unresolved). The wait for the daemons'
//! next tick (up to a second) is in the wall time; the output shows it, and the efficiency
//! without it.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{
    BenchArgs, Scratch, cpu_time_of, fail, ideal_s, issue_billkeys, ledger, open, peak_rss_mb_of,
    sim_client, start_sim,
};
use crate::billing::model::ChargeState;
use crate::cli::CliError;
use crate::cli::admin::{align_right, table};
use crate::clock::{SharedClock, SystemClock};
use crate::gateway::nicepay::Api;
use crate::health::Health;
use crate::sim::SimConfig;
use crate::storage::{DbUrl, Store};

/// How often the bench looks at the simulator, the database and the health files.
const POLL: Duration = Duration::from_millis(50);
/// How long K daemons may take to start.
const STARTUP: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
struct InstancesResult {
    backend: String,
    instances: usize,
    total_subscriptions: i64,
    due: i64,
    /// Per instance.
    concurrency: usize,
    latency_ms: u64,
    /// Where the clock starts and stops.
    clock: String,
    wall_s: f64,
    /// `ceil(N / (K × C)) × L`.
    ideal_s: f64,
    efficiency: f64,
    /// From the commit of the due rows to the first approval request at the simulator: the
    /// wait for the daemons' next tick, and the first claim.
    first_request_s: f64,
    /// ideal / (wall − first_request).
    efficiency_from_first_request: f64,
    charges_per_s: f64,
    /// CPU time of the K daemons during the run, per charge (not the simulator's, not
    /// PostgreSQL's).
    cpu_us_per_charge: f64,
    /// Successful approvals in the simulator's ledger.
    ledger_approvals: usize,
    /// (subscription, cycle) pairs approved more than once at the simulator.
    ledger_double_cycles: usize,
    /// Approvals at the simulator that no approved charge in the database holds.
    ledger_unrecorded: usize,
    db_approved: usize,
    /// (subscription, cycle) pairs with more than one approved charge in the database.
    db_double_cycles: usize,
    /// Charges in state `double` (a late approval found for a cycle already charged).
    db_doubles: usize,
    /// No cycle charged twice, every cycle charged once, and the database agrees with the
    /// simulator.
    no_double: bool,
    per_instance: Vec<InstanceResult>,
}

#[derive(Debug, Serialize)]
struct InstanceResult {
    name: String,
    pid: u32,
    /// From its start to its health file (not in the wall time).
    startup_s: f64,
    /// `counters.charged` of its health file.
    charged: u64,
    /// Its part of all charges.
    share: f64,
    cpu_s: f64,
    cpu_us_per_charge: f64,
    peak_rss_mb: f64,
}

/// The configuration file of one daemon.
#[derive(Serialize)]
struct DaemonConfig<'a> {
    nicepay: NicepaySection<'a>,
    database: DatabaseSection<'a>,
    scheduler: SchedulerSection,
    health: HealthSection<'a>,
    log: LogSection,
}

#[derive(Serialize)]
struct NicepaySection<'a> {
    mid: &'a str,
    merchant_key_file: &'a Path,
    base_url: &'a str,
    connect_timeout: &'static str,
    read_timeout: &'static str,
}

#[derive(Serialize)]
struct DatabaseSection<'a> {
    url: &'a str,
    /// The bench migrated the schema; K daemons need not race to.
    auto_migrate: bool,
    max_connections: u32,
}

#[derive(Serialize)]
struct SchedulerSection {
    tick: &'static str,
    concurrency: usize,
    batch: i64,
}

#[derive(Serialize)]
struct HealthSection<'a> {
    file: &'a Path,
}

#[derive(Serialize)]
struct LogSection {
    /// `RUST_LOG` overrides it.
    level: &'static str,
}

/// One `nicebill run` child.
struct Daemon {
    name: String,
    child: Child,
    health: PathBuf,
    log: PathBuf,
    started: Instant,
}

impl Daemon {
    /// The last lines of its log, for an error message.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Its health file, when there is one it wrote.
    fn health(&self) -> Option<Health> {
        let text = std::fs::read(&self.health).ok()?;
        serde_json::from_slice::<Health>(&text)
            .ok()
            .filter(|h| h.pid == self.child.id())
    }

    /// An error if it has exited.
    fn check_running(&mut self) -> Result<(), CliError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(CliError::Failed(format!(
                "bench: {} exited ({status}); its log ends:\n{}",
                self.name,
                self.log_tail()
            ))),
        }
    }
}

/// The daemons, killed (SIGKILL) when dropped before [`Daemons::stop`].
struct Daemons(Vec<Daemon>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.0 {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
    }
}

impl Daemons {
    /// SIGTERM to each, then SIGKILL to any still running after 15 s.
    fn stop(&mut self) {
        for d in &self.0 {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_child(&d.child),
                rustix::process::Signal::TERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for d in &mut self.0 {
            while matches!(d.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if matches!(d.child.try_wait(), Ok(None)) {
                eprintln!(
                    "nicebill bench: {} ignored SIGTERM for 15 s; killed",
                    d.name
                );
            }
        }
    }
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, content: &[u8]) -> Result<(), CliError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)?;
    Ok(())
}

/// `S{subscription}-C{cycle}-A{attempt}` → (subscription, cycle).
fn cycle_of(moid: &str) -> Option<(i64, i64)> {
    let mut parts = moid.strip_prefix('S')?.split('-');
    let subscription = parts.next()?.parse().ok()?;
    let cycle = parts.next()?.strip_prefix('C')?.parse().ok()?;
    Some((subscription, cycle))
}

/// Approval requests the simulator has received.
async fn approve_requests(http: &reqwest::Client, sim_url: &str) -> Result<u64, CliError> {
    let body = http
        .get(format!("{sim_url}/_sim/requests"))
        .send()
        .await
        .map_err(|e| fail("simulator", e))?
        .bytes()
        .await
        .map_err(|e| fail("simulator", e))?;
    let counts: BTreeMap<String, u64> =
        serde_json::from_slice(&body).map_err(|e| fail("simulator", e))?;
    Ok(counts.get(Api::Approve.as_str()).copied().unwrap_or(0))
}

pub(super) async fn run(args: &BenchArgs, k: usize) -> Result<(), CliError> {
    let base = match args.database_url.as_deref() {
        Some(url) if matches!(DbUrl::parse(url), Ok(DbUrl::Postgres(_))) => url,
        _ => {
            return Err(CliError::Usage(
                "bench: --instances needs --database-url postgres://… (K daemons share one \
                 PostgreSQL database; a SQLite file has one writer at a time)"
                    .into(),
            ));
        }
    };
    if k < 1 {
        return Err(CliError::Usage(
            "bench: --instances must be at least 1".into(),
        ));
    }
    let total = args.total.unwrap_or(args.due).max(args.due);
    let (_sim, sim_url) = start_sim(args.latency_ms)?;
    let dir = tempfile::Builder::new()
        .prefix("nicebill-bench-instances-")
        .tempdir()?;
    let scratch = Scratch::create(Some(base), dir.path()).await?;
    let result = measure(args, k, total, &sim_url, &scratch, dir.path()).await;
    scratch.drop_schema().await;
    let r = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(std::io::Error::other)?
        );
    } else {
        print(&r);
    }
    if !r.no_double {
        return Err(CliError::Failed(format!(
            "bench: verdict: the simulator holds {} approvals ({} cycles twice, {} not in the \
             database); the database {} approved ({} cycles twice, {} doubles); {} expected",
            r.ledger_approvals,
            r.ledger_double_cycles,
            r.ledger_unrecorded,
            r.db_approved,
            r.db_double_cycles,
            r.db_doubles,
            r.due
        )));
    }
    Ok(())
}

fn print(r: &InstancesResult) {
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("nicebill bench --instances {}", r.instances);
    println!("  backend              {} (one database)", r.backend);
    println!(
        "  instances K          {} `nicebill run` processes, each with concurrency C = {}",
        r.instances, r.concurrency
    );
    println!(
        "  subscriptions        {} in all, {} due",
        r.total_subscriptions, r.due
    );
    println!("  latency L            {} ms", r.latency_ms);
    println!("  clock                {}", r.clock);
    println!(
        "  wall time            {:.3} s (first approval request after {:.3} s)",
        r.wall_s, r.first_request_s
    );
    println!("  ideal ceil(N/(K×C))×L {:.3} s", r.ideal_s);
    println!(
        "  efficiency           {:.3}   (target ≥ 0.90: {}); {:.3} from the first request",
        r.efficiency,
        mark(r.efficiency >= 0.90),
        r.efficiency_from_first_request
    );
    println!("  charges per second   {:.0}", r.charges_per_s);
    println!(
        "  CPU per charge       {:.0} µs (the {} daemons; not the simulator, not PostgreSQL)",
        r.cpu_us_per_charge, r.instances
    );
    println!(
        "  no double charge     {}: simulator {} approvals, {} cycles twice, {} not recorded; \
         database {} approved, {} cycles twice, {} doubles",
        mark(r.no_double),
        r.ledger_approvals,
        r.ledger_double_cycles,
        r.ledger_unrecorded,
        r.db_approved,
        r.db_double_cycles,
        r.db_doubles
    );
    let mut t = table(&[
        "instance",
        "pid",
        "startup s",
        "charged",
        "share",
        "CPU s",
        "CPU µs/charge",
        "peak RSS MB",
    ]);
    for i in &r.per_instance {
        t.add_row(vec![
            i.name.clone(),
            i.pid.to_string(),
            format!("{:.3}", i.startup_s),
            i.charged.to_string(),
            format!("{:.3}", i.share),
            format!("{:.2}", i.cpu_s),
            format!("{:.0}", i.cpu_us_per_charge),
            format!("{:.1}", i.peak_rss_mb),
        ]);
    }
    align_right(&mut t, &[1, 2, 3, 4, 5, 6, 7]);
    println!("{t}");
}

/// Starts K daemons on `scratch` and waits until each has written its health file.
fn start_daemons(
    args: &BenchArgs,
    k: usize,
    sim_url: &str,
    scratch: &Scratch,
    dir: &Path,
) -> Result<Daemons, CliError> {
    let (mid, key) = SimConfig::default_merchants()
        .into_iter()
        .next()
        .ok_or_else(|| fail("simulator", "no merchant"))?;
    let key_file = dir.join("merchant.key");
    write_private(&key_file, key.expose().as_bytes())?;
    let exe = std::env::current_exe()?;
    let mut daemons = Daemons(Vec::new());
    for i in 1..=k {
        let health = dir.join(format!("health-{i}.json"));
        let config = DaemonConfig {
            nicepay: NicepaySection {
                mid: mid.as_str(),
                merchant_key_file: &key_file,
                base_url: sim_url,
                connect_timeout: "5s",
                read_timeout: "10s",
            },
            database: DatabaseSection {
                url: &scratch.text,
                auto_migrate: false,
                max_connections: 8,
            },
            scheduler: SchedulerSection {
                tick: "* * * * * *",
                concurrency: args.concurrency,
                batch: args.batch.unwrap_or(args.concurrency as i64 * 2),
            },
            health: HealthSection { file: &health },
            log: LogSection { level: "warn" },
        };
        let path = dir.join(format!("instance-{i}.toml"));
        let text = toml::to_string(&config).map_err(|e| fail("configuration", e))?;
        write_private(&path, text.as_bytes())?;
        let log = dir.join(format!("instance-{i}.log"));
        let child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove("NICEBILL_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        daemons.0.push(Daemon {
            name: format!("i{i}"),
            child,
            health,
            log,
            started: Instant::now(),
        });
    }
    Ok(daemons)
}

async fn measure(
    args: &BenchArgs,
    k: usize,
    total: i64,
    sim_url: &str,
    scratch: &Scratch,
    dir: &Path,
) -> Result<InstancesResult, CliError> {
    let store = open(scratch.url.clone(), 2).await?;
    store.migrate().await.map_err(|e| fail("migrations", e))?;
    let clock: SharedClock = Arc::new(SystemClock);
    let client = sim_client(sim_url, clock.clone())?;
    let bids = issue_billkeys(&client).await?;

    let mut daemons = start_daemons(args, k, sim_url, scratch, dir)?;
    // READY: each has written its health file.
    let mut startup = vec![None; k];
    let deadline = Instant::now() + STARTUP;
    while startup.iter().any(Option::is_none) {
        for (i, d) in daemons.0.iter_mut().enumerate() {
            d.check_running()?;
            if startup[i].is_none() && d.health().is_some() {
                startup[i] = Some(d.started.elapsed());
            }
        }
        if Instant::now() > deadline {
            return Err(CliError::Failed(format!(
                "bench: {} of {k} instances wrote no health file within {} s",
                startup.iter().filter(|s| s.is_none()).count(),
                STARTUP.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    let pids: Vec<u32> = daemons.0.iter().map(|d| d.child.id()).collect();
    let cpu_before: Vec<Duration> = pids
        .iter()
        .map(|&p| cpu_time_of(Some(p)).unwrap_or_default())
        .collect();

    // The due rows, in one transaction: the clock starts at its commit.
    let seeded = store
        .seed_bench(
            total,
            args.due,
            &bids,
            clock.now() - chrono::Duration::minutes(1),
        )
        .await
        .map_err(|e| fail("seed", e))?;
    let started = Instant::now();
    let started_at = clock.now();
    if seeded as i64 != total {
        return Err(fail(
            "seed",
            format!("inserted {seeded} rows, wanted {total}"),
        ));
    }

    // Until the simulator has had N approval requests (a cheap question), then until the
    // database holds every outcome.
    let ideal = ideal_s(args.due, k * args.concurrency, args.latency_ms);
    let patience = Duration::from_secs_f64(60.0 + 10.0 * ideal);
    let http = reqwest::Client::new();
    let mut requested = 0;
    let wall = loop {
        for d in &mut daemons.0 {
            d.check_running()?;
        }
        if started.elapsed() > patience {
            return Err(CliError::Failed(format!(
                "bench: gave up after {:.0} s: the simulator had {requested} of {} approval \
                 requests",
                patience.as_secs_f64(),
                args.due
            )));
        }
        if (requested as i64) < args.due {
            requested = approve_requests(&http, sim_url).await?;
        }
        if requested as i64 >= args.due {
            let f = store
                .health_figures(clock.now())
                .await
                .map_err(|e| fail("database", e))?;
            if f.due == 0 && f.unresolved == 0 {
                break started.elapsed();
            }
        }
        tokio::time::sleep(POLL).await;
    };
    let done_at = clock.now();
    let cpu: Vec<Duration> = pids
        .iter()
        .zip(&cpu_before)
        .map(|(&p, before)| {
            cpu_time_of(Some(p))
                .unwrap_or_default()
                .saturating_sub(*before)
        })
        .collect();
    let peak: Vec<f64> = pids
        .iter()
        .map(|&p| peak_rss_mb_of(Some(p)).unwrap_or(0.0))
        .collect();

    // Each instance's count, from a health file it wrote after the end.
    let deadline = Instant::now() + Duration::from_secs(15);
    let charged: Vec<u64> = loop {
        let fresh: Vec<Option<u64>> = daemons
            .0
            .iter()
            .map(|d| {
                d.health()
                    .filter(|h| h.last_tick_at >= done_at)
                    .map(|h| h.counters.charged)
            })
            .collect();
        if fresh.iter().all(Option::is_some) {
            break fresh.into_iter().flatten().collect();
        }
        if Instant::now() > deadline {
            return Err(CliError::Failed(
                "bench: an instance wrote no health file within 15 s of the end".into(),
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    daemons.stop();

    let verdict = verdict(&store, sim_url, started_at, args.latency_ms).await?;
    let total_cpu: Duration = cpu.iter().sum();
    let wall_s = wall.as_secs_f64();
    let per_instance = daemons
        .0
        .iter()
        .enumerate()
        .map(|(i, d)| InstanceResult {
            name: d.name.clone(),
            pid: pids[i],
            startup_s: startup[i].unwrap_or_default().as_secs_f64(),
            charged: charged[i],
            share: charged[i] as f64 / args.due as f64,
            cpu_s: cpu[i].as_secs_f64(),
            cpu_us_per_charge: cpu[i].as_secs_f64() * 1e6 / charged[i].max(1) as f64,
            peak_rss_mb: peak[i],
        })
        .collect();
    let counted: u64 = charged.iter().sum();
    let no_double = verdict.ledger_approvals as i64 == args.due
        && verdict.ledger_double_cycles == 0
        && verdict.ledger_unrecorded == 0
        && verdict.db_approved as i64 == args.due
        && verdict.db_double_cycles == 0
        && verdict.db_doubles == 0
        && counted as i64 == args.due;
    Ok(InstancesResult {
        backend: "postgres".into(),
        instances: k,
        total_subscriptions: total,
        due: args.due,
        concurrency: args.concurrency,
        latency_ms: args.latency_ms,
        clock: format!(
            "from the commit of the due rows to the database holding every outcome; the {k} \
             instances were READY before (their startup is not counted), their next tick \
             (≤ 1 s) is"
        ),
        wall_s,
        ideal_s: ideal,
        efficiency: ideal / wall_s,
        first_request_s: verdict.first_request_s,
        efficiency_from_first_request: ideal / (wall_s - verdict.first_request_s).max(1e-9),
        charges_per_s: args.due as f64 / wall_s,
        cpu_us_per_charge: total_cpu.as_secs_f64() * 1e6 / args.due as f64,
        ledger_approvals: verdict.ledger_approvals,
        ledger_double_cycles: verdict.ledger_double_cycles,
        ledger_unrecorded: verdict.ledger_unrecorded,
        db_approved: verdict.db_approved,
        db_double_cycles: verdict.db_double_cycles,
        db_doubles: verdict.db_doubles,
        no_double,
        per_instance,
    })
}

struct Verdict {
    first_request_s: f64,
    ledger_approvals: usize,
    ledger_double_cycles: usize,
    ledger_unrecorded: usize,
    db_approved: usize,
    db_double_cycles: usize,
    db_doubles: usize,
}

/// The simulator's ledger against the database: each cycle approved at most once on both
/// sides, and every approval at the simulator recorded.
async fn verdict(
    store: &Store,
    sim_url: &str,
    started_at: chrono::DateTime<chrono::Utc>,
    latency_ms: u64,
) -> Result<Verdict, CliError> {
    let entries: Vec<_> = ledger(sim_url)
        .await?
        .into_iter()
        .filter(|e| !e.seeded)
        .collect();
    let mut cycles = HashSet::new();
    let mut ledger_double_cycles = 0;
    for e in &entries {
        // An approval whose Moid is not ours counts as a cycle charged twice: it should not
        // be there at all.
        if !cycle_of(&e.moid).is_some_and(|c| cycles.insert(c)) {
            ledger_double_cycles += 1;
        }
    }
    // The ledger records an approval when it answers, L after the request came.
    let first_request_s = entries
        .iter()
        .map(|e| e.approved_at)
        .min()
        .map(|t| {
            ((t - started_at).num_microseconds().unwrap_or(0) as f64 / 1e6
                - latency_ms as f64 / 1000.0)
                .max(0.0)
        })
        .unwrap_or(0.0);

    let charges = store.charges(None).await.map_err(|e| fail("database", e))?;
    let approved: Vec<_> = charges
        .iter()
        .filter(|c| c.state == ChargeState::Approved.as_str())
        .collect();
    let mut db_cycles = HashSet::new();
    let db_double_cycles = approved
        .iter()
        .filter(|c| !db_cycles.insert((c.subscription_id, c.cycle)))
        .count();
    let tids: HashSet<&str> = approved.iter().filter_map(|c| c.tid.as_deref()).collect();
    let ledger_unrecorded = entries
        .iter()
        .filter(|e| !tids.contains(e.tid.as_str()))
        .count();
    let db_doubles = store
        .doubles()
        .await
        .map_err(|e| fail("database", e))?
        .len();
    Ok(Verdict {
        first_request_s,
        ledger_approvals: entries.len(),
        ledger_double_cycles,
        ledger_unrecorded,
        db_approved: approved.len(),
        db_double_cycles,
        db_doubles,
    })
}

#[cfg(test)]
mod tests {
    use super::cycle_of;

    #[test]
    fn moids() {
        assert_eq!(cycle_of("S17-C3-A2"), Some((17, 3)));
        assert_eq!(cycle_of("bench-billkey-1"), None);
        assert_eq!(cycle_of("S17-X3-A2"), None);
    }
}
