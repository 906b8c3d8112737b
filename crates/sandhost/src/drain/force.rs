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
use crate::sandbox::{Counts, DrainPolicy, ExitReason, StopMode};

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

    /// Starts a stop for every live sandbox not yet seen; returns how many it started.
    fn force_pass(
        self: &Arc<Self>,
        seen: &mut HashSet<SandboxKey>,
        results: &mpsc::UnboundedSender<(SandboxKey, StopOutcome)>,
        bound: Duration,
    ) -> usize {
        let mut started = 0;
        for (key, policy, _) in self.manager.live_keys() {
            if !seen.insert(key.clone()) {
                continue;
            }
            started += 1;
            let this = Arc::clone(self);
            let results = results.clone();
            tokio::spawn(async move {
                let outcome = this.force_one(&key, policy, bound).await;
                let _ = results.send((key, outcome));
            });
        }
        started
    }

    /// Stops (or, by its policy, checkpoints and stops) one sandbox.
    async fn force_one(&self, key: &SandboxKey, policy: DrainPolicy, bound: Duration) -> StopOutcome {
        let manager = &self.manager;
        // Half the bound for SIGTERM, so the kill and the cleanup still fit in it.
        let mode = StopMode::Within(bound / 2);
        if policy != DrainPolicy::Checkpoint {
            return match manager.stop_lifecycle(key, ExitReason::ForceStopped, mode).await {
                Ok(()) => StopOutcome::Stopped,
                Err(error) => StopOutcome::Failed(StopFailure::Stop(Arc::new(error))),
            };
        }
        if !manager.can_checkpoint() {
            return match manager.stop_lifecycle(key, ExitReason::DrainStopped, mode).await {
                Ok(()) => StopOutcome::StoppedWithoutCheckpoint { backend: manager.runtime_name() },
                Err(error) => StopOutcome::Failed(StopFailure::Stop(Arc::new(error))),
            };
        }
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
