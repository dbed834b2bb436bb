//! Rounds of a group commit: many waiters, one of them at a time running a round (a
//! flush) that covers everything written before it began, the others waiting for the
//! round that covers them.
//!
//! Waiters are woken together when a round ends, not handed a lock one after the
//! other: with dozens of hand-outs waiting on one flush, a mutex would wake them in a
//! chain, each one's turn a scheduler hop after the previous, which shows as latency
//! (and, for callers that wait for their answer, lost throughput) with the CPU idle.

use std::future::Future;

use tokio::sync::{Mutex, watch};

pub struct Rounds {
    /// How far the rounds have covered, and how many have ended (failed ones too, so
    /// that their waiters look again and one of them runs the next round).
    ended: watch::Sender<(u64, u64)>,
    running: Mutex<()>,
}

impl Default for Rounds {
    fn default() -> Self {
        Self {
            ended: watch::Sender::new((0, 0)),
            running: Mutex::new(()),
        }
    }
}

impl Rounds {
    /// Waits until `done` answers, given how far the rounds have covered; while it does
    /// not and no round is running, runs `round`, which answers how far it covered. A
    /// round's error is answered to the waiter that ran it; the others look again.
    pub async fn until<T, E, Fut>(
        &self,
        mut done: impl FnMut(u64) -> Option<Result<T, E>>,
        round: impl Fn() -> Fut,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<u64, E>>,
    {
        let mut ended = self.ended.subscribe();
        loop {
            let (covered, _) = *ended.borrow_and_update();
            if let Some(answer) = done(covered) {
                return answer;
            }
            let Ok(_running) = self.running.try_lock() else {
                // A round is running: wait for it to end, then look again. (The sender
                // lives in `self`, so this cannot fail while `self` is borrowed.)
                let _ = ended.changed().await;
                continue;
            };
            // A round may have ended between the look above and taking the lock.
            if let Some(answer) = done(self.covered()) {
                return answer;
            }
            // Told when the round ends however it ends: a runner whose call is
            // dropped mid-round (its client gone) must not leave the others waiting.
            let mut ending = Ending {
                ended: &self.ended,
                covers: None,
            };
            ending.covers = Some(round().await?);
        }
    }

    /// How far the rounds have covered.
    pub fn covered(&self) -> u64 {
        self.ended.borrow().0
    }
}

/// Ends a round when dropped: records how far it covered (nothing if it failed or was
/// dropped) and wakes the waiters.
struct Ending<'a> {
    ended: &'a watch::Sender<(u64, u64)>,
    covers: Option<u64>,
}

impl Drop for Ending<'_> {
    fn drop(&mut self) {
        let covers = self.covers;
        self.ended.send_modify(|(covered, rounds)| {
            if let Some(covers) = covers {
                *covered = (*covered).max(covers);
            }
            *rounds += 1;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn concurrent_waiters_share_rounds_and_each_is_covered() {
        let rounds = Arc::new(Rounds::default());
        let (written, ran) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (rounds, written, ran) = (rounds.clone(), written.clone(), ran.clone());
            tasks.push(tokio::spawn(async move {
                let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                rounds
                    .until(
                        |covered| (covered >= mine).then_some(Ok::<_, ()>(covered)),
                        || async {
                            let covers = written.load(Ordering::SeqCst);
                            ran.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok(covers)
                        },
                    )
                    .await
                    .map(|covered| (mine, covered))
            }));
        }
        for task in tasks {
            let (mine, covered) = task.await.unwrap().unwrap();
            assert!(covered >= mine);
        }
        assert_eq!(rounds.covered(), 64);
        assert!(ran.load(Ordering::SeqCst) < 8, "the waiters shared rounds");
    }

    #[tokio::test]
    async fn a_round_dropped_midway_wakes_the_waiters_and_one_of_them_runs_the_next() {
        let rounds = Arc::new(Rounds::default());
        let (release, stalled) = tokio::sync::oneshot::channel::<()>();
        let started = Arc::new(tokio::sync::Notify::new());
        let runner = {
            let (rounds, started) = (rounds.clone(), started.clone());
            tokio::spawn(async move {
                let stalled = std::sync::Mutex::new(Some(stalled));
                rounds
                    .until(
                        |c| (c >= 1).then_some(Ok::<_, ()>(())),
                        || {
                            let stalled = stalled.lock().unwrap().take();
                            let started = started.clone();
                            async move {
                                started.notify_one();
                                if let Some(stalled) = stalled {
                                    let _ = stalled.await;
                                }
                                Ok(1)
                            }
                        },
                    )
                    .await
            })
        };
        started.notified().await;
        let waiter = {
            let rounds = rounds.clone();
            tokio::spawn(async move {
                rounds
                    .until(|c| (c >= 1).then_some(Ok::<_, ()>(())), || async { Ok(1) })
                    .await
            })
        };
        tokio::task::yield_now().await;
        runner.abort();
        assert!(runner.await.unwrap_err().is_cancelled());
        drop(release);
        waiter.await.unwrap().unwrap();
        assert_eq!(rounds.covered(), 1);
    }

    #[tokio::test]
    async fn a_failed_round_is_told_to_its_runner_and_the_next_waiter_runs_another() {
        let rounds = Rounds::default();
        let attempts = AtomicU64::new(0);
        let round = || async {
            match attempts.fetch_add(1, Ordering::SeqCst) {
                0 => Err("disk full"),
                _ => Ok(1),
            }
        };
        let first = rounds.until(|c| (c >= 1).then_some(Ok(())), round).await;
        assert_eq!(first, Err("disk full"));
        assert_eq!(rounds.covered(), 0);
        let second = rounds.until(|c| (c >= 1).then_some(Ok(())), round).await;
        assert_eq!(second, Ok(()));
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
    }
}
