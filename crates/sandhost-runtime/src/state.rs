//! The state dir, as both backends keep it: one directory per lifecycle,
//! `<state_dir>/sandboxes/<id>/<lifecycle>/`, holding small JSON files that a restarted agent reads
//! to find its sandboxes again. Every backend keeps [`SPEC`] (the [`SandboxSpec`](crate::SandboxSpec)
//! it started) and [`EXIT`] (the recorded [`Exit`](crate::Exit)) there; the other files are each
//! backend's own, named and removed by it.
//!
//! # Invariants
//!
//! - Paths are built from validated ids only ([`SandboxKey`]).
//! - A JSON file is either absent or whole: it is written to `<name>.tmp`, synced, renamed over
//!   `<name>`, and the directory synced ([`write_json`], or [`write_json_at`] through a directory
//!   fd), so neither a crash nor a concurrent reader sees half of one.
//! - Removal is by known names only, never recursive (a recursive delete could cross a mount).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::SandboxKey;

/// The spec a lifecycle was started with, written before anything runs.
pub(crate) const SPEC: &str = "spec.json";
/// How the lifecycle's command ended, once known.
pub(crate) const EXIT: &str = "exit.json";

/// `<state_dir>/sandboxes`.
pub(crate) fn sandboxes_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("sandboxes")
}

/// The directory of one lifecycle.
pub(crate) fn sandbox_dir(state_dir: &Path, key: &SandboxKey) -> PathBuf {
    sandboxes_dir(state_dir).join(key.id.as_str()).join(key.lifecycle.as_str())
}

/// The temporary name [`write_json`] writes `name` under before renaming it.
fn tmp_name(name: &str) -> String {
    format!("{name}.tmp")
}

/// Writes `value` as JSON to `dir/name`, atomically (see the module's invariants).
///
/// # Errors
///
/// The first step that failed; `dir` must exist.
pub(crate) fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    write_json_at(File::open(dir)?.as_fd(), name, value)
}

/// [`write_json`] through an open directory (the process backend's init, which has no path to it
/// once it has pivoted into the sandbox's root).
///
/// # Errors
///
/// The first step that failed.
pub(crate) fn write_json_at<T: Serialize>(dir: BorrowedFd<'_>, name: &str, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let tmp = tmp_name(name);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let mut file = File::from(openat(dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600))?);
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    renameat(dir, tmp.as_str(), dir, name)?;
    nix::unistd::fsync(dir).map_err(io::Error::from)
}

/// Reads `dir/name` as JSON; `Ok(None)` if it does not exist.
///
/// # Errors
///
/// A failed read, or a file that is not the JSON of a `T`.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the files `names` of `dir` and their temporaries. Missing ones are fine.
///
/// # Errors
///
/// The first file that exists and could not be removed.
pub(crate) fn remove_files(dir: &Path, names: &[&str]) -> io::Result<()> {
    for name in names {
        remove_file_if_exists(&dir.join(name))?;
        remove_file_if_exists(&dir.join(tmp_name(name)))?;
    }
    Ok(())
}

/// Removes one file; a missing one is fine.
///
/// # Errors
///
/// The failed unlink.
pub(crate) fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes a lifecycle's directory, which its backend has emptied, and its id's directory once no
/// other lifecycle is left in it. A directory that is gone already (a concurrent forget) is fine.
///
/// # Errors
///
/// The failed `rmdir` of the lifecycle's directory (not empty: a file its backend left).
pub(crate) fn remove_lifecycle_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if let Some(id_dir) = dir.parent() {
        let _ = std::fs::remove_dir(id_dir); // fails while other lifecycles of the id exist
    }
    Ok(())
}

/// Milliseconds since the epoch, for the records (0 before it).
pub(crate) fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_files_are_written_whole_and_removed_with_their_temporaries() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("sandboxes").join("box").join("1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_json(&dir, EXIT, &crate::Exit::Code(3)).expect("write");
        assert_eq!(std::fs::read_to_string(dir.join(EXIT)).expect("read"), r#"{"Code":3}"#);
        assert!(!dir.join("exit.json.tmp").exists(), "the temporary was renamed");
        assert_eq!(read_json::<crate::Exit>(&dir, EXIT).expect("read"), Some(crate::Exit::Code(3)));
        assert_eq!(read_json::<crate::Exit>(&dir, SPEC).expect("read"), None);

        std::fs::write(dir.join("spec.json.tmp"), b"half").expect("a crashed write");
        remove_files(&dir, &[SPEC, EXIT]).expect("remove");
        remove_lifecycle_dir(&dir).expect("empty now");
        assert!(
            !tmp.path().join("sandboxes").join("box").exists(),
            "the id's dir went with its last lifecycle"
        );
        remove_lifecycle_dir(&dir).expect("gone is fine");
    }

    #[test]
    fn a_lifecycle_dir_with_a_file_left_is_not_removed() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("stray"), b"").expect("write");
        assert!(remove_lifecycle_dir(tmp.path()).is_err());
    }
}
