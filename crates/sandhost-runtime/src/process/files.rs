//! The process backend's files in a lifecycle's directory (`crate::state`):
//!
//! - `spec.json` ([`SPEC`]): the [`SandboxSpec`](crate::SandboxSpec), written before the init is
//!   cloned;
//! - `init.json` ([`INIT`]): the init's [`InitRecord`], its host pid and kernel start time (so a
//!   new agent never trusts a bare, possibly reused pid), written right after the clone;
//! - `exit.json` ([`EXIT`]): the command's [`Exit`](crate::Exit), written by the init;
//! - `log.<offset>`: the bounded log segments (see `logs`), kept until `forget`;
//! - `init.log` ([`INIT_LOG`]): the init's own diagnostics;
//! - `root/` ([`ROOT`]): the empty mount point of the sandbox's root (mounted only inside its mount
//!   namespace).
//!
//! Removal is by these names only ([`remove_state_files`], [`remove_all`]). Also here: whether a
//! recorded init is still the same process ([`is_same_process`], by its start time: `crate::procfs`).

use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub(crate) use crate::state::{EXIT, SPEC};

pub(crate) const INIT: &str = "init.json";
pub(crate) const INIT_LOG: &str = "init.log";
pub(crate) const ROOT: &str = "root";

/// What identifies a running init across agent restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InitRecord {
    /// Host pid.
    pub(crate) pid: i32,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub(crate) start_time: u64,
    /// Wall clock start, milliseconds since the epoch.
    pub(crate) started_at_ms: u64,
    /// The parent cgroup it was started under (so that an agent configured with another parent
    /// still finds its cgroup).
    #[serde(default)]
    pub(crate) cgroup_parent: Option<String>,
    /// The cgroup's name under the parent when it is not `<id>.<lifecycle>`: a claimed warm pool
    /// member's (`super::warm`), made before the request named the sandbox.
    #[serde(default)]
    pub(crate) cgroup_name: Option<String>,
}

impl InitRecord {
    pub(crate) fn started_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.started_at_ms)
    }
}

/// Whether process `pid` has ended and waits to be reaped (state `Z` in `/proc/<pid>/stat`): an
/// init whose agent died is reaped by whoever inherited it, maybe late.
pub(crate) fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}

/// Whether `record` still names a live process: same pid, same start time, not a zombie.
pub(crate) fn is_same_process(record: &InitRecord) -> bool {
    crate::procfs::start_ticks(record.pid).is_ok_and(|t| t == record.start_time) && !is_zombie(record.pid)
}

/// Renames the directory `from` to `to`, failing with `AlreadyExists` rather than replacing an
/// empty directory there (as `rename(2)` would).
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(io::Error::from)
}

/// Removes the state files of a lifecycle except its log segments. Missing files are fine.
pub(crate) fn remove_state_files(dir: &Path) -> io::Result<()> {
    crate::state::remove_files(dir, &[SPEC, INIT, EXIT, INIT_LOG])?;
    match fs::remove_dir(dir.join(ROOT)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes everything of a lifecycle: its state files, its log segments and its directory.
pub(crate) fn remove_all(dir: &Path) -> io::Result<()> {
    remove_state_files(dir)?;
    super::logs::remove_segments(dir)?;
    crate::state::remove_lifecycle_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_this_process() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let start_time = crate::procfs::start_ticks(me).expect("stat");
        assert!(is_same_process(&InitRecord {
            pid: me,
            start_time,
            started_at_ms: 0,
            cgroup_parent: None,
            cgroup_name: None
        }));
        assert!(!is_same_process(&InitRecord {
            pid: me,
            start_time: start_time + 1,
            started_at_ms: 0,
            cgroup_parent: None,
            cgroup_name: None,
        }));
    }
}
