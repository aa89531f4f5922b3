//! Webhooks: the merchant hears what nicebill did. Events are written to the outbox
//! (`storage::outbox`) in the same transaction as the change they tell of; the [`Deliverer`]
//! here sends them, signed as Standard Webhooks (`sign`), at least once, in order per
//! subscription, with retries on `[webhook] retry_after`.

mod sign;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use sign::WebhookSecret;

use crate::billing::model::WebhookKind;
use crate::clock::{SharedClock, later};
use crate::config::WebhookConfig;
use crate::storage::outbox::Delivery;
use crate::storage::{Store, StoreError};

/// A webhook URL: `https`, or plain `http` to a loopback host only (as for NICEPAY); no
/// credentials in it. Errors never quote a password.
pub fn parse_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (the signature authenticates nicebill)".into());
    }
    let loopback = match url.host_str() {
        Some(host) => crate::domain::is_loopback_host(host),
        None => return Err("has no host".into()),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        "http" => Err(format!(
            "{url} uses plain http to a host that is not this machine; use https"
        )),
        other => Err(format!("scheme {other:?} is not supported; use https")),
    }
}

/// What one round of deliveries did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: usize,
    /// Failed tries that will be tried again.
    pub failed: usize,
    /// Failed for the last time.
    pub dead: usize,
    pub filtered: usize,
}

impl DeliveryReport {
    pub fn tried(&self) -> usize {
        self.delivered + self.failed + self.dead + self.filtered
    }
}

/// Counters since start, for the health file and metrics.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dead: AtomicU64,
}

/// Sends what the outbox holds.
#[derive(Clone)]
pub struct Deliverer {
    store: Store,
    http: reqwest::Client,
    url: reqwest::Url,
    secret: WebhookSecret,
    config: WebhookConfig,
    clock: SharedClock,
    owner: String,
    pub stats: Arc<DeliveryStats>,
}

/// Events sent at once, at most (each subscription's one at a time).
const IN_FLIGHT: usize = 8;

impl Deliverer {
    /// `None` without a `[webhook] url` (events then stay in the outbox for pollers).
    pub fn new(
        store: Store,
        config: &WebhookConfig,
        clock: SharedClock,
        owner: String,
    ) -> Result<Option<Self>, reqwest::Error> {
        let (Some(url), Some(secret)) = (config.url.clone(), config.secret.clone()) else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nicebill/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Some(Self {
            store,
            http,
            url,
            secret,
            config: config.clone(),
            clock,
            owner,
            stats: Arc::default(),
        }))
    }

    /// The lease of a claimed event: every try is over well within it.
    fn lease(&self) -> Duration {
        self.config
            .timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(30))
    }

    /// One round: claims what is due (everything undelivered with `ignore_waits`), sends it,
    /// records each outcome. Returns what it did; an empty report means nothing was due.
    pub async fn deliver_due(&self, ignore_waits: bool) -> Result<DeliveryReport, StoreError> {
        let now = self.clock.now();
        let rows = self
            .store
            .claim_webhooks(
                &self.owner,
                now,
                self.lease(),
                IN_FLIGHT as i64,
                ignore_waits,
            )
            .await?;
        let mut report = DeliveryReport::default();
        let mut tasks = tokio::task::JoinSet::new();
        for row in rows {
            let me = self.clone();
            tasks.spawn(async move {
                let delivery = me
                    .send(&row.event_id, &row.kind, &row.body, row.attempts)
                    .await;
                let recorded = me
                    .store
                    .record_delivery(&me.owner, me.clock.now(), row.id, delivery.clone())
                    .await;
                (row, delivery, recorded)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (row, delivery, recorded) = match joined {
                Ok(done) => done,
                Err(e) => {
                    tracing::error!("webhook delivery task failed: {e}");
                    continue;
                }
            };
            if !recorded? {
                // The lease ran out and another instance took the event over.
                tracing::warn!(event = %row.event_id, "webhook delivery recorded by another instance");
                continue;
            }
            match &delivery {
                Delivery::Delivered { status } => {
                    report.delivered += 1;
                    self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(event = %row.event_id, kind = %row.kind, status, "webhook delivered");
                }
                Delivery::Failed {
                    status,
                    error,
                    retry_at,
                } => match retry_at {
                    Some(at) => {
                        report.failed += 1;
                        self.stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(event = %row.event_id, kind = %row.kind, ?status, %error, retry_at = %at, "webhook delivery failed; tried again later");
                    }
                    None => {
                        report.dead += 1;
                        self.stats.dead.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(event = %row.event_id, kind = %row.kind, ?status, %error, attempts = row.attempts + 1, "webhook delivery failed for the last time; the event is dead (nicebill webhooks retry)");
                    }
                },
                Delivery::Filtered => report.filtered += 1,
            }
        }
        Ok(report)
    }

    /// Delivers until nothing is due (everything undelivered, with `ignore_waits`); a round
    /// in which nothing was delivered ends it, so a failing receiver is not hammered.
    pub async fn drain(&self, ignore_waits: bool) -> Result<DeliveryReport, StoreError> {
        let mut total = DeliveryReport::default();
        loop {
            let round = self.deliver_due(ignore_waits).await?;
            total.delivered += round.delivered;
            total.failed += round.failed;
            total.dead += round.dead;
            total.filtered += round.filtered;
            if round.tried() == 0 || round.delivered + round.filtered == 0 {
                return Ok(total);
            }
        }
    }

    /// One try of one event, its `attempts`-th failure so far.
    async fn send(&self, event_id: &str, kind: &str, body: &str, attempts: i32) -> Delivery {
        if kind != WebhookKind::Ping.as_str()
            && let Some(events) = &self.config.events
            && !events.iter().any(|k| k.as_str() == kind)
        {
            return Delivery::Filtered;
        }
        let now = self.clock.now();
        let timestamp = now.timestamp();
        let signature = self.secret.sign(event_id, timestamp, body.as_bytes());
        let result = self
            .http
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await;
        let (status, error) = match result {
            Ok(response) if response.status().is_success() => {
                return Delivery::Delivered {
                    status: response.status().as_u16(),
                };
            }
            Ok(response) => (
                Some(response.status().as_u16()),
                format!("HTTP {}", response.status()),
            ),
            Err(e) if e.is_timeout() => {
                (None, format!("no answer within {:?}", self.config.timeout))
            }
            Err(e) => (
                None,
                format!("cannot reach the webhook url: {}", without_url(&e)),
            ),
        };
        // Tries so far, this one included: the n-th failure waits retry_after[n - 1].
        let tries = usize::try_from(attempts).unwrap_or(0) + 1;
        let retry_at = self
            .config
            .retry_after
            .get(tries - 1)
            .map(|wait| later(now, *wait));
        Delivery::Failed {
            status,
            error,
            retry_at,
        }
    }

    /// Sends a signed `ping` now (not through the outbox) and returns what came of it.
    pub async fn ping(&self) -> Delivery {
        let now = self.clock.now();
        let body = serde_json::json!({
            "type": WebhookKind::Ping.as_str(),
            "timestamp": crate::storage::outbox::rfc3339(now),
            "data": {},
        })
        .to_string();
        let id = crate::storage::outbox::new_event_id();
        match self.send(&id, WebhookKind::Ping.as_str(), &body, 0).await {
            // A ping is tried once: no retry time.
            Delivery::Failed { status, error, .. } => Delivery::Failed {
                status,
                error,
                retry_at: None,
            },
            other => other,
        }
    }
}

/// A reqwest error's text without its URL (which the operator knows, and which may carry a
/// token in its path).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the webhook url");
    }
    text
}

/// How old the oldest undelivered event is at `now`.
pub fn age(oldest: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<Duration> {
    oldest.map(|t| (now - t).to_std().unwrap_or_default())
}
