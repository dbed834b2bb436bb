//! Rounds of a group commit: many waiters, one of them at a time running a round (a
//! flush) that covers everything written before it began, the others waiting for the
//! round that covers them.
//!
//! Waiters are woken together when a round ends, not handed a lock one after the
//! other: with dozens of hand-outs waiting on one flush, a mutex would wake them in a
//! chain, each one's turn a scheduler hop after the previous, which shows as latency
//! (and, for callers that wait for their answer, lost throughput) with the CPU idle.

use std::future::Future;

use tokio::sync::{Mutex, MutexGuard, watch};

pub struct Rounds {
    /// How far the rounds have covered. Every turn with the lock ends with a send,
    /// covering more or not, so that whoever found the lock held looks again.
    ended: watch::Sender<u64>,
    running: Mutex<()>,
}

impl Default for Rounds {
    fn default() -> Self {
        Self {
            ended: watch::Sender::new(0),
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
            let covered = *ended.borrow_and_update();
            if let Some(answer) = done(covered) {
                return answer;
            }
            let Ok(running) = self.running.try_lock() else {
                // Someone has the lock: wait for its turn to end, then look again. (The
                // sender lives in `self`, so this cannot fail while `self` is borrowed.)
                let _ = ended.changed().await;
                continue;
            };
            // Told when this turn ends however it ends, even a runner whose call is
            // dropped mid-round (its client gone): the others must not be left waiting.
            let mut turn = Turn {
                ended: &self.ended,
                covers: None,
                running: Some(running),
            };
            // A round may have ended between the look above and taking the lock.
            if let Some(answer) = done(self.covered()) {
                return answer;
            }
            turn.covers = Some(round().await?);
        }
    }

    /// How far the rounds have covered.
    pub fn covered(&self) -> u64 {
        *self.ended.borrow()
    }
}

/// One waiter's turn with the lock (a round, or only a look at how far the last one
/// covered). When dropped it lets the lock go, then records how far its round covered
/// (nothing if there was none, it failed or was dropped) and wakes the waiters.
///
/// Both, in that order: a waiter that finds the lock held waits for the next send, so
/// every holder must send, and only once it has let go. Sent while still holding it, a
/// waiter that looked after the send (not covered) and then found the lock held would
/// wait for a send no one was left to make. Let go first, at worst a waiter takes the
/// lock before the send and looks once more than needed.
struct Turn<'a> {
    ended: &'a watch::Sender<u64>,
    covers: Option<u64>,
    running: Option<MutexGuard<'a, ()>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.running.take());
        let covers = self.covers;
        // Sent (and the version bumped) whether or not it covers more.
        self.ended.send_modify(|covered| {
            if let Some(covers) = covers {
                *covered = (*covered).max(covers);
            }
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

    /// A turn with the lock that ends while a waiter finds it held must still wake that
    /// waiter. Two ways this was lost: a round's end told before its lock was let go,
    /// and a look under the lock (covered already, no round) that told nothing. Either
    /// left a waiter that looked (not covered) and then found the lock held waiting for
    /// a round no one would run: a bench's account creation hung once in a few runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_that_misses_the_lock_as_a_round_ends_is_not_forgotten() {
        let deadline = std::time::Duration::from_secs(10);
        for _ in 0..2_000 {
            let rounds = Arc::new(Rounds::default());
            let written = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let (rounds, written) = (rounds.clone(), written.clone());
                tasks.push(tokio::spawn(async move {
                    let mine = written.fetch_add(1, Ordering::SeqCst) + 1;
                    rounds
                        .until(
                            |covered| (covered >= mine).then_some(Ok::<_, ()>(())),
                            || async { Ok(written.load(Ordering::SeqCst)) },
                        )
                        .await
                }));
            }
            for task in tasks {
                tokio::time::timeout(deadline, task)
                    .await
                    .expect("every waiter is covered by a round")
                    .unwrap()
                    .unwrap();
            }
        }
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
