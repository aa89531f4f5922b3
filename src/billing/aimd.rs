//! The instance's concurrency toward NICEPAY, adapted AIMD-style: halved when NICEPAY signals
//! overload (V003, A246, HTTP 429/503: [`Class::Throttled`](crate::gateway::nicepay::Class)),
//! grown by one after as many answered requests as the current limit (about one round of
//! requests), back up to the configured ceiling (`[scheduler] concurrency`).
//!
//! One overload is cut for once: the requests already in flight when the limit was cut carry
//! the old epoch, and their throttling answers do not cut again (as TCP cuts once per window).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A slot to send one request in.
#[derive(Debug)]
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    epoch: u64,
    aimd: Arc<Inner>,
}

impl Slot {
    /// The limit's epoch when this slot was taken.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let mut s = self.aimd.state();
        // A cut that found too few free permits takes the rest as slots come back.
        if s.debt > 0 {
            s.debt -= 1;
            permit.forget();
        }
    }
}

#[derive(Debug)]
struct State {
    limit: usize,
    /// Permits still to withdraw (a cut deeper than the free permits at the time).
    debt: usize,
    /// Answered requests since the last change of the limit.
    answered: usize,
    epoch: u64,
    /// Cuts since start.
    cuts: u64,
}

#[derive(Debug)]
struct Inner {
    ceiling: usize,
    semaphore: Arc<Semaphore>,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state whole; a panic elsewhere cannot leave it half done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The adaptive limit. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct Aimd(Arc<Inner>);

/// The limit at a glance, for health and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AimdFigures {
    pub limit: usize,
    pub ceiling: usize,
    pub cuts: u64,
}

impl Aimd {
    pub fn new(ceiling: usize) -> Self {
        let ceiling = ceiling.max(1);
        Self(Arc::new(Inner {
            ceiling,
            semaphore: Arc::new(Semaphore::new(ceiling)),
            state: Mutex::new(State {
                limit: ceiling,
                debt: 0,
                answered: 0,
                epoch: 0,
                cuts: 0,
            }),
        }))
    }

    /// Waits for a free slot under the current limit.
    pub async fn acquire(&self) -> Slot {
        let permit = Arc::clone(&self.0.semaphore)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let epoch = self.0.state().epoch;
        Slot {
            permit: Some(permit),
            epoch,
            aimd: Arc::clone(&self.0),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.0.state().epoch
    }

    /// NICEPAY signalled overload to a request sent in `epoch`: halves the limit (at least 1),
    /// unless it was cut since that request was sent.
    pub fn throttled(&self, epoch: u64) {
        let mut s = self.0.state();
        if epoch != s.epoch {
            return;
        }
        let before = s.limit;
        let after = (before / 2).max(1);
        s.limit = after;
        s.epoch += 1;
        s.answered = 0;
        s.cuts += 1;
        let cut = before - after;
        let withdrawn = self.0.semaphore.forget_permits(cut);
        s.debt += cut - withdrawn;
        tracing::warn!(
            from = before,
            to = after,
            ceiling = self.0.ceiling,
            "NICEPAY signals overload: concurrency cut"
        );
    }

    /// NICEPAY answered a request (not an overload signal): one more towards growing the
    /// limit by one.
    pub fn answered(&self) {
        let mut s = self.0.state();
        if s.limit >= self.0.ceiling {
            return;
        }
        s.answered += 1;
        if s.answered < s.limit {
            return;
        }
        s.answered = 0;
        s.limit += 1;
        if s.debt > 0 {
            s.debt -= 1;
        } else {
            self.0.semaphore.add_permits(1);
        }
        if s.limit == self.0.ceiling {
            tracing::info!(
                concurrency = s.limit,
                "concurrency back at its configured ceiling"
            );
        } else {
            tracing::debug!(concurrency = s.limit, "concurrency grown by one");
        }
    }

    pub fn figures(&self) -> AimdFigures {
        let s = self.0.state();
        AimdFigures {
            limit: s.limit,
            ceiling: self.0.ceiling,
            cuts: s.cuts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Slots that can be taken right now.
    async fn free_slots(aimd: &Aimd) -> Vec<Slot> {
        let mut slots = Vec::new();
        while let Ok(slot) = tokio::time::timeout(Duration::from_millis(5), aimd.acquire()).await {
            slots.push(slot);
        }
        slots
    }

    #[tokio::test]
    async fn halves_once_per_overload_and_grows_back_one_per_round() {
        let aimd = Aimd::new(8);
        let slots = free_slots(&aimd).await;
        assert_eq!(slots.len(), 8);
        // All eight in flight are throttled: one cut, not three.
        for s in &slots {
            aimd.throttled(s.epoch());
        }
        assert_eq!(
            aimd.figures(),
            AimdFigures {
                limit: 4,
                ceiling: 8,
                cuts: 1
            }
        );
        drop(slots);
        assert_eq!(
            free_slots(&aimd).await.len(),
            4,
            "the cut holds once slots return"
        );
        // A request sent after the cut is throttled: cut again.
        let slot = aimd.acquire().await;
        aimd.throttled(slot.epoch());
        drop(slot);
        assert_eq!(aimd.figures().limit, 2);
        assert_eq!(free_slots(&aimd).await.len(), 2);
        // Down to one, never zero.
        for _ in 0..3 {
            let slot = aimd.acquire().await;
            aimd.throttled(slot.epoch());
        }
        assert_eq!(aimd.figures().limit, 1);
        assert_eq!(free_slots(&aimd).await.len(), 1);
        // One more per `limit` answers: 1 → 2 after 1, 2 → 3 after 2, … up to 8 and no further.
        let mut answers = 0;
        while aimd.figures().limit < 8 {
            aimd.answered();
            answers += 1;
        }
        assert_eq!(answers, 1 + 2 + 3 + 4 + 5 + 6 + 7);
        for _ in 0..100 {
            aimd.answered();
        }
        assert_eq!(aimd.figures().limit, 8);
        assert_eq!(free_slots(&aimd).await.len(), 8);
    }
}
