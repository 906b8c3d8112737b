//! The forced phase: every live sandbox stopped concurrently, each once, the whole phase bounded by
//! `FORCE_SHUTDOWN_TIMEOUT`.
//!
//! # Invariants
//!
//! - Each lifecycle is stopped at most once by the phase (`seen`), and its outcome recorded once:
//!   a sandbox whose stop failed is not reported again when the bound passes.
//! - A start still in flight when the phase begins is caught by a final pass once the gate is idle.
//! - The phase ends at its deadline whatever the stops do; a sandbox still live then is a named
//!   failure ([`StopFailure::NotStoppedInTime`]).
//! - A CHECKPOINT sandbox is checkpointed before it is stopped where the backend can; a failed
//!   checkpoint still stops it, and says so.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sandhost_runtime::SandboxKey;
use tokio::sync::mpsc;

use super::StopFailure;
use super::coordinator::Inner;
use super::report::StopOutcome;
use crate::sandbox::{Counts, DrainPolicy, ExitReason, SandboxError, StopMode};

impl Inner {
    /// Stops every live sandbox, concurrently, within the forced phase's bound.
    pub(super) async fn force_phase(self: &Arc<Self>) {
        let bound = self.settings.force_timeout;
        let deadline = {
            let mut state = self.lock();
            self.enter_forcing(&mut state);
            self.persist(&state);
            self.publish(&state);
            state.run.as_ref().and_then(|run| run.force_deadline).unwrap_or_else(|| SystemTime::now() + bound)
        };
        let remaining = deadline.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO);
        let (results, mut outcomes) = mpsc::unbounded_channel();
        let stops = async {
            let mut seen = HashSet::new();
            let mut started = self.force_pass(&mut seen, &results, remaining);
            // A start still in flight is caught by a final pass once it has finished.
            self.admission.wait_idle().await;
            started += self.force_pass(&mut seen, &results, remaining);
            for _ in 0..started {
                let Some((key, outcome)) = outcomes.recv().await else {
                    break;
                };
                let mut state = self.lock();
                let before = (state.report.force_stopped, state.report.checkpointed);
                state.report.record(&key, outcome);
                self.metrics.count_forced(
                    state.report.force_stopped - before.0,
                    state.report.checkpointed - before.1,
                );
                self.publish(&state);
            }
            let mut counts = self.manager.watch_counts();
            let _ = counts.wait_for(|c: &Counts| c.live() == 0).await;
        };
        if tokio::time::timeout(remaining, stops).await.is_err() {
            let mut state = self.lock();
            for (key, _, _) in self.manager.live_keys() {
                // A sandbox whose stop already failed is reported once, with that failure.
                if !state.report.failures.iter().any(|f| f.sandbox == key) {
                    state.report.fail(&key, StopFailure::NotStoppedInTime { bound });
                }
            }
            self.publish(&state);
        }
    }

    /// Starts a stop for every live sandbox not yet seen; returns how many it started. Those to be
    /// checkpointed first go one by one (each checkpoint is a backend's long operation of its own);
    /// the others go together to the manager's bulk stop, so that the runtime signals all of them
    /// before it waits for any.
    fn force_pass(
        self: &Arc<Self>,
        seen: &mut HashSet<SandboxKey>,
        results: &mpsc::UnboundedSender<(SandboxKey, StopOutcome)>,
        bound: Duration,
    ) -> usize {
        let mut started = 0;
        let mut bulk = Vec::new();
        let can_checkpoint = self.manager.can_checkpoint();
        for (key, policy, _) in self.manager.live_keys() {
            if !seen.insert(key.clone()) {
                continue;
            }
            started += 1;
            if policy == DrainPolicy::Checkpoint && can_checkpoint {
                let this = Arc::clone(self);
                let results = results.clone();
                tokio::spawn(async move {
                    let outcome = this.checkpoint_one(&key, bound).await;
                    let _ = results.send((key, outcome));
                });
            } else {
                bulk.push((key, policy));
            }
        }
        if !bulk.is_empty() {
            let this = Arc::clone(self);
            let results = results.clone();
            tokio::spawn(async move { this.force_many(bulk, bound, &results).await });
        }
        started
    }

    /// Stops sandboxes that are not to be checkpointed (by their policy, or because the backend
    /// cannot), all in one bulk stop; sends each one's outcome as soon as it is stopped, so that
    /// the report has every stop that ended before the phase's bound, whatever the others do.
    async fn force_many(
        &self,
        sandboxes: Vec<(SandboxKey, DrainPolicy)>,
        bound: Duration,
        results: &mpsc::UnboundedSender<(SandboxKey, StopOutcome)>,
    ) {
        let manager = &self.manager;
        let stops: Vec<(SandboxKey, ExitReason)> = sandboxes
            .iter()
            .map(|(key, policy)| {
                let reason = match policy {
                    DrainPolicy::Checkpoint => ExitReason::DrainStopped,
                    DrainPolicy::Wait | DrainPolicy::Stop => ExitReason::ForceStopped,
                };
                (key.clone(), reason)
            })
            .collect();
        let backend = manager.runtime_name();
        let done = |i: usize, stopped: Result<(), SandboxError>| {
            let (key, policy) = &sandboxes[i];
            let outcome = match (stopped, policy) {
                (Err(error), _) => StopOutcome::Failed(StopFailure::Stop(Arc::new(error))),
                (Ok(()), DrainPolicy::Checkpoint) => StopOutcome::StoppedWithoutCheckpoint { backend },
                (Ok(()), DrainPolicy::Wait | DrainPolicy::Stop) => StopOutcome::Stopped,
            };
            let _ = results.send((key.clone(), outcome));
        };
        // Half the bound for SIGTERM, so the kill and the cleanup still fit in it.
        manager.stop_many(&stops, StopMode::Within(bound / 2), &done).await;
    }

    /// Checkpoints one sandbox and stops it (a failed checkpoint still stops it, and says so).
    async fn checkpoint_one(&self, key: &SandboxKey, bound: Duration) -> StopOutcome {
        let manager = &self.manager;
        // Half the bound for SIGTERM, so the kill and the cleanup still fit in it.
        let mode = StopMode::Within(bound / 2);
        let checkpoint = match manager.evacuate(key).await {
            Ok(snapshot) => return StopOutcome::Checkpointed(snapshot),
            Err(error) => error,
        };
        match manager.stop_lifecycle(key, ExitReason::ForceStopped, mode).await {
            Ok(()) => StopOutcome::StoppedAfterFailedCheckpoint(checkpoint),
            Err(stop) => StopOutcome::Failed(StopFailure::CheckpointAndStop {
                checkpoint: Arc::new(checkpoint),
                stop: Arc::new(stop),
            }),
        }
    }
}
