//! The sandbox runtime seam of sandhost.
//!
//! Everything sandhost does to the operating system goes through the [`Runtime`] trait: start a
//! sandbox, wait for it, stop, kill, pause, resume, read its logs, clean it up, and find the sandboxes
//! of an earlier agent again. The rest of sandhost (the sandbox manager, the drain) never touches a
//! namespace or a cgroup; it is tested against the recording fake (feature `test-util`).
//!
//! Backends:
//! - `process` ([`process::ProcessRuntime`]): namespaces, cgroups, seccomp and an in-sandbox init,
//!   all in sandhost's own code; nothing to install.
//! - `gvisor` ([`gvisor::GvisorRuntime`]): each sandbox a container of gVisor's `runsc`, with real
//!   checkpoint and restore of its memory.
//! - the fake ([`fake::FakeRuntime`], feature `test-util`): records every call and can be told to
//!   hang or fail any operation.
//!
//! The floor both real backends stand on, so that neither reaches into the other: `cgroup` (the
//! host's hierarchies, limits, freeze, kill, removal), `state` (the state dir's lifecycle
//! directories) and [`state_file`] (the one checked, atomic file format, which the agent uses for
//! its own files too), `fswatch` (inotify, for logs and `cgroup.events`), `log_index` (the time
//! index of a log, for reads that start at a time),
//! `background` (work that outlives a call, which [`Runtime::settle`] awaits), and what a sandbox
//! sees: [`HostPaths`] (the `host` template's allow list and the skeleton of its root) and `view`
//! (the whole view, for the checks before a start).
//!
//! # Invariants every backend keeps
//!
//! - A failed [`Runtime::start`] leaves nothing behind: no process, cgroup, mount or state file.
//! - Every operation on a sandbox names it by [`SandboxKey`] (id plus lifecycle id), so an operation
//!   meant for an earlier lifecycle never touches a later sandbox with the same id.
//! - [`Runtime::stop`] and [`Runtime::kill`] are idempotent, and return only once no process of the
//!   sandbox is left.
//! - [`Runtime::wait`] is event-driven (no polling) and cancel-safe.
//! - What a backend holds for all its sandboxes (parent cgroups) goes with [`Runtime::close`], never
//!   while a sandbox is under it.

mod background;
mod cgroup;
pub mod durable;
mod errors;
mod fswatch;
mod host_paths;
mod log_index;
mod procfs;
mod recovery;
mod spec;
mod state;
pub mod state_file;
mod view;

#[cfg(feature = "test-util")]
pub mod fake;
pub mod gvisor;
pub mod process;

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

pub use cgroup::{CgroupParent, CgroupSetupError, InvalidCgroupParent, SANDBOXES, validate_cgroup_parent};
pub use errors::{
    CheckpointError, CleanupError, CloseError, ControlError, LogsError, RecoverError, StartError, StopError,
    WaitError,
};
pub use host_paths::{DEFAULT_HOST_PATHS, HostPaths, HostPathsError};
pub use spec::{
    IdError, LifecycleId, Limits, SandboxId, SandboxKey, SandboxSpec, SnapshotId, Template, User,
};

/// How a sandbox's command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl Exit {
    /// The shell convention: the code, or 128 + the signal number.
    #[must_use]
    pub fn as_shell_code(self) -> i32 {
        match self {
            Self::Code(code) => code,
            Self::Signal(signal) => 128 + signal,
        }
    }

    /// The exit a shell-style status stands for (how runsc reports one): 129 to 192 is
    /// 128 + a signal, anything else a code.
    pub(crate) fn from_shell_code(status: i32) -> Self {
        if (129..=128 + 64).contains(&status) { Self::Signal(status - 128) } else { Self::Code(status) }
    }
}

/// What [`Runtime::start`] returns once the command runs.
#[derive(Debug, Clone)]
pub struct Started {
    /// The host pid of the sandbox's init.
    pub pid: i32,
    /// When it started.
    pub started_at: SystemTime,
    /// Whether a warm pool member was claimed for it (a cold start otherwise).
    pub warm: bool,
}

/// One template's warm pool, as [`Runtime::warm_pool`] reports it for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPoolStats {
    /// The template's name (`host`, or a registered rootfs).
    pub template: String,
    /// How many members the pool keeps ready.
    pub target: u64,
    /// How many are ready now.
    pub ready: u64,
    /// Starts served by a member, since the runtime opened.
    pub claims: u64,
    /// Starts of this template that found no ready member and started cold.
    pub misses: u64,
}

/// A sandbox found by [`Runtime::recover`] in the state dir (or the cgroups) of an earlier agent.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// Its spec as it was started; only its key when `lost` says the spec was.
    pub spec: SandboxSpec,
    /// When it started (when the spec is lost: when its oldest process started).
    pub started_at: SystemTime,
    /// Whether it still runs.
    pub state: RecoveredState,
    /// What could not be read of it, and what was done instead; empty when nothing was lost.
    pub lost: Vec<Lost>,
}

impl Recovered {
    /// A sandbox found whole: nothing lost.
    #[must_use]
    pub fn new(spec: SandboxSpec, started_at: SystemTime, state: RecoveredState) -> Self {
        Self { spec, started_at, state, lost: Vec::new() }
    }
}

/// The state of a [`Recovered`] sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveredState {
    /// Its init still runs (the same process: start time checked); `paused` if it is frozen.
    Running {
        /// Whether its cgroup is frozen.
        paused: bool,
    },
    /// Its init is gone; the exit it recorded, if it recorded one. Its leftovers were cleaned up.
    Exited(Option<Exit>),
    /// It had ended and been cleaned up by the earlier agent: only its log is left, until
    /// [`Runtime::forget`]. Only the spec's key is known.
    CleanedUp,
}

/// What [`Runtime::recover`] could not read of a sandbox, and what it did instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// Its state files were damaged or missing (the message says which, and why): it was adopted
    /// from what was left (its init, or only its cgroup); what the lost files held (its command,
    /// limits and grace; with only its cgroup, its exit) is unknown.
    State(String),
    /// Not a sandbox: a cgroup under the parent whose name is no sandbox's. Its processes were
    /// killed and the cgroup removed (state [`RecoveredState::Exited`]); the key is made up from
    /// the name (`unidentified-<crc>`), so that the kill can be recorded.
    Unidentified {
        /// The cgroup's name under the parent.
        cgroup: String,
    },
}

/// A piece of a sandbox's combined stdout and stderr.
#[derive(Debug, Clone, Default)]
pub struct LogChunk {
    /// The bytes read.
    pub data: Vec<u8>,
    /// The offset to read from next.
    pub next_offset: u64,
    /// Bytes before `offset` that were dropped because the log is bounded (the oldest go first).
    pub dropped: u64,
}

/// A saved sandbox, from [`Runtime::checkpoint`].
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// The sandbox it was taken of.
    pub source: SandboxId,
    /// When it was taken.
    pub created_at: SystemTime,
    /// Its size on disk.
    pub size_bytes: u64,
}

/// The sandbox runtime: everything sandhost does to the host goes through here.
///
/// Implementations must be cheap to share (`Arc<dyn Runtime>`), and every method must be safe to call
/// concurrently for different sandboxes, and for the same sandbox where the manager allows it (stop
/// while waiting, logs while running).
#[async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug + 'static {
    /// The backend's name, as in `--runtime`.
    fn name(&self) -> &'static str;

    /// Whether [`Runtime::checkpoint`] can work on this backend.
    fn can_checkpoint(&self) -> bool;

    /// Starts a sandbox and returns once its command runs.
    ///
    /// # Errors
    ///
    /// A [`StartError`]; nothing of the sandbox is left behind then.
    async fn start(&self, spec: &SandboxSpec) -> Result<Started, StartError>;

    /// Waits until the sandbox's command has exited and returns how it ended.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe; many waits on one sandbox may run at once.
    ///
    /// # Errors
    ///
    /// [`WaitError::NotFound`] for a sandbox this runtime does not know.
    async fn wait(&self, key: &SandboxKey) -> Result<Exit, WaitError>;

    /// Sends SIGTERM to the sandbox's init; after `grace`, kills every process in its cgroup. Returns
    /// once no process of the sandbox is left. Idempotent.
    ///
    /// # Errors
    ///
    /// A [`StopError`] when the processes could not be signalled or did not die.
    async fn stop(&self, key: &SandboxKey, grace: Duration) -> Result<(), StopError>;

    /// Stops many sandboxes together, each as [`Runtime::stop`] would with its own grace: SIGTERM
    /// to every one first, then the exits taken as they come, then a kill of those whose grace
    /// ran out. Calls `done(i, result)` for the `i`-th entry of `stops` as soon as its stop has
    /// ended (so a caller that stops waiting has what ended by then); returns once all have.
    /// Idempotent, like `stop`.
    ///
    /// The default runs `stop` for each concurrently; a backend overrides it where one pass of
    /// kernel operations over all of them costs less than a stop each (see the process backend).
    async fn stop_many(&self, stops: &[(SandboxKey, Duration)], done: &StopDone<'_>) {
        let each = stops.iter().enumerate().map(|(i, (key, grace))| async move {
            done(i, self.stop(key, *grace).await);
        });
        futures::future::join_all(each).await;
    }

    /// Kills every process of the sandbox at once (no grace). Idempotent.
    ///
    /// # Errors
    ///
    /// A [`StopError`] when the processes could not be killed.
    async fn kill(&self, key: &SandboxKey) -> Result<(), StopError>;

    /// Freezes the sandbox in memory.
    ///
    /// # Errors
    ///
    /// A [`ControlError`].
    async fn pause(&self, key: &SandboxKey) -> Result<(), ControlError>;

    /// Thaws a paused sandbox.
    ///
    /// # Errors
    ///
    /// A [`ControlError`].
    async fn resume(&self, key: &SandboxKey) -> Result<(), ControlError>;

    /// Reads up to `max` bytes of the sandbox's log from `offset`.
    ///
    /// # Errors
    ///
    /// A [`LogsError`].
    async fn read_logs(&self, key: &SandboxKey, offset: u64, max: usize) -> Result<LogChunk, LogsError>;

    /// The logical offset of the sandbox's log from which to read ([`Runtime::read_logs`]) to get
    /// the bytes written at or after `since`: every byte before it was written before `since`;
    /// from it on, bytes written shortly before `since` may come too, within the granularity of
    /// the write times the backend records (about a second on both real backends, each saying
    /// how in its `logs` module; exact on the fake). It is 0 when nothing kept can be excluded
    /// (a `since` older than every time kept: a read from there reports the dropped bytes), and
    /// the log's end when all of it was written before `since`. A log written before times were
    /// recorded is read from 0.
    ///
    /// # Errors
    ///
    /// [`LogsError::NotFound`] for a sandbox without a log; [`LogsError::Io`].
    async fn log_offset_at(&self, key: &SandboxKey, since: SystemTime) -> Result<u64, LogsError>;

    /// Releases what an exited sandbox held (cgroup, mounts, state), keeping its log until
    /// [`Runtime::forget`]. Idempotent.
    ///
    /// # Errors
    ///
    /// A [`CleanupError`] naming what could not be removed.
    async fn cleanup(&self, key: &SandboxKey) -> Result<(), CleanupError>;

    /// Removes the last files of a cleaned-up sandbox (its log). Idempotent.
    ///
    /// # Errors
    ///
    /// A [`CleanupError`].
    async fn forget(&self, key: &SandboxKey) -> Result<(), CleanupError>;

    /// Finds the sandboxes an earlier agent left in the state dir: re-adopts those whose init still
    /// runs, and cleans up the others (keeping their recorded exit). Then every cgroup under the
    /// parent that holds processes is either one of those, or adopted from its name (a sandbox
    /// whose state files are damaged or missing: see [`Lost::State`]), or, if its name is no
    /// sandbox's, killed and reported ([`Lost::Unidentified`]). Lifecycles of which only the log
    /// is left are reported [`RecoveredState::CleanedUp`], so that none is kept forever.
    ///
    /// # Errors
    ///
    /// A [`RecoverError`] when the state dir cannot be read.
    async fn recover(&self) -> Result<Vec<Recovered>, RecoverError>;

    /// Saves the whole sandbox as snapshot `snapshot`; stops it afterwards if `stop`. Otherwise it
    /// runs on afterwards: a paused one may have been thawed (a frozen sandbox cannot be saved),
    /// whether the checkpoint succeeded or not, and pausing it again is its caller's (who keeps
    /// its state).
    ///
    /// # Errors
    ///
    /// [`CheckpointError::NotSupported`] on a backend that cannot checkpoint.
    async fn checkpoint(
        &self,
        key: &SandboxKey,
        snapshot: &SnapshotId,
        stop: bool,
    ) -> Result<SnapshotInfo, CheckpointError>;

    /// Lists the snapshots in the state dir.
    ///
    /// # Errors
    ///
    /// A [`CheckpointError`].
    async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, CheckpointError>;

    /// Deletes a snapshot.
    ///
    /// # Errors
    ///
    /// A [`CheckpointError`].
    async fn delete_snapshot(&self, snapshot: &SnapshotId) -> Result<(), CheckpointError>;

    /// Returns once the sandbox's log may hold bytes past `offset` (it was written to, perhaps
    /// already), so that a follower reads again instead of polling. Spurious returns are allowed;
    /// a follower also watches for the exit, after which the log no longer grows. The default,
    /// for backends with no such event, returns after a short interval.
    ///
    /// # Errors
    ///
    /// [`LogsError::NotFound`] for an unknown sandbox; [`LogsError::Io`] if no watch can be set up
    /// (the follower may fall back to reading at an interval).
    async fn log_grown(&self, key: &SandboxKey, offset: u64) -> Result<(), LogsError> {
        let _ = (key, offset);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(())
    }

    /// How many processes of the sandbox the kernel's OOM killer killed (its memory cgroup's
    /// `oom_kill` count), read after [`Runtime::wait`] returned and before [`Runtime::cleanup`];
    /// `None` where the backend cannot tell (no memory controller, the cgroup already gone). The
    /// default, for backends without cgroups, cannot.
    fn oom_kills(&self, key: &SandboxKey) -> Option<u64> {
        let _ = key;
        None
    }

    /// Waits until the work the backend does after a call has returned is done: the undoing of a
    /// start whose caller went away, and the slow delete of a container that a checkpoint-and-
    /// continue left (gvisor). The shutdown awaits it within its bound. Backends that do everything
    /// in the call return at once.
    async fn settle(&self) {}

    /// Turns the warm pool's refill on (it fills up to each template's target in the background),
    /// or off: then every unclaimed member is destroyed at once, in the background (members are
    /// not sandboxes: a drain never waits for them, [`Runtime::settle`] does). The node follows
    /// its status with it: on while READY, off while it drains. Backends without a pool ignore it.
    fn set_warm_pool_active(&self, active: bool) {
        let _ = active;
    }

    /// The warm pool of each configured template (none without a pool).
    fn warm_pool(&self) -> Vec<WarmPoolStats> {
        Vec::new()
    }

    /// Refuses, before anything is made, a spec that could never start: a working directory that
    /// is not a directory of the sandbox's view of its root, a command that is not an executable
    /// file there. Cheap (a few `openat2` and `stat` calls); the caller admits the sandbox only
    /// after it. A backend with nothing to check accepts everything.
    ///
    /// # Errors
    ///
    /// [`StartError::InvalidSpec`] naming the field.
    fn check(&self, spec: &SandboxSpec) -> Result<(), StartError> {
        let _ = spec;
        Ok(())
    }

    /// Releases what the backend holds on the host for all its sandboxes (the parent cgroups of
    /// the process and gvisor backends, the process backend's warm pool members, which are
    /// destroyed first), once every sandbox is gone.
    ///
    /// Call it last, at a clean shutdown: after every sandbox has been stopped and forgotten (or
    /// was handed over to the next agent) and after [`Runtime::settle`]. It does not stop or touch
    /// any sandbox: a parent that still holds one stays, and is reported. The runtime must not
    /// start sandboxes afterwards. Idempotent.
    ///
    /// # Errors
    ///
    /// A [`CloseError`] naming the first thing that stayed (everything else is still released),
    /// for example the parent cgroup of a sandbox that still runs.
    async fn close(&self) -> Result<(), CloseError>;
}

/// What [`Runtime::stop_many`] calls as each stop ends: the entry's index and its result.
pub type StopDone<'a> = dyn Fn(usize, Result<(), StopError>) + Send + Sync + 'a;

/// The default stop grace: SIGTERM, then this long before the cgroup is killed.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a start may take, from its turn, before it is undone (a hang guard: a process start
/// takes milliseconds, a gVisor one a fraction of a second).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_codes_above_128_are_signals() {
        assert_eq!(Exit::from_shell_code(0), Exit::Code(0));
        assert_eq!(Exit::from_shell_code(3), Exit::Code(3));
        assert_eq!(Exit::from_shell_code(143), Exit::Signal(15));
        assert_eq!(Exit::from_shell_code(137), Exit::Signal(9));
        for exit in [Exit::Code(1), Exit::Code(127), Exit::Signal(9), Exit::Signal(64)] {
            assert_eq!(Exit::from_shell_code(exit.as_shell_code()), exit);
        }
    }
}
