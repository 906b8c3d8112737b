//! The state dir, as both backends keep it: one directory per lifecycle,
//! `<state_dir>/sandboxes/<id>/<lifecycle>/`, holding small JSON files that a restarted agent reads
//! to find its sandboxes again. Every backend keeps [`SPEC`] (the [`SandboxSpec`](crate::SandboxSpec)
//! it started) and [`EXIT`] (the recorded [`Exit`](crate::Exit)) there; the other files are each
//! backend's own, named and removed by it.
//!
//! # Invariants
//!
//! - Paths are built from validated ids only ([`SandboxKey`]).
//! - A file is written and read through `crate::state_file` only: either absent or whole, and
//!   checked when read (a damaged one is reported, never half-read).
//! - Removal is by known names only, never recursive (a recursive delete could cross a mount).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::SandboxKey;
use crate::state_file::temp_name;

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

/// Removes the files `names` of `dir` and their temporaries. Missing ones are fine.
///
/// # Errors
///
/// The first file that exists and could not be removed.
pub(crate) fn remove_files(dir: &Path, names: &[&str]) -> io::Result<()> {
    for name in names {
        remove_file_if_exists(&dir.join(name))?;
        remove_file_if_exists(&dir.join(temp_name(name)))?;
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
    fn files_are_removed_with_their_temporaries_and_the_last_lifecycle_with_its_id() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("sandboxes").join("box").join("1");
        std::fs::create_dir_all(&dir).expect("mkdir");
        crate::state_file::write(&dir, EXIT, &crate::Exit::Code(3)).expect("write");
        assert_eq!(
            crate::state_file::read::<crate::Exit>(&dir, EXIT).expect("read"),
            Some(crate::Exit::Code(3))
        );

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
