//! The on-disk state of each sandbox, under `<state_dir>/sandboxes/<id>/<lifecycle>/`:
//!
//! - `spec.json`: the [`SandboxSpec`](crate::SandboxSpec), written before the init is cloned;
//! - `init.json`: the init's host pid and kernel start time (so a new agent never trusts a bare,
//!   possibly reused pid), written right after the clone;
//! - `exit.json`: the command's [`Exit`](crate::Exit), written atomically by the init;
//! - `log.<offset>`: the bounded log segments (see `logs`), kept until `forget`;
//! - `init.log`: the init's own diagnostics;
//! - `root/`: the empty mount point of the sandbox's root (mounted only inside its mount namespace).
//!
//! Paths are built only from validated ids, and removal is by known names only (never a recursive
//! delete, which could cross a mount point).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::SandboxKey;

pub(crate) const SPEC: &str = "spec.json";
pub(crate) const INIT: &str = "init.json";
pub(crate) const EXIT: &str = "exit.json";
pub(crate) const EXIT_TMP: &str = "exit.json.tmp";
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
}

impl InitRecord {
    pub(crate) fn started_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.started_at_ms)
    }
}

pub(crate) fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `<state_dir>/sandboxes`.
pub(crate) fn sandboxes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sandboxes")
}

/// The directory of one lifecycle. Only validated ids are joined.
pub(crate) fn sandbox_dir(state_dir: &Path, key: &SandboxKey) -> PathBuf {
    sandboxes_dir(state_dir).join(key.id.as_str()).join(key.lifecycle.as_str())
}

/// Writes `value` as JSON to `dir/name` through a temp file and a rename.
pub(crate) fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    file.write_all(&bytes)?;
    drop(file);
    fs::rename(&tmp, dir.join(name))
}

/// Reads `dir/name` as JSON; `Ok(None)` if it does not exist.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match fs::read(dir.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
pub(crate) fn proc_start_time(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses: fields 3.. follow the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| io::Error::other("malformed stat"))?;
    rest.split_whitespace()
        .nth(22 - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("malformed stat"))
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
    proc_start_time(record.pid).is_ok_and(|t| t == record.start_time) && !is_zombie(record.pid)
}

/// Removes the state files of a lifecycle except its log segments. Missing files are fine.
pub(crate) fn remove_state_files(dir: &Path) -> io::Result<()> {
    for name in [SPEC, INIT, EXIT, EXIT_TMP, INIT_LOG, "spec.json.tmp", "init.json.tmp"] {
        remove_file_if_exists(&dir.join(name))?;
    }
    match fs::remove_dir(dir.join(ROOT)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes the log segments and the directory itself (and the id's directory if it is now empty).
pub(crate) fn remove_dir(dir: &Path) -> io::Result<()> {
    remove_state_files(dir)?;
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                let is_log = name.to_str().is_some_and(|n| n.starts_with(super::logs::SEGMENT_PREFIX));
                if is_log && entry.file_type()?.is_file() {
                    remove_file_if_exists(&entry.path())?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e), // gone: a concurrent forget
        _ => {}
    }
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent); // fails while other lifecycles of the id exist
    }
    Ok(())
}

fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_this_process() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let start_time = proc_start_time(me).expect("stat");
        assert!(is_same_process(&InitRecord { pid: me, start_time, started_at_ms: 0, cgroup_parent: None }));
        assert!(!is_same_process(&InitRecord {
            pid: me,
            start_time: start_time + 1,
            started_at_ms: 0,
            cgroup_parent: None,
        }));
    }
}
