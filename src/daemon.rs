//! `nicebill run`: open the database, resolve what a previous run left in flight, then run a
//! pass on every tick until SIGTERM/SIGINT; with `--once`, until nothing due now is left.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::billing::engine::{Engine, EngineError, EngineSettings, PassReport};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::gateway::nicepay::NicepayClient;
use crate::storage::{Store, StoreError};

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
    #[error("tick scheduler: {0}")]
    Scheduler(String),
    #[error("{0} attempt(s) are still unresolved; run again later (`nicebill run --once`)")]
    Unresolved(usize),
}

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

/// Builds the engine from the configuration.
pub async fn engine(config: &Config, clock: SharedClock) -> Result<Engine, DaemonError> {
    let store = open_store(config).await?;
    let client = NicepayClient::new(config.nicepay.clone(), clock.clone())
        .map_err(|e| DaemonError::Client(e.to_string()))?;
    let settings = config.engine_settings(EngineSettings::default_owner());
    Ok(Engine::new(store, Arc::new(client), clock, settings))
}

/// Runs the daemon until `shutdown` resolves (or, with `once`, until nothing is due).
pub async fn run(
    config: Config,
    clock: SharedClock,
    once: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<PassReport, DaemonError> {
    let engine = engine(&config, clock).await?;
    tracing::info!(
        database = %engine.store().url(),
        owner = %engine.settings().owner,
        concurrency = engine.settings().concurrency,
        "nicebill starting"
    );
    tokio::pin!(shutdown);
    let stopper = engine.clone();
    if once {
        let work = run_once(&engine);
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

    let mut total = PassReport::default();
    // Attempts a previous run left in flight are looked up before anything else.
    match engine.resolve_left_in_flight().await {
        Ok(r) => total.resolved += r.resolved,
        Err(e) => tracing::error!("resolving attempts left in flight failed: {e}"),
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tick.notify_one();
    let mut stopping = false;
    while !stopping {
        tokio::select! {
            () = tick.notified() => {
                let pass = engine.pass();
                tokio::pin!(pass);
                // A signal during a pass stops claiming; what was sent finishes and is recorded.
                let result = tokio::select! {
                    result = &mut pass => result,
                    () = &mut shutdown => {
                        stopping = true;
                        engine.stop();
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                        tracing::info!("shutting down after the attempts in flight");
                        pass.await
                    }
                };
                match result {
                    Ok(report) => {
                        if report != PassReport::default() {
                            tracing::info!(?report, "pass");
                        }
                        total.merge(&report);
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
    let _ = scheduler.shutdown().await;
    Ok(total)
}

/// Passes until nothing is due now and nothing is unresolved; waits (in real time) for
/// attempts that cannot be concluded yet.
async fn run_once(engine: &Engine) -> Result<PassReport, DaemonError> {
    let mut total = engine.resolve_left_in_flight().await?;
    let deadline =
        tokio::time::Instant::now() + engine.settings().settle * 3 + engine.settings().lease;
    loop {
        let report = engine.pass().await?;
        total.merge(&report);
        if report.attempts > 0 {
            continue;
        }
        let unresolved = engine.store().unresolved().await?;
        let now = chrono::Utc::now();
        // Due subscriptions still claimed by an instance that died: wait for the lease.
        let claimed_until = engine.store().due_claims_expire(now).await?;
        if unresolved.is_empty() && claimed_until.is_none() {
            return Ok(total);
        }
        if tokio::time::Instant::now() >= deadline || engine.is_stopping() {
            return Err(DaemonError::Unresolved(unresolved.len()));
        }
        // Sleep until the earliest lookup or lease is due (at most a few seconds at a time).
        let wait = unresolved
            .iter()
            .filter_map(|c| c.check_after.map(|t| t.and_utc()))
            .chain(claimed_until)
            .min()
            .map(|t| (t - now).to_std().unwrap_or_default())
            .unwrap_or_default()
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::time::sleep(wait).await;
    }
}
