//! What the drain reports about itself: its progress, its failures, its evacuations.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sandhost_runtime::SandboxKey;

pub use crate::admission::NodeStatus;
use crate::sandbox::SandboxError;

/// A request to drain the node without shutting it down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainRequest {
    /// Bound of the graceful phase; `None` waits for sandboxes to leave on their own.
    pub timeout: Option<Duration>,
    /// Skip the graceful phase: stop every live sandbox now.
    pub force: bool,
}

/// One sandbox the forced phase could not stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainFailure {
    /// The sandbox's lifecycle.
    pub sandbox: SandboxKey,
    /// Why it is still live.
    pub error: StopFailure,
}

/// Why the forced phase could not stop a sandbox. Errors compare by identity: a failure equals its
/// clones (what the published progress needs), never another failure with the same text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StopFailure {
    /// It was still live when the forced phase's bound passed.
    #[error("not stopped within FORCE_SHUTDOWN_TIMEOUT ({})", humantime::format_duration(*bound))]
    NotStoppedInTime {
        /// The forced phase's bound.
        bound: Duration,
    },
    /// The runtime could not stop it.
    #[error("stop failed")]
    Stop(#[source] Arc<SandboxError>),
    /// Its drain policy is CHECKPOINT: the checkpoint failed, and then the stop failed too.
    #[error("checkpoint failed ({}); stop failed", crate::error_chain(checkpoint.as_ref()))]
    CheckpointAndStop {
        /// The checkpoint's error.
        checkpoint: Arc<SandboxError>,
        /// The stop's error.
        #[source]
        stop: Arc<SandboxError>,
    },
}

impl PartialEq for StopFailure {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::NotStoppedInTime { bound: a }, Self::NotStoppedInTime { bound: b }) => a == b,
            (Self::Stop(a), Self::Stop(b)) => Arc::ptr_eq(a, b),
            (
                Self::CheckpointAndStop { checkpoint: a, stop: b },
                Self::CheckpointAndStop { checkpoint: c, stop: d },
            ) => Arc::ptr_eq(a, c) && Arc::ptr_eq(b, d),
            _ => false,
        }
    }
}

impl Eq for StopFailure {}

/// A sandbox the drain checkpointed and stopped, and its snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evacuation {
    /// The sandbox id.
    pub sandbox: String,
    /// The snapshot id.
    pub snapshot: String,
}

/// Where the drain is, as `WatchDrain`, `GetInfo`, the CLI and the metrics report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainProgress {
    /// The node's status.
    pub status: NodeStatus,
    /// When the status last changed.
    pub status_changed_at: SystemTime,
    /// Whether the process is shutting down (then undrain is refused).
    pub shutting_down: bool,
    /// Starts admitted and not yet finished.
    pub in_flight_starts: u64,
    /// Sandboxes holding host resources (starting, running, paused, stopping).
    pub live: u64,
    /// Sandboxes that left since the drain began.
    pub exited: u64,
    /// Sandboxes the forced phase stopped (deadline, second signal, `ForceStop`), checkpoint-policy
    /// sandboxes it had to stop without a snapshot included.
    pub force_stopped: u64,
    /// Sandboxes stopped because their drain policy is STOP.
    pub policy_stopped: u64,
    /// Sandboxes the drain checkpointed before stopping them.
    pub checkpointed: u64,
    /// The end of the current phase: the graceful deadline while draining, the forced phase's
    /// bound while forcing; `None` when unbounded or not draining.
    pub deadline: Option<SystemTime>,
    /// Failures of the forced phase, each named.
    pub failures: Vec<DrainFailure>,
    /// The sandboxes the drain checkpointed, each with its snapshot.
    pub evacuated: Vec<Evacuation>,
}

impl DrainProgress {
    /// The progress of a node with nothing in flight and no drain: `status`, since `changed_at`.
    #[must_use]
    pub fn idle(status: NodeStatus, changed_at: SystemTime) -> Self {
        Self {
            status,
            status_changed_at: changed_at,
            shutting_down: false,
            in_flight_starts: 0,
            live: 0,
            exited: 0,
            force_stopped: 0,
            policy_stopped: 0,
            checkpointed: 0,
            deadline: None,
            failures: Vec::new(),
            evacuated: Vec::new(),
        }
    }
}

/// A shutdown drain of the previous agent that did not end: the process died first (a third
/// signal, a supervisor's kill, a crash). Its drain was not continued; this agent came up READY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptedShutdown {
    /// When that shutdown's drain began.
    pub began_at: SystemTime,
    /// Sandboxes still running that this agent re-adopted.
    pub live_at_restart: u64,
}

/// Why a drain request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// Undrain was asked while the process is shutting down.
    #[error("the node is shutting down: it cannot be undrained")]
    ShuttingDown,
}
