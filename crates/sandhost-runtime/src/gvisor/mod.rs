//! The `gvisor` backend: each sandbox is a container of gVisor's `runsc`, driven as an OCI runtime
//! (`--platform=ptrace --network=none`, a private `--root` under the state dir): a user-space
//! kernel between the sandbox and the host, and real checkpoint/restore of a sandbox's memory.
//!
//! - `bundle`: the OCI `config.json` (oci-spec) from a [`SandboxSpec`];
//! - `runsc`: the command line; `sandbox`: one sandbox, its watcher and stop/pause; `logs`: the
//!   bounded log;
//! - `lifecycle`: start and cleanup; `snapshot`: checkpoint, restore and the snapshot store;
//!   `recover`: re-adoption after an agent restart.
//!
//! State dir layout: `runsc/` (runsc's `--root`), `sandboxes/<id>/<lifecycle>/` (`spec.json`,
//! `container.json` naming the current runsc container, `exit.json`, the log, `bundle/`), and
//! `snapshots/<snapshot>/` (runsc's image plus `snapshot.json`).
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
//!   bounded by punching out its head (`logs`) on every read and every second while the sandbox
//!   runs.

mod bundle;
mod lifecycle;
mod logs;
mod recorder;
mod recover;
mod runsc;
mod sandbox;
mod snapshot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    CheckpointError, CleanupError, ControlError, Exit, LogChunk, LogsError, RecoverError, Recovered, Runtime,
    SandboxKey, SandboxSpec, SnapshotId, SnapshotInfo, StartError, Started, StopError, WaitError,
};

pub use recorder::{EXIT_RECORDER_SUBCOMMAND, exit_recorder_main};

/// The backend's name.
pub const NAME: &str = "gvisor";
/// The runsc binary looked up on `PATH` by default.
pub const DEFAULT_RUNSC: &str = "runsc";
/// The runsc platform: ptrace works on these hosts (kvm hangs under nested PVM).
pub const DEFAULT_PLATFORM: &str = "ptrace";
/// The parent cgroup of every sandbox's container.
pub const DEFAULT_CGROUP_PARENT: &str = "sandhost-gvisor";
/// The log bound per sandbox.
pub const DEFAULT_LOG_LIMIT_BYTES: u64 = 1024 * 1024;

/// How to open a [`GvisorRuntime`].
#[derive(Debug, Clone)]
pub struct GvisorConfig {
    /// The runtime's own directory (created 0700).
    pub state_dir: PathBuf,
    /// The runsc binary.
    pub runsc: PathBuf,
    /// The runsc `--platform`.
    pub platform: String,
    /// The parent cgroup name, `[a-z0-9][a-z0-9-]*`.
    pub cgroup_parent: String,
    /// The log bound per sandbox.
    pub log_limit_bytes: u64,
    /// The `sandhost` binary, which runs each container's foreground runsc under
    /// [`EXIT_RECORDER_SUBCOMMAND`] so that an exit while no agent runs is still recorded. Without
    /// it, runsc is the agent's child and such an exit is unknown.
    pub exit_recorder: Option<PathBuf>,
    /// How long a container may take to come up before its start is undone (a hang guard).
    pub start_timeout: Duration,
}

impl GvisorConfig {
    /// The defaults for everything but the state dir.
    #[must_use]
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            runsc: PathBuf::from(DEFAULT_RUNSC),
            platform: DEFAULT_PLATFORM.to_owned(),
            cgroup_parent: DEFAULT_CGROUP_PARENT.to_owned(),
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
            exit_recorder: None,
            start_timeout: crate::DEFAULT_START_TIMEOUT,
        }
    }
}

/// Why the runtime could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GvisorOpenError {
    /// The state dir could not be created or is not absolute.
    #[error("state dir {path}")]
    StateDir {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// runsc could not be run.
    #[error("runsc ({path}) is not usable; install it with `apt-get install runsc`")]
    Runsc {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup parent name is not a plain name.
    #[error("invalid cgroup parent {0:?}: must match [a-z0-9][a-z0-9-]*")]
    CgroupParent(String),
}

/// The gVisor runtime. Cheap to clone; all clones share the sandboxes.
#[derive(Debug, Clone)]
pub struct GvisorRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: GvisorConfig,
    runsc: runsc::Runsc,
    sandboxes: Mutex<HashMap<SandboxKey, Arc<sandbox::Sandbox>>>,
    background: Background,
}

/// Work that may go on after the call that caused it returned: starts and checkpoints (which run to
/// their end even if their caller goes away) and slow container deletes, counted so that
/// [`Runtime::settle`] can wait for it.
#[derive(Debug, Clone)]
pub(crate) struct Background {
    pending: tokio::sync::watch::Sender<usize>,
}

impl Background {
    fn new() -> Self {
        Self { pending: tokio::sync::watch::channel(0).0 }
    }

    /// Runs `work` on the current tokio runtime, counted until it ends (or is dropped).
    pub(crate) fn spawn<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        struct Done(tokio::sync::watch::Sender<usize>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.send_modify(|n| *n -= 1);
            }
        }
        self.pending.send_modify(|n| *n += 1);
        let done = Done(self.pending.clone());
        tokio::spawn(async move {
            let _done = done;
            work.await
        })
    }

    /// Runs `work` to its end whatever becomes of the caller, and returns its result. If the caller
    /// has gone away by then, `abandoned` gets the result instead (to undo what it made).
    async fn detached<T, W, A>(&self, work: W, abandoned: impl FnOnce(T) -> A + Send + 'static) -> Option<T>
    where
        T: Send + 'static,
        W: std::future::Future<Output = T> + Send + 'static,
        A: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.spawn(async move {
            let result = work.await;
            if let Err(result) = tx.send(result) {
                abandoned(result).await;
            }
        });
        // `None` only if the task panicked.
        rx.await.ok()
    }

    /// Waits until no counted work is left.
    async fn settled(&self) {
        let mut pending = self.pending.subscribe();
        let _ = pending.wait_for(|n| *n == 0).await;
    }
}

impl Inner {
    fn get(&self, key: &SandboxKey) -> Option<Arc<sandbox::Sandbox>> {
        self.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    fn insert(&self, sandbox: Arc<sandbox::Sandbox>) {
        self.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(sandbox.key.clone(), sandbox);
    }

    fn remove(&self, key: &SandboxKey) {
        self.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }
}

impl GvisorRuntime {
    /// Opens the runtime over `config.state_dir`, checking that runsc runs. Call
    /// [`Runtime::recover`] next.
    ///
    /// # Errors
    ///
    /// A [`GvisorOpenError`] naming what is unusable.
    pub fn open(config: GvisorConfig) -> Result<Self, GvisorOpenError> {
        let parent = &config.cgroup_parent;
        if crate::SandboxId::parse(parent.as_str()).is_err() {
            return Err(GvisorOpenError::CgroupParent(parent.clone()));
        }
        let state_err = |source| GvisorOpenError::StateDir { path: config.state_dir.clone(), source };
        if !config.state_dir.is_absolute() {
            return Err(state_err(std::io::Error::other("must be absolute")));
        }
        let version = std::process::Command::new(&config.runsc)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .and_then(|out| {
                if out.status.success() {
                    Ok(out.stdout)
                } else {
                    Err(std::io::Error::other("runsc --version failed"))
                }
            })
            .map_err(|source| GvisorOpenError::Runsc { path: config.runsc.clone(), source })?;
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        for dir in [
            lifecycle::runsc_root(&config.state_dir),
            lifecycle::sandboxes_dir(&config.state_dir),
            snapshot::snapshots_dir(&config.state_dir),
        ] {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(state_err)?;
        }
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(state_err)?;
        let version = String::from_utf8_lossy(&version);
        tracing::info!(runsc = %version.lines().next().unwrap_or_default(), platform = %config.platform, state_dir = %config.state_dir.display(), "gvisor runtime opened");
        let runsc = runsc::Runsc {
            bin: config.runsc.clone(),
            root: lifecycle::runsc_root(&config.state_dir),
            platform: config.platform.clone(),
            recorder: config.exit_recorder.clone(),
        };
        let sandboxes = Mutex::new(HashMap::new());
        Ok(Self { inner: Arc::new(Inner { config, runsc, sandboxes, background: Background::new() }) })
    }

    /// Removes this runtime's parent cgroups if they are empty (call at a clean shutdown).
    ///
    /// # Errors
    ///
    /// The first directory that could not be removed.
    pub fn remove_cgroup_parents(&self) -> std::io::Result<()> {
        lifecycle::remove_cgroup_parents(&self.inner.config.cgroup_parent)
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

    async fn start(&self, spec: &SandboxSpec) -> Result<Started, StartError> {
        spec.validate()?;
        let (inner, undo) = (Arc::clone(&self.inner), Arc::clone(&self.inner));
        let owned = spec.clone();
        let key = spec.key.clone();
        let started = self.inner.background.detached(
            async move { lifecycle::start(&inner, &owned).await },
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
            Some(sandbox) => {
                sandbox.stop(&self.inner.runsc, &self.inner.config.cgroup_parent, Some(grace)).await
            }
            None => Ok(()),
        }
    }

    async fn kill(&self, key: &SandboxKey) -> Result<(), StopError> {
        match self.inner.get(key) {
            Some(sandbox) => sandbox.stop(&self.inner.runsc, &self.inner.config.cgroup_parent, None).await,
            None => Ok(()),
        }
    }

    async fn pause(&self, key: &SandboxKey) -> Result<(), ControlError> {
        let sandbox = self.inner.get(key).ok_or_else(|| ControlError::NotFound(key.clone()))?;
        sandbox.set_paused(&self.inner.config.cgroup_parent, true).await
    }

    async fn resume(&self, key: &SandboxKey) -> Result<(), ControlError> {
        let sandbox = self.inner.get(key).ok_or_else(|| ControlError::NotFound(key.clone()))?;
        sandbox.set_paused(&self.inner.config.cgroup_parent, false).await
    }

    async fn log_grown(&self, key: &SandboxKey, offset: u64) -> Result<(), LogsError> {
        let dir = lifecycle::sandbox_dir(&self.inner.config.state_dir, key);
        crate::fswatch::log_grown(key, &dir, self.read_logs(key, offset, 1)).await
    }

    async fn read_logs(&self, key: &SandboxKey, offset: u64, max: usize) -> Result<LogChunk, LogsError> {
        logs::read_logs(&self.inner, key, offset, max).await
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

    async fn settle(&self) {
        self.inner.background.settled().await;
    }

    async fn close(&self) -> Result<(), crate::CloseError> {
        self.remove_cgroup_parents()
            .map_err(|source| crate::CloseError::Host { what: "the parent cgroups", source })
    }
}
