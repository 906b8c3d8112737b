//! The state dir: created private (0700), locked with a kernel lock (flock) so a second `serve` on the
//! same dir refuses and a killed agent never blocks the next one, a stable node id, and a marker of a
//! clean exit so that an agent starting after an unclean one says so.
//!
//! A flock belongs to the open file, which a process forked by the agent shares until its exec: an
//! agent killed just after forking a sandbox's init leaves that child holding the lock for a few
//! milliseconds (longer under load, while it joins its cgroups). So a lock whose recorded agent is
//! gone is waited for, within [`ORPHANED_LOCK_WAIT`]; one whose agent lives is refused at once.
//!
//! The node id and the marker are state files (`sandhost_runtime::state_file`): written
//! atomically, checked when read. A damaged node id stops the agent with an error naming the file:
//! the fleet knows the node by it, so it is never silently replaced.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use nix::fcntl::{Flock, FlockArg};
use sandhost_runtime::state_file;

const LOCK_FILE: &str = "lock";
const NODE_ID_FILE: &str = "node-id";
const CLEAN_EXIT_FILE: &str = "clean-exit";

/// How long a new agent waits for a lock whose agent is gone (see the module's doc).
const ORPHANED_LOCK_WAIT: Duration = Duration::from_secs(5);

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
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim().to_owned();
                if is_alive(&holder) {
                    bail!("another sandhost serve (pid {holder}) is using the state dir {}", path.display());
                }
                tracing::info!(pid = %holder, "the agent that locked the state dir is gone; waiting for the lock a child of it still holds");
                wait_for_lock(file, ORPHANED_LOCK_WAIT).with_context(|| {
                    format!(
                        "the state dir {} is still locked {}s after its agent (pid {holder}) was gone",
                        path.display(),
                        ORPHANED_LOCK_WAIT.as_secs()
                    )
                })?
            }
            Err((_, errno)) => bail!("locking {}: {errno}", lock_path.display()),
        };
        lock.set_len(0).context("writing the lock file")?;
        lock.rewind().context("writing the lock file")?;
        write!(lock, "{}", std::process::id()).context("writing the lock file")?;

        let node_id_path = path.join(NODE_ID_FILE);
        let previous_ran = node_id_path.exists();
        let node_id = match read_node_id(&node_id_path)? {
            Some(id) => id,
            None => {
                let id = format!("node-{}", uuid_like());
                state_file::write(path, NODE_ID_FILE, &id)
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

    /// Records a clean exit (its time, in unix milliseconds) for the next agent.
    pub(crate) fn close_cleanly(&self) -> anyhow::Result<()> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        state_file::write(&self.path, CLEAN_EXIT_FILE, &now)
            .with_context(|| format!("writing {}", self.path.join(CLEAN_EXIT_FILE).display()))
    }
}

/// The node id kept in `path`, `None` before the first start. A damaged file is an error naming
/// it, never replaced: the fleet knows the node by this id.
fn read_node_id(path: &Path) -> anyhow::Result<Option<String>> {
    let damaged = |reason: &str| {
        anyhow::anyhow!(
            "the node id file {} is damaged ({reason}); it is not replaced because the fleet knows this \
             node by its id: restore the file, or remove it to give the node a new id",
            path.display()
        )
    };
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // Written before the checksum: the bare id.
    if let Ok(text) = std::str::from_utf8(&bytes)
        && is_node_id(text.trim_end())
    {
        return Ok(Some(text.trim_end().to_owned()));
    }
    match state_file::decode::<String>(&bytes) {
        Ok(id) if is_node_id(&id) => Ok(Some(id)),
        Ok(id) => Err(damaged(&format!("{:?} is not a node id", id.chars().take(80).collect::<String>()))),
        Err(reason) => Err(damaged(&reason)),
    }
}

/// `node-` and 16 lowercase hex digits, as [`StateDir::open`] makes them.
fn is_node_id(id: &str) -> bool {
    id.strip_prefix("node-").is_some_and(|hex| {
        hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether the process `pid` (as the lock file records it) exists and is no zombie.
fn is_alive(pid: &str) -> bool {
    let Ok(pid) = pid.parse::<i32>() else { return false };
    if pid <= 0 || nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // A zombie has closed its files: what holds the lock is another process.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z'))
}

/// Takes the lock, waiting at most `bound` (a blocking flock in a thread of its own, which the
/// kernel wakes when the lock is released).
fn wait_for_lock(file: File, bound: Duration) -> anyhow::Result<Flock<File>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("state-dir-lock".into())
        .spawn(move || {
            let _ = tx.send(Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| errno));
        })
        .context("starting the lock's thread")?;
    match rx.recv_timeout(bound) {
        Ok(Ok(lock)) => Ok(lock),
        Ok(Err(errno)) => bail!("locking: {errno}"),
        Err(_) => bail!("timed out waiting for the lock"),
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
    fn a_lock_held_after_its_agent_is_gone_is_waited_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        // An agent that is gone (a process that exited and was reaped)...
        let mut gone = std::process::Command::new("true").spawn().expect("spawn true");
        gone.wait().expect("wait");
        fs::write(dir.path().join(LOCK_FILE), gone.id().to_string()).expect("write the lock file");
        // ...and a child of it that still holds the lock for a moment, as one between its fork and
        // its exec would: util-linux's flock, on the same file, until its `read` returns.
        let mut holder = std::process::Command::new("flock")
            .arg(dir.path().join(LOCK_FILE))
            .args(["sh", "-c", "echo locked; read line"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("flock(1) from util-linux");
        let mut locked = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.take().expect("stdout")),
            &mut locked,
        )
        .expect("read");
        assert_eq!(locked.trim(), "locked");
        let stdin = holder.stdin.take().expect("stdin");
        let path = dir.path().to_path_buf();
        let opening = std::thread::spawn(move || StateDir::open(&path));
        // Released only once the open is seen waiting for the lock (a blocked request in
        // /proc/locks, on the lock file's inode): the wait is what this test is about.
        let inode =
            std::os::unix::fs::MetadataExt::ino(&fs::metadata(dir.path().join(LOCK_FILE)).expect("stat"));
        let waiting = |text: &str| {
            text.lines()
                .any(|l| l.contains("->") && l.contains(" FLOCK ") && l.contains(&format!(":{inode} ")))
        };
        let guard = std::time::Instant::now() + Duration::from_secs(60);
        while !waiting(&fs::read_to_string("/proc/locks").expect("/proc/locks")) {
            assert!(std::time::Instant::now() < guard, "the open never waited for the lock");
            assert!(!opening.is_finished(), "the open ended without waiting: {:?}", opening.join());
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(stdin); // `read` ends, the holder exits, the lock is free
        let state = opening.join().expect("the opening thread").expect("the lock, once its holder let go");
        holder.wait().expect("wait");
        let recorded = fs::read_to_string(dir.path().join(LOCK_FILE)).expect("read");
        assert_eq!(recorded, std::process::id().to_string(), "the lock file names this agent now");
        drop(state);
    }

    #[test]
    fn the_state_dir_is_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state");
        let _state = StateDir::open(&path).expect("open");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_damaged_node_id_is_a_startup_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        drop(StateDir::open(dir.path()).expect("first open"));
        let path = dir.path().join(NODE_ID_FILE);
        let written = fs::read(&path).expect("node-id");
        for damaged in [&written[..written.len() / 2], b"", b"node-\xff\x00"] {
            fs::write(&path, damaged).expect("damage");
            let error = StateDir::open(dir.path()).expect_err("a damaged node id is not replaced");
            assert!(format!("{error:#}").contains(&path.display().to_string()), "{error:#}");
            assert_eq!(fs::read(&path).expect("kept"), damaged, "the damaged file is kept for the operator");
        }
    }
}
