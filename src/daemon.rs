//! `nicebill run`: open the database, resolve what a previous run left in flight, then run a
//! pass on every tick until SIGTERM/SIGINT; with `--once`, until nothing due now is left.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};

use crate::billing::engine::{Engine, EngineError, EngineSettings, PassReport};
use crate::clock::{DbClock, SharedClock};
use crate::config::Config;
use crate::health::{self, Health, Observation};
use crate::storage::{HealthFigures, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error(
        "the database has {count} pending migration(s) ({names}); run `nicebill migrate` or set database.auto_migrate = true"
    )]
    Unmigrated { count: usize, names: String },
    #[error("cannot build the NICEPAY client: {0}")]
    Client(String),
    #[error(
        "{count} unresolved attempt(s) went out on NICEPAY's {api} API (charges {ids}), but nicebill is configured for {configured}; an attempt can only be looked up on its own API: run with [nicepay] api = \"{api}\" until they are resolved, then switch"
    )]
    OtherApi {
        count: usize,
        api: String,
        configured: String,
        ids: String,
    },
    #[error("tick scheduler: {0}")]
    Scheduler(String),
    #[error("{0} attempt(s) are still unresolved; run again later (`nicebill run --once`)")]
    Unresolved(usize),
    #[error(
        "due cycles are still not charged after {0} attempt(s) that never reached NICEPAY; is it reachable? (`nicebill check-config --gateway`)"
    )]
    NotCharged(usize),
}

/// How long startup spends looking up attempts a previous run left in flight before it
/// reports READY (systemd's TimeoutStartSec is longer).
const STARTUP_LOOKUPS: Duration = Duration::from_secs(120);

/// Opens the database, migrating it when configured to; refuses to run on an old schema.
pub async fn open_store(config: &Config) -> Result<Store, DaemonError> {
    let url = config.database.url.clone();
    let max = config.database.max_connections;
    let store = tokio::task::spawn_blocking(move || Store::open(url, max))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    if config.database.auto_migrate {
        let applied = store.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "database migrated");
        }
    } else {
        let pending = store.pending_migrations().await?;
        if !pending.is_empty() {
            return Err(DaemonError::Unmigrated {
                count: pending.len(),
                names: pending.join(", "),
            });
        }
    }
    Ok(store)
}

/// Which clock the engine runs on.
pub enum TimeSource {
    /// The database's (in service): one time for every instance on the database.
    Database,
    /// A given clock (tests, the demo).
    Given(SharedClock),
}

/// Reads the database's time once and keeps `clock` in step with it.
pub async fn sync_clock(store: &Store, clock: &DbClock) -> Result<(), StoreError> {
    let sent = std::time::Instant::now();
    let db = store.database_time().await?;
    clock.sync(db, sent, std::time::Instant::now());
    Ok(())
}

/// Builds the engine from the configuration; with its database clock when it has one.
pub async fn engine(
    config: &Config,
    time: TimeSource,
) -> Result<(Engine, Option<Arc<DbClock>>), DaemonError> {
    let store = open_store(config).await?;
    let (clock, db_clock): (SharedClock, _) = match time {
        TimeSource::Given(clock) => (clock, None),
        TimeSource::Database => {
            let sent = std::time::Instant::now();
            let db = store.database_time().await?;
            let clock = Arc::new(DbClock::new(db, sent, std::time::Instant::now()));
            let skew = clock.host_skew();
            if skew.num_seconds().abs() >= 5 {
                tracing::warn!(
                    skew_ms = skew.num_milliseconds(),
                    "this host's clock differs from the database's; nicebill runs on the database's"
                );
            }
            (clock.clone(), Some(clock))
        }
    };
    let client = config
        .nicepay
        .gateway(clock.clone())
        .map_err(DaemonError::Client)?;
    let settings = config.engine_settings(EngineSettings::default_owner());
    Ok((Engine::new(store, client, clock, settings), db_clock))
}

/// Runs the daemon until `shutdown` resolves (or, with `once`, until nothing is due).
pub async fn run(
    config: Config,
    time: TimeSource,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<PassReport, DaemonError> {
    let (engine, db_clock) = engine(&config, time).await?;
    run_engine(config, engine, db_clock, once, shutdown).await
}

/// [`run`] with an engine already built (tests build one with hooks).
pub async fn run_engine(
    config: Config,
    engine: Engine,
    db_clock: Option<Arc<DbClock>>,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<PassReport, DaemonError> {
    tracing::info!(
        database = %engine.store().url(),
        owner = %engine.settings().owner,
        concurrency = engine.settings().concurrency,
        "nicebill starting"
    );
    refuse_other_api(&engine).await?;
    tokio::pin!(shutdown);
    let stopper = engine.clone();
    if once {
        let work = run_once(&engine, db_clock.as_deref());
        tokio::pin!(work);
        return tokio::select! {
            result = &mut work => result,
            () = &mut shutdown => {
                stopper.stop();
                work.await
            }
        };
    }

    let tick = Arc::new(Notify::new());
    let mut scheduler = JobScheduler::new()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    let notify = Arc::clone(&tick);
    let job = Job::new_async(config.scheduler.tick.as_str(), move |_, _| {
        let notify = Arc::clone(&notify);
        Box::pin(async move { notify.notify_one() })
    })
    .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    scheduler
        .add(job)
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    scheduler
        .start()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;

    let webhooks = spawn_webhooks(&config, &engine)?;
    let mut total = PassReport::default();
    let health = HealthWriter::new(&config, &engine);
    // Attempts a previous run left in flight are looked up before anything else, within a
    // bound so that READY comes in time; whatever is left is looked up by the passes.
    match tokio::time::timeout(STARTUP_LOOKUPS, engine.resolve_left_in_flight()).await {
        Ok(Ok(r)) => total.resolved += r.resolved,
        Ok(Err(e @ EngineError::TaskPanicked { .. })) => {
            health.write(&engine, None).await;
            let _ = scheduler.shutdown().await;
            return Err(e.into());
        }
        Ok(Err(e)) => tracing::error!("resolving attempts left in flight failed: {e}"),
        Err(_) => tracing::warn!(
            "attempts left in flight are still being looked up after {} s; the passes finish the job",
            STARTUP_LOOKUPS.as_secs()
        ),
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    health.write(&engine, None).await;
    tick.notify_one();
    // The health file is also refreshed while a long pass runs (a gateway outage, a backlog).
    let mut health_tick = tokio::time::interval(Duration::from_secs(5));
    health_tick.tick().await;
    // The watchdog is fed from this loop (also while a pass runs), so a stuck loop gets the
    // service restarted.
    let watchdog_every = sd_notify::watchdog_enabled()
        .map(|d| d / 2)
        .unwrap_or(Duration::from_secs(3600));
    let mut watchdog = tokio::time::interval(watchdog_every);
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            _ = watchdog.tick() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            () = tick.notified() => {
                if let Some(clock) = &db_clock
                    && let Err(e) = sync_clock(engine.store(), clock).await
                {
                    tracing::warn!("could not read the database's clock: {e}");
                }
                let pass = engine.pass();
                tokio::pin!(pass);
                // A signal during a pass stops claiming; what was sent finishes and is recorded.
                let result = loop {
                    tokio::select! {
                        result = &mut pass => break result,
                        _ = watchdog.tick() => {
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                        }
                        _ = health_tick.tick() => health.write(&engine, None).await,
                        () = &mut shutdown, if !stopping => {
                            stopping = true;
                            engine.stop();
                            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                            tracing::info!("shutting down after the attempts in flight");
                        }
                    }
                };
                let database_error = match &result {
                    Err(e @ EngineError::Store(_)) => Some(e.to_string()),
                    _ => None,
                };
                health.write(&engine, database_error).await;
                match result {
                    Ok(report) => {
                        if report != PassReport::default() {
                            tracing::info!(?report, "pass");
                        }
                        total.merge(&report);
                    }
                    // A task that panicked is a bug: the health file says failing (written
                    // above) and the daemon exits non-zero, so that systemd restarts it. Its
                    // attempts were committed before sending: the next run looks them up.
                    Err(e @ EngineError::TaskPanicked { .. }) => {
                        tracing::error!("pass failed: {e}; exiting to be restarted");
                        engine.stop();
                        let _ = scheduler.shutdown().await;
                        return Err(e.into());
                    }
                    // A pass that fails (database down, say) is retried on the next tick;
                    // whatever it left unresolved is looked up then.
                    Err(e) => tracing::error!("pass failed: {e}"),
                }
            }
            () = &mut shutdown => stopping = true,
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!("shutting down");
    engine.stop();
    // A delivery cut short is delivered again later, under the same webhook-id.
    webhooks.abort();
    let _ = scheduler.shutdown().await;
    Ok(total)
}

/// The webhook worker: delivers what the outbox holds as soon as it is due (when a
/// `[webhook] url` is set), and prunes the outbox after `[webhook] keep`.
fn spawn_webhooks(
    config: &Config,
    engine: &Engine,
) -> Result<tokio::task::JoinHandle<()>, DaemonError> {
    let store = engine.store().clone();
    let clock = engine.clock();
    let deliverer = crate::webhook::Deliverer::new(
        store.clone(),
        &config.webhook,
        clock.clone(),
        engine.settings().owner.clone(),
    )
    .map_err(|e| DaemonError::Client(e.to_string()))?;
    if deliverer.is_none() {
        tracing::info!("no [webhook] url: events stay in the outbox (nicebill webhooks list)");
    }
    let keep = config.webhook.keep;
    Ok(tokio::spawn(async move {
        let mut next_prune = clock.now();
        let mut next_unresolved = clock.now();
        loop {
            let now = clock.now();
            if now >= next_unresolved {
                let after = Duration::from_secs(crate::health::UNRESOLVED_DEGRADED_AFTER_SECS);
                match store.notice_unresolved(now, after).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        attempts = n,
                        "attempts unresolved for long: charge.unresolved written"
                    ),
                    Err(e) => tracing::warn!("cannot look for unresolved attempts: {e}"),
                }
                next_unresolved = now + chrono::Duration::seconds(30);
            }
            if now >= next_prune {
                let before = now - chrono::Duration::from_std(keep).unwrap_or_default();
                match store.prune_webhooks(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "webhook outbox pruned"),
                    Err(e) => tracing::warn!("cannot prune the webhook outbox: {e}"),
                }
                next_prune = now + chrono::Duration::hours(1);
            }
            let pause = match &deliverer {
                None => Duration::from_secs(60),
                Some(d) => match d.deliver_due(false).await {
                    // More may be due at once.
                    Ok(report) if report.tried() > 0 => continue,
                    Ok(_) => Duration::from_millis(500),
                    Err(e) => {
                        tracing::error!("webhook delivery: {e}");
                        Duration::from_secs(5)
                    }
                },
            };
            tokio::time::sleep(pause).await;
        }
    }))
}

/// Refuses to start while attempts sent on the other API are unresolved: only that API can
/// tell what became of them, and switching APIs must not leave a charge unknown for good.
async fn refuse_other_api(engine: &Engine) -> Result<(), DaemonError> {
    let configured = engine.gateway().api();
    let others: Vec<_> = engine
        .store()
        .unresolved()
        .await?
        .into_iter()
        .filter(|c| c.api != configured.as_str())
        .collect();
    let Some(first) = others.first() else {
        return Ok(());
    };
    let shown: Vec<String> = others.iter().take(10).map(|c| c.id.to_string()).collect();
    Err(DaemonError::OtherApi {
        count: others.len(),
        api: first.api.clone(),
        configured: configured.to_string(),
        ids: shown.join(", ") + if others.len() > 10 { ", …" } else { "" },
    })
}

/// Passes until nothing is due now and nothing is unresolved; waits (in real time) for
/// attempts that cannot be concluded yet.
async fn run_once(engine: &Engine, db_clock: Option<&DbClock>) -> Result<PassReport, DaemonError> {
    let mut total = engine.resolve_left_in_flight().await?;
    let wait =
        (engine.settings().settle().saturating_mul(3)).saturating_add(engine.settings().lease);
    let start = tokio::time::Instant::now();
    let deadline = start
        .checked_add(wait)
        .unwrap_or(start + Duration::from_secs(86_400 * 400));
    loop {
        if let Some(clock) = db_clock {
            sync_clock(engine.store(), clock).await?;
        }
        let report = engine.pass().await?;
        total.merge(&report);
        if report.attempts > 0 {
            continue;
        }
        let unresolved = engine.store().unresolved().await?;
        let now = engine.now();
        // Due subscriptions still claimed by an instance that died: wait for the lease.
        let claimed_until = engine.store().due_claims_expire(now).await?;
        // A cycle found not charged (never sent, or proven never approved; by this run or a
        // crashed one) is due again after `resend_after`: "everything due now" includes it.
        let resend_within = crate::clock::later(
            now,
            engine
                .settings()
                .policy
                .resend_after
                .saturating_add(Duration::from_secs(1)),
        );
        let due_again = engine.store().next_resend(resend_within).await?;
        if unresolved.is_empty() && claimed_until.is_none() && due_again.is_none() {
            return Ok(total);
        }
        if tokio::time::Instant::now() >= deadline || engine.is_stopping() {
            return Err(if unresolved.is_empty() {
                DaemonError::NotCharged(total.not_charged.max(1))
            } else {
                DaemonError::Unresolved(unresolved.len())
            });
        }
        // Sleep until the earliest lookup, lease or retry is due (a few seconds at most).
        let wait = unresolved
            .iter()
            .filter_map(|c| c.check_after.map(|t| t.and_utc()))
            .chain(claimed_until)
            .chain(due_again)
            .min()
            .map(|t| (t - now).to_std().unwrap_or_default())
            .unwrap_or_default()
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::time::sleep(wait).await;
    }
}

/// Writes the health file (and the Prometheus file) after each pass.
struct HealthWriter {
    file: Option<std::path::PathBuf>,
    prometheus: Option<std::path::PathBuf>,
    started_at: DateTime<Utc>,
    stale_after_secs: u64,
    delivering_webhooks: bool,
    webhook_max_age_secs: u64,
    max_requests_per_second: Option<u32>,
}

impl HealthWriter {
    fn new(config: &Config, engine: &Engine) -> Self {
        // Stale after three tick intervals, and never sooner than two minutes: a pass over a
        // large batch may take a while.
        let interval = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Required)
            .build()
            .parse(&config.scheduler.tick)
            .ok()
            .and_then(|cron| {
                let first = cron.find_next_occurrence(&engine.now(), false).ok()?;
                let second = cron.find_next_occurrence(&first, false).ok()?;
                (second - first).to_std().ok()
            })
            .unwrap_or(Duration::from_secs(10));
        Self {
            file: config.health.file.clone(),
            prometheus: config.health.prometheus_file.clone(),
            started_at: engine.now(),
            stale_after_secs: (interval.as_secs() * 3).max(120),
            delivering_webhooks: config.webhook.url.is_some(),
            webhook_max_age_secs: config.health.webhook_max_age.as_secs(),
            max_requests_per_second: config.nicepay.max_requests_per_second().map(|n| n.get()),
        }
    }

    /// `pass_error`: the database error the last pass failed on, if it did.
    async fn write(&self, engine: &Engine, pass_error: Option<String>) {
        if self.file.is_none() && self.prometheus.is_none() {
            return;
        }
        let now = engine.now();
        let stats = engine.stats();
        let figures = engine.store().health_figures(now).await;
        let (database_error, figures) = match figures {
            Ok(f) => (pass_error, f),
            Err(e) => (Some(e.to_string()), HealthFigures::default()),
        };
        let HealthFigures {
            due: due_backlog,
            unresolved: in_flight,
            oldest_unresolved: oldest,
            doubles: double_charges,
        } = figures;
        let outbox = engine.store().outbox_figures().await.unwrap_or_default();
        let webhooks = health::Webhooks {
            delivering: self.delivering_webhooks,
            backlog: u64::try_from(outbox.backlog).unwrap_or(0),
            oldest_undelivered_age_secs: outbox
                .oldest_pending_at
                .map(|t| (now - t).num_seconds().max(0) as u64),
            dead: u64::try_from(outbox.dead).unwrap_or(0),
            max_age_secs: self.webhook_max_age_secs,
        };
        let observation = Observation {
            webhooks: webhooks.clone(),
            webhook_max_age_secs: self.webhook_max_age_secs,
            database_error: database_error.clone(),
            gateway_failures: stats.gateway_failures_in_a_row.load(Ordering::Relaxed),
            due_backlog,
            in_flight,
            oldest_unresolved_age_secs: oldest.map(|t| (now - t).num_seconds().max(0) as u64),
            double_charges,
            task_panics: stats.task_panics.load(Ordering::Relaxed),
        };
        let (status, reason) = health::assess(&observation);
        let concurrency = engine.concurrency();
        let last_success = stats.gateway_last_success.load(Ordering::Relaxed);
        let report = Health {
            status,
            reason,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            owner: engine.settings().owner.clone(),
            started_at: self.started_at,
            last_tick_at: now,
            stale_after_secs: self.stale_after_secs,
            database: health::Database {
                ok: database_error.is_none(),
                error: database_error,
            },
            gateway: health::Gateway {
                consecutive_failures: observation.gateway_failures,
                last_success_at: (last_success > 0)
                    .then(|| DateTime::from_timestamp(last_success, 0))
                    .flatten(),
                concurrency_limit: concurrency.limit as u64,
                concurrency_ceiling: concurrency.ceiling as u64,
                concurrency_cuts: concurrency.cuts,
                throttled: stats.throttled.load(Ordering::Relaxed),
                max_requests_per_second: self.max_requests_per_second,
            },
            due_backlog,
            in_flight,
            oldest_unresolved_age_secs: observation.oldest_unresolved_age_secs,
            double_charges: observation.double_charges,
            webhooks,
            counters: health::Counters::from_stats(stats),
        };
        let write = |path: &std::path::Path, content: Vec<u8>| {
            if let Err(e) = health::write_atomic(path, &content) {
                tracing::warn!("cannot write the health file {e}");
            }
        };
        if let Some(path) = &self.file {
            match serde_json::to_vec_pretty(&report) {
                Ok(json) => write(path, json),
                Err(e) => tracing::warn!("cannot encode health: {e}"),
            }
        }
        if let Some(path) = &self.prometheus {
            write(path, health::prometheus(&report).into_bytes());
        }
    }
}
