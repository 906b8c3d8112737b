//! The sandbox as the rest of sandhost sees it: states, exit reasons, requests and the read model.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use futures::Stream;

use sandhost_runtime::{Exit, LifecycleId, Limits, SandboxId, SnapshotId};

use super::SandboxError;

/// A stream of log pieces, from the start of the log (see `Logs`).
pub type LogStream = Pin<Box<dyn Stream<Item = Result<LogPiece, SandboxError>> + Send>>;

/// Bytes of a sandbox's log, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPiece {
    /// The bytes.
    pub data: Vec<u8>,
    /// Bytes of the log dropped just before these (the log keeps only its newest bytes): 0 unless
    /// the reader was behind what is kept.
    pub dropped: u64,
}

/// An amount of node resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// Sandboxes (live).
    pub sandboxes: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// CPU, in millicores.
    pub cpu_millis: u64,
}

/// Where a sandbox is in its life. The allowed transitions are in [`SandboxState::can_become`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SandboxState {
    /// Admitted; the runtime is starting it.
    Starting,
    /// Its command runs.
    Running,
    /// Frozen in memory.
    Paused,
    /// Being stopped; its processes may still run.
    Stopping,
    /// Its command has ended and its resources are released (or being released).
    Exited,
}

impl SandboxState {
    /// `STARTING -> RUNNING <-> PAUSED -> STOPPING -> EXITED`, plus the failure and exit edges:
    /// a start can fail (`STARTING -> EXITED`) and a running or paused sandbox can exit on its own.
    #[must_use]
    pub fn can_become(self, next: Self) -> bool {
        use SandboxState::{Exited, Paused, Running, Starting, Stopping};
        matches!(
            (self, next),
            (Starting, Running | Exited | Stopping)
                | (Running, Paused | Stopping | Exited)
                | (Paused, Running | Stopping | Exited)
                | (Stopping, Exited)
        )
    }

    /// Whether the sandbox holds host resources (everything but `Exited`).
    #[must_use]
    pub fn is_live(self) -> bool {
        self != Self::Exited
    }

    /// The lowercase name used in logs, metrics and the CLI.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Exited => "exited",
        }
    }

    /// Every state, in lifecycle order.
    pub const ALL: [Self; 5] = [Self::Starting, Self::Running, Self::Paused, Self::Stopping, Self::Exited];
}

/// Why a sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// Its command exited on its own.
    Exited,
    /// It reached its end time and was stopped.
    Timeout,
    /// It was deleted (stopped or killed) through the API.
    Killed,
    /// The drain stopped it at the deadline or on a forced stop.
    ForceStopped,
    /// It was stopped because its drain policy says so (STOP, or CHECKPOINT on a backend that
    /// cannot checkpoint).
    DrainStopped,
    /// It was checkpointed and stopped (evacuated).
    Checkpointed,
    /// It never started.
    StartFailed,
    /// Not a sandbox: a cgroup under the node's parent that named none, found at recovery; its
    /// processes were killed.
    Unidentified,
}

impl ExitReason {
    /// The lowercase name used in the API, logs and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exited => "exited",
            Self::Timeout => "timeout",
            Self::Killed => "killed",
            Self::ForceStopped => "force_stopped",
            Self::DrainStopped => "drain_stopped",
            Self::Checkpointed => "checkpointed",
            Self::StartFailed => "start_failed",
            Self::Unidentified => "unidentified",
        }
    }

    /// Every reason (metrics pre-set each to 0).
    pub const ALL: [Self; 8] = [
        Self::Exited,
        Self::Timeout,
        Self::Killed,
        Self::ForceStopped,
        Self::DrainStopped,
        Self::Checkpointed,
        Self::StartFailed,
        Self::Unidentified,
    ];

    /// The reason named `name` ([`ExitReason::as_str`]).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Something the node lost about a sandbox (a damaged or missing state file, an agent killed at the
/// wrong moment), and what it did instead. A sandbox with a condition is managed like any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// What kind of loss.
    pub kind: ConditionKind,
    /// What was lost and what the node did instead, for people.
    pub message: String,
}

/// The kinds of [`Condition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionKind {
    /// The runtime's state of it was damaged or missing: it was adopted from what was left (its
    /// init, or only its cgroup); its command, limits and exit may be unknown.
    RuntimeStateLost,
    /// The node's record of it was damaged or missing: its end time (the default timeout from its
    /// start), labels and drain policy are the node's defaults.
    MetadataLost,
    /// Not a sandbox: a cgroup under the node's parent that named none; its processes were killed.
    Unidentified,
}

impl ConditionKind {
    /// Every kind.
    pub const ALL: [Self; 3] = [Self::RuntimeStateLost, Self::MetadataLost, Self::Unidentified];

    /// The lowercase name used in the API, logs and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RuntimeStateLost => "runtime_state_lost",
            Self::MetadataLost => "metadata_lost",
            Self::Unidentified => "unidentified",
        }
    }

    /// The kind named `name` ([`ConditionKind::as_str`]).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// What the drain does with a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DrainPolicy {
    /// Run until it exits or reaches its end time (stopped only at the drain's deadline).
    #[default]
    Wait,
    /// SIGTERM when the drain begins, then stopped after its grace.
    Stop,
    /// When the node must empty, checkpoint and stop it instead of killing it (where the backend
    /// can; elsewhere it is stopped like `Stop` and the report says so).
    Checkpoint,
}

impl DrainPolicy {
    /// The lowercase name used in the API and CLI.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wait => "wait",
            Self::Stop => "stop",
            Self::Checkpoint => "checkpoint",
        }
    }
}

/// How a sandbox ended, as kept for the retention period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    /// The command's exit, when it is known (a start failure has none).
    pub exit: Option<Exit>,
    /// Why it ended.
    pub reason: ExitReason,
    /// More detail (the start error, the snapshot an evacuation produced, a stop failure).
    pub message: Option<String>,
    /// Whether the kernel's OOM killer killed a process of it (its memory limit was reached): a
    /// `Signal(9)` exit is then that kill, if the command itself was the one killed. `None` where
    /// the backend cannot tell (see [`Runtime::oom_kills`](sandhost_runtime::Runtime::oom_kills)).
    pub oom_killed: Option<bool>,
}

/// A request to create a sandbox, as it arrives from the API (not yet validated).
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Client-chosen id; generated when absent.
    pub id: Option<String>,
    /// Template name; `host` when absent.
    pub template: Option<String>,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory inside the sandbox.
    pub cwd: Option<String>,
    /// How long the sandbox may run; the node's default when absent.
    pub timeout: Option<Duration>,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_millis: Option<u32>,
    /// Process limit.
    pub pids_max: Option<u32>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// What the drain does with it.
    pub drain_policy: DrainPolicy,
    /// Start from this snapshot.
    pub restore_from: Option<String>,
    /// SIGTERM-to-kill grace when it is stopped; the node's default when absent.
    pub stop_grace: Option<Duration>,
}

/// A change to a live sandbox.
#[derive(Debug, Clone, Default)]
pub struct UpdateRequest {
    /// A new end time.
    pub end: Option<NewEnd>,
    /// Replaces the labels when present.
    pub labels: Option<BTreeMap<String, String>>,
}

/// A sandbox's new end time, as the request gave it (so an error names the field it gave).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewEnd {
    /// `timeout`: this long from now.
    Timeout(Duration),
    /// `end_time`: this moment, given as how long from now it is.
    EndTime(Duration),
}

impl NewEnd {
    /// How long from now.
    #[must_use]
    pub fn from_now(self) -> Duration {
        match self {
            Self::Timeout(d) | Self::EndTime(d) => d,
        }
    }

    /// The request's field.
    #[must_use]
    pub fn field(self) -> &'static str {
        match self {
            Self::Timeout(_) => "timeout",
            Self::EndTime(_) => "end_time",
        }
    }
}

/// Which sandboxes `List` returns.
#[derive(Debug, Clone)]
pub struct ListFilter {
    /// Only sandboxes in this state.
    pub state: Option<SandboxState>,
    /// Only sandboxes carrying all of these labels.
    pub labels: BTreeMap<String, String>,
    /// Only sandboxes whose id sorts after this one (the previous page's last).
    pub after: Option<SandboxId>,
    /// At most this many.
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> Self {
        Self { state: None, labels: BTreeMap::new(), after: None, limit: usize::MAX }
    }
}

/// A sandbox as `Get` and `List` report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// Its id.
    pub id: SandboxId,
    /// The current lifecycle.
    pub lifecycle: LifecycleId,
    /// Its state.
    pub state: SandboxState,
    /// The command.
    pub argv: Vec<String>,
    /// The template name.
    pub template: String,
    /// Its limits.
    pub limits: Limits,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Drain policy.
    pub drain_policy: DrainPolicy,
    /// When it was admitted.
    pub created_at: SystemTime,
    /// When its command started running.
    pub started_at: Option<SystemTime>,
    /// When the node stops it (its timeout).
    pub end_time: Option<SystemTime>,
    /// When it exited.
    pub exited_at: Option<SystemTime>,
    /// How it ended, once it has.
    pub exit: Option<ExitInfo>,
    /// The snapshot it was restored from.
    pub restored_from: Option<SnapshotId>,
    /// What the node lost about it and did instead (after a crash or a damaged state file).
    pub conditions: Vec<Condition>,
}
