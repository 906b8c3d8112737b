//! Work a backend does after the call that caused it has returned, counted so that
//! [`Runtime::settle`](crate::Runtime::settle) can wait for it: gvisor's starts and checkpoints
//! (which run to their end even if their caller goes away) and slow container deletes, and the
//! undoing of a process start whose caller went away.
//!
//! # Invariants
//!
//! - A task counts from [`Background::spawn`] until it ends or is dropped (a panic included), so
//!   [`Background::settled`] never waits for work that can no longer end.

use std::future::Future;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The counted background work of one runtime. Clones count into the same total.
#[derive(Debug, Clone)]
pub(crate) struct Background {
    pending: watch::Sender<usize>,
}

impl Background {
    pub(crate) fn new() -> Self {
        Self { pending: watch::channel(0).0 }
    }

    /// Runs `work` on the current tokio runtime, counted until it ends (or is dropped).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        struct Done(watch::Sender<usize>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.send_modify(|n| *n -= 1);
            }
        }
        self.pending.send_modify(|n| *n += 1);
        let done = Done(self.pending.clone());
        tokio::spawn(async move {
            let _done = done;
            work.await
        })
    }

    /// Runs `work` to its end whatever becomes of the caller, and returns its result. If the caller
    /// has gone away by then, `abandoned` gets the result instead (to undo what it made). `None`
    /// only if `work` panicked.
    pub(crate) async fn detached<T, W, A>(
        &self,
        work: W,
        abandoned: impl FnOnce(T) -> A + Send + 'static,
    ) -> Option<T>
    where
        T: Send + 'static,
        W: Future<Output = T> + Send + 'static,
        A: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.spawn(async move {
            let result = work.await;
            if let Err(result) = tx.send(result) {
                abandoned(result).await;
            }
        });
        rx.await.ok()
    }

    /// Waits until no counted work is left.
    pub(crate) async fn settled(&self) {
        let mut pending = self.pending.subscribe();
        let _ = pending.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn settled_waits_for_spawned_and_abandoned_work() {
        let background = Background::new();
        let (release, released) = oneshot::channel::<()>();
        background.spawn(async move {
            let _ = released.await;
        });
        let settled = tokio::time::timeout(Duration::from_secs(1), background.settled()).await;
        assert!(settled.is_err(), "settled while work was pending");
        release.send(()).expect("the task waits");
        tokio::time::timeout(Duration::from_secs(1), background.settled()).await.expect("settles");

        // A caller that goes away: the work still ends, and its result goes to `abandoned`.
        let (undone_tx, undone) = oneshot::channel();
        let work = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            7
        };
        let call = background.detached(work, move |result| async move {
            let _ = undone_tx.send(result);
        });
        // A zero timeout polls the call once (the work is spawned), then gives up on it.
        assert!(tokio::time::timeout(Duration::ZERO, call).await.is_err());
        background.settled().await;
        assert_eq!(undone.await, Ok(7));
    }
}
