//! One live (or exited) sandbox as the agent holds it, and the operations on it: wait, stop, kill,
//! pause, resume, cleanup, forget.
//!
//! A watcher task per sandbox awaits the init's pidfd becoming readable (its exit; no polling),
//! reaps the init if it is our child, reads the exit the init recorded and publishes it on a
//! `watch` channel that every `wait` reads, so waits are cancel-safe and any number may run.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::sys::{self, ChildStatus};
use super::{Inner, files};
use crate::cgroup::{Cgroup, CgroupError};
use crate::{CleanupError, ControlError, Exit, SandboxKey, StopError, state, state_file};

/// How long the processes of a killed sandbox may take to disappear before stop reports failure.
pub(crate) const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A sandbox this runtime knows.
#[derive(Debug)]
pub(crate) struct Sandbox {
    pub(crate) key: SandboxKey,
    pub(crate) cgroup: Cgroup,
    /// The init's pidfd; `None` for a sandbox found already exited.
    pidfd: Option<OwnedFd>,
    exit: watch::Receiver<Option<Exit>>,
    /// Serialises stop and kill of this sandbox.
    op: tokio::sync::Mutex<()>,
}

impl Sandbox {
    /// A running sandbox; starts its watcher task (needs a tokio runtime).
    pub(crate) fn running(
        key: SandboxKey,
        dir: PathBuf,
        cgroup: Cgroup,
        pidfd: OwnedFd,
    ) -> io::Result<Arc<Self>> {
        let watched = pidfd.try_clone()?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(watch_exit(watched, dir, tx));
        Ok(Arc::new(Self { key, cgroup, pidfd: Some(pidfd), exit: rx, op: tokio::sync::Mutex::new(()) }))
    }

    /// A running sandbox known by its cgroup alone (its init record was lost): its exit is its
    /// cgroup becoming empty, with the exit the init recorded if it could. Starts its watcher.
    pub(crate) fn watched_by_cgroup(key: SandboxKey, dir: PathBuf, cgroup: Cgroup) -> Arc<Self> {
        let (tx, rx) = watch::channel(None);
        let watched = cgroup.clone();
        tokio::spawn(async move {
            watched.until_empty().await;
            let _ = tx.send(Some(recorded_exit(dir).await.unwrap_or(Exit::Signal(libc::SIGKILL))));
        });
        Arc::new(Self { key, cgroup, pidfd: None, exit: rx, op: tokio::sync::Mutex::new(()) })
    }

    /// A sandbox found exited.
    pub(crate) fn exited(key: SandboxKey, cgroup: Cgroup, exit: Exit) -> Arc<Self> {
        let (_tx, rx) = watch::channel(Some(exit));
        Arc::new(Self { key, cgroup, pidfd: None, exit: rx, op: tokio::sync::Mutex::new(()) })
    }

    pub(crate) fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Waits for the exit. Cancel-safe.
    pub(crate) async fn wait_exit(&self) -> Exit {
        let mut rx = self.exit.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.unwrap_or(Exit::Signal(libc::SIGKILL)),
            // The watcher is gone only if the tokio runtime is shutting down.
            Err(_) => self.exit.borrow().unwrap_or(Exit::Signal(libc::SIGKILL)),
        }
    }

    fn host(&self, step: &'static str) -> impl FnOnce(io::Error) -> StopError + '_ {
        move |source| StopError::Host { key: self.key.clone(), step, source }
    }

    /// With `grace`: SIGTERM to the init, then after `grace` kill the cgroup. Without: kill at once.
    /// Returns once no process is left and the exit is known. Idempotent.
    pub(crate) async fn stop(&self, grace: Option<Duration>) -> Result<(), StopError> {
        if grace.is_some() {
            self.terminate()?;
        }
        self.finish_stop(grace).await
    }

    /// The first half of a stop with a grace: SIGTERM to the init (to every process of the cgroup
    /// for a sandbox known by its cgroup alone), and a thaw, so that a paused sandbox sees it.
    /// Synchronous: a bulk stop signals every sandbox in one pass before it waits for any.
    pub(crate) fn terminate(&self) -> Result<(), StopError> {
        if self.has_exited() {
            return Ok(());
        }
        match &self.pidfd {
            Some(pidfd) => {
                sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGTERM).map_err(self.host("signal init"))?;
            }
            // Known by its cgroup alone: every process gets the SIGTERM its init would forward.
            None => {
                self.cgroup.signal_all(Signal::SIGTERM).map_err(|e| self.host(e.step)(e.source))?;
            }
        }
        let _ = self.cgroup.thaw(); // a paused sandbox must see its SIGTERM
        Ok(())
    }

    /// The second half of a stop, once [`Sandbox::terminate`] has run (with a grace): the exit
    /// awaited for `grace`, then whatever is left killed. Without a grace, the kill at once.
    ///
    /// The grace is waited for outside the operation lock, so a kill (or a stop with a shorter
    /// grace) that comes during it is not held up behind it.
    pub(crate) async fn finish_stop(&self, grace: Option<Duration>) -> Result<(), StopError> {
        if let (Some(grace), false) = (grace, self.has_exited()) {
            let _ = tokio::time::timeout(grace, self.wait_exit()).await;
        }
        let _op = self.op.lock().await;
        self.cgroup.kill_until_empty(KILL_TIMEOUT).await.map_err(|e| self.host(e.step)(e.source))?;
        tokio::time::timeout(KILL_TIMEOUT, self.wait_exit())
            .await
            .map_err(|_| self.host("wait for init")(io::ErrorKind::TimedOut.into()))?;
        Ok(())
    }

    fn control(&self, e: CgroupError) -> ControlError {
        ControlError::Host { key: self.key.clone(), step: e.step, source: e.source }
    }

    /// Freezes the sandbox; returns once the kernel reports it frozen (see `crate::cgroup`).
    pub(crate) async fn pause(&self) -> Result<(), ControlError> {
        if self.has_exited() {
            return Err(ControlError::NotRunning(self.key.clone()));
        }
        self.cgroup.freeze().await.map_err(|e| self.control(e))
    }

    /// Thaws the sandbox.
    pub(crate) fn resume(&self) -> Result<(), ControlError> {
        if self.has_exited() {
            return Err(ControlError::NotRunning(self.key.clone()));
        }
        self.cgroup.thaw().map_err(|e| self.control(e))
    }
}

/// Waits until the process behind `pidfd` has exited (its pidfd turns readable; no polling), and
/// gives the pidfd back, for reaping.
///
/// # Errors
///
/// When neither tokio nor a blocking thread can wait on it.
pub(crate) async fn until_exited(pidfd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: an OwnedFd keeps its fd open and unchanged for as long as it lives, and the AsyncFd
    // owns it until `into_inner`.
    match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(afd) => {
            let _ = afd.readable().await;
            Ok(afd.into_inner())
        }
        Err(e) => {
            tracing::warn!(error = %e, "pidfd not pollable through tokio; waiting on a blocking thread");
            let (fd, _) = e.into_parts();
            tokio::task::spawn_blocking(move || {
                let mut fds = [libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
                    events: libc::POLLIN,
                    revents: 0,
                }];
                // SAFETY: `fds` is one valid pollfd that lives across the call, and its fd is
                // owned by `fd`, which outlives it; poll only writes `revents`.
                while unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) } < 0 {}
                fd
            })
            .await
            .map_err(io::Error::other)
        }
    }
}

/// The watcher: waits for the init's exit, reaps it if it is ours, publishes the exit.
async fn watch_exit(pidfd: OwnedFd, dir: PathBuf, tx: watch::Sender<Option<Exit>>) {
    let pidfd = match until_exited(pidfd).await {
        Ok(pidfd) => pidfd,
        Err(e) => {
            tracing::error!(error = %e, "waiting for an init failed; reporting it killed");
            let _ = tx.send(Some(Exit::Signal(libc::SIGKILL)));
            return;
        }
    };
    // Readable means exited (a zombie if it is our child): WNOHANG finds it. A re-adopted init is
    // not our child (ECHILD: someone else reaps it).
    let status = sys::waitid_pidfd(pidfd.as_fd(), false).ok().flatten();
    let exit = recorded_exit(dir).await.unwrap_or(match status {
        Some(ChildStatus::Signaled(sig)) => Exit::Signal(sig),
        Some(ChildStatus::Exited(code)) => Exit::Code(code),
        None => Exit::Signal(libc::SIGKILL),
    });
    let _ = tx.send(Some(exit));
}

/// The exit the init recorded in `dir`, if it could (a damaged record is none); it is synced soon
/// (the init did not).
async fn recorded_exit(dir: PathBuf) -> Option<Exit> {
    crate::durable::queue(&dir.join(files::EXIT));
    tokio::task::spawn_blocking(move || state_file::read::<Exit>(&dir, files::EXIT))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

/// Releases what an exited sandbox held; a running one is killed first. Keeps the log.
pub(crate) async fn cleanup(inner: &Arc<Inner>, key: &SandboxKey) -> Result<(), CleanupError> {
    let fail = |what, source| CleanupError::Host { key: key.clone(), what, source };
    let cgroup = match inner.get(key) {
        Some(sandbox) => {
            if !sandbox.has_exited() {
                sandbox.stop(None).await.map_err(|e| fail("processes", io::Error::other(e)))?;
            }
            sandbox.cgroup.clone()
        }
        None => inner.cgroup(key),
    };
    cgroup.remove().await.map_err(|e| fail("cgroup", e.source))?;
    let dir = state::sandbox_dir(&inner.config.state_dir, key);
    tokio::task::spawn_blocking(move || files::remove_state_files(&dir))
        .await
        .map_err(|e| fail("state", io::Error::other(e.to_string())))?
        .map_err(|e| fail("state", e))
}

/// Cleans up, then removes the log and the sandbox's directory, and forgets it.
pub(crate) async fn forget(inner: &Arc<Inner>, key: &SandboxKey) -> Result<(), CleanupError> {
    cleanup(inner, key).await?;
    let dir = state::sandbox_dir(&inner.config.state_dir, key);
    files::remove_all(&dir).map_err(|source| CleanupError::Host {
        key: key.clone(),
        what: "state",
        source,
    })?;
    inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    Ok(())
}
