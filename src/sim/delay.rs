//! The simulator's latency, kept to about a tenth of a millisecond.
//!
//! tokio's timer counts whole milliseconds and rounds a deadline up to the next one, and its
//! driver parks in whole milliseconds too: `tokio::time::sleep(20 ms)` answered after 20.2 to
//! 23.5 ms, 21.3 ms on average (100 sequential approvals over curl). The benchmark's ideal
//! assumes NICEPAY answers in exactly L, so that overshoot (6 % at L = 20 ms) was counted against
//! nicebill. Here one thread keeps every pending deadline in a heap and waits on a channel with
//! the time to the earliest (a futex wait, timed by the kernel's high-resolution timers), waking
//! each request's future when its moment comes.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

struct Wake {
    at: Instant,
    seq: u64,
    tx: oneshot::Sender<()>,
}

impl PartialEq for Wake {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Wake {}
impl PartialOrd for Wake {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Wake {
    /// Reversed: the heap's top is the earliest deadline.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

fn timer() -> &'static mpsc::Sender<(Instant, oneshot::Sender<()>)> {
    static TIMER: OnceLock<mpsc::Sender<(Instant, oneshot::Sender<()>)>> = OnceLock::new();
    TIMER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<(Instant, oneshot::Sender<()>)>();
        std::thread::Builder::new()
            .name("sim-latency".into())
            .spawn(move || {
                let mut heap = BinaryHeap::new();
                let mut seq = 0u64;
                loop {
                    let now = Instant::now();
                    while heap.peek().is_some_and(|w: &Wake| w.at <= now) {
                        if let Some(w) = heap.pop() {
                            // The request may be gone (its client hung up): nothing to wake.
                            let _ = w.tx.send(());
                        }
                    }
                    let next = match heap.peek() {
                        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        Some(w) => rx.recv_timeout(w.at.saturating_duration_since(now)),
                    };
                    match next {
                        Ok((at, tx)) => {
                            seq += 1;
                            heap.push(Wake { at, seq, tx });
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .expect("spawning the simulator's latency thread");
        tx
    })
}

/// Waits `latency` from now, to within about a tenth of a millisecond.
pub(super) async fn delay(latency: Duration) {
    let (tx, rx) = oneshot::channel();
    if timer().send((Instant::now() + latency, tx)).is_err() {
        // The timer thread is gone (it never returns while the process lives): fall back.
        tokio::time::sleep(latency).await;
        return;
    }
    let _ = rx.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn never_early() {
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for ms in [30u64, 5, 20, 5, 1] {
            set.spawn(async move {
                let t = Instant::now();
                delay(Duration::from_millis(ms)).await;
                (ms, t.elapsed())
            });
        }
        let mut done = Vec::new();
        while let Some(r) = set.join_next().await {
            let (ms, took) = r.unwrap();
            assert!(
                took >= Duration::from_millis(ms),
                "{ms} ms answered in {took:?}"
            );
            done.push(ms);
        }
        assert_eq!(done.len(), 5);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
