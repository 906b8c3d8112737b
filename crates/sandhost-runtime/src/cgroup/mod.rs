//! Cgroups, for both backends: a [`Cgroup`] is one cgroup across the hierarchies of the host, found
//! through the [`Layout`] read once at startup (see `layout` for pure v2, v1 and hybrid hosts, and
//! for the planned and the found cgroup), under the parent chosen at open (see `parent`: the
//! configured path, or a systemd service's own delegated subtree). The operations: create, limits, freeze, thaw, kill,
//! remove, and whether the cgroup is frozen or empty.
//!
//! Hand-written rather than through a cgroups crate: we need a dozen file writes, but in exactly
//! the split the hybrid layout asks for, and a crate that picks one version for the whole host gets
//! that wrong.
//!
//! # Invariants
//!
//! - **Frozen** means the kernel says every task has stopped, not that a freeze was asked for: on
//!   v2, `cgroup.events` says `frozen 1`; on v1, `freezer.state` reads `FROZEN` (not `FREEZING`).
//!   [`Cgroup::freeze`] returns only then, or thaws again and fails.
//! - **Empty** means `cgroup.procs` lists no process; a cgroup that is gone is empty.
//! - What waits is async and never blocks a thread: it is woken by the kernel's events where there
//!   are some (v2's `cgroup.events`, which says `frozen` and `populated`, through inotify, see
//!   `fswatch`); the v1 freezer and a v1-only cgroup notify nothing and are checked again every
//!   [`POLL_STEP`] with `tokio::time::sleep`. Single reads and writes of cgroup files are plain
//!   system calls: cgroupfs lives in memory and answers at once.
//! - Removing a cgroup kills what is still in it first; a cgroup that is gone is removed.
//! - A sandbox known by its cgroup alone (recovered with its state files lost) is watched through
//!   it: [`Cgroup::until_empty`] is its exit, [`Cgroup::signal_all`] its SIGTERM.

mod layout;
mod parent;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

pub use layout::CgroupSetupError;
pub(crate) use layout::Layout;
pub use parent::{CgroupParent, InvalidCgroupParent, SANDBOXES, validate_cgroup_parent};
pub(crate) use parent::{Placement, is_valid_cgroup_parent};

/// How often what notifies nothing (the v1 freezer, a v1-only cgroup) is checked again.
const POLL_STEP: Duration = Duration::from_millis(1);
/// How long a wait for a cgroup to empty trusts its `cgroup.events` watch before it looks again
/// (the watch says nothing when the cgroup is removed).
const REMOVAL_RECHECK: Duration = Duration::from_millis(20);
/// How long a freeze may take to reach every task before it is given up (and thawed).
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a v1 freeze may stay incomplete before it is thawed and started again (see
/// `Cgroup::freeze_v1`).
const V1_FREEZE_RETRY: Duration = Duration::from_millis(100);
/// How long exiting tasks may hold a cgroup that is being removed.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a cgroup that notifies nothing is checked for emptiness while a sandbox known by its
/// cgroup alone runs (the v2 event wakes a waiter at once; this bounds a missed one too).
const EMPTY_POLL: Duration = Duration::from_secs(1);

/// Where a cgroup is frozen and thawed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Freezer {
    /// The v2 directory (`cgroup.freeze`, `cgroup.events`).
    V2(PathBuf),
    /// The v1 freezer's directory (`freezer.state`).
    V1(PathBuf),
}

/// What the kernel says of a cgroup's freezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FreezerState {
    /// Runs (or no freezer, or gone).
    Thawed,
    /// A freeze was asked for and some task has not stopped yet.
    Freezing,
    /// Every task has stopped.
    Frozen,
}

/// One cgroup, across hierarchies.
#[derive(Debug, Clone)]
pub(crate) struct Cgroup {
    /// Whether `dirs[0]` is the v2 directory.
    has_v2: bool,
    /// Its directory in each hierarchy, v2 first.
    dirs: Vec<PathBuf>,
    /// Where each limit is written, and whether that is v2.
    memory: Option<(PathBuf, bool)>,
    cpu: Option<(PathBuf, bool)>,
    pids: Option<(PathBuf, bool)>,
    freezer: Option<Freezer>,
    /// v2's `cgroup.kill`, where the kernel has it.
    kill_file: Option<PathBuf>,
}

/// A cgroup operation that failed, naming the step.
#[derive(Debug, thiserror::Error)]
#[error("cgroup step {step} failed")]
pub(crate) struct CgroupError {
    /// The step (e.g. "create cgroup", "freeze").
    pub(crate) step: &'static str,
    /// The OS error; [`io::ErrorKind::Unsupported`] for a controller the host does not have.
    #[source]
    pub(crate) source: io::Error,
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> CgroupError {
    move |source| CgroupError { step, source }
}

fn timed_out(what: &'static str) -> CgroupError {
    CgroupError { step: what, source: io::ErrorKind::TimedOut.into() }
}

impl Cgroup {
    /// Creates the directories; on error, removes what it created.
    pub(crate) fn create(&self) -> Result<(), CgroupError> {
        for (i, dir) in self.dirs.iter().enumerate() {
            if let Err(e) = fs::create_dir(dir) {
                for made in &self.dirs[..i] {
                    let _ = fs::remove_dir(made);
                }
                return Err(CgroupError { step: "create cgroup", source: e });
            }
        }
        Ok(())
    }

    /// Writes the limits; `Err` names the missing controller or the refused write.
    pub(crate) fn set_limits(&self, limits: &crate::Limits) -> Result<(), CgroupError> {
        if let Some(bytes) = limits.memory_bytes {
            let (dir, v2) = self.memory.as_ref().ok_or_else(|| missing("memory limit"))?;
            let file = if *v2 { "memory.max" } else { "memory.limit_in_bytes" };
            write(&dir.join(file), &bytes.to_string()).map_err(step("set memory limit"))?;
            if *v2 {
                let _ = write(&dir.join("memory.swap.max"), "0");
            } else {
                let _ = write(&dir.join("memory.swappiness"), "0");
            }
        }
        if let Some(millis) = limits.cpu_millis {
            let (dir, v2) = self.cpu.as_ref().ok_or_else(|| missing("cpu limit"))?;
            let quota = u64::from(millis) * 100; // of a 100 ms period
            if *v2 {
                write(&dir.join("cpu.max"), &format!("{quota} 100000")).map_err(step("set cpu limit"))?;
            } else {
                write(&dir.join("cpu.cfs_period_us"), "100000").map_err(step("set cpu limit"))?;
                write(&dir.join("cpu.cfs_quota_us"), &quota.to_string()).map_err(step("set cpu limit"))?;
            }
        }
        if let Some(max) = limits.pids_max {
            let (dir, _) = self.pids.as_ref().ok_or_else(|| missing("pids limit"))?;
            write(&dir.join("pids.max"), &max.to_string()).map_err(step("set pids limit"))?;
        }
        Ok(())
    }

    /// The v2 directory (first of `dirs` when the host has v2), opened for `CLONE_INTO_CGROUP`.
    pub(crate) fn open_v2_dir(&self) -> Result<Option<std::os::fd::OwnedFd>, CgroupError> {
        match (self.has_v2, self.dirs.first()) {
            (true, Some(dir)) => fs::File::open(dir).map(|f| Some(f.into())).map_err(step("open cgroup dir")),
            _ => Ok(None),
        }
    }

    /// `cgroup.procs` of every hierarchy (v2 first), opened for writing.
    pub(crate) fn open_procs(&self) -> Result<Vec<std::os::fd::OwnedFd>, CgroupError> {
        self.dirs
            .iter()
            .map(|d| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .map(std::os::fd::OwnedFd::from)
            })
            .collect::<io::Result<_>>()
            .map_err(step("open cgroup.procs"))
    }

    /// The pids in the cgroup (in the caller's pid namespace). A cgroup that is gone is empty.
    pub(crate) fn pids(&self) -> io::Result<Vec<i32>> {
        let Some(dir) = self.dirs.first() else {
            return Ok(Vec::new());
        };
        match fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect()),
            Err(e) if is_gone(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn is_empty(&self) -> bool {
        self.pids().is_ok_and(|p| p.is_empty())
    }

    /// Whether any process is in the cgroup (one that cannot be read counts as populated: what
    /// might hold a sandbox is never taken for empty).
    pub(crate) fn is_populated(&self) -> bool {
        self.pids().map_or(true, |p| !p.is_empty())
    }

    /// How many processes the kernel's OOM killer killed in the cgroup (its memory controller's
    /// `oom_kill` count: v2 `memory.events`, v1 `memory.oom_control`); `None` without a memory
    /// controller, or once the cgroup is gone.
    pub(crate) fn oom_kills(&self) -> Option<u64> {
        let (dir, v2) = self.memory.as_ref()?;
        let file = if *v2 { "memory.events" } else { "memory.oom_control" };
        let text = fs::read_to_string(dir.join(file)).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill "))?.trim().parse().ok()
    }

    /// When the oldest process in the cgroup started (its init, for a sandbox), if one is left.
    pub(crate) fn started_at(&self) -> Option<SystemTime> {
        self.pids().ok()?.into_iter().filter_map(crate::procfs::started_at).min()
    }

    /// Sends `signal` to every process in the cgroup (for a sandbox whose init is not known).
    pub(crate) fn signal_all(&self, signal: Signal) -> Result<(), CgroupError> {
        for pid in self.pids().map_err(step("list cgroup"))? {
            // A pid that has exited meanwhile gives ESRCH: nothing left to signal.
            let _ = kill(Pid::from_raw(pid), signal);
        }
        Ok(())
    }

    /// Waits until the cgroup is empty: woken by v2's `populated 0` where there is v2, otherwise
    /// checked every [`EMPTY_POLL`] (a v1-only cgroup notifies nothing). For a sandbox that is
    /// known by its cgroup alone.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it changes nothing.
    pub(crate) async fn until_empty(&self) {
        loop {
            if self.is_empty() {
                return;
            }
            let watched = match self.v2_events() {
                Some(events) => crate::fswatch::until(&events, EMPTY_POLL, || self.is_empty()).await.is_ok(),
                None => false,
            };
            if !watched {
                tokio::time::sleep(EMPTY_POLL).await;
            }
        }
    }

    /// The v2 `cgroup.events`, which says `populated 0` once the cgroup is empty.
    fn v2_events(&self) -> Option<PathBuf> {
        self.has_v2.then(|| self.dirs.first().map(|d| d.join("cgroup.events"))).flatten()
    }

    /// What the kernel says of the freezer (see the module's invariants).
    pub(crate) fn freezer_state(&self) -> FreezerState {
        match &self.freezer {
            Some(Freezer::V2(dir)) => {
                let events = fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
                if events.lines().any(|l| l.trim() == "frozen 1") {
                    FreezerState::Frozen
                } else if fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|v| v.trim() == "1") {
                    FreezerState::Freezing
                } else {
                    FreezerState::Thawed
                }
            }
            Some(Freezer::V1(dir)) => match fs::read_to_string(dir.join("freezer.state")) {
                Ok(state) if state.trim() == "FROZEN" => FreezerState::Frozen,
                Ok(state) if state.trim() == "FREEZING" => FreezerState::Freezing,
                _ => FreezerState::Thawed,
            },
            None => FreezerState::Thawed,
        }
    }

    /// Whether every task of the cgroup has stopped.
    pub(crate) fn is_frozen(&self) -> bool {
        self.freezer_state() == FreezerState::Frozen
    }

    /// Freezes every process; returns once the kernel says they all stopped. A freeze that does
    /// not complete within [`FREEZE_TIMEOUT`] is undone (thawed) and fails.
    ///
    /// # Cancel safety
    ///
    /// Dropped while waiting, the cgroup stays frozen or freezing; a thaw undoes either.
    pub(crate) async fn freeze(&self) -> Result<(), CgroupError> {
        let events = match &self.freezer {
            Some(Freezer::V2(dir)) => {
                write(&dir.join("cgroup.freeze"), "1").map_err(step("freeze"))?;
                dir.join("cgroup.events")
            }
            Some(Freezer::V1(dir)) => return self.freeze_v1(&dir.join("freezer.state")).await,
            None => return Err(missing("freeze")),
        };
        if wait_until(Some(&events), FREEZE_TIMEOUT, || self.is_frozen()).await {
            return Ok(());
        }
        let _ = self.thaw();
        Err(timed_out("freeze"))
    }

    /// The v1 freezer asks each task of the cgroup to stop once, when `FROZEN` is written, and
    /// reports `FREEZING` until all have. A task that misses the request (one forked or woken at that
    /// moment: a gVisor sandbox's threads often are) is not asked again, and the cgroup can stay
    /// `FREEZING` for good. So each look writes `FROZEN` again (which asks every task now in the
    /// cgroup), and a freeze still not complete after [`V1_FREEZE_RETRY`] is thawed and started
    /// afresh.
    async fn freeze_v1(&self, state: &Path) -> Result<(), CgroupError> {
        let start = Instant::now();
        let mut round = start;
        loop {
            write(state, "FROZEN").map_err(step("freeze"))?;
            if self.is_frozen() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= start + FREEZE_TIMEOUT {
                let _ = self.thaw();
                return Err(timed_out("freeze"));
            }
            if now >= round + V1_FREEZE_RETRY {
                self.thaw()?;
                round = now;
            }
            tokio::time::sleep(POLL_STEP).await;
        }
    }

    /// Thaws every process (at once: nothing to wait for).
    pub(crate) fn thaw(&self) -> Result<(), CgroupError> {
        match &self.freezer {
            Some(Freezer::V2(dir)) => write(&dir.join("cgroup.freeze"), "0").map_err(step("thaw")),
            Some(Freezer::V1(dir)) => write(&dir.join("freezer.state"), "THAWED").map_err(step("thaw")),
            None => Err(missing("thaw")),
        }
    }

    /// Sends SIGKILL to every process in the cgroup, including ones that left the init's tree:
    /// `cgroup.kill` where the kernel has it, otherwise freeze, signal each pid, thaw (so nothing
    /// can fork away between reading the list and signalling it). Does not wait for them to go.
    pub(crate) async fn kill(&self) -> Result<(), CgroupError> {
        if let Some(kill) = &self.kill_file {
            return match write(kill, "1") {
                Err(e) if is_gone(&e) => Ok(()),
                other => other.map_err(step("cgroup.kill")),
            };
        }
        let pids = self.pids().map_err(step("list cgroup"))?;
        if pids.is_empty() {
            return Ok(());
        }
        let frozen = self.freezer.is_some() && self.freeze().await.is_ok();
        for pid in self.pids().map_err(step("list cgroup"))? {
            // A pid that has exited meanwhile gives ESRCH: nothing left to kill.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if frozen {
            self.thaw()?;
        }
        Ok(())
    }

    /// Kills everything in the cgroup until it is empty, within `limit`: woken by v2's
    /// `populated 0` where there is v2, otherwise killing again every [`POLL_STEP`].
    pub(crate) async fn kill_until_empty(&self, limit: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + limit;
        loop {
            if self.pids().map_err(step("list cgroup"))?.is_empty() {
                return Ok(());
            }
            self.kill().await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out("kill cgroup"));
            }
            // cgroupfs tells a watcher of `cgroup.events` that the cgroup emptied, but not that
            // it was removed, which the sandbox's own cleanup may do meanwhile (its init reaped):
            // so look again at least every `REMOVAL_RECHECK`.
            let woken = match self.v2_events() {
                Some(events) => {
                    crate::fswatch::until(&events, left.min(REMOVAL_RECHECK), || self.is_empty()).await.ok()
                }
                None => None,
            };
            if woken.is_none() {
                tokio::time::sleep(POLL_STEP).await;
            }
        }
    }

    /// Removes every directory, killing what is left and retrying while exiting tasks still hold
    /// it (within [`REMOVE_TIMEOUT`]). A directory that is gone is fine.
    pub(crate) async fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        for dir in &self.dirs {
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                        let _ = self.kill().await;
                        tokio::time::sleep(2 * POLL_STEP).await;
                    }
                    Err(e) => return Err(CgroupError { step: "remove cgroup", source: e }),
                }
            }
        }
        Ok(())
    }
}

/// Waits, within `limit`, until `done()` holds: at each change of `events` (a v2 `cgroup.events`)
/// where there is one and it can be watched, else checking every [`POLL_STEP`]. Whether it holds.
async fn wait_until(events: Option<&Path>, limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    if let Some(events) = events
        && let Ok(held) = crate::fswatch::until(events, limit, &done).await
    {
        return held;
    }
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_STEP).await;
    }
    true
}

/// Whether `e` says the cgroup no longer exists: `ENOENT` once it is removed, `ENODEV` when it is
/// removed between opening one of its files and reading or writing it (a concurrent cleanup).
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

/// The error for what this cgroup cannot do: no such controller on this host (or, for a found
/// cgroup, none made by its maker, or the cgroup is gone).
fn missing(what: &'static str) -> CgroupError {
    CgroupError {
        step: what,
        source: io::Error::new(io::ErrorKind::Unsupported, "no such cgroup controller for this cgroup"),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cgroup whose freezer is the (plain) directory `dir`.
    fn with_freezer(freezer: Freezer) -> Cgroup {
        Cgroup {
            has_v2: false,
            dirs: Vec::new(),
            memory: None,
            cpu: None,
            pids: None,
            freezer: Some(freezer),
            kill_file: None,
        }
    }

    #[test]
    fn oom_kills_are_read_from_either_version() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut cgroup = with_freezer(Freezer::V1(tmp.path().to_path_buf()));
        assert_eq!(cgroup.oom_kills(), None, "no memory controller");
        cgroup.memory = Some((tmp.path().to_path_buf(), false));
        fs::write(tmp.path().join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
            .expect("write");
        assert_eq!(cgroup.oom_kills(), Some(2));
        cgroup.memory = Some((tmp.path().to_path_buf(), true));
        fs::write(tmp.path().join("memory.events"), "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
            .expect("write");
        assert_eq!(cgroup.oom_kills(), Some(1));
    }

    #[test]
    fn frozen_means_the_kernel_says_so_on_v1_and_v2() {
        let tmp = tempfile::tempdir().expect("tmp");
        let v1 = with_freezer(Freezer::V1(tmp.path().to_path_buf()));
        for (state, expected) in [
            ("THAWED\n", FreezerState::Thawed),
            ("FREEZING\n", FreezerState::Freezing),
            ("FROZEN\n", FreezerState::Frozen),
        ] {
            fs::write(tmp.path().join("freezer.state"), state).expect("write");
            assert_eq!(v1.freezer_state(), expected, "{state}");
        }
        let v2 = with_freezer(Freezer::V2(tmp.path().to_path_buf()));
        for (freeze, events, expected) in [
            ("0\n", "populated 1\nfrozen 0\n", FreezerState::Thawed),
            ("1\n", "populated 1\nfrozen 0\n", FreezerState::Freezing),
            ("1\n", "populated 1\nfrozen 1\n", FreezerState::Frozen),
        ] {
            fs::write(tmp.path().join("cgroup.freeze"), freeze).expect("write");
            fs::write(tmp.path().join("cgroup.events"), events).expect("write");
            assert_eq!(v2.freezer_state(), expected, "{freeze} {events}");
            assert_eq!(v2.is_frozen(), expected == FreezerState::Frozen);
        }
        let gone = with_freezer(Freezer::V1(tmp.path().join("gone")));
        assert_eq!(gone.freezer_state(), FreezerState::Thawed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_v1_freeze_returns_once_frozen_and_one_that_never_completes_is_given_up() {
        let tmp = tempfile::tempdir().expect("tmp");
        // A plain file reads back what was written: frozen at once.
        let cgroup = with_freezer(Freezer::V1(tmp.path().to_path_buf()));
        cgroup.freeze().await.expect("frozen");
        assert!(cgroup.is_frozen());
        cgroup.thaw().expect("thaw");
        assert_eq!(cgroup.freezer_state(), FreezerState::Thawed);

        // /dev/null takes the request and never reads FROZEN: the freeze times out (on the paused
        // clock) and is undone.
        let stuck_dir = tmp.path().join("stuck");
        fs::create_dir(&stuck_dir).expect("mkdir");
        std::os::unix::fs::symlink("/dev/null", stuck_dir.join("freezer.state")).expect("symlink");
        let stuck = with_freezer(Freezer::V1(stuck_dir));
        let started = Instant::now();
        let e = stuck.freeze().await.expect_err("never frozen");
        assert_eq!(e.source.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= FREEZE_TIMEOUT);
    }
}
