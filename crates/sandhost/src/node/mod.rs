//! The node: the one handle the API layers (gRPC, HTTP, signals) use. It ties the sandbox manager
//! to the drain coordinator; it knows nothing of tonic or axum. `wiring.rs` builds it, once, for
//! `serve`, the tests and the benches.

mod wiring;

use std::sync::Arc;
use std::time::SystemTime;

use sandhost_runtime::SnapshotInfo;
use tokio::sync::watch;

pub use self::wiring::{NodeSettings, Recovery, open_runtime, probe_capacity};
use crate::drain::{
    DrainCoordinator, DrainError, DrainProgress, DrainRequest, InterruptedShutdown, NodeStatus,
};
use crate::sandbox::{
    CreateError, CreateRequest, ListFilter, Manager, SandboxError, SandboxInfo, SandboxState, UpdateRequest,
};
pub use crate::sandbox::{LogStream, Resources};

/// What `GetInfo` reports about the node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// This node's id (stable across restarts: kept in the state dir).
    pub node_id: String,
    /// sandhost's version.
    pub version: &'static str,
    /// When this agent process started.
    pub started_at: SystemTime,
    /// The runtime backend's name.
    pub runtime: &'static str,
    /// Sandboxes per state.
    pub counts: Vec<(SandboxState, u64)>,
    /// Resources the live sandboxes were given.
    pub allocated: Resources,
    /// The host's totals.
    pub capacity: Resources,
    /// The drain's view: status, counts, deadline.
    pub drain: DrainProgress,
    /// The previous agent's shutdown, if it was cut short before its drain ended.
    pub interrupted_shutdown: Option<InterruptedShutdown>,
}

/// The node handle. Cheap to clone. Built by [`Node::build`].
#[derive(Debug, Clone)]
pub struct Node {
    manager: Arc<Manager>,
    drain: DrainCoordinator,
    node_id: String,
    started_at: SystemTime,
}

impl Node {
    /// The drain coordinator.
    #[must_use]
    pub fn coordinator(&self) -> &DrainCoordinator {
        &self.drain
    }

    /// The sandbox manager.
    #[must_use]
    pub fn manager(&self) -> &Arc<Manager> {
        &self.manager
    }

    /// Creates a sandbox: admission, validation, start. Returns once it runs.
    ///
    /// # Cancel safety
    ///
    /// An admitted start runs to its end even if this future is dropped.
    ///
    /// # Errors
    ///
    /// A [`CreateError`]; nothing is left behind then.
    pub async fn create(&self, request: CreateRequest) -> Result<SandboxInfo, CreateError> {
        self.manager.create(request).await
    }

    /// One sandbox, live or exited within the retention period.
    ///
    /// # Errors
    ///
    /// [`SandboxError::NotFound`], or `Invalid` for a malformed id.
    pub fn get(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        self.manager.get(id)
    }

    /// The sandboxes that match `filter`, ordered by id.
    #[must_use]
    pub fn list(&self, filter: &ListFilter) -> Vec<SandboxInfo> {
        self.manager.list(filter)
    }

    /// Stops a sandbox (SIGTERM, grace, kill; `now`: kill at once) and returns once it has exited.
    /// Idempotent: deleting an exited sandbox returns it as it is.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`].
    pub async fn delete(&self, id: &str, now: bool) -> Result<SandboxInfo, SandboxError> {
        self.manager.delete(id, now).await
    }

    /// Freezes a running sandbox.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`].
    pub async fn pause(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        self.manager.pause(id).await
    }

    /// Thaws a paused sandbox.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`].
    pub async fn resume(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        self.manager.resume(id).await
    }

    /// Moves a live sandbox's end time and/or replaces its labels.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`].
    pub fn update(&self, id: &str, request: UpdateRequest) -> Result<SandboxInfo, SandboxError> {
        self.manager.update(id, request)
    }

    /// Waits until the sandbox has exited and returns it.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`].
    pub async fn wait(&self, id: &str) -> Result<SandboxInfo, SandboxError> {
        self.manager.wait(id).await
    }

    /// The sandbox's log from the start, or from `since` (what was written at or after it, to the
    /// runtime's granularity: [`sandhost_runtime::Runtime::log_offset_at`]); with `follow`, more as
    /// it is written, until it exits. A `since` in the future gives nothing, or with `follow`
    /// waits for it.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`].
    pub fn logs(&self, id: &str, follow: bool, since: Option<SystemTime>) -> Result<LogStream, SandboxError> {
        self.manager.logs(id, follow, since)
    }

    /// Saves a sandbox as a snapshot; stops it afterwards if `stop`.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`] (`NotSupported` on a backend that cannot checkpoint).
    pub async fn checkpoint(&self, id: &str, stop: bool) -> Result<SnapshotInfo, SandboxError> {
        self.manager.checkpoint(id, stop).await
    }

    /// The snapshots in the state dir.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`].
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, SandboxError> {
        self.manager.list_snapshots().await
    }

    /// Deletes a snapshot.
    ///
    /// # Errors
    ///
    /// A [`SandboxError`].
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), SandboxError> {
        self.manager.delete_snapshot(id).await
    }

    /// What `GetInfo` reports.
    #[must_use]
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            node_id: self.node_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at,
            runtime: self.manager.runtime_name(),
            counts: self.manager.counts_by_state(),
            allocated: self.manager.allocated(),
            capacity: self.manager.capacity(),
            drain: self.drain.progress(),
            interrupted_shutdown: self.drain.interrupted_shutdown(),
        }
    }

    /// Drains the node without shutting it down (optional timeout, optional force).
    ///
    /// # Errors
    ///
    /// A [`DrainError`].
    pub fn drain(&self, request: DrainRequest) -> Result<DrainProgress, DrainError> {
        self.drain.drain(request)
    }

    /// Reopens admission and cancels a pending escalation.
    ///
    /// # Errors
    ///
    /// [`DrainError::ShuttingDown`] while the process shuts down.
    pub fn undrain(&self) -> Result<DrainProgress, DrainError> {
        self.drain.undrain()
    }

    /// Stops every live sandbox now (drains first if the node was ready).
    ///
    /// # Errors
    ///
    /// A [`DrainError`].
    pub fn force_stop(&self) -> Result<DrainProgress, DrainError> {
        self.drain.force_stop()
    }

    /// Every change of the drain's progress, starting with the current one.
    #[must_use]
    pub fn watch_drain(&self) -> watch::Receiver<DrainProgress> {
        self.drain.watch()
    }

    /// The node status now.
    #[must_use]
    pub fn status(&self) -> NodeStatus {
        self.drain.status()
    }
}
