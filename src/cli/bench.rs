//! `nicebill bench`: how close charging comes to the network-bound ideal.
//!
//! N subscriptions due now in a fresh database, `nicebill sim` in a separate process with a
//! fixed latency L per call, the engine with concurrency C. The ideal is `ceil(N / C) × L`;
//! efficiency is ideal / wall. CPU time and peak RSS are this process's: the engine, its
//! database work and its HTTP client, not the simulator.
//!
//! Beside the single run: `--instances K` (K `nicebill run` processes on one PostgreSQL
//! database, `instances.rs`), `--sweep` and `--csv` (a concurrency sweep, one process per
//! point, rows appended to a CSV file, `sweep.rs`) and `bench plot` (those CSV files as an
//! SVG, `plot.rs`).

mod instances;
mod plot;
mod sweep;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::CliError;
use crate::billing::engine::{Engine, EngineSettings};
use crate::billing::plan::Policy;
use crate::clock::SystemClock;
use crate::domain::{Bid, CardDetails, Moid};
use crate::gateway::nicepay::client::BaseUrl;
use crate::gateway::nicepay::{Buyer, ClientSettings, IssueRequest, NicepayClient};
use crate::sim::{LedgerEntry, SimConfig};
use crate::storage::{DbUrl, Store};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Subscriptions due now (charged by the run).
    #[arg(long, default_value_t = 10_000)]
    pub due: i64,
    /// Subscriptions in the database in all (the rest are due within 30 days); at least --due.
    #[arg(long)]
    pub total: Option<i64>,
    /// Approvals in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Subscriptions claimed per database round trip (default: 2 × concurrency).
    #[arg(long)]
    pub batch: Option<i64>,
    /// Simulated NICEPAY latency per call, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// `postgres://…` to run on PostgreSQL (a fresh schema is created and dropped); default a
    /// temporary SQLite file.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run K `nicebill run` processes (each with --concurrency) on one PostgreSQL database
    /// against one simulator, instead of one engine pass in this process. Needs
    /// --database-url postgres://….
    #[arg(long, value_name = "K", conflicts_with_all = ["sweep", "csv"])]
    pub instances: Option<usize>,
    /// A run per concurrency, each in a process of its own on a fresh database, e.g.
    /// `--sweep 16,64,256,1024` (instead of --concurrency).
    #[arg(
        long,
        value_name = "C,C,…",
        value_delimiter = ',',
        conflicts_with = "concurrency"
    )]
    pub sweep: Option<Vec<usize>>,
    /// Append each result to this CSV file (a header is written when the file is new or empty):
    /// backend,n,c,l_ms,wall_s,ideal_s,efficiency,charges_per_s,cpu_us_per_charge,peak_rss_mb.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Draw CSV files written by `bench --csv` as an SVG: efficiency and charges per second
    /// against C (log scale), one line per backend.
    Plot(plot::PlotArgs),
}

#[derive(Debug, Serialize, Deserialize)]
struct Result_ {
    backend: String,
    total_subscriptions: i64,
    due: i64,
    concurrency: usize,
    latency_ms: u64,
    wall_s: f64,
    ideal_s: f64,
    efficiency: f64,
    charges_per_s: f64,
    cpu_us_per_charge: f64,
    peak_rss_mb: f64,
    find_due_batch_ms: f64,
    claim_ms_avg: f64,
    claim_ms_max: f64,
    charged: usize,
    ledger: usize,
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> CliError {
    CliError::Usage(format!("bench: {what}: {e}"))
}

/// `/proc/self` or `/proc/{pid}`.
fn proc_dir(pid: Option<u32>) -> PathBuf {
    match pid {
        Some(pid) => PathBuf::from(format!("/proc/{pid}")),
        None => PathBuf::from("/proc/self"),
    }
}

/// CPU time (user + system) of this process (or of process `pid`) so far. `/proc/…/stat`
/// counts in USER_HZ ticks, which the Linux ABI fixes at 100 per second.
fn cpu_time() -> Option<Duration> {
    cpu_time_of(None)
}

fn cpu_time_of(pid: Option<u32>) -> Option<Duration> {
    let stat = std::fs::read_to_string(proc_dir(pid).join("stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Peak resident set size (VmHWM) in MB, of this process or of process `pid`.
fn peak_rss_mb() -> Option<f64> {
    peak_rss_mb_of(None)
}

fn peak_rss_mb_of(pid: Option<u32>) -> Option<f64> {
    let status = std::fs::read_to_string(proc_dir(pid).join("status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Resets VmHWM so that setup does not count in the peak (Linux `clear_refs`, value 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn start_sim(latency_ms: u64) -> Result<(Sim, String), CliError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args([
            "sim",
            "--listen",
            "127.0.0.1:0",
            "--latency-ms",
            &latency_ms.to_string(),
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("simulator", "no stdout"))?;
    let sim = Sim(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let url = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .ok_or_else(|| fail("simulator", format!("unexpected output {line:?}")))?
        .to_owned();
    Ok((sim, url))
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if let Some(BenchCommand::Plot(plot)) = &args.command {
        return plot::run(plot);
    }
    if args.due < 1 || args.concurrency < 1 {
        return Err(CliError::Usage(
            "bench: --due and --concurrency must be at least 1".into(),
        ));
    }
    if let Some(k) = args.instances {
        return instances::run(&args, k).await;
    }
    if let Some(points) = &args.sweep {
        return sweep::run(&args, points).await;
    }
    // The CSV file is checked before the run, so that a wrong file costs no run.
    let csv = args.csv.as_deref().map(sweep::Csv::open).transpose()?;
    let r = single(&args, args.concurrency).await?;
    if let Some(csv) = csv {
        csv.append(&r)?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(std::io::Error::other)?
        );
        return Ok(());
    }
    print_single(&r);
    Ok(())
}

/// The targets a single run is held to: issue 11's (efficiency ≥ 0.95 from C = 1,024 and
/// ≥ 0.93 below; CPU per charge ≤ 80 µs on SQLite, database included, and ≤ 60 µs on
/// PostgreSQL, client side; peak RSS ≤ 64 MB at high concurrency), and the earlier ones where
/// issue 11 names none (peak RSS ≤ 40 MB at C ≤ 64, ≤ 60 MB with a million subscriptions).
struct Targets {
    efficiency: f64,
    cpu_us: f64,
    rss_mb: f64,
}

impl Targets {
    fn for_run(r: &Result_) -> Self {
        Self {
            efficiency: if r.concurrency >= 1024 { 0.95 } else { 0.93 },
            cpu_us: if r.backend == "sqlite" { 80.0 } else { 60.0 },
            rss_mb: if r.concurrency > 64 {
                64.0
            } else if r.total_subscriptions >= 1_000_000 {
                60.0
            } else {
                40.0
            },
        }
    }
}

fn print_single(r: &Result_) {
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!("nicebill bench");
    println!("  backend              {}", r.backend);
    println!(
        "  subscriptions        {} in all, {} due now",
        r.total_subscriptions, r.due
    );
    println!("  concurrency C        {}", r.concurrency);
    println!("  latency L            {} ms", r.latency_ms);
    println!("  wall time            {:.3} s", r.wall_s);
    println!("  ideal ceil(N/C)×L    {:.3} s", r.ideal_s);
    let t = Targets::for_run(r);
    println!(
        "  efficiency           {:.3}   (target ≥ {:.2}: {})",
        r.efficiency,
        t.efficiency,
        mark(r.efficiency >= t.efficiency)
    );
    println!("  charges per second   {:.0}", r.charges_per_s);
    println!(
        "  CPU per charge       {:.0} µs (target ≤ {:.0} µs: {})",
        r.cpu_us_per_charge,
        t.cpu_us,
        mark(r.cpu_us_per_charge <= t.cpu_us)
    );
    println!(
        "  peak RSS             {:.1} MB (target ≤ {:.0} MB: {})",
        r.peak_rss_mb,
        t.rss_mb,
        mark(r.peak_rss_mb <= t.rss_mb)
    );
    println!(
        "  find due batch       {:.1} ms (probe); claims avg {:.1} ms, max {:.1} ms (target ≤ 50 ms: {})",
        r.find_due_batch_ms,
        r.claim_ms_avg,
        r.claim_ms_max,
        mark(r.find_due_batch_ms <= 50.0)
    );
    println!(
        "  charged              {} (simulator ledger: {})",
        r.charged, r.ledger
    );
}

/// One run: a simulator process, a fresh database, one engine pass in this process at
/// `concurrency`.
async fn single(args: &BenchArgs, concurrency: usize) -> Result<Result_, CliError> {
    let total = args.total.unwrap_or(args.due).max(args.due);
    let (_sim, sim_url) = start_sim(args.latency_ms)?;
    let dir = tempfile::Builder::new()
        .prefix("nicebill-bench-")
        .tempdir()?;
    let scratch = Scratch::create(args.database_url.as_deref(), dir.path()).await?;
    let result = measure(args, concurrency, total, &sim_url, scratch.url.clone()).await;
    scratch.drop_schema().await;
    result
}

/// A fresh database for one run: a temporary SQLite file in `dir`, or a schema of its own on
/// the PostgreSQL server `base` names (dropped by [`Scratch::drop_schema`]).
struct Scratch {
    url: DbUrl,
    /// `url` as text, for a configuration file.
    text: String,
    schema: Option<(Store, String)>,
}

impl Scratch {
    async fn create(base: Option<&str>, dir: &Path) -> Result<Scratch, CliError> {
        let Some(base) = base else {
            let path = dir.join("bench.db");
            return Ok(Scratch {
                text: format!("sqlite://{}", path.display()),
                url: DbUrl::Sqlite(path),
                schema: None,
            });
        };
        let schema = format!("bench_{:08x}", rand::random::<u32>());
        let admin = open(DbUrl::parse(base)?, 1).await?;
        admin
            .create_schema(&schema)
            .await
            .map_err(|e| fail("create schema", e))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let text = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Ok(Scratch {
            url: DbUrl::parse(&text)?,
            text,
            schema: Some((admin, schema)),
        })
    }

    async fn drop_schema(self) {
        if let Some((admin, schema)) = self.schema {
            let _ = admin.drop_schema(&schema).await;
        }
    }
}

async fn open(url: DbUrl, max: u32) -> Result<Store, CliError> {
    tokio::task::spawn_blocking(move || Store::open(url, max))
        .await
        .map_err(|e| fail("database", e))?
        .map_err(|e| fail("database", e))
}

/// A client of the simulator as its first merchant.
fn sim_client(sim_url: &str, clock: crate::clock::SharedClock) -> Result<NicepayClient, CliError> {
    let (mid, key) = SimConfig::default_merchants()
        .into_iter()
        .next()
        .ok_or_else(|| fail("simulator", "no merchant"))?;
    let mut settings = ClientSettings::new(BaseUrl::parse(sim_url)?, mid, key);
    settings.connect_timeout = Duration::from_secs(5);
    settings.read_timeout = Duration::from_secs(10);
    NicepayClient::new(settings, clock).map_err(|e| fail("client", e))
}

/// A few billkeys shared by all subscriptions (NICEPAY charges one billkey any number of
/// times; the Moid and TID make each approval distinct).
async fn issue_billkeys(client: &NicepayClient) -> Result<Vec<Bid>, CliError> {
    let mut bids = Vec::new();
    for i in 0..8 {
        let issued = client
            .issue_billkey(&IssueRequest {
                moid: Moid::new(format!("bench-billkey-{i}"))?,
                card: CardDetails::new(&format!("941012345678{:04}", 100 + i), "30", "12", "", "")?,
                buyer: Buyer::default(),
            })
            .await
            .map_err(|e| fail("billkey issue", e))?;
        bids.push(
            issued
                .data
                .map(|d| d.bid)
                .ok_or_else(|| fail("billkey issue", issued.result_msg))?,
        );
    }
    // The simulator mints billkey-issue TIDs by the same rule as ours (as NICEPAY does): let
    // the clock move past their second so that no approval collides with them (a collision is
    // handled — duplicate, lookup, retry after settling — but would distort the timing).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    Ok(bids)
}

/// Every approval the simulator recorded.
async fn ledger(sim_url: &str) -> Result<Vec<LedgerEntry>, CliError> {
    let body = reqwest::get(format!("{sim_url}/_sim/ledger"))
        .await
        .map_err(|e| fail("ledger", e))?
        .bytes()
        .await
        .map_err(|e| fail("ledger", e))?;
    serde_json::from_slice(&body).map_err(|e| fail("ledger", e))
}

/// The network-bound ideal: `ceil(n / in_flight)` rounds of `latency_ms`, in seconds.
fn ideal_s(n: i64, in_flight: usize, latency_ms: u64) -> f64 {
    (n as f64 / in_flight.max(1) as f64).ceil() * latency_ms as f64 / 1000.0
}

async fn measure(
    args: &BenchArgs,
    concurrency: usize,
    total: i64,
    sim_url: &str,
    url: DbUrl,
) -> Result<Result_, CliError> {
    let backend = url.backend().to_owned();
    let store = open(url, 8).await?;
    store.migrate().await.map_err(|e| fail("migrations", e))?;
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let client = sim_client(sim_url, clock.clone())?;
    let bids = issue_billkeys(&client).await?;
    let batch = args.batch.unwrap_or(concurrency as i64 * 2);
    let now = clock.now();
    let seeded = store
        .seed_bench(total, args.due, &bids, now - chrono::Duration::minutes(1))
        .await
        .map_err(|e| fail("seed", e))?;
    if seeded as i64 != total {
        return Err(fail(
            "seed",
            format!("inserted {seeded} rows, wanted {total}"),
        ));
    }
    let (found, probe) = store
        .probe_due(clock.now(), batch)
        .await
        .map_err(|e| fail("probe", e))?;
    if found == 0 {
        return Err(fail("probe", "no due subscription found"));
    }

    let mut s = EngineSettings::new("bench".into(), Policy::default(), Duration::from_secs(15));
    s.concurrency = concurrency;
    s.batch = batch;
    let engine = Engine::new(store.clone(), client, clock, s);

    reset_peak_rss();
    let cpu_before = cpu_time().unwrap_or_default();
    let started = Instant::now();
    let report = engine.pass().await.map_err(|e| fail("pass", e))?;
    let wall = started.elapsed();
    let cpu = cpu_time().unwrap_or_default().saturating_sub(cpu_before);
    let peak = peak_rss_mb().unwrap_or(0.0);

    let ledger_len = ledger(sim_url).await?.len();
    if report.charged as i64 != args.due || ledger_len as i64 != args.due {
        return Err(fail(
            "verdict",
            format!(
                "charged {} and the ledger holds {ledger_len}, expected {}",
                report.charged, args.due
            ),
        ));
    }
    let ideal = ideal_s(args.due, concurrency, args.latency_ms);
    let stats = engine.stats();
    let claims = stats.claims.load(Ordering::Relaxed).max(1);
    Ok(Result_ {
        backend,
        total_subscriptions: total,
        due: args.due,
        concurrency,
        latency_ms: args.latency_ms,
        wall_s: wall.as_secs_f64(),
        ideal_s: ideal,
        efficiency: ideal / wall.as_secs_f64(),
        charges_per_s: report.charged as f64 / wall.as_secs_f64(),
        cpu_us_per_charge: cpu.as_secs_f64() * 1e6 / report.charged.max(1) as f64,
        peak_rss_mb: peak,
        find_due_batch_ms: probe.as_secs_f64() * 1000.0,
        claim_ms_avg: stats.claim_nanos_total.load(Ordering::Relaxed) as f64 / claims as f64 / 1e6,
        claim_ms_max: stats.claim_nanos_max.load(Ordering::Relaxed) as f64 / 1e6,
        charged: report.charged,
        ledger: ledger_len,
    })
}
