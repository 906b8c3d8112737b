//! The state dir: created private (0700), locked with a kernel lock (flock) so a second `serve` on the
//! same dir refuses and a killed agent never blocks the next one, a stable node id, and a marker of a
//! clean exit so that an agent starting after an unclean one says so.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use nix::fcntl::{Flock, FlockArg};

const LOCK_FILE: &str = "lock";
const NODE_ID_FILE: &str = "node-id";
const CLEAN_EXIT_FILE: &str = "clean-exit";

/// An open, locked state dir. The lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub(crate) struct StateDir {
    path: PathBuf,
    node_id: String,
    _lock: Flock<File>,
}

impl StateDir {
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(path).with_context(|| {
            format!("creating the state dir {} (--state-dir / SANDHOST_STATE_DIR)", path.display())
        })?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making the state dir {} private", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, errno)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                if errno == nix::errno::Errno::EWOULDBLOCK {
                    bail!(
                        "another sandhost serve (pid {}) is using the state dir {}",
                        holder.trim(),
                        path.display()
                    );
                }
                bail!("locking {}: {errno}", lock_path.display());
            }
        };
        lock.set_len(0).context("writing the lock file")?;
        lock.rewind().context("writing the lock file")?;
        write!(lock, "{}", std::process::id()).context("writing the lock file")?;

        let node_id_path = path.join(NODE_ID_FILE);
        let previous_ran = node_id_path.exists();
        let node_id = match fs::read_to_string(&node_id_path) {
            Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => {
                let id = format!("node-{}", uuid_like());
                fs::write(&node_id_path, &id)
                    .with_context(|| format!("writing {}", node_id_path.display()))?;
                id
            }
        };
        let clean_path = path.join(CLEAN_EXIT_FILE);
        if previous_ran && !clean_path.exists() {
            tracing::warn!(state_dir = %path.display(), "the previous agent did not exit cleanly; re-adopting what it left");
        }
        match fs::remove_file(&clean_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", clean_path.display()));
            }
            _ => {}
        }
        Ok(Self { path: path.to_path_buf(), node_id, _lock: lock })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Records a clean exit for the next agent.
    pub(crate) fn close_cleanly(&self) -> anyhow::Result<()> {
        let path = self.path.join(CLEAN_EXIT_FILE);
        fs::write(&path, b"").with_context(|| format!("writing {}", path.display()))
    }
}

fn uuid_like() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_and_a_released_lock_is_reusable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = StateDir::open(dir.path()).expect("first open");
        let error = StateDir::open(dir.path()).expect_err("second open");
        assert!(error.to_string().contains("another sandhost serve"), "{error}");
        assert!(error.to_string().contains(&std::process::id().to_string()), "{error}");
        let id = first.node_id().to_owned();
        drop(first);
        let again = StateDir::open(dir.path()).expect("open after release");
        assert_eq!(again.node_id(), id, "the node id is stable");
    }

    #[test]
    fn the_state_dir_is_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state");
        let _state = StateDir::open(&path).expect("open");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
