//! Stopping a sandbox: the synchronous bookkeeping (reason, `STOPPING`) and the signals, grace and
//! kill that follow. Split in two so that a timer or the drain can record a stop at once and send
//! its signals in a task.

use std::sync::Arc;
use std::time::Duration;

use sandhost_runtime::SandboxKey;

use super::manager::Manager;
use super::table::Table;
use super::{ExitReason, SandboxError, SandboxState};

/// How a stop ends the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM, then the sandbox's grace, then kill.
    Graceful,
    /// SIGTERM, then the sandbox's grace or this bound, whichever is shorter, then kill.
    Within(Duration),
    /// Kill at once.
    Now,
}

/// A stop whose bookkeeping is done and whose signals are still to be sent.
pub(super) struct PendingStop {
    key: SandboxKey,
    mode: StopMode,
    grace: Duration,
    thaw: bool,
}

impl Manager {
    /// Stops one lifecycle and returns once its processes are gone (its exit is recorded by its
    /// supervisor). The first stop's reason wins. Idempotent.
    ///
    /// # Errors
    ///
    /// The runtime's error when the processes could not be stopped.
    pub async fn stop_lifecycle(
        self: &Arc<Self>,
        key: &SandboxKey,
        reason: ExitReason,
        mode: StopMode,
    ) -> Result<(), SandboxError> {
        match self.begin_stop(key, reason, mode) {
            Some(stop) => self.execute_stop(stop).await,
            None => Ok(()),
        }
    }

    /// Stops many lifecycles together, each as [`Manager::stop_lifecycle`] would with its own
    /// reason: their bookkeeping under one hold of the table lock, then the runtime's bulk stop
    /// ([`Runtime::stop_many`](sandhost_runtime::Runtime::stop_many): every SIGTERM sent before
    /// any wait). Calls `done(i, result)` for the `i`-th entry of `stops` as soon as its processes
    /// are gone (at once for one that needs no stop); returns once all have.
    pub async fn stop_many(
        self: &Arc<Self>,
        stops: &[(SandboxKey, ExitReason)],
        mode: StopMode,
        done: &(dyn Fn(usize, Result<(), SandboxError>) + Send + Sync),
    ) {
        let mut pending = Vec::with_capacity(stops.len());
        let mut nothing_to_do = Vec::new();
        {
            let mut table = self.lock();
            for (i, (key, reason)) in stops.iter().enumerate() {
                match begin_stop_locked(&mut table, key, *reason, mode) {
                    Some(stop) => pending.push((i, stop)),
                    None => nothing_to_do.push(i),
                }
            }
        }
        // Outside the lock: `done` is the caller's.
        for i in nothing_to_do {
            done(i, Ok(()));
        }
        if mode == StopMode::Now {
            let kills =
                pending.into_iter().map(|(i, stop)| async move { done(i, self.execute_stop(stop).await) });
            futures::future::join_all(kills).await;
            return;
        }
        let thaws = pending.iter().filter(|(_, stop)| stop.thaw).map(|(_, stop)| async move {
            if let Err(error) = self.runtime.resume(&stop.key).await {
                tracing::warn!(sandbox.id = %stop.key.id, error = %error, "thawing before the stop failed");
            }
        });
        futures::future::join_all(thaws).await;
        let graces: Vec<(SandboxKey, Duration)> = pending
            .iter()
            .map(|(_, stop)| match mode {
                StopMode::Within(bound) => (stop.key.clone(), stop.grace.min(bound)),
                StopMode::Graceful | StopMode::Now => (stop.key.clone(), stop.grace),
            })
            .collect();
        let stopped = |j: usize, result: Result<(), sandhost_runtime::StopError>| {
            let (i, stop) = &pending[j];
            let id = &stop.key.id;
            done(
                *i,
                result.map_err(|e| SandboxError::Runtime { id: id.clone(), op: "stop", source: Box::new(e) }),
            );
        };
        self.runtime.stop_many(&graces, &stopped).await;
    }

    /// The synchronous half of a stop: records the reason and moves the sandbox to `Stopping`.
    /// Returns what is left to do to the processes, if anything.
    pub(super) fn begin_stop(
        &self,
        key: &SandboxKey,
        reason: ExitReason,
        mode: StopMode,
    ) -> Option<PendingStop> {
        begin_stop_locked(&mut self.lock(), key, reason, mode)
    }

    /// The asynchronous half of a stop: signals, grace, kill.
    pub(super) async fn execute_stop(&self, stop: PendingStop) -> Result<(), SandboxError> {
        let PendingStop { key, mode, grace, thaw } = stop;
        if thaw && let Err(error) = self.runtime.resume(&key).await {
            tracing::warn!(sandbox.id = %key.id, error = %error, "thawing before the stop failed");
        }
        let stopped = match mode {
            StopMode::Graceful => self.runtime.stop(&key, grace).await,
            StopMode::Within(bound) => self.runtime.stop(&key, grace.min(bound)).await,
            StopMode::Now => self.runtime.kill(&key).await,
        };
        stopped.map_err(|e| SandboxError::Runtime { id: key.id.clone(), op: "stop", source: Box::new(e) })
    }
}

/// [`Manager::begin_stop`] under a table lock already held (a bulk stop takes it once for all).
fn begin_stop_locked(
    table: &mut Table,
    key: &SandboxKey,
    reason: ExitReason,
    mode: StopMode,
) -> Option<PendingStop> {
    let entry = table.entry_mut(key)?;
    let state = entry.info.state;
    let grace = entry.spec.stop_grace;
    match state {
        SandboxState::Exited => None,
        SandboxState::Starting => {
            // run_start issues the stop once the sandbox runs.
            entry.stop_reason.get_or_insert(reason);
            // The most urgent stop asked for wins.
            entry.pending_stop = Some(match (entry.pending_stop, mode) {
                (Some(StopMode::Now), _) | (_, StopMode::Now) => StopMode::Now,
                (Some(StopMode::Within(a)), StopMode::Within(b)) => StopMode::Within(a.min(b)),
                (Some(StopMode::Within(a)), StopMode::Graceful) | (_, StopMode::Within(a)) => {
                    StopMode::Within(a)
                }
                _ => StopMode::Graceful,
            });
            None
        }
        SandboxState::Stopping => Some(PendingStop { key: key.clone(), mode, grace, thaw: false }),
        SandboxState::Running | SandboxState::Paused => {
            entry.stop_reason.get_or_insert(reason);
            entry.end_changed.notify_one();
            let _ = table.transition(key, SandboxState::Stopping);
            Some(PendingStop { key: key.clone(), mode, grace, thaw: state == SandboxState::Paused })
        }
    }
}
