//! Typed errors, one per operation. Each names the sandbox (or snapshot, or host path) it is about.

use std::io;

use crate::{SandboxKey, SnapshotId};

/// Why a sandbox did not start. Nothing of it is left behind.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The spec cannot be run as given (names the field).
    #[error("invalid spec for {key}: {field}: {reason}")]
    InvalidSpec {
        /// The sandbox.
        key: SandboxKey,
        /// The spec field at fault.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The command could not be executed inside the sandbox (missing binary, not executable).
    #[error("sandbox {key}: cannot run {command:?}: {reason}")]
    Exec {
        /// The sandbox.
        key: SandboxKey,
        /// `argv[0]`.
        command: String,
        /// What the sandbox's init reported.
        reason: String,
    },
    /// A lifecycle with this key is already known.
    #[error("sandbox {0} already exists")]
    AlreadyExists(SandboxKey),
    /// The backend cannot do what the spec asks (e.g. restore on a backend that cannot checkpoint).
    #[error("sandbox {key}: the {backend} backend does not support {what}")]
    NotSupported {
        /// The sandbox.
        key: SandboxKey,
        /// The backend's name.
        backend: &'static str,
        /// The feature.
        what: &'static str,
    },
    /// No snapshot with this id.
    #[error("sandbox {key}: no snapshot {snapshot}")]
    SnapshotNotFound {
        /// The sandbox.
        key: SandboxKey,
        /// The snapshot.
        snapshot: SnapshotId,
    },
    /// The snapshot to restore from is unusable.
    #[error("sandbox {key}: cannot restore from snapshot {snapshot}: {reason}")]
    Snapshot {
        /// The sandbox.
        key: SandboxKey,
        /// The snapshot.
        snapshot: SnapshotId,
        /// Why.
        reason: String,
    },
    /// The host refused a step of the setup.
    #[error("sandbox {key}: {step} failed")]
    Host {
        /// The sandbox.
        key: SandboxKey,
        /// The setup step (e.g. "create cgroup", "clone").
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a stop or kill failed.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// The processes could not be signalled or killed.
    #[error("sandbox {key}: {step} failed")]
    Host {
        /// The sandbox.
        key: SandboxKey,
        /// The step.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a pause or resume failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such sandbox in this runtime.
    #[error("sandbox {0} not found")]
    NotFound(SandboxKey),
    /// The sandbox is not running.
    #[error("sandbox {0} is not running")]
    NotRunning(SandboxKey),
    /// The host refused.
    #[error("sandbox {key}: {step} failed")]
    Host {
        /// The sandbox.
        key: SandboxKey,
        /// The step.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a wait failed.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// No such sandbox in this runtime.
    #[error("sandbox {0} not found")]
    NotFound(SandboxKey),
    /// The exit could not be observed.
    #[error("sandbox {key}: waiting for exit failed")]
    Host {
        /// The sandbox.
        key: SandboxKey,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why logs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LogsError {
    /// No log for this sandbox.
    #[error("no logs for sandbox {0}")]
    NotFound(SandboxKey),
    /// Reading failed.
    #[error("sandbox {key}: reading logs failed")]
    Io {
        /// The sandbox.
        key: SandboxKey,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why cleanup was incomplete.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Something could not be removed.
    #[error("sandbox {key}: cleanup of {what} failed")]
    Host {
        /// The sandbox.
        key: SandboxKey,
        /// What was left (e.g. "cgroup", "mounts", "state").
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why the sandboxes of an earlier agent could not be recovered.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The state dir could not be read.
    #[error("reading the state dir {path} failed")]
    StateDir {
        /// The path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why a checkpoint or a snapshot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The backend cannot checkpoint.
    #[error("the {backend} backend cannot checkpoint a sandbox's memory")]
    NotSupported {
        /// The backend's name.
        backend: &'static str,
    },
    /// No such sandbox in this runtime.
    #[error("sandbox {0} not found")]
    NotFound(SandboxKey),
    /// No such snapshot.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(SnapshotId),
    /// A snapshot with that id exists.
    #[error("snapshot {0} already exists")]
    SnapshotExists(SnapshotId),
    /// The host refused.
    #[error("checkpoint step {step} failed")]
    Host {
        /// The step.
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Why [`Runtime::close`](crate::Runtime::close) left something of the backend on the host.
#[derive(Debug, thiserror::Error)]
pub enum CloseError {
    /// A parent cgroup of the backend's sandboxes could not be removed: a sandbox still has a
    /// cgroup under it, or the host refused.
    #[error("removing the parent cgroup {path} failed")]
    CgroupParent {
        /// The parent cgroup's directory.
        path: std::path::PathBuf,
        /// The OS error (`EBUSY` while a sandbox's cgroup is under it).
        #[source]
        source: io::Error,
    },
}
