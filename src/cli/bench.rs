//! `nicebill bench`: how close charging comes to the network-bound ideal.
//!
//! N subscriptions due now in a fresh database, `nicebill sim` in a separate process with a
//! fixed latency L per call, the engine with concurrency C. The ideal is `ceil(N / C) × L`;
//! efficiency is ideal / wall. CPU time and peak RSS are this process's: the engine, its
//! database work and its HTTP client, not the simulator.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::CliError;
use crate::billing::engine::{Engine, EngineSettings};
use crate::billing::plan::Policy;
use crate::clock::SystemClock;
use crate::domain::{CardDetails, Moid};
use crate::gateway::nicepay::client::BaseUrl;
use crate::gateway::nicepay::{Buyer, ClientSettings, IssueRequest, NicepayClient};
use crate::sim::SimConfig;
use crate::storage::{DbUrl, Store};

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
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
}

#[derive(Debug, Serialize)]
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

/// CPU time (user + system) of this process so far. `/proc/self/stat` counts in USER_HZ
/// ticks, which the Linux ABI fixes at 100 per second.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Peak resident set size (VmHWM) in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
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
    if args.due < 1 || args.concurrency < 1 {
        return Err(CliError::Usage(
            "bench: --due and --concurrency must be at least 1".into(),
        ));
    }
    let total = args.total.unwrap_or(args.due).max(args.due);
    let (_sim, sim_url) = start_sim(args.latency_ms)?;

    // The database: a temporary SQLite file, or a fresh schema on PostgreSQL.
    let dir = tempfile::Builder::new()
        .prefix("nicebill-bench-")
        .tempdir()?;
    let (url, schema) = match &args.database_url {
        Some(base) => {
            let schema = format!("bench_{:08x}", rand::random::<u32>());
            let admin = open(DbUrl::parse(base)?, 1).await?;
            admin
                .create_schema(&schema)
                .await
                .map_err(|e| fail("create schema", e))?;
            let sep = if base.contains('?') { '&' } else { '?' };
            (
                DbUrl::parse(&format!("{base}{sep}options=-c%20search_path%3D{schema}"))?,
                Some((admin, schema)),
            )
        }
        None => (DbUrl::Sqlite(dir.path().join("bench.db")), None),
    };
    let result = measure(&args, total, &sim_url, url.clone()).await;
    if let Some((admin, schema)) = schema {
        let _ = admin.drop_schema(&schema).await;
    }
    let r = result?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(std::io::Error::other)?
        );
        return Ok(());
    }
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
    println!(
        "  efficiency           {:.3}   (target ≥ 0.90: {})",
        r.efficiency,
        mark(r.efficiency >= 0.90)
    );
    println!("  charges per second   {:.0}", r.charges_per_s);
    println!(
        "  CPU per charge       {:.0} µs (target ≤ 150 µs: {})",
        r.cpu_us_per_charge,
        mark(r.cpu_us_per_charge <= 150.0)
    );
    let rss_target = if r.total_subscriptions >= 1_000_000 {
        60.0
    } else {
        40.0
    };
    println!(
        "  peak RSS             {:.1} MB (target ≤ {rss_target} MB: {})",
        r.peak_rss_mb,
        mark(r.peak_rss_mb <= rss_target)
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
    Ok(())
}

async fn open(url: DbUrl, max: u32) -> Result<Store, CliError> {
    tokio::task::spawn_blocking(move || Store::open(url, max))
        .await
        .map_err(|e| fail("database", e))?
        .map_err(|e| fail("database", e))
}

async fn measure(
    args: &BenchArgs,
    total: i64,
    sim_url: &str,
    url: DbUrl,
) -> Result<Result_, CliError> {
    let backend = url.backend().to_owned();
    let store = open(url, 8).await?;
    store.migrate().await.map_err(|e| fail("migrations", e))?;
    let (mid, key) = SimConfig::default_merchants()
        .into_iter()
        .next()
        .ok_or_else(|| fail("simulator", "no merchant"))?;
    let mut settings = ClientSettings::new(BaseUrl::parse(sim_url)?, mid, key);
    settings.connect_timeout = Duration::from_secs(5);
    settings.read_timeout = Duration::from_secs(10);
    let clock: crate::clock::SharedClock = Arc::new(SystemClock);
    let client =
        Arc::new(NicepayClient::new(settings, clock.clone()).map_err(|e| fail("client", e))?);

    // A few billkeys shared by all subscriptions (NICEPAY charges one billkey any number of
    // times; the Moid and TID make each approval distinct).
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
        .probe_due(
            clock.now(),
            args.batch.unwrap_or(args.concurrency as i64 * 2),
        )
        .await
        .map_err(|e| fail("probe", e))?;
    if found == 0 {
        return Err(fail("probe", "no due subscription found"));
    }

    let mut s = EngineSettings::new("bench".into(), Policy::default(), Duration::from_secs(15));
    s.concurrency = args.concurrency;
    s.batch = args.batch.unwrap_or(args.concurrency as i64 * 2);
    let engine = Engine::new(store.clone(), client, clock, s);

    reset_peak_rss();
    let cpu_before = cpu_time().unwrap_or_default();
    let started = Instant::now();
    let report = engine.pass().await.map_err(|e| fail("pass", e))?;
    let wall = started.elapsed();
    let cpu = cpu_time().unwrap_or_default().saturating_sub(cpu_before);
    let peak = peak_rss_mb().unwrap_or(0.0);

    let ledger_len = {
        let body = reqwest::get(format!("{sim_url}/_sim/ledger"))
            .await
            .map_err(|e| fail("ledger", e))?
            .bytes()
            .await
            .map_err(|e| fail("ledger", e))?;
        serde_json::from_slice::<Vec<serde_json::Value>>(&body)
            .map_err(|e| fail("ledger", e))?
            .len()
    };
    if report.charged as i64 != args.due || ledger_len as i64 != args.due {
        return Err(fail(
            "verdict",
            format!(
                "charged {} and the ledger holds {ledger_len}, expected {}",
                report.charged, args.due
            ),
        ));
    }
    let rounds = (args.due as f64 / args.concurrency as f64).ceil();
    let ideal = rounds * args.latency_ms as f64 / 1000.0;
    let stats = engine.stats();
    let claims = stats.claims.load(Ordering::Relaxed).max(1);
    Ok(Result_ {
        backend,
        total_subscriptions: total,
        due: args.due,
        concurrency: args.concurrency,
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
