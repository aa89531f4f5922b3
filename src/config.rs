//! The TOML configuration file: raw structs that refuse unknown keys, validated into
//! [`Config`]. Every error names the file, the key and the problem.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::billing::engine::EngineSettings;
use crate::billing::plan::{FinalState, Policy};
use crate::domain::{FieldError, MerchantKey, Mid};
use crate::gateway::nicepay::client::BaseUrl;
use crate::gateway::nicepay::{Charset, ClientSettings, EdiType, NicepayClient};
use crate::gateway::nicepay_v1::crypto::EncMode;
use crate::gateway::nicepay_v1::{Auth, ClientKey, SecretKey, V1Settings};
use crate::gateway::{ApiKind, Gateway};

/// The web API's production host.
const WEBAPI_BASE_URL: &str = "https://webapi.nicepay.co.kr";
use crate::schedule::{CatchUp, parse_timezone};
use crate::storage::DbUrl;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("{file}: {key}: {problem}")]
    Invalid {
        file: PathBuf,
        key: &'static str,
        problem: String,
    },
}

/// `[nicepay]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNicepay {
    /// `"webapi"` (default) or `"v1"`.
    #[serde(default)]
    api: Option<String>,
    // The web API's merchant and key.
    #[serde(default)]
    mid: Option<String>,
    merchant_key_file: Option<PathBuf>,
    merchant_key_env: Option<String>,
    /// Works, but warns: keys belong in a file or the environment.
    merchant_key: Option<String>,
    // v1's shop keys and options.
    #[serde(default)]
    client_key: Option<String>,
    secret_key_file: Option<PathBuf>,
    secret_key_env: Option<String>,
    /// Works, but warns, like `merchant_key`.
    secret_key: Option<String>,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    sign_requests: Option<bool>,
    #[serde(default)]
    enc_mode: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    connect_timeout: Option<String>,
    #[serde(default)]
    read_timeout: Option<String>,
    #[serde(default)]
    charset: Option<String>,
    #[serde(default)]
    edi_type: Option<String>,
    /// Requests per second each instance sends at most (default: no limit).
    #[serde(default)]
    max_requests_per_second: Option<u32>,
}

/// `[nicepay]`, validated: which API, and its settings.
#[derive(Debug, Clone)]
pub enum NicepayConfig {
    Webapi(ClientSettings),
    V1(V1Settings),
}

impl NicepayConfig {
    pub fn api(&self) -> ApiKind {
        match self {
            NicepayConfig::Webapi(_) => ApiKind::Webapi,
            NicepayConfig::V1(_) => ApiKind::V1,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        match self {
            NicepayConfig::Webapi(s) => s.connect_timeout,
            NicepayConfig::V1(s) => s.connect_timeout,
        }
    }

    pub fn read_timeout(&self) -> Duration {
        match self {
            NicepayConfig::Webapi(s) => s.read_timeout,
            NicepayConfig::V1(s) => s.read_timeout,
        }
    }

    pub fn max_requests_per_second(&self) -> Option<std::num::NonZeroU32> {
        match self {
            NicepayConfig::Webapi(s) => s.max_requests_per_second,
            NicepayConfig::V1(s) => s.max_requests_per_second,
        }
    }

    pub fn base_url(&self) -> &str {
        match self {
            NicepayConfig::Webapi(s) => s.base_url.as_str(),
            NicepayConfig::V1(s) => s.base_url.as_str(),
        }
    }

    /// Who we are at NICEPAY, for messages: the MID, or v1's client key (not a secret).
    pub fn merchant(&self) -> String {
        match self {
            NicepayConfig::Webapi(s) => format!("MID {}", s.mid),
            NicepayConfig::V1(s) => format!("client key {}", s.client_key),
        }
    }

    /// The gateway these settings make.
    pub fn gateway(&self, clock: crate::clock::SharedClock) -> Result<Gateway, String> {
        match self {
            NicepayConfig::Webapi(s) => NicepayClient::new(s.clone(), clock)
                .map(Gateway::from)
                .map_err(|e| e.to_string()),
            NicepayConfig::V1(s) => Gateway::v1(s.clone(), clock),
        }
    }
}

/// `[database]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    auto_migrate: Option<bool>,
    max_connections: Option<u32>,
}

/// `[scheduler]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    tick: Option<String>,
    timezone: Option<String>,
    concurrency: Option<usize>,
    batch: Option<i64>,
    lease: Option<String>,
    catch_up: Option<String>,
    moid_prefix: Option<String>,
    settle_margin: Option<String>,
}

/// `[retry]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    retry_after: Option<Vec<String>>,
    final_state: Option<String>,
    request_error_retry: Option<String>,
    resend_after: Option<String>,
    transient_max_elapsed: Option<String>,
    lookup_max_interval: Option<String>,
    removal_max_interval: Option<String>,
    throttle_pause: Option<String>,
    late_check_after: Option<String>,
}

/// `[health]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    file: Option<PathBuf>,
    prometheus_file: Option<PathBuf>,
    webhook_max_age: Option<String>,
}

/// `[webhook]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    url: Option<String>,
    secret_file: Option<PathBuf>,
    secret_env: Option<String>,
    /// Refused: the signing secret belongs in a file or the environment.
    secret: Option<String>,
    timeout: Option<String>,
    retry_after: Option<Vec<String>>,
    events: Option<Vec<String>>,
    keep: Option<String>,
    upcoming_lead: Option<Vec<String>>,
}

/// `[log]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    nicepay: RawNicepay,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    scheduler: RawScheduler,
    #[serde(default)]
    retry: RawRetry,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    webhook: RawWebhook,
    #[serde(default)]
    log: RawLog,
}

/// `[health]`.
#[derive(Debug, Clone, Default)]
pub struct HealthConfig {
    /// The JSON health file, replaced after every pass.
    pub file: Option<PathBuf>,
    /// The same figures for node_exporter's textfile collector.
    pub prometheus_file: Option<PathBuf>,
    /// Health is `degraded` when the oldest undelivered webhook is older than this.
    pub webhook_max_age: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub json: bool,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            json: false,
            level: "info".into(),
        }
    }
}

impl LogConfig {
    fn from_raw(raw: &RawLog) -> Result<Self, KeyProblem> {
        let json = match raw.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err((
                    "log.format",
                    format!("{other:?}: expected \"text\" or \"json\""),
                ));
            }
        };
        let level = raw.level.clone().unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&level)
            .map_err(|e| ("log.level", format!("{level:?}: {e}")))?;
        Ok(Self { json, level })
    }

    /// The `[log]` section of a config file, read before anything else so that logging can
    /// start; any problem yields the defaults (loading the config proper reports it).
    pub fn peek(file: &Path) -> LogConfig {
        #[derive(Deserialize)]
        struct OnlyLog {
            #[serde(default)]
            log: RawLog,
        }
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| toml::from_str::<OnlyLog>(&t).ok())
            .and_then(|c| LogConfig::from_raw(&c.log).ok())
            .unwrap_or_default()
    }
}

/// `[database]`.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: DbUrl,
    pub auto_migrate: bool,
    pub max_connections: u32,
}

/// `[scheduler]` and `[retry]`, except what lives in [`Policy`].
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// 6-field cron (seconds first) of the daemon's passes, in UTC.
    pub tick: String,
    pub concurrency: usize,
    pub batch: i64,
    pub lease: Duration,
    pub settle_margin: Duration,
    pub transient_max_elapsed: Duration,
    pub lookup_max_interval: Duration,
    pub removal_max_interval: Duration,
    pub throttle_pause: Duration,
    pub late_check_after: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub nicepay: NicepayConfig,
    pub database: DatabaseConfig,
    pub scheduler: SchedulerConfig,
    pub policy: Policy,
    pub health: HealthConfig,
    pub webhook: WebhookConfig,
    pub log: LogConfig,
    /// Things worth telling the operator that do not stop startup (logged once tracing runs).
    pub warnings: Vec<String>,
}

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        let mut warnings = Vec::new();
        if let Some(w) = loose_permissions(file) {
            warnings.push(w);
        }
        Self::parse(file, &text, |name| std::env::var(name).ok(), warnings)
    }

    /// Parses config text; `env` looks up environment variables (injectable for tests). An
    /// error never quotes a secret the text holds: an inline `merchant_key`'s value and any
    /// URL's password are replaced by `***` (with the whole value of a line holding one).
    pub fn parse(
        file: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        warnings: Vec<String>,
    ) -> Result<Config, ConfigError> {
        Self::parse_text(file, text, env, warnings).map_err(|e| redact_error(e, text))
    }

    fn parse_text(
        file: &Path,
        text: &str,
        env: impl Fn(&str) -> Option<String>,
        mut warnings: Vec<String>,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().replace('\n', " | "),
        })?;
        let invalid = |key: &'static str, problem: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            problem,
        };

        let nicepay =
            nicepay(raw.nicepay, file, &env, &mut warnings).map_err(|(k, p)| invalid(k, p))?;
        let database = database(&raw.database).map_err(|(k, p)| invalid(k, p))?;
        let (scheduler, mut policy) =
            scheduling(&raw.scheduler, &raw.retry).map_err(|(k, p)| invalid(k, p))?;
        policy.api = nicepay.api();
        let log = LogConfig::from_raw(&raw.log).map_err(|(k, p)| invalid(k, p))?;
        let webhook = webhook(&raw.webhook, &env, &mut warnings).map_err(|(k, p)| invalid(k, p))?;
        let health = HealthConfig {
            file: raw.health.file,
            prometheus_file: raw.health.prometheus_file,
            webhook_max_age: WEBHOOK_MAX_AGE
                .read(&raw.health.webhook_max_age, defaults::WEBHOOK_MAX_AGE)
                .map_err(|(k, p)| invalid(k, p))?,
        };
        Ok(Config {
            file: file.to_owned(),
            nicepay,
            database,
            scheduler,
            policy,
            health,
            webhook,
            log,
            warnings,
        })
    }

    /// The engine's settings for an instance called `owner`.
    pub fn engine_settings(&self, owner: String) -> EngineSettings {
        let s = &self.scheduler;
        let call = self
            .nicepay
            .connect_timeout()
            .saturating_add(self.nicepay.read_timeout());
        let mut e = EngineSettings::new(owner, self.policy.clone(), call);
        e.concurrency = s.concurrency;
        e.batch = s.batch;
        e.lease = s.lease;
        e.settle_margin = s.settle_margin;
        e.transient.max_elapsed = s.transient_max_elapsed;
        e.lookup_retry.max_interval = s.lookup_max_interval;
        e.removal_retry.max_interval = s.removal_max_interval;
        e.throttle_pause = s.throttle_pause;
        e.late_check_after = s.late_check_after;
        e.upcoming_lead = self.webhook.upcoming_lead.clone();
        e
    }
}

type KeyProblem = (&'static str, String);

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Defaults of the `[scheduler]` and `[retry]` keys the engine uses, written only here
/// ([`EngineSettings::new`] takes them from here too). The other defaults are each written
/// once as well: NICEPAY timeouts in [`ClientSettings`], dunning waits, `request_error_retry`
/// and `resend_after` in [`Policy::default`], the rest where their key is read below.
pub mod defaults {
    use std::time::Duration;

    pub const TICK: &str = "*/10 * * * * *";
    /// Approvals in flight at once; also the default batch.
    pub const CONCURRENCY: usize = 16;
    pub const LEASE: Duration = Duration::from_secs(30);
    pub const SETTLE_MARGIN: Duration = Duration::from_secs(60);
    pub const TRANSIENT_MAX_ELAPSED: Duration = Duration::from_secs(10);
    pub const LOOKUP_MAX_INTERVAL: Duration = Duration::from_secs(600);
    pub const REMOVAL_MAX_INTERVAL: Duration = Duration::from_secs(6 * 3600);
    pub const THROTTLE_PAUSE: Duration = Duration::from_secs(5);
    pub const LATE_CHECK_AFTER: Duration = Duration::from_secs(24 * 3600);
    /// `[webhook]`: one delivery try, the waits between tries (about 3 days in all), how long
    /// the outbox keeps events; `[health]`'s limit on the oldest undelivered one.
    pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
    pub const WEBHOOK_RETRY_AFTER: [Duration; 7] = [
        Duration::from_secs(60),
        Duration::from_secs(5 * 60),
        Duration::from_secs(30 * 60),
        Duration::from_secs(2 * 3600),
        Duration::from_secs(6 * 3600),
        Duration::from_secs(24 * 3600),
        Duration::from_secs(48 * 3600),
    ];
    pub const WEBHOOK_KEEP: Duration = Duration::from_secs(90 * 24 * 3600);
    pub const WEBHOOK_MAX_AGE: Duration = Duration::from_secs(3600);
    /// `charge.upcoming` a week before each cycle (a merchant bound by the E-Commerce Act's
    /// 30-day notice sets `["30d", "7d"]`).
    pub const UPCOMING_LEAD: [Duration; 1] = [Duration::from_secs(7 * 24 * 3600)];
}

/// The allowed values of one duration key, inclusive.
#[derive(Clone, Copy, Debug)]
struct Range {
    key: &'static str,
    min: Duration,
    max: Duration,
}

// The allowed range of every duration key, stated once. Why these bounds:
// - One HTTP call's timeouts, and the in-process resend budget, are at most 10 min: NICEPAY
//   answers in seconds, and these make up the settle window (below), which keeps a
//   subscription with an unresolved attempt from being charged.
// - A claim's lease and the settle margin are at most a day: a dead instance's work must be
//   taken over, and an unresolved attempt concluded, the same day.
// - Lookups of an unresolved attempt are at most a day apart, for the same reason.
// - Waits between tries (dunning, request errors, resends, billkey removal) are at most 400
//   days: a yearly subscription's dunning can span a year; longer is surely a typo.
// - The throttle pause stops all sending in-process: at most an hour.
// - Nothing is zero (a zero wait is a busy loop, a zero timeout fails every call); the
//   smallest values are 1 ms for in-process timers and 1 s for what is stored in the database.
// Together they keep every sum formed downstream far from overflow: the settle window is at
// most 2 × (10 + 10) min + 10 min + 1 day, `run --once` waits at most 3 × that + 1 day, and
// every "now + wait" is at most 400 days ahead.
const CONNECT_TIMEOUT: Range = range("nicepay.connect_timeout", MS, MINUTE.saturating_mul(10));
const READ_TIMEOUT: Range = range("nicepay.read_timeout", MS, MINUTE.saturating_mul(10));
const LEASE: Range = range("scheduler.lease", SECOND, DAY);
const SETTLE_MARGIN: Range = range("scheduler.settle_margin", SECOND, DAY);
const RETRY_AFTER: Range = range("retry.retry_after", SECOND, DAY.saturating_mul(400));
const REQUEST_ERROR_RETRY: Range =
    range("retry.request_error_retry", SECOND, DAY.saturating_mul(400));
const RESEND_AFTER: Range = range("retry.resend_after", SECOND, DAY.saturating_mul(400));
const TRANSIENT_MAX_ELAPSED: Range =
    range("retry.transient_max_elapsed", MS, MINUTE.saturating_mul(10));
const LOOKUP_MAX_INTERVAL: Range = range("retry.lookup_max_interval", SECOND, DAY);
const REMOVAL_MAX_INTERVAL: Range = range(
    "retry.removal_max_interval",
    SECOND,
    DAY.saturating_mul(400),
);
const THROTTLE_PAUSE: Range = range("retry.throttle_pause", MS, HOUR);
/// A late check looks for approvals that landed after "not found": never before the settle
/// window could have passed, never later than a card's billing period.
const LATE_CHECK_AFTER: Range = range("retry.late_check_after", SECOND, DAY.saturating_mul(400));
const WEBHOOK_TIMEOUT: Range = range("webhook.timeout", MS, MINUTE.saturating_mul(10));
const WEBHOOK_RETRY_AFTER: Range = range("webhook.retry_after", SECOND, DAY.saturating_mul(30));
const WEBHOOK_KEEP: Range = range("webhook.keep", HOUR, DAY.saturating_mul(3650));
const WEBHOOK_MAX_AGE: Range = range("health.webhook_max_age", SECOND, DAY.saturating_mul(30));
/// A notice before a charge: at least a minute (a shorter one is the charge itself), at most
/// 400 days (a yearly cycle's notice).
const UPCOMING_LEAD: Range = range("webhook.upcoming_lead", MINUTE, DAY.saturating_mul(400));
/// At most this many notices per cycle.
const MAX_UPCOMING_LEAD: usize = 10;
/// At most this many dunning waits (declined tries of one cycle).
const MAX_RETRY_AFTER: usize = 100;
/// `nicepay.max_requests_per_second` at most (far above what one instance sends).
const MAX_REQUESTS_PER_SECOND: u32 = 100_000;

const fn range(key: &'static str, min: Duration, max: Duration) -> Range {
    Range { key, min, max }
}

impl Range {
    fn parse(&self, text: &str) -> Result<Duration, String> {
        let d = parse_duration(text)?;
        if d < self.min || d > self.max {
            return Err(format!(
                "{text:?} is out of range (allowed: {} to {})",
                show(self.min),
                show(self.max)
            ));
        }
        Ok(d)
    }

    /// The key's value, or `default` when the file does not set it.
    fn read(&self, value: &Option<String>, default: Duration) -> Result<Duration, KeyProblem> {
        match value {
            Some(text) => self.parse(text).map_err(|p| (self.key, p)),
            None => Ok(default),
        }
    }
}

/// `400d`, `10m`, `1s`, `1ms`: the largest unit that divides the duration.
fn show(d: Duration) -> String {
    for (unit, name) in [
        (DAY, "d"),
        (HOUR, "h"),
        (MINUTE, "m"),
        (SECOND, "s"),
        (MS, "ms"),
    ] {
        if d.as_nanos() % unit.as_nanos() == 0 {
            return format!("{}{name}", d.as_nanos() / unit.as_nanos());
        }
    }
    format!("{d:?}")
}

/// `[webhook]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where deliveries go; `None`: events are kept in the outbox for pollers only.
    pub url: Option<reqwest::Url>,
    /// Required with a URL.
    pub secret: Option<crate::webhook::WebhookSecret>,
    pub timeout: Duration,
    pub retry_after: Vec<Duration>,
    /// The types delivered; `None`: all.
    pub events: Option<Vec<crate::billing::model::WebhookKind>>,
    pub keep: Duration,
    /// `charge.upcoming` notices: how long before each cycle comes due (empty: none).
    pub upcoming_lead: crate::billing::model::NoticeLeads,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            timeout: defaults::WEBHOOK_TIMEOUT,
            retry_after: defaults::WEBHOOK_RETRY_AFTER.to_vec(),
            events: None,
            keep: defaults::WEBHOOK_KEEP,
            upcoming_lead: crate::billing::model::NoticeLeads::new(defaults::UPCOMING_LEAD),
        }
    }
}

/// A list of waits (`retry.retry_after`, `webhook.retry_after`): at most [`MAX_RETRY_AFTER`],
/// each in `range`; `default` when the file does not set it. `per` says what each wait is for.
fn durations(
    range: Range,
    values: &Option<Vec<String>>,
    default: &[Duration],
    per: &str,
) -> Result<Vec<Duration>, KeyProblem> {
    let Some(values) = values else {
        return Ok(default.to_vec());
    };
    if values.len() > MAX_RETRY_AFTER {
        return Err((
            range.key,
            format!("{} waits: at most {MAX_RETRY_AFTER} ({per})", values.len()),
        ));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            range
                .parse(v)
                .map_err(|p| (range.key, format!("entry {}: {p}", i + 1)))
        })
        .collect()
}

fn webhook(
    raw: &RawWebhook,
    env: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<WebhookConfig, KeyProblem> {
    use crate::billing::model::WebhookKind;
    use crate::webhook::WebhookSecret;
    if raw.secret.is_some() {
        return Err((
            "webhook.secret",
            "an inline secret is refused: put it in a file (secret_file) or the environment \
             (secret_env)"
                .into(),
        ));
    }
    let url = match &raw.url {
        None => None,
        Some(text) => Some(crate::webhook::parse_url(text).map_err(|p| ("webhook.url", p))?),
    };
    let secret_text = match (&raw.secret_file, &raw.secret_env) {
        (Some(path), None) => Some((
            "webhook.secret_file",
            read_secret_file("webhook.secret_file", path, warnings)?,
        )),
        (None, Some(var)) => Some((
            "webhook.secret_env",
            env(var).ok_or_else(|| {
                (
                    "webhook.secret_env",
                    format!("environment variable {var} is not set"),
                )
            })?,
        )),
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err((
                "webhook.secret_file",
                "set only one of secret_file, secret_env".into(),
            ));
        }
    };
    let secret = match secret_text {
        Some((key, text)) => Some(WebhookSecret::parse(&text).map_err(|e| (key, e.problem))?),
        None => None,
    };
    if url.is_some() && secret.is_none() {
        return Err((
            "webhook.secret_file",
            "a webhook url needs a signing secret: set secret_file or secret_env".into(),
        ));
    }
    let events = match &raw.events {
        None => None,
        Some(names) => Some(
            names
                .iter()
                .map(|n| {
                    n.parse::<WebhookKind>().map_err(|_| {
                        (
                            "webhook.events",
                            format!(
                                "{n:?} is not an event type (charge.approved, \
                                 subscription.past_due, …; see README \"Webhooks\")"
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let retry_after = durations(
        WEBHOOK_RETRY_AFTER,
        &raw.retry_after,
        &defaults::WEBHOOK_RETRY_AFTER,
        "one per failed delivery try",
    )?;
    let lead = raw.upcoming_lead.as_deref().unwrap_or_default();
    if lead.len() > MAX_UPCOMING_LEAD {
        return Err((
            UPCOMING_LEAD.key,
            format!("{} leads: at most {MAX_UPCOMING_LEAD}", lead.len()),
        ));
    }
    let upcoming_lead = crate::billing::model::NoticeLeads::new(durations(
        UPCOMING_LEAD,
        &raw.upcoming_lead,
        &defaults::UPCOMING_LEAD,
        "one notice per lead and cycle",
    )?);
    Ok(WebhookConfig {
        url,
        secret,
        upcoming_lead,
        timeout: WEBHOOK_TIMEOUT.read(&raw.timeout, defaults::WEBHOOK_TIMEOUT)?,
        retry_after,
        events,
        keep: WEBHOOK_KEEP.read(&raw.keep, defaults::WEBHOOK_KEEP)?,
    })
}

/// How long after its commit an attempt can no longer be in flight anywhere: sent by
/// `settle_margin` at the latest, in-process resends of a request that never left for up to
/// `transient_max_elapsed`, and a call of at most `call_timeout` (connect + read) — twice, to
/// be safe. Saturating, though the bounds above keep it near a day at most.
pub fn settle_window(
    call_timeout: Duration,
    transient_max_elapsed: Duration,
    settle_margin: Duration,
) -> Duration {
    call_timeout
        .saturating_mul(2)
        .saturating_add(transient_max_elapsed)
        .saturating_add(settle_margin)
}

/// A key read from exactly one of its file, its environment variable or (with a warning) the
/// config text. `names` are the three keys, `what` how the key is called in messages.
fn one_secret(
    what: &str,
    names: [&'static str; 3],
    (file_path, var, inline): (&Option<PathBuf>, &Option<String>, &Option<String>),
    file: &Path,
    env: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<(String, &'static str, String), KeyProblem> {
    let [file_key, env_key, inline_key] = names;
    match (file_path, var, inline) {
        (Some(path), None, None) => Ok((
            read_secret_file(file_key, path, warnings)?,
            file_key,
            format!("{}: ", path.display()),
        )),
        (None, Some(var), None) => env(var)
            .map(|text| (text, env_key, format!("${var}: ")))
            .ok_or_else(|| (env_key, format!("environment variable {var} is not set"))),
        (None, None, Some(inline)) => {
            warnings.push(format!(
                "{}: {inline_key} is inline; prefer {} or {} so the key stays out of the config file",
                file.display(),
                file_key.rsplit('.').next().unwrap_or(file_key),
                env_key.rsplit('.').next().unwrap_or(env_key),
            ));
            Ok((inline.clone(), inline_key, String::new()))
        }
        (None, None, None) => Err((
            file_key,
            format!(
                "no {what}: set one of {}, {}",
                file_key.rsplit('.').next().unwrap_or(file_key),
                env_key.rsplit('.').next().unwrap_or(env_key)
            ),
        )),
        _ => Err((
            file_key,
            format!(
                "set only one of {}, {}, {}",
                file_key.rsplit('.').next().unwrap_or(file_key),
                env_key.rsplit('.').next().unwrap_or(env_key),
                inline_key.rsplit('.').next().unwrap_or(inline_key)
            ),
        )),
    }
}

/// `[nicepay]`: the API named by `api`, and only the keys that API uses.
fn nicepay(
    n: RawNicepay,
    file: &Path,
    env: &impl Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<NicepayConfig, KeyProblem> {
    let api = match n.api.as_deref() {
        None => ApiKind::Webapi,
        Some(text) => ApiKind::parse(text).ok_or_else(|| {
            (
                "nicepay.api",
                format!("{text:?}: expected \"webapi\" (the legacy web API) or \"v1\""),
            )
        })?,
    };
    let not_for = |key: &'static str, set: bool| -> Result<(), KeyProblem> {
        if set {
            Err((
                key,
                format!(
                    "is not used with api = \"{api}\" (remove it, or set api = \"{}\")",
                    match api {
                        ApiKind::Webapi => "v1",
                        ApiKind::V1 => "webapi",
                    }
                ),
            ))
        } else {
            Ok(())
        }
    };
    let field = |key: &'static str| move |e: FieldError| (key, e.problem);
    let timeout =
        |range: Range, value: &Option<String>, default: Duration| range.read(value, default);
    let rate = match n.max_requests_per_second {
        None => None,
        Some(rate) => Some(
            std::num::NonZeroU32::new(rate)
                .filter(|r| r.get() <= MAX_REQUESTS_PER_SECOND)
                .ok_or_else(|| {
                    (
                        "nicepay.max_requests_per_second",
                        format!(
                            "{rate} is out of range (allowed: 1 to {MAX_REQUESTS_PER_SECOND}; \
                             leave it out for no limit)"
                        ),
                    )
                })?,
        ),
    };
    match api {
        ApiKind::Webapi => {
            not_for("nicepay.client_key", n.client_key.is_some())?;
            not_for(
                "nicepay.secret_key_file",
                n.secret_key_file.is_some() || n.secret_key_env.is_some() || n.secret_key.is_some(),
            )?;
            not_for("nicepay.auth", n.auth.is_some())?;
            not_for("nicepay.sign_requests", n.sign_requests.is_some())?;
            not_for("nicepay.enc_mode", n.enc_mode.is_some())?;
            let mid = n.mid.ok_or((
                "nicepay.mid",
                "missing: the merchant id NICEPAY issued (10 characters)".to_owned(),
            ))?;
            let mid = Mid::new(mid).map_err(field("nicepay.mid"))?;
            let (text, key, place) = one_secret(
                "merchant key",
                [
                    "nicepay.merchant_key_file",
                    "nicepay.merchant_key_env",
                    "nicepay.merchant_key",
                ],
                (&n.merchant_key_file, &n.merchant_key_env, &n.merchant_key),
                file,
                env,
                warnings,
            )?;
            let key = MerchantKey::new(text)
                .map_err(|e| (key, format!("{place}the key {}", e.problem)))?;
            let base_url = BaseUrl::parse(n.base_url.as_deref().unwrap_or(WEBAPI_BASE_URL))
                .map_err(field("nicepay.base_url"))?;
            let mut settings = ClientSettings::new(base_url, mid, key);
            settings.connect_timeout = timeout(
                CONNECT_TIMEOUT,
                &n.connect_timeout,
                settings.connect_timeout,
            )?;
            settings.read_timeout = timeout(READ_TIMEOUT, &n.read_timeout, settings.read_timeout)?;
            if let Some(c) = &n.charset {
                settings.charset = Charset::parse(c).ok_or_else(|| {
                    (
                        "nicepay.charset",
                        format!("{c:?}: expected \"euc-kr\" or \"utf-8\""),
                    )
                })?;
            }
            if let Some(e) = &n.edi_type {
                settings.edi_type = EdiType::parse(e).ok_or_else(|| {
                    (
                        "nicepay.edi_type",
                        format!("{e:?}: expected \"JSON\" or \"KV\""),
                    )
                })?;
            }
            settings.max_requests_per_second = rate;
            Ok(NicepayConfig::Webapi(settings))
        }
        ApiKind::V1 => {
            not_for("nicepay.mid", n.mid.is_some())?;
            not_for(
                "nicepay.merchant_key_file",
                n.merchant_key_file.is_some()
                    || n.merchant_key_env.is_some()
                    || n.merchant_key.is_some(),
            )?;
            not_for("nicepay.charset", n.charset.is_some())?;
            not_for("nicepay.edi_type", n.edi_type.is_some())?;
            let client_key = n.client_key.ok_or((
                "nicepay.client_key",
                "missing: the client key from the console's 개발정보 (developer info)".to_owned(),
            ))?;
            let client_key = ClientKey::new(client_key).map_err(field("nicepay.client_key"))?;
            let (text, key, place) = one_secret(
                "secret key",
                [
                    "nicepay.secret_key_file",
                    "nicepay.secret_key_env",
                    "nicepay.secret_key",
                ],
                (&n.secret_key_file, &n.secret_key_env, &n.secret_key),
                file,
                env,
                warnings,
            )?;
            let secret =
                SecretKey::new(text).map_err(|e| (key, format!("{place}the key {}", e.problem)))?;
            let base_url = BaseUrl::parse(n.base_url.as_deref().unwrap_or(V1Settings::PRODUCTION))
                .map_err(field("nicepay.base_url"))?;
            let mut settings = V1Settings::new(base_url, client_key, secret);
            if let Some(a) = &n.auth {
                settings.auth = Auth::parse(a).ok_or_else(|| {
                    (
                        "nicepay.auth",
                        format!("{a:?}: expected \"basic\" or \"bearer\""),
                    )
                })?;
            }
            if let Some(m) = &n.enc_mode {
                settings.enc_mode = match m.as_str() {
                    "A2" => EncMode::A2,
                    "aes128-ecb" => EncMode::Aes128Ecb,
                    _ => {
                        return Err((
                            "nicepay.enc_mode",
                            format!(
                                "{m:?}: expected \"A2\" (AES-256-CBC, default) or \"aes128-ecb\""
                            ),
                        ));
                    }
                };
            }
            settings.sign_requests = n.sign_requests.unwrap_or(false);
            settings.connect_timeout = timeout(
                CONNECT_TIMEOUT,
                &n.connect_timeout,
                settings.connect_timeout,
            )?;
            settings.read_timeout = timeout(READ_TIMEOUT, &n.read_timeout, settings.read_timeout)?;
            settings.max_requests_per_second = rate;
            Ok(NicepayConfig::V1(settings))
        }
    }
}

fn database(raw: &RawDatabase) -> Result<DatabaseConfig, KeyProblem> {
    let url = DbUrl::parse(raw.url.as_deref().unwrap_or("sqlite://nicebill.db"))
        .map_err(|e| ("database.url", e.problem))?;
    let max_connections = raw.max_connections.unwrap_or(8);
    if !(1..=256).contains(&max_connections) {
        return Err((
            "database.max_connections",
            format!("{max_connections}: expected 1 to 256"),
        ));
    }
    Ok(DatabaseConfig {
        url,
        auto_migrate: raw.auto_migrate.unwrap_or(true),
        max_connections,
    })
}

fn scheduling(s: &RawScheduler, r: &RawRetry) -> Result<(SchedulerConfig, Policy), KeyProblem> {
    let policy_defaults = Policy::default();
    let tick = s.tick.clone().unwrap_or_else(|| defaults::TICK.to_owned());
    // Not a duration, but bounded all the same: a tick that never fires would never pass.
    let tick_cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(&tick)
        .map_err(|e| {
            (
                "scheduler.tick",
                format!("{tick:?} is not a 6-field cron expression (seconds first): {e}"),
            )
        })?;
    if tick_cron
        .find_next_occurrence(&crate::clock::Clock::now(&crate::clock::SystemClock), false)
        .is_err()
    {
        return Err(("scheduler.tick", format!("{tick:?} never fires")));
    }
    let timezone = match &s.timezone {
        Some(tz) => parse_timezone("scheduler.timezone", tz).map_err(|e| (e.field, e.problem))?,
        None => policy_defaults.timezone,
    };
    let concurrency = s.concurrency.unwrap_or(defaults::CONCURRENCY);
    if !(1..=1024).contains(&concurrency) {
        return Err((
            "scheduler.concurrency",
            format!("{concurrency}: expected 1 to 1024"),
        ));
    }
    let batch = s.batch.unwrap_or(concurrency as i64);
    if !(1..=10_000).contains(&batch) {
        return Err(("scheduler.batch", format!("{batch}: expected 1 to 10000")));
    }
    let catch_up = match s.catch_up.as_deref() {
        None | Some("latest") => CatchUp::Latest,
        Some("all") => CatchUp::All,
        Some(other) => {
            return Err((
                "scheduler.catch_up",
                format!("{other:?}: expected \"latest\" or \"all\""),
            ));
        }
    };
    let moid_prefix = s.moid_prefix.clone().unwrap_or_default();
    if moid_prefix.len() > 20
        || !moid_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err((
            "scheduler.moid_prefix",
            format!("{moid_prefix:?}: at most 20 characters of A-Z, a-z, 0-9, '-' and '_'"),
        ));
    }
    let retry_after = durations(
        RETRY_AFTER,
        &r.retry_after,
        &policy_defaults.retry_after,
        "one per declined try of a cycle",
    )?;
    let final_state = match r.final_state.as_deref() {
        None | Some("past_due") => FinalState::PastDue,
        Some("cancelled") => FinalState::Cancelled,
        Some(other) => {
            return Err((
                "retry.final_state",
                format!("{other:?}: expected \"past_due\" or \"cancelled\""),
            ));
        }
    };
    let policy = Policy {
        timezone,
        catch_up,
        retry_after,
        final_state,
        moid_prefix,
        request_error_retry: REQUEST_ERROR_RETRY
            .read(&r.request_error_retry, policy_defaults.request_error_retry)?,
        resend_after: RESEND_AFTER.read(&r.resend_after, policy_defaults.resend_after)?,
        // From `[nicepay] api`, once that is read.
        api: policy_defaults.api,
    };
    let scheduler = SchedulerConfig {
        tick,
        concurrency,
        batch,
        lease: LEASE.read(&s.lease, defaults::LEASE)?,
        settle_margin: SETTLE_MARGIN.read(&s.settle_margin, defaults::SETTLE_MARGIN)?,
        transient_max_elapsed: TRANSIENT_MAX_ELAPSED
            .read(&r.transient_max_elapsed, defaults::TRANSIENT_MAX_ELAPSED)?,
        lookup_max_interval: LOOKUP_MAX_INTERVAL
            .read(&r.lookup_max_interval, defaults::LOOKUP_MAX_INTERVAL)?,
        removal_max_interval: REMOVAL_MAX_INTERVAL
            .read(&r.removal_max_interval, defaults::REMOVAL_MAX_INTERVAL)?,
        throttle_pause: THROTTLE_PAUSE.read(&r.throttle_pause, defaults::THROTTLE_PAUSE)?,
        late_check_after: LATE_CHECK_AFTER.read(&r.late_check_after, defaults::LATE_CHECK_AFTER)?,
    };
    Ok((scheduler, policy))
}

/// Parses `"15s"`, `"500ms"`, `"2m"`; refuses zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like \"15s\" or \"500ms\": {e}"))?;
    if d.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(d)
}

/// The secrets a config text holds: the value of any `merchant_key` or `secret_key` assignment (as written,
/// quoted or not, terminated or not) and the password of anything URL-like
/// (`user:password@host`), with the whole value of any line holding one, so that an error
/// quoting the line quotes none of it.
fn secrets_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut value_of = |value: &str| {
        let value = value.trim();
        found.push(value.to_owned());
        found.push(value.trim_matches(|c| c == '"' || c == '\'').to_owned());
    };
    for line in text.lines() {
        let (key, value) = line.split_once('=').unwrap_or(("", line));
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        let secret_key = |name: &str| {
            key == name || key.ends_with(&format!(".{name}")) || key.ends_with(&format!("{{{name}"))
        };
        if secret_key("merchant_key") || secret_key("secret") || secret_key("secret_key") {
            value_of(value);
        }
        if line.contains('@') {
            value_of(value);
        }
    }
    let mut passwords = Vec::new();
    for (at, _) in text.match_indices('@') {
        let userinfo = text[..at]
            .rsplit(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '/' | '='))
            .next()
            .unwrap_or_default();
        if let Some((_, password)) = userinfo.split_once(':') {
            passwords.push(password.to_owned());
            passwords.push(
                percent_encoding::percent_decode_str(password)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
    }
    found.extend(passwords);
    // Longest first, so that a secret's own parts do not break its redaction.
    found.retain(|s| s.chars().count() >= 3);
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

/// The error with every secret of `text` replaced by `***`.
fn redact_error(e: ConfigError, text: &str) -> ConfigError {
    let secrets = secrets_in(text);
    let redact = |message: String| {
        secrets
            .iter()
            .fold(message, |m, secret| m.replace(secret.as_str(), "***"))
    };
    match e {
        ConfigError::Read { .. } => e,
        ConfigError::Syntax { file, message } => ConfigError::Syntax {
            file,
            message: redact(message),
        },
        ConfigError::Invalid { file, key, problem } => ConfigError::Invalid {
            file,
            key,
            problem: redact(problem),
        },
    }
}

/// A secret's file (`key` names it in errors), with a warning when others may read it.
fn read_secret_file(
    key: &'static str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<String, KeyProblem> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| (key, format!("cannot read {}: {e}", path.display())))?;
    if let Some(w) = loose_permissions(path) {
        warnings.push(w);
    }
    Ok(text)
}

/// A warning when a file that may hold secrets is readable by others, or by a group other than
/// the one nicebill runs as (`root:nicebill 0640`, as the systemd unit installs it, is fine).
pub fn loose_permissions(path: &Path) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode();
    let by_others = mode & 0o007 != 0;
    let by_foreign_group = mode & 0o070 != 0 && Some(meta.gid()) != effective_gid();
    (by_others || by_foreign_group).then(|| {
        format!(
            "{} is readable by {} (mode {:o}); chmod 600 it (or 640 with nicebill's group)",
            path.display(),
            if by_others { "others" } else { "another group" },
            mode & 0o777
        )
    })
}

/// This process's effective group id, from /proc (no libc binding needed for one number).
fn effective_gid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Gid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "b+zhZ4yOZ7FsH8pm5lhDfHZEb79tIwnjsdA0FBXh86yLc6BJeFVrZFXhAoJ3gEWgrWwN+lJMV0W4hvDdbe4Sjw==";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("test.toml"),
            text,
            |v| (v == "NB_KEY").then(|| KEY.to_owned()),
            Vec::new(),
        )
    }

    const V1_SECRET: &str = "4f13ca267dfa4fc6964148bedcda15ef";

    fn parse_v1(nicepay: &str) -> Result<Config, ConfigError> {
        Config::parse(
            Path::new("test.toml"),
            &format!("[nicepay]\napi = \"v1\"\n{nicepay}"),
            |v| (v == "NB_V1").then(|| V1_SECRET.to_owned()),
            Vec::new(),
        )
    }

    #[test]
    fn v1_config_takes_its_own_keys_and_defaults() {
        let c = parse_v1(
            "client_key = \"S2_af4543a0be4d49a98122e01ec2059a56\"\nsecret_key_env = \"NB_V1\"\nauth = \"bearer\"\n",
        )
        .unwrap();
        let NicepayConfig::V1(v1) = &c.nicepay else {
            panic!("v1 expected: {:?}", c.nicepay)
        };
        assert_eq!(c.nicepay.api(), ApiKind::V1);
        assert_eq!(v1.base_url.as_str(), "https://api.nicepay.co.kr/");
        assert_eq!(v1.auth, Auth::Bearer);
        assert_eq!(v1.enc_mode, EncMode::A2);
        assert!(!v1.sign_requests);
        assert_eq!(c.nicepay.connect_timeout(), Duration::from_secs(5));
        assert_eq!(c.nicepay.read_timeout(), Duration::from_secs(30));
        assert_eq!(v1.secret_key.expose(), V1_SECRET);
        assert!(!format!("{c:?}").contains(V1_SECRET));
        // The sandbox, and the simulator over plain http on loopback.
        for url in ["https://sandbox-api.nicepay.co.kr", "http://127.0.0.1:8585"] {
            let c = parse_v1(&format!(
                "client_key = \"k1\"\nsecret_key_env = \"NB_V1\"\nbase_url = \"{url}\"\n"
            ))
            .unwrap();
            assert!(c.nicepay.base_url().starts_with(url), "{url}");
        }
    }

    #[test]
    fn v1_config_errors_name_the_key() {
        let keys = "client_key = \"k1\"\nsecret_key_env = \"NB_V1\"\n";
        for (extra_or_whole, key, says) in [
            (
                "mid = \"nictest04m\"\n",
                "nicepay.mid",
                "not used with api = \"v1\"",
            ),
            ("charset = \"utf-8\"\n", "nicepay.charset", "not used"),
            (
                "auth = \"oauth\"\n",
                "nicepay.auth",
                "\"basic\" or \"bearer\"",
            ),
            ("enc_mode = \"A3\"\n", "nicepay.enc_mode", "A2"),
            (
                "base_url = \"http://api.nicepay.co.kr\"\n",
                "nicepay.base_url",
                "https",
            ),
        ] {
            let e = parse_v1(&format!("{keys}{extra_or_whole}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(says), "{key}: {e}");
        }
        for (whole, key, says) in [
            (
                "secret_key_env = \"NB_V1\"\n",
                "nicepay.client_key",
                "missing",
            ),
            (
                "client_key = \"k1\"\n",
                "nicepay.secret_key_file",
                "no secret key",
            ),
            (
                "client_key = \"k:1\"\nsecret_key_env = \"NB_V1\"\n",
                "nicepay.client_key",
                "letters",
            ),
            (
                "client_key = \"k1\"\nsecret_key_env = \"UNSET\"\n",
                "nicepay.secret_key_env",
                "not set",
            ),
            (
                "client_key = \"k1\"\nsecret_key = \"short-secret\"\n",
                "nicepay.secret_key",
                "32",
            ),
            (
                "client_key = \"k1\"\nsecret_key_env = \"NB_V1\"\nsecret_key = \"x\"\n",
                "nicepay.secret_key_file",
                "only one",
            ),
        ] {
            let e = parse_v1(whole).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{key}: {e}");
            assert!(!e.contains("short-secret"), "{e}");
        }
        // A web API config refuses v1's keys, and an unknown API is named.
        let e = parse(
            "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\nclient_key = \"k1\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("nicepay.client_key") && e.contains("api = \"webapi\""),
            "{e}"
        );
        let e = parse("[nicepay]\napi = \"v2\"\n").unwrap_err().to_string();
        assert!(e.contains("nicepay.api") && e.contains("\"v1\""), "{e}");
    }

    #[test]
    fn an_inline_v1_secret_warns_and_is_never_quoted() {
        let c = parse_v1(&format!(
            "client_key = \"k1\"\nsecret_key = \"{V1_SECRET}\"\n"
        ))
        .unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("secret_key is inline")),
            "{:?}",
            c.warnings
        );
        let e = parse_v1(&format!(
            "client_key = \"k1\"\nsecret_key = \"{V1_SECRET}\"\nauth = 3\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(!e.contains(V1_SECRET), "{e}");
    }

    #[test]
    fn good_config() {
        let c = parse(
            "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\nbase_url = \"http://127.0.0.1:8585\"\nread_timeout = \"3s\"\nedi_type = \"KV\"\n",
        )
        .unwrap();
        assert_eq!(c.nicepay.read_timeout(), Duration::from_secs(3));
        assert_eq!(c.nicepay.connect_timeout(), Duration::from_secs(15));
        let NicepayConfig::Webapi(w) = &c.nicepay else {
            panic!("web API expected")
        };
        assert_eq!(w.edi_type, EdiType::Kv);
        assert!(c.warnings.is_empty());
        assert!(!format!("{c:?}").contains(&KEY[..16]));
    }

    /// Each bad config is refused with a message naming the key (or the syntax problem).
    #[test]
    fn bad_configs_name_the_key() {
        let base = "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\n";
        let cases: &[(&str, &str)] = &[
            (
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\nsurprise = 1\n",
                "surprise",
            ),
            (
                "[nicepay]\nmid = \"short\"\nmerchant_key_env = \"NB_KEY\"\n",
                "nicepay.mid",
            ),
            (
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"UNSET\"\n",
                "UNSET is not set",
            ),
            (
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key = \"tooshort\"\n",
                "nicepay.merchant_key",
            ),
            ("[nicepay]\nmid = \"nictest04m\"\n", "no merchant key"),
            (
                "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_file = \"/nonexistent/key\"\n",
                "nicepay.merchant_key_file: cannot read /nonexistent/key",
            ),
            (
                &format!("{base}base_url = \"http://10.1.2.3\"\n"),
                "nicepay.base_url",
            ),
            (
                &format!("{base}read_timeout = \"soon\"\n"),
                "nicepay.read_timeout",
            ),
            (&format!("{base}read_timeout = 5\n"), "read_timeout"),
            (&format!("{base}charset = \"latin1\"\n"), "nicepay.charset"),
            ("[nicepay\n", "test.toml"),
            (
                &format!("{base}[database]\nurl = \"mysql://x\"\n"),
                "database.url",
            ),
            (
                &format!("{base}[scheduler]\ntick = \"*/10 * * * *\"\n"),
                "scheduler.tick",
            ),
            (
                &format!("{base}[scheduler]\ntick = \"0 0 0 30 2 *\"\n"),
                "scheduler.tick: \"0 0 0 30 2 *\" never fires",
            ),
            (
                &format!("{base}[scheduler]\ntimezone = \"Mars/Base\"\n"),
                "scheduler.timezone",
            ),
            (
                &format!("{base}[scheduler]\nconcurrency = 0\n"),
                "scheduler.concurrency",
            ),
            (
                &format!("{base}[scheduler]\ncatch_up = \"some\"\n"),
                "scheduler.catch_up",
            ),
            (
                &format!("{base}[scheduler]\nmoid_prefix = \"a b\"\n"),
                "scheduler.moid_prefix",
            ),
            (
                &format!("{base}[retry]\nretry_after = [\"1d\", \"soon\"]\n"),
                "retry.retry_after",
            ),
            (
                &format!("{base}[retry]\nfinal_state = \"gone\"\n"),
                "retry.final_state",
            ),
            (&format!("{base}[retry]\nsurprise = 1\n"), "surprise"),
            (&format!("{base}[log]\nformat = \"xml\"\n"), "log.format"),
            (&format!("{base}[log]\nlevel = \"info,=[\"\n"), "log.level"),
            (&format!("{base}[health]\nfile = 5\n"), "file"),
            // Every duration key refuses values outside its range, naming key and range.
            (
                &format!("{base}connect_timeout = \"11m\"\n"),
                "nicepay.connect_timeout: \"11m\" is out of range (allowed: 1ms to 10m)",
            ),
            (
                &format!("{base}read_timeout = \"100000000 years\"\n"),
                "nicepay.read_timeout: \"100000000 years\" is out of range (allowed: 1ms to 10m)",
            ),
            (
                &format!("{base}read_timeout = \"0s\"\n"),
                "nicepay.read_timeout: \"0s\": must be more than zero",
            ),
            (
                &format!("{base}[scheduler]\nlease = \"100000000 years\"\n"),
                "scheduler.lease: \"100000000 years\" is out of range (allowed: 1s to 1d)",
            ),
            (
                &format!("{base}[scheduler]\nlease = \"500ms\"\n"),
                "scheduler.lease: \"500ms\" is out of range (allowed: 1s to 1d)",
            ),
            (
                &format!("{base}[scheduler]\nsettle_margin = \"25h\"\n"),
                "scheduler.settle_margin: \"25h\" is out of range (allowed: 1s to 1d)",
            ),
            (
                &format!("{base}[retry]\nretry_after = [\"1d\", \"401d\"]\n"),
                "retry.retry_after: entry 2: \"401d\" is out of range (allowed: 1s to 400d)",
            ),
            (
                &format!(
                    "{base}[retry]\nretry_after = [{}]\n",
                    vec!["\"1d\""; 101].join(", ")
                ),
                "retry.retry_after: 101 waits: at most 100",
            ),
            (
                &format!("{base}[retry]\nrequest_error_retry = \"2 years\"\n"),
                "retry.request_error_retry: \"2 years\" is out of range (allowed: 1s to 400d)",
            ),
            (
                &format!("{base}[retry]\nresend_after = \"10ms\"\n"),
                "retry.resend_after: \"10ms\" is out of range (allowed: 1s to 400d)",
            ),
            (
                &format!("{base}[retry]\ntransient_max_elapsed = \"1h\"\n"),
                "retry.transient_max_elapsed: \"1h\" is out of range (allowed: 1ms to 10m)",
            ),
            (
                &format!("{base}[retry]\nlookup_max_interval = \"2d\"\n"),
                "retry.lookup_max_interval: \"2d\" is out of range (allowed: 1s to 1d)",
            ),
            (
                &format!("{base}[retry]\nremoval_max_interval = \"100000000 years\"\n"),
                "retry.removal_max_interval: \"100000000 years\" is out of range (allowed: 1s to 400d)",
            ),
            (
                &format!("{base}[retry]\nthrottle_pause = \"2h\"\n"),
                "retry.throttle_pause: \"2h\" is out of range (allowed: 1ms to 1h)",
            ),
            (
                &format!("{base}[retry]\nthrottle_pause = \"99999999999999999999s\"\n"),
                "retry.throttle_pause: \"99999999999999999999s\" is not a duration",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.starts_with("test.toml: "), "{err}");
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    /// The shipped example is valid and every value it sets is the default (so the example
    /// and `defaults`/`Policy::default`/`ClientSettings::new` cannot drift apart), except the
    /// three it sets on purpose: the key's source, the database's path and the health file.
    #[test]
    fn example_config_states_the_defaults() {
        let text = include_str!("../config.toml.example").replace(
            "merchant_key_file = \"/etc/nicebill/merchant.key\"",
            "merchant_key_env = \"NB_KEY\"",
        );
        let c = parse(&text).unwrap();
        let d = parse("[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\n").unwrap();
        assert_eq!(format!("{:?}", c.nicepay), format!("{:?}", d.nicepay));
        assert_eq!(format!("{:?}", c.scheduler), format!("{:?}", d.scheduler));
        assert_eq!(format!("{:?}", c.policy), format!("{:?}", d.policy));
        assert_eq!(c.log, d.log);
        assert_eq!(c.database.auto_migrate, d.database.auto_migrate);
        assert_eq!(c.database.max_connections, d.database.max_connections);
        assert_eq!(c.health.prometheus_file, d.health.prometheus_file);
        assert_eq!(
            format!("{:?}", c.engine_settings("x".into())),
            format!("{:?}", d.engine_settings("x".into()))
        );
        // The three on purpose.
        assert_eq!(d.database.url.to_string(), "sqlite://nicebill.db");
        assert_eq!(
            c.database.url.to_string(),
            "sqlite:///var/lib/nicebill/nicebill.db"
        );
        assert_eq!(d.health.file, None);
        // Every key the configuration knows is in the example (set or commented out).
        for key in [
            "mid",
            "merchant_key_file",
            "merchant_key_env",
            "merchant_key",
            "base_url",
            "connect_timeout",
            "read_timeout",
            "charset",
            "edi_type",
            "url",
            "auto_migrate",
            "max_connections",
            "tick",
            "timezone",
            "concurrency",
            "batch",
            "lease",
            "catch_up",
            "moid_prefix",
            "settle_margin",
            "retry_after",
            "final_state",
            "request_error_retry",
            "resend_after",
            "transient_max_elapsed",
            "lookup_max_interval",
            "removal_max_interval",
            "throttle_pause",
            "late_check_after",
            "file",
            "prometheus_file",
            "format",
            "level",
        ] {
            assert!(
                include_str!("../config.toml.example").lines().any(|l| l
                    .trim_start_matches(['#', ' '])
                    .starts_with(&format!("{key} ="))),
                "config.toml.example lacks {key}"
            );
        }
    }

    const DURATION_RANGES: [Range; 12] = [
        CONNECT_TIMEOUT,
        READ_TIMEOUT,
        LEASE,
        SETTLE_MARGIN,
        RETRY_AFTER,
        REQUEST_ERROR_RETRY,
        RESEND_AFTER,
        TRANSIENT_MAX_ELAPSED,
        LOOKUP_MAX_INTERVAL,
        REMOVAL_MAX_INTERVAL,
        THROTTLE_PAUSE,
        LATE_CHECK_AFTER,
    ];

    /// The defaults lie within their ranges, and the engine's defaults are the config's.
    #[test]
    fn defaults_are_allowed_and_agree() {
        let c = parse("[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\n").unwrap();
        let s = &c.scheduler;
        let p = &c.policy;
        let mut values = vec![
            (CONNECT_TIMEOUT, c.nicepay.connect_timeout()),
            (READ_TIMEOUT, c.nicepay.read_timeout()),
            (LEASE, s.lease),
            (SETTLE_MARGIN, s.settle_margin),
            (REQUEST_ERROR_RETRY, p.request_error_retry),
            (RESEND_AFTER, p.resend_after),
            (TRANSIENT_MAX_ELAPSED, s.transient_max_elapsed),
            (LOOKUP_MAX_INTERVAL, s.lookup_max_interval),
            (REMOVAL_MAX_INTERVAL, s.removal_max_interval),
            (THROTTLE_PAUSE, s.throttle_pause),
            (LATE_CHECK_AFTER, s.late_check_after),
        ];
        values.extend(p.retry_after.iter().map(|w| (RETRY_AFTER, *w)));
        for (range, value) in values {
            assert!(
                (range.min..=range.max).contains(&value),
                "{}: default {value:?}",
                range.key
            );
        }
        assert!(p.retry_after.len() <= MAX_RETRY_AFTER);
        let from_config = c.engine_settings("x".into());
        let from_code = EngineSettings::new(
            "x".into(),
            Policy::default(),
            c.nicepay.connect_timeout() + c.nicepay.read_timeout(),
        );
        assert_eq!(format!("{from_config:?}"), format!("{from_code:?}"));
    }

    /// At the top of every range, nothing the engine and daemon add up can overflow.
    #[test]
    fn largest_values_are_safe_downstream() {
        let mut text =
            "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\n".to_owned();
        let mut section = "nicepay";
        for range in DURATION_RANGES {
            let (table, key) = range.key.split_once('.').unwrap();
            if table != section {
                text.push_str(&format!("[{table}]\n"));
                section = table;
            }
            let value = format!("\"{}\"", show(range.max));
            if key == "retry_after" {
                let list = vec![value; MAX_RETRY_AFTER].join(", ");
                text.push_str(&format!("{key} = [{list}]\n"));
            } else {
                text.push_str(&format!("{key} = {value}\n"));
            }
            // The bounds themselves are accepted; just past them is not.
            assert_eq!(range.parse(&show(range.max)), Ok(range.max));
            assert_eq!(range.parse(&show(range.min)), Ok(range.min));
            let past = format!("{}ns", (range.max + Duration::from_nanos(1)).as_nanos());
            assert!(range.parse(&past).is_err(), "{}", range.key);
        }
        let c = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let e = c.engine_settings("x".into());
        assert_eq!(e.settle(), Duration::from_secs(2 * 1200 + 600 + 86_400));
        // What the engine and `run --once` form from these, checked.
        let far = chrono::DateTime::<chrono::Utc>::MAX_UTC - chrono::Duration::days(365_000);
        for wait in [
            e.settle() * 3 + e.lease,
            e.policy.retry_after[99],
            e.removal_retry.max_interval,
        ] {
            assert!(
                far.checked_add_signed(chrono::Duration::from_std(wait).unwrap())
                    .is_some()
            );
            assert!(std::time::Instant::now().checked_add(wait).is_some());
        }
    }

    #[test]
    fn permission_warnings() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("merchant.key");
        std::fs::write(&file, KEY).unwrap();
        // Files created here belong to our own group, so group-readable is fine.
        for (mode, warns) in [(0o600, false), (0o640, false), (0o644, true), (0o604, true)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let w = loose_permissions(&file);
            assert_eq!(w.is_some(), warns, "{mode:o}: {w:?}");
            if let Some(w) = w {
                assert!(w.contains("merchant.key"), "{w}");
            }
        }
    }

    #[test]
    fn inline_key_warns() {
        let c = parse(&format!(
            "[nicepay]\nmid = \"nictest04m\"\nmerchant_key = \"{KEY}\"\n"
        ))
        .unwrap();
        assert!(c.warnings[0].contains("inline"), "{:?}", c.warnings);
    }

    /// Config errors never quote an inline merchant key or a URL password, whatever the
    /// mistake next to them.
    #[test]
    fn errors_never_quote_secrets() {
        let password = "hunter2-Pa%24%24";
        let decoded = "hunter2-Pa$$";
        let head = "[nicepay]\nmid = \"nictest04m\"\n";
        let cases = [
            // An unterminated string: TOML's own message would quote the line.
            format!("{head}merchant_key = \"{KEY}\n"),
            // Unquoted.
            format!("{head}merchant_key = {KEY}\n"),
            // A typo right after it.
            format!("{head}merchant_key = \"{KEY}\"\nbase_url == \"x\"\n"),
            // Wrong type, and too short a key.
            format!("{head}merchant_key = 1234567890123\n"),
            format!("{head}merchant_key = \"{}\"\n", &KEY[..10]),
            // Dotted and inline-table forms.
            format!("nicepay.mid = \"nictest04m\"\nnicepay.merchant_key = \"{KEY}\"\n[x\n"),
            // A URL password: a bad scheme, an unterminated string, a typo in the URL.
            format!(
                "{head}merchant_key_env = \"NB_KEY\"\n[database]\nurl = \"mysql://nb:{password}@db.example.com/nb\"\n"
            ),
            format!(
                "{head}merchant_key_env = \"NB_KEY\"\n[database]\nurl = \"postgres://nb:{password}@db.example.com/nb\n"
            ),
            format!(
                "{head}merchant_key_env = \"NB_KEY\"\n[database]\nurl = \"postgres//nb:{password}@db.example.com/nb\"\n"
            ),
            format!(
                "{head}merchant_key_env = \"NB_KEY\"\n[database]\nurl = \"postgres://nb:{password}@db.example.com/nb\"\nmax_connections = \"x\"\n"
            ),
        ];
        for text in &cases {
            let err = parse(text).expect_err(text).to_string();
            for secret in [
                KEY,
                &KEY[..16],
                &KEY[..10],
                "1234567890123",
                password,
                decoded,
            ] {
                assert!(
                    !err.contains(secret),
                    "the error quotes {secret:?}: {err}\nconfig:\n{text}"
                );
            }
            assert!(err.starts_with("test.toml: "), "{err}");
        }
        // Syntax errors still say where.
        let err = parse(&cases[0]).unwrap_err().to_string();
        assert!(err.contains("line 3, column"), "{err}");
        assert!(err.contains("merchant_key = ***"), "{err}");
        // The redaction finds what it looks for.
        let secrets = secrets_in(&cases[7]);
        assert!(secrets.iter().any(|s| s == password), "{secrets:?}");
        assert!(secrets.iter().any(|s| s == decoded), "{secrets:?}");
        assert!(secrets_in(&cases[0]).iter().any(|s| s == KEY));
    }

    #[test]
    fn max_requests_per_second() {
        let head = "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\n";
        let env = |v: &str| (v == "NB_KEY").then(|| KEY.to_owned());
        let parse_env = |text: &str| Config::parse(Path::new("test.toml"), text, env, Vec::new());
        assert_eq!(
            parse_env(head).unwrap().nicepay.max_requests_per_second(),
            None
        );
        let c = parse_env(&format!("{head}max_requests_per_second = 50\n")).unwrap();
        assert_eq!(
            c.nicepay.max_requests_per_second().map(|n| n.get()),
            Some(50)
        );
        for bad in ["0", "100001"] {
            let err = parse_env(&format!("{head}max_requests_per_second = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("nicepay.max_requests_per_second: ") && err.contains("out of range"),
                "{err}"
            );
        }
    }

    #[test]
    fn webhook_section() {
        let head = "[nicepay]\nmid = \"nictest04m\"\nmerchant_key_env = \"NB_KEY\"\n";
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let env = |v: &str| match v {
            "NB_KEY" => Some(KEY.to_owned()),
            "WH" => Some(secret.to_owned()),
            _ => None,
        };
        let parse_env = |text: &str| Config::parse(Path::new("test.toml"), text, env, Vec::new());
        // Defaults: no URL, the documented schedule.
        let c = parse_env(head).unwrap();
        assert!(c.webhook.url.is_none());
        assert_eq!(
            c.webhook.retry_after,
            defaults::WEBHOOK_RETRY_AFTER.to_vec()
        );
        assert_eq!(c.health.webhook_max_age, defaults::WEBHOOK_MAX_AGE);
        assert_eq!(c.webhook.upcoming_lead.secs(), &[7 * 86_400]);
        assert_eq!(
            c.engine_settings("o".into()).upcoming_lead,
            c.webhook.upcoming_lead
        );
        // The Act's 30 days, in any order; none at all.
        let c = parse_env(&format!(
            "{head}[webhook]\nupcoming_lead = [\"7d\", \"30d\"]\n"
        ))
        .unwrap();
        assert_eq!(c.webhook.upcoming_lead.secs(), &[30 * 86_400, 7 * 86_400]);
        let c = parse_env(&format!("{head}[webhook]\nupcoming_lead = []\n")).unwrap();
        assert!(c.webhook.upcoming_lead.is_empty());
        let c = parse_env(&format!(
            "{head}[webhook]\nurl = \"https://shop.example.com/h\"\nsecret_env = \"WH\"\nretry_after = [\"1s\"]\nevents = [\"charge.approved\"]\n"
        ))
        .unwrap();
        assert!(c.webhook.url.is_some() && c.webhook.secret.is_some());
        assert_eq!(c.webhook.retry_after, vec![Duration::from_secs(1)]);
        for (tail, want) in [
            (
                format!("url = \"https://x.example\"\nsecret = \"{secret}\"\n"),
                "webhook.secret: an inline secret is refused",
            ),
            (
                "url = \"https://x.example\"\n".to_owned(),
                "webhook.secret_file: a webhook url needs a signing secret",
            ),
            (
                "url = \"http://x.example/h\"\nsecret_env = \"WH\"\n".to_owned(),
                "webhook.url: ",
            ),
            (
                "secret_env = \"NOPE\"\n".to_owned(),
                "webhook.secret_env: environment variable NOPE is not set",
            ),
            (
                "events = [\"charge.refunded\"]\n".to_owned(),
                "webhook.events: \"charge.refunded\" is not an event type",
            ),
            (
                "retry_after = [\"31d\"]\n".to_owned(),
                "webhook.retry_after: entry 1: \"31d\" is out of range",
            ),
            (
                "upcoming_lead = [\"7d\", \"30s\"]\n".to_owned(),
                "webhook.upcoming_lead: entry 2: \"30s\" is out of range",
            ),
            (
                format!("upcoming_lead = [{}]\n", ["\"1d\""; 11].join(", ")),
                "webhook.upcoming_lead: 11 leads: at most 10",
            ),
        ] {
            let text = format!("{head}[webhook]\n{tail}");
            let err = parse_env(&text).expect_err(&text).to_string();
            assert!(err.contains(want), "{err} lacks {want}");
            assert!(!err.contains("MfKQ9r8G"), "{err}");
        }
        // A secret file holding something else is refused, naming the key, quoting nothing.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wh");
        std::fs::write(&file, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let err = parse_env(&format!(
            "{head}[webhook]\nsecret_file = \"{}\"\n",
            file.display()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("webhook.secret_file: must start with whsec_"),
            "{err}"
        );
        assert!(!err.contains("MfKQ9r8G"), "{err}");
    }
}
