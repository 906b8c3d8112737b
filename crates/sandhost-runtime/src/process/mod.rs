//! The `process` backend: isolated sandboxes built from Linux namespaces, cgroups and seccomp, with
//! sandhost itself as each sandbox's init.
//!
//! - `spawn`: one `clone3` into new pid, mount, ipc, uts and net namespaces that execs the init;
//! - `init`: the in-sandbox pid 1 (mounts, `pivot_root`, the command, signals, reaping, the log,
//!   the exit record);
//! - `seccomp`, `logs`, `files`: the filter, the bounded log, this backend's files in the state dir
//!   (the cgroups and the state dir themselves are `crate::cgroup` and `crate::state`);
//! - `status_pipe`: how a starting sandbox tells the agent that its command runs, or what failed;
//! - `start`, `control`, `recover`: the [`Runtime`] operations;
//! - `warm`: the warm pool, members built up to their command that a start claims.
//!
//! # Invariants
//!
//! - The agent learns of each exit through a pidfd (no polling, no parent-child tie): sandboxes
//!   survive the agent, and a new agent re-adopts them from the state dir, checking that each pid
//!   still names the same process (its start time).
//! - A failed start leaves nothing behind (`start::StartGuard` undoes each completed step before
//!   the start returns; when the start future is dropped, in the background, which
//!   [`Runtime::settle`] awaits).
//! - Nothing is mounted in the host's mount namespace; the state dir is only ever changed through
//!   paths built from validated ids.

mod control;
mod files;
mod init;
pub(crate) mod logs;
mod recover;
mod seccomp;
mod spawn;
mod start;
mod status_pipe;
mod sys;
mod warm;

use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tracing::Instrument;

pub use init::{INIT_ARGV0, INIT_SUBCOMMAND, init_main};
pub use warm::{DEFAULT_MAX_AGE as DEFAULT_WARM_POOL_MAX_AGE, WarmTemplate};

use crate::HostPaths;
use crate::background::Background;
use crate::cgroup::{Cgroup, CgroupParent, CgroupSetupError, InvalidCgroupParent, Layout, Placement};
use crate::state;
use crate::{
    CheckpointError, CleanupError, CloseError, ControlError, Exit, LogChunk, LogsError, RecoverError,
    Recovered, Runtime, SandboxKey, SandboxSpec, SnapshotId, SnapshotInfo, StartError, Started, StopDone,
    StopError, WaitError,
};

/// The backend's name.
pub const NAME: &str = "process";

/// The log bound per sandbox (the oldest bytes are dropped beyond it).
pub const DEFAULT_LOG_LIMIT_BYTES: u64 = 1024 * 1024;
/// The parent cgroup of every sandbox, in each hierarchy, when none is configured.
pub const DEFAULT_CGROUP_PARENT: &str = "sandhost";

/// How to open a [`ProcessRuntime`].
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The runtime's own directory (created 0700 if missing); sandboxes live under `sandboxes/`.
    pub state_dir: PathBuf,
    /// The sandhost binary, run as each sandbox's init with [`INIT_SUBCOMMAND`] (its command line
    /// inside the sandbox is `sandhost-init __init`: no host path).
    pub init_exe: PathBuf,
    /// Where the sandboxes' cgroups go (default: the path [`DEFAULT_CGROUP_PARENT`]).
    pub cgroup_parent: CgroupParent,
    /// The log bound per sandbox.
    pub log_limit_bytes: u64,
    /// The start hang guard.
    pub start_timeout: Duration,
    /// What a sandbox on the `host` template sees of the host (default: [`HostPaths::defaults`]).
    pub host_paths: HostPaths,
    /// The warm pool: members kept ready per template (default: none).
    pub warm_pool: Vec<WarmTemplate>,
    /// How many members are built at once, over all templates (the start parallelism).
    pub warm_pool_parallelism: usize,
    /// How long a member stays ready before it is replaced.
    pub warm_pool_max_age: Duration,
}

impl ProcessConfig {
    /// The defaults for everything but the two paths.
    #[must_use]
    pub fn new(state_dir: impl Into<PathBuf>, init_exe: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            init_exe: init_exe.into(),
            cgroup_parent: CgroupParent::from(DEFAULT_CGROUP_PARENT),
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
            start_timeout: crate::DEFAULT_START_TIMEOUT,
            host_paths: HostPaths::defaults(),
            warm_pool: Vec::new(),
            warm_pool_parallelism: 1,
            warm_pool_max_age: DEFAULT_WARM_POOL_MAX_AGE,
        }
    }
}

/// Why the runtime could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The state dir could not be created or made private.
    #[error("state dir {path}")]
    StateDir {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The init executable is not usable.
    #[error("init executable {path}")]
    InitExe {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The cgroup parent is not a valid path.
    #[error("cgroup parent")]
    CgroupParent(#[source] InvalidCgroupParent),
    /// The cgroup hierarchies could not be read, or the parent not prepared.
    #[error("cgroup setup")]
    Cgroup(#[source] CgroupSetupError),
    /// The `host` template's allow list would show the state dir.
    #[error("host paths")]
    HostPaths(#[source] crate::HostPathsError),
}

/// The Linux `process` runtime. Cheap to clone; all clones share the sandboxes.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ProcessConfig,
    init_exe: CString,
    layout: Layout,
    sandboxes: Mutex<HashMap<SandboxKey, Arc<control::Sandbox>>>,
    /// The undoing of starts whose callers went away, the warm pool's builds and destroys.
    background: Background,
    /// The warm pool (empty unless configured).
    pool: warm::WarmPool,
}

impl Inner {
    fn get(&self, key: &SandboxKey) -> Option<Arc<control::Sandbox>> {
        self.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    /// The cgroup of `key` under this runtime's parent (made by its start).
    fn cgroup(&self, key: &SandboxKey) -> Cgroup {
        self.layout.cgroup(&cgroup_name(key))
    }

    /// The cgroup `name` under this runtime's parent (a warm pool member's).
    fn cgroup_named(&self, name: &str) -> Cgroup {
        self.layout.cgroup(name)
    }
}

/// A sandbox's cgroup, `<id>.<lifecycle>` ('.' occurs in neither id, so names never collide).
fn cgroup_name(key: &SandboxKey) -> String {
    format!("{}.{}", key.id.as_str(), key.lifecycle.as_str())
}

impl ProcessRuntime {
    /// Opens the runtime over `config.state_dir`, choosing the parent cgroup and detecting the
    /// cgroup layout (both logged), and prepares the parent (on cgroup v2 inside a systemd
    /// service, this moves the agent into its service's `supervisor` leaf). Call
    /// [`Runtime::recover`] next to find the sandboxes of an earlier agent.
    ///
    /// # Errors
    ///
    /// An [`OpenError`] naming what is unusable.
    pub fn open(config: ProcessConfig) -> Result<Self, OpenError> {
        let placement = Placement::resolve(&config.cgroup_parent).map_err(OpenError::CgroupParent)?;
        let init_meta = std::fs::metadata(&config.init_exe)
            .map_err(|source| OpenError::InitExe { path: config.init_exe.clone(), source })?;
        if !init_meta.is_file() || !config.init_exe.is_absolute() {
            let source =
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an absolute path to a file");
            return Err(OpenError::InitExe { path: config.init_exe, source });
        }
        let init_exe =
            CString::new(config.init_exe.as_os_str().as_bytes()).map_err(|_| OpenError::InitExe {
                path: config.init_exe.clone(),
                source: std::io::ErrorKind::InvalidInput.into(),
            })?;
        let state_err = |source| OpenError::StateDir { path: config.state_dir.clone(), source };
        if !config.state_dir.is_absolute() {
            return Err(state_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "must be absolute")));
        }
        config.host_paths.check_state_dir(&config.state_dir).map_err(OpenError::HostPaths)?;
        let sandboxes = state::sandboxes_dir(&config.state_dir);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&sandboxes).map_err(state_err)?;
        std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(state_err)?;
        let mut layout = Layout::detect(&placement).map_err(OpenError::Cgroup)?;
        layout.create_parents().map_err(OpenError::Cgroup)?;
        tracing::info!(
            cgroups = %layout.describe(),
            cgroup_parent = %layout.parent(),
            cgroup_parent_reason = %placement.reason,
            state_dir = %config.state_dir.display(),
            "process runtime opened"
        );
        let pool =
            warm::WarmPool::new(&config.warm_pool, config.warm_pool_parallelism, config.warm_pool_max_age);
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                config,
                init_exe,
                layout,
                sandboxes: Mutex::new(HashMap::new()),
                background: Background::new(),
            }),
        })
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        NAME
    }

    fn can_checkpoint(&self) -> bool {
        false
    }

    fn check(&self, spec: &SandboxSpec) -> Result<(), StartError> {
        let config = &self.inner.config;
        crate::view::View::of(spec, &config.state_dir, &config.host_paths, &[init::HOME]).check(spec)
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<Started, StartError> {
        let span = tracing::info_span!("sandbox.start", sandbox.id = %spec.key.id, lifecycle.id = %spec.key.lifecycle);
        start::start(&self.inner, spec).instrument(span).await
    }

    async fn wait(&self, key: &SandboxKey) -> Result<Exit, WaitError> {
        let sandbox = self.inner.get(key).ok_or_else(|| WaitError::NotFound(key.clone()))?;
        Ok(sandbox.wait_exit().await)
    }

    async fn stop(&self, key: &SandboxKey, grace: Duration) -> Result<(), StopError> {
        match self.inner.get(key) {
            Some(sandbox) => {
                let span =
                    tracing::info_span!("sandbox.stop", sandbox.id = %key.id, lifecycle.id = %key.lifecycle);
                sandbox.stop(Some(grace)).instrument(span).await
            }
            None => Ok(()),
        }
    }

    /// SIGTERM to every sandbox in one pass (before any wait), then each one's grace and kill in a
    /// task of its own (so that a thousand kills and waits spread over every worker thread, and a
    /// caller that goes away does not abandon a sandbox between its SIGTERM and its kill), its exit
    /// taken when its pidfd says so; `done` is called as each task ends.
    async fn stop_many(&self, stops: &[(SandboxKey, Duration)], done: &StopDone<'_>) {
        let sandboxes: Vec<_> = {
            let table = self.inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner);
            stops.iter().map(|(key, _)| table.get(key).cloned()).collect()
        };
        let mut finishing = futures::stream::FuturesUnordered::new();
        for (i, (sandbox, (key, grace))) in sandboxes.into_iter().zip(stops).enumerate() {
            let Some(sandbox) = sandbox else {
                done(i, Ok(()));
                continue;
            };
            if let Err(error) = sandbox.terminate() {
                done(i, Err(error));
                continue;
            }
            let span =
                tracing::info_span!("sandbox.stop", sandbox.id = %key.id, lifecycle.id = %key.lifecycle);
            let grace = *grace;
            let task = tokio::spawn(async move { sandbox.finish_stop(Some(grace)).await }.instrument(span));
            finishing.push(async move { (i, task.await) });
        }
        while let Some((i, finished)) = futures::StreamExt::next(&mut finishing).await {
            done(
                i,
                finished.unwrap_or_else(|join| {
                    Err(StopError::Host {
                        key: stops[i].0.clone(),
                        step: "stop task",
                        source: std::io::Error::other(join.to_string()),
                    })
                }),
            );
        }
    }

    async fn kill(&self, key: &SandboxKey) -> Result<(), StopError> {
        match self.inner.get(key) {
            Some(sandbox) => {
                let span =
                    tracing::info_span!("sandbox.kill", sandbox.id = %key.id, lifecycle.id = %key.lifecycle);
                sandbox.stop(None).instrument(span).await
            }
            None => Ok(()),
        }
    }

    async fn pause(&self, key: &SandboxKey) -> Result<(), ControlError> {
        self.inner.get(key).ok_or_else(|| ControlError::NotFound(key.clone()))?.pause().await
    }

    async fn resume(&self, key: &SandboxKey) -> Result<(), ControlError> {
        self.inner.get(key).ok_or_else(|| ControlError::NotFound(key.clone()))?.resume()
    }

    async fn log_grown(&self, key: &SandboxKey, offset: u64) -> Result<(), LogsError> {
        let dir = state::sandbox_dir(&self.inner.config.state_dir, key);
        crate::fswatch::log_grown(key, &dir, self.read_logs(key, offset, 1)).await
    }

    async fn read_logs(&self, key: &SandboxKey, offset: u64, max: usize) -> Result<LogChunk, LogsError> {
        let dir = state::sandbox_dir(&self.inner.config.state_dir, key);
        let key_owned = key.clone();
        let read = tokio::task::spawn_blocking(move || logs::read(&dir, offset, max)).await;
        match read {
            Ok(Ok(Some(chunk))) => Ok(chunk),
            Ok(Ok(None)) => Err(LogsError::NotFound(key_owned)),
            Ok(Err(source)) => Err(LogsError::Io { key: key_owned, source }),
            Err(join) => {
                Err(LogsError::Io { key: key_owned, source: std::io::Error::other(join.to_string()) })
            }
        }
    }

    async fn log_offset_at(&self, key: &SandboxKey, since: SystemTime) -> Result<u64, LogsError> {
        let dir = state::sandbox_dir(&self.inner.config.state_dir, key);
        let key_owned = key.clone();
        match tokio::task::spawn_blocking(move || logs::offset_at(&dir, since)).await {
            Ok(Ok(Some(offset))) => Ok(offset),
            Ok(Ok(None)) => Err(LogsError::NotFound(key_owned)),
            Ok(Err(source)) => Err(LogsError::Io { key: key_owned, source }),
            Err(join) => {
                Err(LogsError::Io { key: key_owned, source: std::io::Error::other(join.to_string()) })
            }
        }
    }

    async fn cleanup(&self, key: &SandboxKey) -> Result<(), CleanupError> {
        control::cleanup(&self.inner, key).await
    }

    async fn forget(&self, key: &SandboxKey) -> Result<(), CleanupError> {
        control::forget(&self.inner, key).await
    }

    async fn recover(&self) -> Result<Vec<Recovered>, RecoverError> {
        recover::recover(&self.inner).await
    }

    async fn checkpoint(
        &self,
        _key: &SandboxKey,
        _snapshot: &SnapshotId,
        _stop: bool,
    ) -> Result<SnapshotInfo, CheckpointError> {
        Err(CheckpointError::NotSupported { backend: NAME })
    }

    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, CheckpointError> {
        Ok(Vec::new())
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<(), CheckpointError> {
        Err(CheckpointError::SnapshotNotFound(snapshot.clone()))
    }

    fn oom_kills(&self, key: &SandboxKey) -> Option<u64> {
        self.inner.get(key).map_or_else(|| self.inner.cgroup(key), |s| s.cgroup.clone()).oom_kills()
    }

    async fn settle(&self) {
        self.inner.background.settled().await;
    }

    fn set_warm_pool_active(&self, active: bool) {
        self.inner.pool.set_active(&self.inner, active);
    }

    fn warm_pool(&self) -> Vec<crate::WarmPoolStats> {
        self.inner.pool.stats()
    }

    async fn close(&self) -> Result<(), CloseError> {
        // The members go first: their cgroups are under the parents.
        self.inner.pool.close().await;
        self.inner.background.settled().await;
        // What the runtime wrote on the way (records and exits) is on disk before it is gone.
        let _ = tokio::task::spawn_blocking(crate::durable::sync).await;
        self.inner.layout.remove_parents()
    }
}
