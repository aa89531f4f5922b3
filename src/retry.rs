//! Bounded retries with exponential backoff. The `backoff` crate is flagged unmaintained
//! (RUSTSEC-2025-0012), so it is used here and nowhere else: replacing it touches one file.

use std::future::Future;
use std::time::Duration;

use backoff::ExponentialBackoffBuilder;

/// How long and how often to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_interval: Duration,
    /// Give up (returning the last error) once this much time has passed.
    pub max_elapsed: Duration,
}

impl RetryPolicy {
    pub const fn new(initial: Duration, max_interval: Duration, max_elapsed: Duration) -> Self {
        Self {
            initial,
            max_interval,
            max_elapsed,
        }
    }

    /// The delay before retry number `n` (0-based) of something retried across passes:
    /// `initial × 2ⁿ`, capped at `max_interval`.
    pub fn delay(&self, n: u32) -> Duration {
        self.initial
            .checked_mul(1u32.checked_shl(n.min(30)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }
}

/// Whether an error is worth another try.
pub enum Attempt<E> {
    Transient(E),
    Permanent(E),
}

/// Runs `op` until it succeeds, fails permanently, or `policy.max_elapsed` runs out; returns
/// the last error in the latter cases.
pub async fn retry<T, E, F, Fut>(policy: RetryPolicy, mut op: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt<E>>>,
{
    let backoff = ExponentialBackoffBuilder::new()
        .with_initial_interval(policy.initial)
        .with_max_interval(policy.max_interval)
        .with_max_elapsed_time(Some(policy.max_elapsed))
        .build();
    backoff::future::retry(backoff, || {
        let fut = op();
        async move {
            fut.await.map_err(|e| match e {
                Attempt::Transient(e) => backoff::Error::transient(e),
                Attempt::Permanent(e) => backoff::Error::permanent(e),
            })
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn delays_double_and_cap() {
        let p = RetryPolicy::new(
            Duration::from_secs(1),
            Duration::from_secs(10),
            Duration::ZERO,
        );
        let got: Vec<u64> = (0..6).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(p.delay(200), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn retries_transient_then_returns_last_error() {
        let p = RetryPolicy::new(
            Duration::from_millis(1),
            Duration::from_millis(2),
            Duration::from_millis(50),
        );
        let calls = AtomicU32::new(0);
        let r: Result<(), u32> = retry(p, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move { Err(Attempt::Transient(n)) }
        })
        .await;
        let n = calls.load(Ordering::SeqCst);
        assert!(n > 2, "retried {n} times");
        assert_eq!(r, Err(n - 1));
        let calls = AtomicU32::new(0);
        let r: Result<(), &str> = retry(p, || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Attempt::Permanent("no")) }
        })
        .await;
        assert_eq!((r, calls.load(Ordering::SeqCst)), (Err("no"), 1));
        let r: Result<u8, ()> = retry(p, || async { Ok(7) }).await;
        assert_eq!(r, Ok(7));
    }
}
