//! How to open a [`GvisorRuntime`](super::GvisorRuntime): its configuration, the defaults, and
//! why opening can fail.

use std::path::PathBuf;
use std::time::Duration;

use crate::HostPaths;
use crate::cgroup::{CgroupParent, CgroupSetupError, InvalidCgroupParent};

/// The runsc binary looked up on `PATH` by default.
pub const DEFAULT_RUNSC: &str = "runsc";
/// The runsc platform: ptrace works on these hosts (kvm hangs under nested PVM).
pub const DEFAULT_PLATFORM: &str = "ptrace";
/// The parent cgroup of every sandbox's container when none is configured.
pub const DEFAULT_CGROUP_PARENT: &str = "sandhost-gvisor";
/// The log bound per sandbox.
pub const DEFAULT_LOG_LIMIT_BYTES: u64 = 1024 * 1024;

/// How to open a [`GvisorRuntime`](super::GvisorRuntime).
#[derive(Debug, Clone)]
pub struct GvisorConfig {
    /// The runtime's own directory (created 0700).
    pub state_dir: PathBuf,
    /// The runsc binary.
    pub runsc: PathBuf,
    /// The runsc `--platform`.
    pub platform: String,
    /// Where the containers' cgroups go (default: the path [`DEFAULT_CGROUP_PARENT`]).
    pub cgroup_parent: CgroupParent,
    /// The log bound per sandbox.
    pub log_limit_bytes: u64,
    /// The `sandhost` binary, which runs each container's foreground runsc under
    /// [`EXIT_RECORDER_SUBCOMMAND`](super::EXIT_RECORDER_SUBCOMMAND) so that an exit while no agent runs is still recorded. Without
    /// it, runsc is the agent's child and such an exit is unknown.
    pub exit_recorder: Option<PathBuf>,
    /// How long a container may take to come up before its start is undone (a hang guard).
    pub start_timeout: Duration,
    /// What a sandbox on the `host` template sees of the host (default:
    /// [`HostPaths::defaults`]).
    pub host_paths: HostPaths,
}

impl GvisorConfig {
    /// The defaults for everything but the state dir.
    #[must_use]
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            runsc: PathBuf::from(DEFAULT_RUNSC),
            platform: DEFAULT_PLATFORM.to_owned(),
            cgroup_parent: CgroupParent::from(DEFAULT_CGROUP_PARENT),
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
            exit_recorder: None,
            start_timeout: crate::DEFAULT_START_TIMEOUT,
            host_paths: HostPaths::defaults(),
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
