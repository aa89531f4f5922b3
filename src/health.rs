//! The health file monitors read: JSON replaced atomically (write, fsync, rename) after every
//! pass, optionally the same figures in Prometheus text format, and the `nicebill health`
//! check that turns the file into an exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::billing::engine::Stats;

/// How healthy the daemon says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Degraded,
    Failing,
}

impl Status {
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Degraded => 1,
            Status::Failing => 2,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub charged: u64,
    pub declined: u64,
    pub failed: u64,
    pub not_charged: u64,
    pub removed: u64,
    pub invalid: u64,
    /// Tasks of a pass that panicked (a bug): the health file says `failing` and the daemon
    /// exits so that systemd restarts it.
    #[serde(default)]
    pub task_panics: u64,
    /// Approvals answered with a result code nicebill does not list (`unlisted_code`).
    #[serde(default)]
    pub unlisted_code: u64,
}

impl Counters {
    pub fn from_stats(s: &Stats) -> Self {
        Self {
            charged: s.charged.load(Ordering::Relaxed),
            declined: s.declined.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            not_charged: s.not_charged.load(Ordering::Relaxed),
            removed: s.removed.load(Ordering::Relaxed),
            invalid: s.invalid.load(Ordering::Relaxed),
            task_panics: s.task_panics.load(Ordering::Relaxed),
            unlisted_code: s.unlisted_codes.load(Ordering::Relaxed),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    pub consecutive_failures: u64,
    pub last_success_at: Option<DateTime<Utc>>,
    /// Approvals in flight at once now: `[scheduler] concurrency`, halved on each overload
    /// signal and grown back by one per round of answers.
    #[serde(default)]
    pub concurrency_limit: u64,
    /// `[scheduler] concurrency`.
    #[serde(default)]
    pub concurrency_ceiling: u64,
    /// Times the limit was cut since start.
    #[serde(default)]
    pub concurrency_cuts: u64,
    /// Approvals answered with an overload signal (V003, A246, HTTP 429/503) since start.
    #[serde(default)]
    pub throttled: u64,
    /// `[nicepay] max_requests_per_second` (`null`: no limit).
    #[serde(default)]
    pub max_requests_per_second: Option<u32>,
}

/// The health file's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: Status,
    pub reason: String,
    pub version: String,
    pub pid: u32,
    pub owner: String,
    pub started_at: DateTime<Utc>,
    pub last_tick_at: DateTime<Utc>,
    /// A reader should treat the file as stale when `last_tick_at` is older than this.
    pub stale_after_secs: u64,
    pub database: Database,
    pub gateway: Gateway,
    /// Active subscriptions due now and not yet charged (after this pass).
    pub due_backlog: u64,
    /// Attempts whose outcome is not settled yet (`pending` or `unknown`).
    pub in_flight: u64,
    pub oldest_unresolved_age_secs: Option<u64>,
    /// Cycles found charged twice (`nicebill charges doubles`); degraded while any exist.
    #[serde(default)]
    pub double_charges: u64,
    /// The webhook outbox.
    #[serde(default)]
    pub webhooks: Webhooks,
    pub counters: Counters,
}

/// The webhook outbox in the health file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhooks {
    /// Whether a `[webhook] url` is set (without one, events wait for pollers).
    pub delivering: bool,
    /// Events not delivered yet.
    pub backlog: u64,
    pub oldest_undelivered_age_secs: Option<u64>,
    /// Events every try failed for (`nicebill webhooks retry --dead`).
    pub dead: u64,
    /// `[health] webhook_max_age`: degraded when the oldest undelivered event is older.
    #[serde(default)]
    pub max_age_secs: u64,
}

/// Thresholds that turn figures into a status.
pub const GATEWAY_DEGRADED_AFTER: u64 = 3;
pub const UNRESOLVED_DEGRADED_AFTER_SECS: u64 = 15 * 60;

/// What the daemon measured at the end of a pass.
#[derive(Clone, Debug)]
pub struct Observation {
    pub database_error: Option<String>,
    pub gateway_failures: u64,
    pub due_backlog: u64,
    pub in_flight: u64,
    pub oldest_unresolved_age_secs: Option<u64>,
    pub double_charges: u64,
    pub webhooks: Webhooks,
    /// `[health] webhook_max_age`, in seconds.
    pub webhook_max_age_secs: u64,
    pub task_panics: u64,
}

/// Decides the status: the database down, or a task of a pass that panicked, is failing; the
/// gateway failing repeatedly or an attempt unresolved for long is degraded.
pub fn assess(o: &Observation) -> (Status, String) {
    if o.task_panics > 0 {
        return (
            Status::Failing,
            format!(
                "{} task(s) of a pass panicked; nicebill exits to be restarted",
                o.task_panics
            ),
        );
    }
    if let Some(e) = &o.database_error {
        return (Status::Failing, format!("database: {e}"));
    }
    if o.gateway_failures >= GATEWAY_DEGRADED_AFTER {
        return (
            Status::Degraded,
            format!("{} NICEPAY calls in a row failed", o.gateway_failures),
        );
    }
    if o.double_charges > 0 {
        return (
            Status::Degraded,
            format!(
                "{} double charge(s) found; see `nicebill charges doubles`",
                o.double_charges
            ),
        );
    }
    if let Some(age) = o.oldest_unresolved_age_secs
        && age >= UNRESOLVED_DEGRADED_AFTER_SECS
    {
        return (
            Status::Degraded,
            format!("an attempt has been unresolved for {age} s"),
        );
    }
    if o.webhooks.delivering {
        if o.webhooks.dead > 0 {
            return (
                Status::Degraded,
                format!(
                    "{} webhook event(s) dead; see `nicebill webhooks list --state dead`",
                    o.webhooks.dead
                ),
            );
        }
        if let Some(age) = o.webhooks.oldest_undelivered_age_secs
            && age > o.webhook_max_age_secs
        {
            return (
                Status::Degraded,
                format!("a webhook event has waited {age} s for delivery"),
            );
        }
    }
    (Status::Ok, "ok".into())
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct WriteError {
    path: PathBuf,
    source: std::io::Error,
}

/// Replaces `path` with `content` atomically: readers see the old file or the new one.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<(), WriteError> {
    let fail = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(content).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The same figures in Prometheus text format, for node_exporter's textfile collector.
pub fn prometheus(h: &Health) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: String| {
        out.push_str(&format!(
            "# HELP nicebill_{name} {help}\n# TYPE nicebill_{name} {kind}\nnicebill_{name} {value}\n"
        ));
    };
    let status = match h.status {
        Status::Ok => 0,
        Status::Degraded => 1,
        Status::Failing => 2,
    };
    metric(
        "status",
        "0 ok, 1 degraded, 2 failing.",
        "gauge",
        status.to_string(),
    );
    metric(
        "last_tick_timestamp_seconds",
        "End of the last pass.",
        "gauge",
        h.last_tick_at.timestamp().to_string(),
    );
    metric(
        "started_timestamp_seconds",
        "Process start.",
        "gauge",
        h.started_at.timestamp().to_string(),
    );
    metric(
        "database_up",
        "1 when the last pass reached the database.",
        "gauge",
        u8::from(h.database.ok).to_string(),
    );
    metric(
        "gateway_consecutive_failures",
        "NICEPAY calls in a row without an answer.",
        "gauge",
        h.gateway.consecutive_failures.to_string(),
    );
    metric(
        "stale_after_seconds",
        "The file is stale when the last pass is older than this.",
        "gauge",
        h.stale_after_secs.to_string(),
    );
    metric(
        "concurrency_limit",
        "Approvals in flight at once now (cut on NICEPAY's overload signals).",
        "gauge",
        h.gateway.concurrency_limit.to_string(),
    );
    metric(
        "concurrency_ceiling",
        "[scheduler] concurrency.",
        "gauge",
        h.gateway.concurrency_ceiling.to_string(),
    );
    metric(
        "concurrency_cuts_total",
        "Times the concurrency limit was halved since start.",
        "counter",
        h.gateway.concurrency_cuts.to_string(),
    );
    metric(
        "gateway_throttled_total",
        "Approvals NICEPAY answered with an overload signal since start.",
        "counter",
        h.gateway.throttled.to_string(),
    );
    metric(
        "max_requests_per_second",
        "[nicepay] max_requests_per_second (0: no limit).",
        "gauge",
        h.gateway.max_requests_per_second.unwrap_or(0).to_string(),
    );
    metric(
        "due_backlog",
        "Active subscriptions due and not yet charged.",
        "gauge",
        h.due_backlog.to_string(),
    );
    metric(
        "in_flight_attempts",
        "Attempts not yet settled.",
        "gauge",
        h.in_flight.to_string(),
    );
    metric(
        "double_charges",
        "Cycles found charged twice (refund one of each; `nicebill charges doubles`).",
        "gauge",
        h.double_charges.to_string(),
    );
    metric(
        "webhook_backlog",
        "Webhook events not delivered yet.",
        "gauge",
        h.webhooks.backlog.to_string(),
    );
    metric(
        "webhook_oldest_undelivered_age_seconds",
        "Age of the oldest undelivered webhook event (0 when none).",
        "gauge",
        h.webhooks
            .oldest_undelivered_age_secs
            .unwrap_or(0)
            .to_string(),
    );
    metric(
        "webhook_delivering",
        "1 when a [webhook] url is set (without one, events wait for pollers).",
        "gauge",
        u8::from(h.webhooks.delivering).to_string(),
    );
    metric(
        "webhook_max_age_seconds",
        "[health] webhook_max_age.",
        "gauge",
        h.webhooks.max_age_secs.to_string(),
    );
    metric(
        "webhook_dead",
        "Webhook events every try failed for.",
        "gauge",
        h.webhooks.dead.to_string(),
    );
    metric(
        "oldest_unresolved_age_seconds",
        "Age of the oldest unsettled attempt (0 when none).",
        "gauge",
        h.oldest_unresolved_age_secs.unwrap_or(0).to_string(),
    );
    let c = &h.counters;
    for (name, value) in [
        ("charged", c.charged),
        ("declined", c.declined),
        ("failed", c.failed),
        ("not_charged", c.not_charged),
        ("removed", c.removed),
        ("invalid", c.invalid),
        ("task_panics", c.task_panics),
        ("unlisted_code", c.unlisted_code),
    ] {
        metric(
            &format!("{name}_total"),
            &format!(
                "Attempts {name} (billkeys removed, rows invalid, tasks panicked) since start."
            ),
            "counter",
            value.to_string(),
        );
    }
    out
}

/// `nicebill health`: reads the file and returns (exit code, one line).
pub fn check(path: &Path, max_age: Option<u64>, now: DateTime<Utc>) -> (u8, String) {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return (2, format!("FAILING: cannot read {}: {e}", path.display())),
    };
    let h: Health = match serde_json::from_str(&text) {
        Ok(h) => h,
        Err(e) => {
            return (
                2,
                format!(
                    "FAILING: {} is not a nicebill health file: {e}",
                    path.display()
                ),
            );
        }
    };
    let age = (now - h.last_tick_at).num_seconds().max(0) as u64;
    let max_age = max_age.unwrap_or(h.stale_after_secs);
    if age > max_age {
        return (
            2,
            format!(
                "FAILING: stale: last pass {age} s ago (more than {max_age} s); is nicebill running? (pid {})",
                h.pid
            ),
        );
    }
    let label = match h.status {
        Status::Ok => "OK",
        Status::Degraded => "DEGRADED",
        Status::Failing => "FAILING",
    };
    (
        h.status.exit_code(),
        format!(
            "{label}: {} (last pass {age} s ago, backlog {}, in flight {}, charged {}, declined {}, failed {})",
            h.reason,
            h.due_backlog,
            h.in_flight,
            h.counters.charged,
            h.counters.declined,
            h.counters.failed
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(status: Status, last_tick_at: DateTime<Utc>) -> Health {
        Health {
            status,
            reason: "why".into(),
            version: "0".into(),
            pid: 1,
            owner: "o".into(),
            started_at: last_tick_at,
            last_tick_at,
            stale_after_secs: 60,
            database: Database {
                ok: true,
                error: None,
            },
            gateway: Gateway::default(),
            due_backlog: 0,
            in_flight: 0,
            oldest_unresolved_age_secs: None,
            double_charges: 0,
            webhooks: Webhooks::default(),
            counters: Counters::default(),
        }
    }

    #[test]
    fn assess_rules() {
        let base = Observation {
            database_error: None,
            gateway_failures: 0,
            due_backlog: 0,
            in_flight: 0,
            oldest_unresolved_age_secs: None,
            double_charges: 0,
            webhooks: Webhooks::default(),
            webhook_max_age_secs: 3600,
            task_panics: 0,
        };
        let delivering = |backlog, age, dead| Webhooks {
            delivering: true,
            backlog,
            oldest_undelivered_age_secs: age,
            dead,
            max_age_secs: 3600,
        };
        let cases = [
            (base.clone(), Status::Ok),
            (
                Observation {
                    webhooks: delivering(5, Some(3600), 0),
                    ..base.clone()
                },
                Status::Ok,
            ),
            (
                Observation {
                    webhooks: delivering(5, Some(3601), 0),
                    ..base.clone()
                },
                Status::Degraded,
            ),
            (
                Observation {
                    webhooks: delivering(0, None, 1),
                    ..base.clone()
                },
                Status::Degraded,
            ),
            // Without a URL, events wait for pollers: nothing to worry about.
            (
                Observation {
                    webhooks: Webhooks {
                        delivering: false,
                        ..delivering(500, Some(86_400), 0)
                    },
                    ..base.clone()
                },
                Status::Ok,
            ),
            (
                Observation {
                    double_charges: 1,
                    ..base.clone()
                },
                Status::Degraded,
            ),
            (
                Observation {
                    gateway_failures: 2,
                    ..base.clone()
                },
                Status::Ok,
            ),
            (
                Observation {
                    gateway_failures: 3,
                    ..base.clone()
                },
                Status::Degraded,
            ),
            (
                Observation {
                    oldest_unresolved_age_secs: Some(901),
                    ..base.clone()
                },
                Status::Degraded,
            ),
            (
                Observation {
                    task_panics: 1,
                    ..base.clone()
                },
                Status::Failing,
            ),
            (
                Observation {
                    database_error: Some("down".into()),
                    gateway_failures: 9,
                    ..base.clone()
                },
                Status::Failing,
            ),
        ];
        for (o, want) in cases {
            assert_eq!(assess(&o).0, want, "{o:?}");
        }
    }

    #[test]
    fn check_reads_status_and_staleness() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("health.json");
        let now = Utc::now();
        assert_eq!(check(&path, None, now).0, 2, "missing");
        for (status, code) in [(Status::Ok, 0), (Status::Degraded, 1), (Status::Failing, 2)] {
            write_atomic(
                &path,
                serde_json::to_string(&health(status, now))
                    .unwrap()
                    .as_bytes(),
            )
            .unwrap();
            assert_eq!(check(&path, None, now).0, code);
        }
        write_atomic(
            &path,
            serde_json::to_string(&health(Status::Ok, now - chrono::Duration::seconds(61)))
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let (code, line) = check(&path, None, now);
        assert_eq!(code, 2);
        assert!(line.contains("stale"), "{line}");
        assert_eq!(check(&path, Some(120), now).0, 0);
        std::fs::write(&path, "{").unwrap();
        assert_eq!(check(&path, None, now).0, 2);
        let mut h = health(Status::Degraded, now);
        h.double_charges = 2;
        h.counters.unlisted_code = 3;
        let text = prometheus(&h);
        assert!(text.contains("nicebill_unlisted_code_total 3\n"), "{text}");
        assert!(
            text.contains("nicebill_double_charges 2\n")
                && text.contains("# TYPE nicebill_double_charges gauge"),
            "{text}"
        );
        assert!(
            text.contains("nicebill_status 1\n")
                && text.contains("# TYPE nicebill_charged_total counter"),
            "{text}"
        );
    }
}
