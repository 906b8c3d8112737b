//! Typed errors of the sandbox operations. The gRPC adapter maps each variant to one status code,
//! exhaustively, in one place (`api::status`).

use sandhost_runtime::{CheckpointError, SandboxId, StartError};

use crate::admission::NodeStatus;
use crate::sandbox::{ExitReason, SandboxState};

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidArgument {
    /// The field at fault, as named in the API (e.g. `argv`, `labels["x"]`).
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

impl InvalidArgument {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}

/// A start or a checkpoint runs in a task of its own; the async runtime cancelled that task (the
/// agent is going away). Retryable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupted: the agent is shutting down")]
pub struct Interrupted;

/// Why `Create` failed. Nothing is left behind on the host.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A field of the request is invalid.
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidArgument),
    /// The node is not admitting new sandboxes (it drains). Retry on another node or later.
    #[error("node is {status}: not admitting new sandboxes")]
    NotAdmitting {
        /// The node's status when the request was refused.
        status: NodeStatus,
    },
    /// A live sandbox already has this id.
    #[error("sandbox {0} already exists")]
    AlreadyExists(SandboxId),
    /// A node limit is reached.
    #[error("node limit reached: {limit} (max {max})")]
    ResourceExhausted {
        /// Which limit.
        limit: &'static str,
        /// Its value.
        max: u64,
    },
    /// No template with this name is registered.
    #[error("template {0:?} not found")]
    TemplateNotFound(String),
    /// The runtime backend cannot do what the request asks.
    #[error("the {backend} backend does not support {what}")]
    NotSupported {
        /// The backend.
        backend: &'static str,
        /// The feature.
        what: &'static str,
    },
    /// A kill (Delete, or the drain's forced phase) came while the start waited for its turn, so it
    /// was not begun.
    #[error("sandbox {id} was stopped ({}) before it started", reason.as_str())]
    StoppedBeforeStart {
        /// The sandbox.
        id: SandboxId,
        /// The stop's reason, as its exit records it.
        reason: ExitReason,
    },
    /// The runtime failed to start it.
    #[error("start failed")]
    Start(#[source] StartError),
    /// The start's task was cancelled.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// Why an operation on an existing sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A field of the request is invalid.
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidArgument),
    /// No sandbox with this id (live, or exited within the retention period).
    #[error("sandbox {0:?} not found")]
    NotFound(String),
    /// The sandbox is not in a state that allows the operation.
    #[error("sandbox {id} is {}: cannot {op}", state.as_str())]
    WrongState {
        /// The sandbox.
        id: SandboxId,
        /// Its state.
        state: SandboxState,
        /// The operation.
        op: &'static str,
    },
    /// The node is draining and the operation would start a sandbox.
    #[error("node is {status}: not admitting new work")]
    NotAdmitting {
        /// The node's status.
        status: NodeStatus,
    },
    /// The runtime backend cannot do this.
    #[error("the {backend} backend does not support {what}")]
    NotSupported {
        /// The backend.
        backend: &'static str,
        /// The feature.
        what: &'static str,
    },
    /// A snapshot operation failed.
    #[error("snapshot operation failed")]
    Checkpoint(#[source] CheckpointError),
    /// The runtime failed.
    #[error("sandbox {id}: {op} failed")]
    Runtime {
        /// The sandbox.
        id: SandboxId,
        /// The operation.
        op: &'static str,
        /// The runtime's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The checkpoint's task was cancelled.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}
