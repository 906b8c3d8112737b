//! The node status and what the drain reports about itself.

use std::fmt;
use std::time::{Duration, SystemTime};

/// The node's status: whether it admits new sandboxes and where its drain is.
///
/// ```text
/// READY --drain / SIGTERM--> DRAINING --live = 0--> DRAINED --(shutdown)--> exit
///                               |  ^                   |
///    deadline, 2nd signal,      |  +----- undrain -----+   (not while shutting down)
///    ForceStop API              v
///                           FORCING --all stopped or force deadline--> DRAINED
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    /// Admitting new sandboxes.
    Ready,
    /// Not admitting; waiting for live sandboxes to leave.
    Draining,
    /// Not admitting; nothing live is left.
    Drained,
    /// Not admitting; stopping every live sandbox.
    Forcing,
    /// The agent cannot serve (its runtime failed); not admitting.
    Unhealthy,
}

impl NodeStatus {
    /// The uppercase name used in the API, health bodies and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "READY",
            Self::Draining => "DRAINING",
            Self::Drained => "DRAINED",
            Self::Forcing => "FORCING",
            Self::Unhealthy => "UNHEALTHY",
        }
    }

    /// Every status, for metrics.
    pub const ALL: [Self; 5] = [Self::Ready, Self::Draining, Self::Drained, Self::Forcing, Self::Unhealthy];
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to drain the node without shutting it down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainRequest {
    /// Bound of the graceful phase; `None` waits for sandboxes to leave on their own.
    pub timeout: Option<Duration>,
    /// Skip the graceful phase: stop every live sandbox now.
    pub force: bool,
}

/// One sandbox the forced phase could not stop, or a step that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainFailure {
    /// The sandbox (or the step) that failed.
    pub subject: String,
    /// What went wrong.
    pub message: String,
}

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
    /// Sandboxes the drain stopped (deadline, force, or drain policy STOP).
    pub force_stopped: u64,
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
            checkpointed: 0,
            deadline: None,
            failures: Vec::new(),
            evacuated: Vec::new(),
        }
    }
}

/// Why a drain request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// Undrain was asked while the process is shutting down.
    #[error("the node is shutting down: it cannot be undrained")]
    ShuttingDown,
}
