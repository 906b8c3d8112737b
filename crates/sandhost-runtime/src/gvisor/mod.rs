//! The `gvisor` backend: each sandbox is a container of gVisor's `runsc`, driven as an OCI runtime
//! (`--platform=ptrace --network=none`, a private `--root` under the state dir): a user-space
//! kernel between the sandbox and the host, and real checkpoint/restore of a sandbox's memory.
//!
//! This file is the [`Runtime`] on top; the modules below it depend only downwards:
//! - `lifecycle` (start a container, cleanup, forget), `snapshot` (checkpoint, restore, the snapshot
//!   store) and `recover` (re-adoption after an agent restart) do the work, given an `inner::Inner`:
//!   the configuration, runsc, the sandboxes, the background work;
//! - `sandbox`: one sandbox, its watcher, stop and pause;
//! - `runsc` (the command line), `bundle` (the OCI `config.json` from a [`SandboxSpec`]), `logs`
//!   (the bounded log), `recorder` (the exit recorder), `paths` (the state dir's layout) and
//!   `config` are leaves.
//!
//! # Invariants
//!
//! - A start and a checkpoint run to their end in a task of their own once begun: runsc cannot be
//!   interrupted half way without leaving a container (or a stopped, half-saved sandbox) behind.
//!   A caller that goes away only stops waiting; a start whose caller went away is undone (killed
//!   and forgotten), a checkpoint whose caller went away still completes (its snapshot is listed).
//!   [`Runtime::settle`] waits for both.
//! - A failed start or restore leaves nothing behind (`runsc delete --force`, cgroups, files).
//! - The container of a lifecycle is named `<id>.<lifecycle>.<generation>`, so a stale operation
//!   never touches a later lifecycle, and a checkpoint-and-continue restores into a fresh name
//!   while the old one is deleted in the background (runsc refuses to reuse a name, and a failed
//!   restore over an existing name destroys it).
//! - Every path is built from validated ids ([`SandboxKey`], [`SnapshotId`]).
//! - The log is one file that runsc's processes write to directly: it survives the agent, and it is
//!   bounded by punching out its head (`logs`) on every read and, while the sandbox runs, at most a
//!   second after it grew; then it is dated too (its time index, `logs`).

mod bundle;
mod config;
mod inner;
mod lifecycle;
mod logs;
mod paths;
mod recorder;
mod recover;
mod runsc;
mod sandbox;
mod snapshot;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::{
    CheckpointError, CleanupError, CloseError, ControlError, Exit, LogChunk, LogsError, RecoverError,
    Recovered, Runtime, SandboxKey, SandboxSpec, SnapshotId, SnapshotInfo, StartError, Started, StopError,
    WaitError,
};
use inner::Inner;
use lifecycle::Launch;

pub use config::{
    DEFAULT_CGROUP_PARENT, DEFAULT_LOG_LIMIT_BYTES, DEFAULT_PLATFORM, DEFAULT_RUNSC, GvisorConfig,
    GvisorOpenError,
};
pub use recorder::{EXIT_RECORDER_SUBCOMMAND, exit_recorder_main};

/// The backend's name.
pub const NAME: &str = "gvisor";

/// The gVisor runtime. Cheap to clone; all clones share the sandboxes.
#[derive(Debug, Clone)]
pub struct GvisorRuntime {
    inner: Arc<Inner>,
}

impl GvisorRuntime {
    /// Opens the runtime over `config.state_dir`, checking that runsc runs. Call
    /// [`Runtime::recover`] next.
    ///
    /// # Errors
    ///
    /// A [`GvisorOpenError`] naming what is unusable.
    pub fn open(config: GvisorConfig) -> Result<Self, GvisorOpenError> {
        Ok(Self { inner: Arc::new(Inner::open(config)?) })
    }
}

/// Starts `spec`: from scratch, or from `spec.restore_from`.
async fn start(inner: &Inner, spec: &SandboxSpec) -> Result<Started, StartError> {
    // runsc makes a missing working directory on the host, as root, before the root is read-only:
    // it must never be asked to. Checked again here: the directory may have gone since admission.
    if !crate::view::View::of(spec, &inner.config.state_dir, &inner.config.host_paths, &[]).has_cwd_of(spec) {
        return Err(StartError::Exec {
            key: spec.key.clone(),
            command: spec.argv.first().cloned().unwrap_or_default(),
            reason: "the working directory does not exist in the sandbox".to_owned(),
        });
    }
    match &spec.restore_from {
        Some(snapshot) => snapshot::restore(inner, spec, snapshot).await,
        None => lifecycle::launch(inner, spec, Launch::Create).await,
    }
}

#[async_trait]
impl Runtime for GvisorRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn can_checkpoint(&self) -> bool {
        true
    }

    fn check(&self, spec: &SandboxSpec) -> Result<(), StartError> {
        if let Some(snapshot) = &spec.restore_from
            && !paths::snapshot_dir(&self.inner.config.state_dir, snapshot).join(snapshot::META).is_file()
        {
            return Err(StartError::SnapshotNotFound { key: spec.key.clone(), snapshot: snapshot.clone() });
        }
        let config = &self.inner.config;
        crate::view::View::of(spec, &config.state_dir, &config.host_paths, &[]).check(spec)
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<Started, StartError> {
        spec.validate()?;
        let (inner, undo) = (Arc::clone(&self.inner), Arc::clone(&self.inner));
        let owned = spec.clone();
        let key = spec.key.clone();
        let started = self.inner.background.detached(
            async move { start(&inner, &owned).await },
            move |result| async move {
                if result.is_ok() {
                    tracing::info!(sandbox.id = %key.id, "undoing a start whose caller went away");
                    if let Err(e) = lifecycle::forget(&undo, &key).await {
                        tracing::warn!(sandbox.id = %key.id, error = %e, "undoing an abandoned start failed");
                    }
                }
            },
        );
        started.await.unwrap_or_else(|| {
            Err(StartError::Host {
                key: spec.key.clone(),
                step: "start task",
                source: std::io::Error::other("the start task panicked"),
            })
        })
    }

    async fn wait(&self, key: &SandboxKey) -> Result<Exit, WaitError> {
        let sandbox = self.inner.get(key).ok_or_else(|| WaitError::NotFound(key.clone()))?;
        Ok(sandbox.wait_exit().await)
    }

    async fn stop(&self, key: &SandboxKey, grace: Duration) -> Result<(), StopError> {
        match self.inner.get(key) {
            Some(sandbox) => sandbox.stop(&self.inner.runsc, &self.inner.cgroups, Some(grace)).await,
            None => Ok(()),
        }
    }

    async fn kill(&self, key: &SandboxKey) -> Result<(), StopError> {
        match self.inner.get(key) {
            Some(sandbox) => sandbox.stop(&self.inner.runsc, &self.inner.cgroups, None).await,
            None => Ok(()),
        }
    }

    async fn pause(&self, key: &SandboxKey) -> Result<(), ControlError> {
        let sandbox = self.inner.get(key).ok_or_else(|| ControlError::NotFound(key.clone()))?;
        sandbox.set_paused(&self.inner.cgroups, true).await
    }

    async fn resume(&self, key: &SandboxKey) -> Result<(), ControlError> {
        let sandbox = self.inner.get(key).ok_or_else(|| ControlError::NotFound(key.clone()))?;
        sandbox.set_paused(&self.inner.cgroups, false).await
    }

    async fn log_grown(&self, key: &SandboxKey, offset: u64) -> Result<(), LogsError> {
        let dir = crate::state::sandbox_dir(&self.inner.config.state_dir, key);
        crate::fswatch::log_grown(key, &dir, self.read_logs(key, offset, 1)).await
    }

    async fn read_logs(&self, key: &SandboxKey, offset: u64, max: usize) -> Result<LogChunk, LogsError> {
        // Dated first, so that no reader gets a byte the time index was not given a chance to date.
        if let Some(sandbox) = self.inner.get(key) {
            sandbox.observe_log().await;
        }
        let log = paths::log_path(&crate::state::sandbox_dir(&self.inner.config.state_dir, key));
        logs::read_logs(key, log, self.inner.config.log_limit_bytes, offset, max).await
    }

    async fn log_offset_at(&self, key: &SandboxKey, since: SystemTime) -> Result<u64, LogsError> {
        logs::offset_at(key, crate::state::sandbox_dir(&self.inner.config.state_dir, key), since).await
    }

    async fn cleanup(&self, key: &SandboxKey) -> Result<(), CleanupError> {
        lifecycle::cleanup(&self.inner, key).await
    }

    async fn forget(&self, key: &SandboxKey) -> Result<(), CleanupError> {
        lifecycle::forget(&self.inner, key).await
    }

    async fn recover(&self) -> Result<Vec<Recovered>, RecoverError> {
        recover::recover(&self.inner).await
    }

    async fn checkpoint(
        &self,
        key: &SandboxKey,
        snapshot: &SnapshotId,
        stop: bool,
    ) -> Result<SnapshotInfo, CheckpointError> {
        let inner = Arc::clone(&self.inner);
        let (owned_key, owned_snapshot) = (key.clone(), snapshot.clone());
        let work = async move { snapshot::checkpoint(&inner, &owned_key, &owned_snapshot, stop).await };
        let id = snapshot.clone();
        let abandoned = move |result: Result<SnapshotInfo, CheckpointError>| async move {
            match result {
                Ok(_) => tracing::info!(snapshot = %id, "a checkpoint whose caller went away completed"),
                Err(e) => {
                    tracing::warn!(snapshot = %id, error = %e, "a checkpoint whose caller went away failed");
                }
            }
        };
        self.inner.background.detached(work, abandoned).await.unwrap_or_else(|| {
            Err(CheckpointError::Host {
                step: "checkpoint task",
                source: std::io::Error::other("the checkpoint task panicked"),
            })
        })
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, CheckpointError> {
        snapshot::list(&self.inner).await
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<(), CheckpointError> {
        snapshot::delete(&self.inner, snapshot).await
    }

    fn oom_kills(&self, key: &SandboxKey) -> Option<u64> {
        let cid = self.inner.get(key)?.cid();
        self.inner.container_cgroup(&cid).oom_kills()
    }

    async fn settle(&self) {
        self.inner.background.settled().await;
    }

    async fn close(&self) -> Result<(), CloseError> {
        self.inner.cgroups.remove_parents()
    }
}
