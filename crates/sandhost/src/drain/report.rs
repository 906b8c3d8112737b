//! The report of a drain: what each stop did, counted once per sandbox, for the published progress,
//! the metrics and the exit report of `serve`.

use sandhost_runtime::SandboxKey;

use super::{DrainFailure, Evacuation, StopFailure};
use crate::sandbox::SandboxError;

/// What a drain did, for the exit report of `serve`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sandboxes stopped by the forced phase (deadline, second signal, `ForceStop`), checkpoint-policy
    /// sandboxes it had to stop without a snapshot included.
    pub force_stopped: u64,
    /// Sandboxes stopped because their drain policy is STOP.
    pub policy_stopped: u64,
    /// Sandboxes checkpointed and stopped.
    pub checkpointed: u64,
    /// Every sandbox the forced phase could not stop, named.
    pub failures: Vec<DrainFailure>,
    /// The sandboxes checkpointed, each with its snapshot.
    pub evacuated: Vec<Evacuation>,
}

/// How one sandbox left in the forced phase.
#[derive(Debug)]
pub(super) enum StopOutcome {
    /// Stopped (SIGTERM, grace within the bound, kill).
    Stopped,
    /// A CHECKPOINT sandbox whose checkpoint failed, stopped without a snapshot.
    StoppedAfterFailedCheckpoint(SandboxError),
    /// A CHECKPOINT sandbox on a backend that cannot checkpoint, stopped without a snapshot.
    StoppedWithoutCheckpoint {
        /// The backend.
        backend: &'static str,
    },
    /// Checkpointed, then stopped: its snapshot.
    Checkpointed(String),
    /// Still live.
    Failed(StopFailure),
}

impl DrainReport {
    /// Counts one sandbox's outcome in the forced phase.
    pub(super) fn record(&mut self, key: &SandboxKey, outcome: StopOutcome) {
        match outcome {
            StopOutcome::Stopped => {
                self.force_stopped += 1;
                tracing::warn!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "sandbox force-stopped");
            }
            StopOutcome::StoppedAfterFailedCheckpoint(error) => {
                self.force_stopped += 1;
                let error = crate::error_chain(&error);
                tracing::warn!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error, "checkpoint failed; sandbox force-stopped");
            }
            StopOutcome::StoppedWithoutCheckpoint { backend } => {
                self.force_stopped += 1;
                tracing::warn!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, backend, "the backend cannot checkpoint; sandbox force-stopped");
            }
            StopOutcome::Checkpointed(snapshot) => {
                self.checkpointed += 1;
                tracing::info!(sandbox.id = %key.id, snapshot = %snapshot, "sandbox evacuated to a snapshot");
                self.evacuated.push(Evacuation { sandbox: key.id.to_string(), snapshot });
            }
            StopOutcome::Failed(error) => self.fail(key, error),
        }
    }

    /// Names a sandbox the forced phase could not stop.
    pub(super) fn fail(&mut self, key: &SandboxKey, error: StopFailure) {
        let message = crate::error_chain(&error);
        tracing::error!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error = message, "forced stop failed");
        self.failures.push(DrainFailure { sandbox: key.clone(), error });
    }
}
