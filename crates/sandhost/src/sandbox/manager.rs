//! The sandbox manager: the table of sandboxes and what the rest of sandhost asks of it. Creating
//! a sandbox is in `create.rs`, watching one to its exit in `supervise.rs`, stopping in `stop.rs`,
//! the other operations in `ops.rs`, re-adoption in `recover.rs`.
//!
//! # Invariants
//!
//! - The table lock is a std mutex held only for in-memory work, never across an await.
//! - Admission is not the manager's: it holds an [`Admission`] handle (enter; is the node forcing)
//!   whose control side the drain coordinator owns.
//! - See each file for the invariants of its part (`create.rs`: admission and the start turn;
//!   `supervise.rs`: one supervisor per lifecycle, the only code that records an exit).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sandhost_runtime::{Runtime, SandboxKey};
use tokio::sync::{Semaphore, watch};

use super::store::MetaStore;
use super::table::{Counts, Table};
use super::{DrainPolicy, Interrupted, Resources, SandboxState};
use crate::admission::Admission;
use crate::config::SandboxConfig;
use crate::metrics::Metrics;

/// The sandbox manager. Shared as `Arc<Manager>`.
pub struct Manager {
    pub(super) runtime: Arc<dyn Runtime>,
    pub(super) config: SandboxConfig,
    pub(super) templates: HashMap<String, PathBuf>,
    pub(super) admission: Admission,
    /// Admitted starts not yet finished, running or waiting for their turn: at most
    /// `max_admitted_starts`.
    pub(super) admitted_starts: Arc<Semaphore>,
    /// Turns to run a start: the start parallelism.
    pub(super) start_turns: Semaphore,
    table: Mutex<Table>,
    counts: watch::Receiver<Counts>,
    pub(super) metrics: Metrics,
    pub(super) store: MetaStore,
    pub(super) capacity: Resources,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("runtime", &self.runtime.name())
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

/// What [`Manager::new`] needs.
#[derive(Debug)]
pub struct ManagerParts {
    /// The runtime backend.
    pub runtime: Arc<dyn Runtime>,
    /// Limits and defaults.
    pub config: SandboxConfig,
    /// Registered rootfs templates.
    pub templates: Vec<(String, PathBuf)>,
    /// The admission handle; the drain coordinator holds its control side.
    pub admission: Admission,
    /// What the host offers (the bound of a request's limits, and `GetInfo`'s capacity).
    pub capacity: Resources,
    /// Metrics.
    pub metrics: Metrics,
    /// Where the manager keeps each sandbox's metadata (labels, end time, drain policy).
    pub meta_dir: PathBuf,
}

impl Manager {
    /// A manager with an empty table.
    #[must_use]
    pub fn new(parts: ManagerParts) -> Arc<Self> {
        let permits = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).clamp(1, Semaphore::MAX_PERMITS);
        let (publish, counts) = watch::channel(Counts::default());
        Arc::new(Self {
            runtime: parts.runtime,
            admitted_starts: Arc::new(Semaphore::new(permits(parts.config.max_admitted_starts))),
            start_turns: Semaphore::new(permits(parts.config.start_parallelism)),
            config: parts.config,
            templates: parts.templates.into_iter().collect(),
            admission: parts.admission,
            table: Mutex::new(Table::new(publish, parts.metrics.clone())),
            counts,
            metrics: parts.metrics,
            store: MetaStore::new(parts.meta_dir),
            capacity: parts.capacity,
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Table> {
        // Every table operation completes its bookkeeping before it can panic, so a poisoned table
        // is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every change of the counts, starting with the current ones.
    #[must_use]
    pub fn watch_counts(&self) -> watch::Receiver<Counts> {
        let mut counts = self.counts.clone();
        counts.mark_unchanged();
        counts
    }

    pub(crate) fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    /// Whether the backend can checkpoint.
    #[must_use]
    pub fn can_checkpoint(&self) -> bool {
        self.runtime.can_checkpoint()
    }

    pub(crate) fn capacity(&self) -> Resources {
        self.capacity
    }

    pub(crate) fn counts_by_state(&self) -> Vec<(SandboxState, u64)> {
        let counts = *self.counts.borrow();
        SandboxState::ALL.iter().map(|s| (*s, counts.get(*s))).collect()
    }

    pub(crate) fn allocated(&self) -> Resources {
        self.lock().allocated()
    }

    /// The live sandboxes, with their drain policy, for the drain.
    #[must_use]
    pub fn live_keys(&self) -> Vec<(SandboxKey, DrainPolicy, SandboxState)> {
        let table = self.lock();
        table
            .sandboxes
            .values()
            .filter(|e| e.info.state.is_live())
            .map(|e| (e.spec.key.clone(), e.info.drain_policy, e.info.state))
            .collect()
    }
}

/// Runs `work` in a task of its own, so that it goes on to its end if the caller goes away, and
/// waits for it. A panic inside it is resumed here; a task cancelled by the async runtime's
/// shutdown is [`Interrupted`]. The start and the checkpoint, which must never be left half done
/// by a caller that goes away, both run through it.
///
/// # Errors
///
/// [`Interrupted`] when the task was cancelled.
pub(super) async fn run_to_end<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, Interrupted> {
    match tokio::spawn(work).await {
        Ok(value) => Ok(value),
        Err(join) => match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(Interrupted),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_cancelled_by_the_runtime_shutting_down_is_interrupted_not_a_panic() {
        let other = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let mut work = Box::pin(run_to_end(std::future::pending::<()>()));
        {
            // The task is spawned on `other`, which never runs it, and is cancelled by its shutdown.
            let _context = other.enter();
            assert!(futures::poll!(&mut work).is_pending());
        }
        other.shutdown_background();
        assert_eq!(work.await, Err(Interrupted));
    }

    #[tokio::test]
    #[should_panic(expected = "the work panicked")]
    async fn a_panic_in_the_task_is_resumed_in_the_caller() {
        let _ = run_to_end(async { panic!("the work panicked") }).await;
    }

    #[tokio::test]
    async fn the_work_s_value_is_returned() {
        assert_eq!(run_to_end(async { 7 }).await, Ok(7));
    }
}
