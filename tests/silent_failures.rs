//! Issue 9, "nothing fails silently", each on SQLite and PostgreSQL, with in-process engines on
//! a `ManualClock` and the in-process simulator:
//!
//! - the health file's `gateway.last_success_at` is set by a NICEPAY answer;
//! - a panic in a sender task or in the outcome writer is logged at error, counted
//!   (`task_panics`), turns the health file `failing` and stops the daemon with an error (exit
//!   1, so that systemd restarts it); the attempt stays resolvable by a later pass;
//! - unresolved attempts a pass does not look up are logged with the reason;
//! - counters move only after the outcome write has committed;
//! - `run --once` runs on the engine's clock;
//! - `charges.error` keeps the first error however many lookups follow.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use nicebill::billing::engine::{Engine, EngineError, EngineSettings, Hooks};
use nicebill::billing::plan::Policy;
use nicebill::clock::{Clock, ManualClock, SharedClock};
use nicebill::config::Config;
use nicebill::daemon::{self, DaemonError};
use nicebill::gateway::nicepay::{Api, Charset, EdiType, NicepayClient};
use nicebill::health::{Health, Status};
use nicebill::retry::RetryPolicy;
use nicebill::sim::{FaultMode, FaultRule, SimConfig, SimHandle};
use nicebill::storage::Store;
use nicebill::storage::models::ChargeRow;
use support::*;

/// How long a test waits for a condition before it fails (never reached when all is well).
const PATIENCE: Duration = Duration::from_secs(60);

struct World {
    sim: SimHandle,
    client: Arc<NicepayClient>,
    clock: ManualClock,
    store: Store,
    url: String,
    label: &'static str,
}

async fn world(db: &TestDb) -> World {
    // A time the host's clock is not at: whatever runs on the host's clock shows.
    let clock = ManualClock::new(kst("2031-03-10 09:00"));
    let sim = SimHandle::start(SimConfig::new(([127, 0, 0, 1], 0).into()))
        .await
        .unwrap();
    let s = settings(&sim.base_url(), Charset::Utf8, EdiType::Json);
    let client = Arc::new(NicepayClient::new(s, Arc::new(clock.clone())).unwrap());
    World {
        sim,
        client,
        clock,
        store: db.store.clone(),
        url: db.url.clone(),
        label: db.label,
    }
}

impl World {
    /// The engine settings of these tests: quick in-process retries, the rest as in service.
    fn settings(&self, hooks: Hooks) -> EngineSettings {
        let mut s = EngineSettings::new("t".into(), Policy::default(), Duration::from_secs(4));
        s.concurrency = 4;
        s.batch = 8;
        s.transient = RetryPolicy::new(
            Duration::from_millis(10),
            Duration::from_millis(20),
            Duration::from_millis(100),
        );
        s.hooks = hooks;
        s
    }

    fn engine(&self, hooks: Hooks) -> Engine {
        let clock: SharedClock = Arc::new(self.clock.clone());
        Engine::new(
            self.store.clone(),
            self.client.clone(),
            clock,
            self.settings(hooks),
        )
    }

    /// An active monthly subscription of 5,000 KRW, due since five minutes ago.
    async fn add(&self, name: &str) -> i64 {
        let bid = issue(&self.client, "9410123456780000", &format!("bk-{name}")).await;
        let row = monthly(
            name,
            &bid,
            5_000,
            self.clock.now() - chrono::Duration::minutes(5),
        );
        self.store.insert_subscription(row).await.unwrap()
    }

    async fn charges(&self, id: i64) -> Vec<ChargeRow> {
        self.store.charges(Some(id)).await.unwrap()
    }

    fn advance(&self, secs: i64) {
        self.clock.advance(chrono::Duration::seconds(secs));
    }

    /// Loses the answer to every approval (each is charged, the answer never comes) and fails
    /// every status lookup: attempts stay unresolved until `heal`.
    fn lose_answers(&self) {
        self.sim.set_faults(vec![
            FaultRule {
                mode: FaultMode::DropAfter,
                api: Some(Api::Approve),
                count: None,
                probability: 1.0,
            },
            FaultRule {
                mode: FaultMode::Http500,
                api: Some(Api::Status),
                count: None,
                probability: 1.0,
            },
        ]);
    }

    fn heal(&self) {
        self.sim.set_faults(vec![]);
    }

    /// A daemon configuration on this world's simulator and database, writing its health
    /// and Prometheus files into `dir`.
    fn config(&self, dir: &std::path::Path) -> Config {
        let text = format!(
            r#"
[nicepay]
mid = "nictest04m"
merchant_key_env = "NB_KEY"
base_url = "{}"
charset = "utf-8"
connect_timeout = "2s"
read_timeout = "2s"

[database]
url = "{}"

[scheduler]
tick = "*/1 * * * * *"

[health]
file = "{}"
prometheus_file = "{}"
"#,
            self.sim.base_url(),
            self.url,
            dir.join("health.json").display(),
            dir.join("nicebill.prom").display(),
        );
        Config::parse(
            &dir.join("nicebill.toml"),
            &text,
            |v| (v == "NB_KEY").then(|| KEY.to_owned()),
            Vec::new(),
        )
        .unwrap()
    }

    /// Makes every later write of an outcome (an UPDATE setting `charges.state`) fail in the
    /// database itself (a trigger), as a write fails on a database in trouble; leases and
    /// inserts still work.
    async fn break_charge_updates(&self) {
        let sql = if self.label == "postgres" {
            "CREATE FUNCTION nb_fail() RETURNS trigger AS $$ BEGIN \
             RAISE EXCEPTION 'injected write failure'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER nb_fail BEFORE UPDATE OF state ON charges FOR EACH ROW \
             EXECUTE FUNCTION nb_fail();"
        } else {
            "CREATE TRIGGER nb_fail BEFORE UPDATE OF state ON charges BEGIN \
             SELECT RAISE(ABORT, 'injected write failure'); END;"
        };
        self.batch(sql).await;
    }

    async fn mend_charge_updates(&self) {
        let sql = if self.label == "postgres" {
            "DROP TRIGGER nb_fail ON charges; DROP FUNCTION nb_fail();"
        } else {
            "DROP TRIGGER nb_fail;"
        };
        self.batch(sql).await;
    }

    async fn batch(&self, sql: &'static str) {
        self.store
            .run(move |c| {
                use diesel::connection::SimpleConnection;
                c.batch_execute(sql).map_err(Into::into)
            })
            .await
            .unwrap();
    }
}

/// What the engine logs, for every test of this file: one global subscriber that names each
/// line's thread. Each test runs on its own thread (tokio's current-thread runtime, named
/// after the test), so a test reads only its own lines.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();

/// This test's log lines from the moment it was made.
struct MyLogs {
    thread: String,
    from: usize,
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MyLogs {
    fn capture() -> Self {
        let logs = LOGS.get_or_init(|| {
            let logs = Logs::default();
            let writer = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter("nicebill=info")
                .with_ansi(false)
                .with_thread_names(true)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            logs
        });
        let thread = std::thread::current()
            .name()
            .expect("libtest names test threads")
            .to_owned();
        Self {
            from: logs.0.lock().unwrap().len(),
            thread,
        }
    }

    fn text(&self) -> String {
        let all = LOGS.get().unwrap().0.lock().unwrap();
        String::from_utf8_lossy(&all[self.from..])
            .lines()
            .filter(|l| l.contains(&format!(" {} ", self.thread)))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// Forgets what was logged so far.
    fn clear(&mut self) {
        self.from = LOGS.get().unwrap().0.lock().unwrap().len();
    }

    /// Lines that contain every one of `words`.
    fn lines_with(&self, words: &[&str]) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .map(str::to_owned)
            .collect()
    }
}

/// A hook that panics the first time it is called.
fn panic_once(what: &'static str) -> Arc<dyn Fn() + Send + Sync> {
    let fired = Arc::new(AtomicBool::new(false));
    Arc::new(move || {
        if !fired.swap(true, Ordering::SeqCst) {
            panic!("injected panic in the {what}");
        }
    })
}

fn states(charges: &[ChargeRow]) -> Vec<String> {
    charges.iter().map(|c| c.state.clone()).collect()
}

#[tokio::test]
async fn gateway_last_success_is_set_by_an_answer() {
    for db in databases("last_success").await {
        let w = world(&db).await;
        let engine = w.engine(Hooks::default());
        let stats = Arc::clone(engine.stats());
        // No answer yet, and a call that never reached NICEPAY is no answer.
        let id = w.add("a").await;
        w.sim.set_faults(vec![FaultRule {
            mode: FaultMode::DropBefore,
            api: None,
            count: None,
            probability: 1.0,
        }]);
        engine.pass().await.unwrap();
        assert_eq!(
            stats.gateway_last_success.load(Ordering::Relaxed),
            0,
            "{}: transport failures only",
            w.label
        );
        assert!(w.sim.ledger().is_empty(), "{}", w.label);
        // An answer sets it, at the engine's time.
        w.heal();
        w.advance(3600);
        engine.pass().await.unwrap();
        w.advance(120);
        engine.pass().await.unwrap();
        assert_eq!(
            states(&w.charges(id).await).last().map(String::as_str),
            Some("approved"),
            "{}",
            w.label
        );
        assert_eq!(
            stats.gateway_last_success.load(Ordering::Relaxed),
            w.clock.now().timestamp(),
            "{}",
            w.label
        );

        // The daemon's health file shows it.
        let dir = tempfile::tempdir().unwrap();
        let config = w.config(dir.path());
        w.advance(3600);
        let b = w.add("b").await;
        let engine = w.engine(Hooks::default());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(daemon::run_engine(
            config,
            engine,
            None,
            false,
            async move {
                let _ = stop_rx.await;
            },
        ));
        let started = std::time::Instant::now();
        let health = loop {
            if let Ok(text) = std::fs::read_to_string(dir.path().join("health.json")) {
                let h: Health = serde_json::from_str(&text).unwrap();
                if h.counters.charged == 1 {
                    break h;
                }
            }
            assert!(started.elapsed() < PATIENCE, "{}: no pass charged", w.label);
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = stop_tx.send(());
        run.await.unwrap().unwrap();
        assert_eq!(states(&w.charges(b).await), ["approved"], "{}", w.label);
        assert_eq!(
            health.gateway.last_success_at,
            Some(w.clock.now().with_timezone(&Utc)),
            "{}: {health:?}",
            w.label
        );
        assert_eq!(health.status, Status::Ok, "{}", w.label);
    }
}

#[tokio::test]
async fn a_sender_panic_is_logged_counted_and_the_attempt_stays_resolvable() {
    for db in databases("sender_panic").await {
        let w = world(&db).await;
        let logs = MyLogs::capture();
        let id = w.add("a").await;
        let engine = w.engine(Hooks {
            before_send: Some(panic_once("sender")),
            ..Hooks::default()
        });
        let err = engine.pass().await.expect_err("the pass reports the panic");
        assert!(
            matches!(err, EngineError::TaskPanicked { count: 1, .. }),
            "{}: {err}",
            w.label
        );
        assert_eq!(engine.stats().task_panics.load(Ordering::Relaxed), 1);
        let logged = logs.lines_with(&["ERROR", "sender task panicked", "injected panic"]);
        assert_eq!(logged.len(), 1, "{}: {}", w.label, logs.text());
        // Committed before it was to be sent: still pending, never sent.
        assert_eq!(states(&w.charges(id).await), ["pending"], "{}", w.label);
        assert!(w.sim.ledger().is_empty(), "{}", w.label);

        // A later pass (another instance, a restart) looks it up once it cannot be in flight:
        // not found, so not charged, and the cycle is charged again.
        let later = w.engine(Hooks::default());
        w.advance(later.settings().settle().as_secs() as i64 + 1);
        later.pass().await.unwrap();
        w.advance(120);
        later.pass().await.unwrap();
        assert_eq!(
            states(&w.charges(id).await),
            ["not_charged", "approved"],
            "{}",
            w.label
        );
        assert_eq!(w.sim.ledger().len(), 1, "{}", w.label);
    }
}

#[tokio::test]
async fn a_writer_panic_is_logged_counted_and_the_attempt_stays_resolvable() {
    for db in databases("writer_panic").await {
        let w = world(&db).await;
        let logs = MyLogs::capture();
        let id = w.add("a").await;
        let engine = w.engine(Hooks {
            before_write: Some(panic_once("outcome writer")),
            ..Hooks::default()
        });
        let err = engine.pass().await.expect_err("the pass reports the panic");
        assert!(
            matches!(err, EngineError::TaskPanicked { count: 1, .. }),
            "{}: {err}",
            w.label
        );
        let stats = engine.stats();
        assert_eq!(stats.task_panics.load(Ordering::Relaxed), 1);
        assert_eq!(stats.charged.load(Ordering::Relaxed), 0, "not recorded");
        let logged = logs.lines_with(&["ERROR", "outcome writer task panicked"]);
        assert_eq!(logged.len(), 1, "{}: {}", w.label, logs.text());
        // Approved at NICEPAY, the outcome never written: the attempt is still pending, and
        // the next pass's lookup records the approval.
        assert_eq!(states(&w.charges(id).await), ["pending"], "{}", w.label);
        assert_eq!(w.sim.ledger().len(), 1, "{}", w.label);
        let later = w.engine(Hooks::default());
        w.advance(later.settings().settle().as_secs() as i64 + 1);
        let report = later.pass().await.unwrap();
        assert_eq!(report.charged, 1, "{}: {report:?}", w.label);
        assert_eq!(states(&w.charges(id).await), ["approved"], "{}", w.label);
        assert_eq!(w.sim.ledger().len(), 1, "{}", w.label);
    }
}

/// The daemon's loop: a panic in a sender makes the health file `failing` (and the Prometheus
/// file count it), and the daemon stops with an error whose exit code is 1.
#[tokio::test]
async fn a_panic_makes_the_daemon_fail_and_exit_non_zero() {
    for db in databases("daemon_panic").await {
        let w = world(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let config = w.config(dir.path());
        let id = w.add("a").await;
        let engine = w.engine(Hooks {
            before_send: Some(panic_once("sender")),
            ..Hooks::default()
        });
        let result = tokio::time::timeout(
            PATIENCE,
            daemon::run_engine(config, engine, None, false, std::future::pending()),
        )
        .await
        .expect("the daemon stops by itself");
        let err = result.expect_err("the daemon stops with an error");
        assert!(
            matches!(
                err,
                DaemonError::Engine(EngineError::TaskPanicked { count: 1, .. })
            ),
            "{}: {err}",
            w.label
        );
        assert_eq!(nicebill::cli::CliError::from(err).exit_code(), 1);
        let text = std::fs::read_to_string(dir.path().join("health.json")).unwrap();
        let health: Health = serde_json::from_str(&text).unwrap();
        assert_eq!(health.status, Status::Failing, "{}: {text}", w.label);
        assert!(health.reason.contains("panicked"), "{}", health.reason);
        assert_eq!(health.counters.task_panics, 1);
        assert_eq!(
            nicebill::health::check(&dir.path().join("health.json"), None, w.clock.now()).0,
            2
        );
        let prom = std::fs::read_to_string(dir.path().join("nicebill.prom")).unwrap();
        assert!(prom.contains("nicebill_task_panics_total 1\n"), "{prom}");
        assert!(prom.contains("nicebill_status 2\n"), "{prom}");
        assert_eq!(states(&w.charges(id).await), ["pending"], "{}", w.label);
    }
}

#[tokio::test]
async fn unresolved_attempts_not_looked_up_are_logged_with_the_reason() {
    for db in databases("skipped_lookups").await {
        let w = world(&db).await;
        let mut logs = MyLogs::capture();
        let id = w.add("a").await;
        w.lose_answers();
        let engine = w.engine(Hooks::default());
        engine.pass().await.unwrap();
        let charge = w.charges(id).await.remove(0);
        assert_eq!(charge.state, "unknown", "{}", w.label);
        // The next pass comes before the attempt's next lookup.
        logs.clear();
        engine.pass().await.unwrap();
        let line = logs.lines_with(&[
            "unresolved attempts not looked up in this pass",
            "not due yet",
            "count=1",
            &format!("charges=[{}]", charge.id),
        ]);
        assert_eq!(line.len(), 1, "{}: {}", w.label, logs.text());
        assert!(
            line[0].contains(&format!("{:?}", charge.check_after.unwrap().and_utc())),
            "{}: names the next lookup: {}",
            w.label,
            line[0]
        );
        // Shutting down: none is looked up, and the log says why.
        logs.clear();
        w.advance(3600);
        engine.stop();
        engine.resolve_left_in_flight().await.unwrap();
        let line = logs.lines_with(&[
            "unresolved attempts not looked up in this pass",
            "shutting down",
            "count=1",
        ]);
        assert_eq!(line.len(), 1, "{}: {}", w.label, logs.text());
        // Once looked up, nothing is said.
        let engine = w.engine(Hooks::default());
        w.heal();
        logs.clear();
        engine.pass().await.unwrap();
        assert_eq!(states(&w.charges(id).await), ["approved"], "{}", w.label);
        assert!(
            logs.lines_with(&["not looked up"]).is_empty(),
            "{}: {}",
            w.label,
            logs.text()
        );
    }
}

/// An outcome whose write fails is not counted (the writer's path and the lookups' path);
/// once written, it is.
#[tokio::test]
async fn counters_move_only_after_the_outcome_is_written() {
    for db in databases("counted_after_write").await {
        let w = world(&db).await;
        let id = w.add("a").await;
        let engine = w.engine(Hooks::default());
        let stats = Arc::clone(engine.stats());
        let count = |s: &nicebill::billing::engine::Stats| {
            (
                s.charged.load(Ordering::Relaxed),
                s.unresolved.load(Ordering::Relaxed),
            )
        };
        // The writer: approved at NICEPAY, the write refused.
        let logs = MyLogs::capture();
        w.break_charge_updates().await;
        let report = engine.pass().await.unwrap();
        assert_eq!(report.attempts, 1, "{}: {report:?}", w.label);
        assert_eq!(
            logs.lines_with(&[
                "ERROR",
                "could not record 1 outcomes",
                "injected write failure"
            ])
            .len(),
            1,
            "{}: {}",
            w.label,
            logs.text()
        );
        assert_eq!(report.charged, 0, "{}: {report:?}", w.label);
        assert_eq!(count(&stats), (0, 0), "{}", w.label);
        assert_eq!(states(&w.charges(id).await), ["pending"], "{}", w.label);
        assert_eq!(w.sim.ledger().len(), 1, "{}", w.label);
        // The lookups: the approval found, the write refused again.
        w.advance(engine.settings().settle().as_secs() as i64 + 1);
        engine.pass().await.expect_err("the lookup's write fails");
        assert_eq!(count(&stats), (0, 0), "{}", w.label);
        // Written now (once the failed lookup's lease is over), and counted once.
        w.mend_charge_updates().await;
        w.advance(60);
        let report = engine.pass().await.unwrap();
        assert_eq!(report.charged, 1, "{}: {report:?}", w.label);
        assert_eq!(count(&stats), (1, 0), "{}", w.label);
        assert_eq!(states(&w.charges(id).await), ["approved"], "{}", w.label);
    }
}

/// `run --once` decides what is due, and stamps what it writes, on the engine's clock (here
/// a manual clock years ahead of the host's): nothing is due by the host's clock.
#[tokio::test]
async fn run_once_uses_the_engine_clock() {
    for db in databases("once_clock").await {
        let w = world(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let id = w.add("a").await;
        let clock: SharedClock = Arc::new(w.clock.clone());
        let report = tokio::time::timeout(
            PATIENCE,
            daemon::run(
                w.config(dir.path()),
                daemon::TimeSource::Given(clock),
                true,
                std::future::pending(),
            ),
        )
        .await
        .expect("run --once finishes")
        .unwrap();
        assert_eq!(report.charged, 1, "{}: {report:?}", w.label);
        let charges = w.charges(id).await;
        assert_eq!(states(&charges), ["approved"], "{}", w.label);
        assert_eq!(
            charges[0].created_at.and_utc(),
            w.clock.now(),
            "{}",
            w.label
        );
    }
}

/// Many lookups of an unresolved attempt leave its first error as it was (bounded), count the
/// lookups and stamp the last one; the latest note goes to `result_msg`.
#[tokio::test]
async fn many_lookups_leave_a_bounded_error() {
    for db in databases("bounded_error").await {
        let w = world(&db).await;
        let id = w.add("a").await;
        w.lose_answers();
        let engine = w.engine(Hooks::default());
        engine.pass().await.unwrap();
        let first = w.charges(id).await.remove(0);
        assert_eq!(first.state, "unknown", "{}", w.label);
        let first_error = first.error.clone().expect("the lost answer is the error");
        assert_eq!(first.lookups, 1, "{}", w.label);
        for _ in 0..40 {
            // Past the longest wait between lookups.
            w.advance(3600);
            engine.pass().await.unwrap();
        }
        let c = w.charges(id).await.remove(0);
        assert_eq!(c.state, "unknown", "{}", w.label);
        assert_eq!(c.lookups, 41, "{}", w.label);
        assert_eq!(
            c.error.as_deref(),
            Some(first_error.as_str()),
            "{}",
            w.label
        );
        assert!(c.error.unwrap().chars().count() <= nicebill::storage::recording::ERROR_MAX_CHARS);
        assert!(
            c.result_msg
                .as_deref()
                .is_some_and(|m| m.starts_with("status lookup failed")),
            "{}: {:?}",
            w.label,
            c.result_msg
        );
        assert_eq!(
            c.last_lookup_at.map(|t| t.and_utc()),
            Some(w.clock.now()),
            "{}",
            w.label
        );
    }
}

/// Attempts whose TID stays taken by other charges (another instance minting from the same
/// part of the suffix space) are not left claimed without a word: after the retries, their
/// claims are released, a warning names them, and the next pass charges them.
#[tokio::test]
async fn attempts_whose_tid_stays_taken_are_released_and_logged() {
    use nicebill::billing::model::{NoticeLeads, SubscriptionId};
    use nicebill::storage::{NewTid, StartAttempt};
    for db in databases("tid_taken").await {
        let w = world(&db).await;
        let mut logs = MyLogs::capture();
        // One approved charge whose TID every later attempt is offered.
        let first = w.add("first").await;
        let engine = w.engine(Hooks::default());
        engine.pass().await.unwrap();
        let taken = w.charges(first).await.remove(0).tid;
        let ids = [w.add("b").await, w.add("c").await];
        let now = w.clock.now();
        w.store.notice(now).await.unwrap();
        let mut attempts = Vec::new();
        for id in ids {
            let claimed = w
                .store
                .claim_one(SubscriptionId(id), "tester", now, Duration::from_secs(30))
                .await
                .unwrap();
            assert!(claimed.is_some(), "{}", w.label);
            attempts.push(StartAttempt {
                subscription_id: SubscriptionId(id),
                cycle: nicebill::schedule::Cycle(1),
                attempt: 1,
                moid: format!("S{id}-C1-A1"),
                amount: 5_000,
                bid: w.store.subscription(id).await.unwrap().unwrap().bid,
                due_at: now,
                check_after: now + chrono::Duration::seconds(90),
                events: vec![],
            });
        }
        logs.clear();
        let offered = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&offered);
        let started = w
            .store
            .start_attempts(
                "tester",
                now,
                attempts,
                &NoticeLeads::default(),
                "webapi",
                move |why| {
                    seen.lock().unwrap().push(why);
                    taken.clone()
                },
            )
            .await
            .unwrap();
        assert!(started.is_empty(), "{}: {started:?}", w.label);
        // The retries asked for TIDs away from the ones that collided.
        let offered = offered.lock().unwrap().clone();
        assert_eq!(offered[..2], [NewTid::First, NewTid::First], "{}", w.label);
        assert!(offered.len() > 2, "{}: {offered:?}", w.label);
        assert!(
            offered[2..].iter().all(|w| *w == NewTid::AfterCollision),
            "{}: {offered:?}",
            w.label
        );
        for id in ids {
            assert!(w.charges(id).await.is_empty(), "{}", w.label);
            let row = w.store.subscription(id).await.unwrap().unwrap();
            assert_eq!(row.claimed_by, None, "{}: claim released", w.label);
        }
        let line = logs.lines_with(&["WARN", "TID", "released", "count=2"]);
        assert_eq!(line.len(), 1, "{}: {}", w.label, logs.text());
        for id in ids {
            assert!(
                line[0].contains(&id.to_string()),
                "{}: {}",
                w.label,
                line[0]
            );
        }
        // The next pass charges them, with TIDs of its own.
        engine.pass().await.unwrap();
        for id in ids {
            assert_eq!(states(&w.charges(id).await), ["approved"], "{}", w.label);
        }
    }
}

/// TID lanes: instances sharing a MID lease disjoint lanes of a second's TID suffixes, keep
/// their own on renewal, let go of what they no longer want, take over lanes whose lease ran
/// out, and get none when every lane is held (they then mint from the whole second). An
/// engine mints its TIDs from the lane it leased.
#[tokio::test]
async fn tid_lanes_are_leased_apart_and_the_engine_mints_from_its_own() {
    use nicebill::storage::TID_LANES;
    for db in databases("tid_lanes").await {
        let w = world(&db).await;
        let (s, l) = (&w.store, w.label);
        let now = w.clock.now();
        let lease = Duration::from_secs(300);
        assert_eq!(
            s.lease_tid_lanes("a", now, lease, 3).await.unwrap(),
            [0, 1, 2],
            "{l}"
        );
        assert_eq!(
            s.lease_tid_lanes("b", now, lease, 3).await.unwrap(),
            [3, 4, 5],
            "{l}"
        );
        // Renewal keeps a's own lanes; wanting fewer lets the rest go.
        assert_eq!(
            s.lease_tid_lanes("a", now, lease, 3).await.unwrap(),
            [0, 1, 2],
            "{l}"
        );
        assert_eq!(
            s.lease_tid_lanes("a", now, lease, 1).await.unwrap(),
            [0],
            "{l}"
        );
        assert_eq!(
            s.lease_tid_lanes("c", now, lease, 5).await.unwrap(),
            [1, 2, 6, 7, 8],
            "{l}"
        );
        // Every lane held: none for d.
        let rest = s.lease_tid_lanes("x", now, lease, TID_LANES).await.unwrap();
        assert_eq!(rest, (9..20).collect::<Vec<u32>>(), "{l}");
        assert!(
            s.lease_tid_lanes("d", now, lease, 2)
                .await
                .unwrap()
                .is_empty(),
            "{l}"
        );
        // After the leases ran out, d takes the lowest lanes over.
        let later = now + chrono::Duration::seconds(301);
        assert_eq!(
            s.lease_tid_lanes("d", later, lease, 2).await.unwrap(),
            [0, 1],
            "{l}"
        );

        // The engine (owner "t", a batch of 8: one lane) gets the first lane free, 9, and
        // every TID it mints has a suffix in 4500..5000.
        let later = later + chrono::Duration::seconds(301);
        w.clock.set(later);
        s.lease_tid_lanes("y", later, lease, 9).await.unwrap();
        let ids = [
            w.add("l1").await,
            w.add("l2").await,
            w.add("l3").await,
            w.add("l4").await,
            w.add("l5").await,
        ];
        w.engine(Hooks::default()).pass().await.unwrap();
        for id in ids {
            let charges = w.charges(id).await;
            assert_eq!(states(&charges), ["approved"], "{l}");
            let tid = charges[0].tid.clone().unwrap();
            let suffix: u32 = tid[26..].parse().unwrap();
            assert!(
                (4500..5000).contains(&suffix),
                "{l}: {tid} is outside lane 9"
            );
        }
    }
}
