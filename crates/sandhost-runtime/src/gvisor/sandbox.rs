//! One sandbox as this backend holds it: the runsc container that currently carries it (a
//! checkpoint-and-continue replaces it by a restored one), its exit, and the operations on it.
//!
//! A watcher task per container runs `runsc wait` (which blocks in runsc on the sandbox's control
//! socket: no polling) and publishes the exit on a `watch` channel. While the sandbox is being
//! checkpointed its container stops on purpose: the watcher then parks its result instead of
//! publishing it, and the checkpoint decides what it means.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use tokio::process::Child;

use super::inner::ContainerCgroups;
use super::logs::LogDating;
use super::paths;
use super::runsc::Runsc;
use crate::cgroup::Cgroup;
use crate::fswatch::FsWatch;
use crate::{ControlError, Exit, SandboxKey, StopError};
use crate::{state, state_file};

/// How long a killed sandbox may take to stop before stop reports failure.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// The least time between two observations of the log of a running sandbox (each trims it to its
/// bound and may date it).
const LOG_OBSERVE_GAP: Duration = Duration::from_secs(1);

/// How long until the time of day `unix_ms` (zero if it has passed).
fn until_unix_ms(unix_ms: u64) -> Duration {
    Duration::from_millis(unix_ms.saturating_sub(crate::log_index::now_ms()))
}

/// Where a container's exit comes from.
#[derive(Debug)]
pub(crate) enum ExitSource {
    /// Its foreground `runsc run`/`restore`, our child: exits with the container's status.
    Child(Child),
    /// `runsc wait`, for a re-adopted container (whose foreground runsc is not our child).
    Runsc(Runsc),
    /// Its cgroup becoming empty, for a re-adopted container that runsc does not know any more
    /// (its state was lost): the exit its recorder wrote, if it could.
    Cgroup(Cgroup),
}

#[derive(Debug, Default)]
struct Watch {
    /// A checkpoint is stopping the container on purpose.
    suspended: bool,
    /// What the watcher saw while suspended.
    parked: Option<Exit>,
}

/// A sandbox this runtime knows.
#[derive(Debug)]
pub(crate) struct Sandbox {
    pub(crate) key: SandboxKey,
    pub(crate) dir: PathBuf,
    cid: Mutex<String>,
    watch: Mutex<Watch>,
    exit_tx: watch::Sender<Option<Exit>>,
    paused: Mutex<bool>,
    /// Serialises stop, kill, pause, resume, checkpoint and cleanup.
    pub(crate) op: tokio::sync::Mutex<()>,
    /// Deletes of containers this sandbox no longer uses (slow; awaited by cleanup).
    background: Mutex<Vec<JoinHandle<()>>>,
    /// The trimming and dating of its log, from [`Sandbox::watch_log`].
    log_dating: Mutex<Option<LogDating>>,
}

impl Sandbox {
    /// A sandbox whose container `cid` runs; starts its watcher.
    pub(crate) fn running(
        key: SandboxKey,
        dir: PathBuf,
        cid: String,
        source: ExitSource,
        paused: bool,
    ) -> Arc<Self> {
        let sandbox = Self::new(key, dir, cid.clone(), None, paused);
        sandbox.watch_container(source, cid);
        sandbox
    }

    /// A sandbox found exited.
    pub(crate) fn exited(key: SandboxKey, dir: PathBuf, cid: String, exit: Exit) -> Arc<Self> {
        Self::new(key, dir, cid, Some(exit), false)
    }

    fn new(key: SandboxKey, dir: PathBuf, cid: String, exit: Option<Exit>, paused: bool) -> Arc<Self> {
        Arc::new(Self {
            key,
            dir,
            cid: Mutex::new(cid),
            watch: Mutex::new(Watch::default()),
            exit_tx: watch::channel(exit).0,
            paused: Mutex::new(paused),
            op: tokio::sync::Mutex::new(()),
            background: Mutex::new(Vec::new()),
            log_dating: Mutex::new(None),
        })
    }

    pub(crate) fn cid(&self) -> String {
        self.cid.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_cid(&self, cid: String) {
        *self.cid.lock().unwrap_or_else(PoisonError::into_inner) = cid;
    }

    pub(crate) fn exit(&self) -> Option<Exit> {
        *self.exit_tx.borrow()
    }

    /// Starts a watcher of container `cid`.
    pub(crate) fn watch_container(self: &Arc<Self>, source: ExitSource, cid: String) {
        let sandbox = Arc::clone(self);
        tokio::spawn(async move {
            let exit = match source {
                ExitSource::Child(mut child) => child.wait().await.map(|status| match status.code() {
                    Some(code) => Exit::from_shell_code(code),
                    None => Exit::Signal(
                        std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(libc::SIGKILL),
                    ),
                }),
                ExitSource::Runsc(runsc) => runsc.wait_attached(&cid).await,
                ExitSource::Cgroup(cgroup) => {
                    cgroup.until_empty().await;
                    let recorded = super::recorder::exit_file(&sandbox.dir, &cid);
                    Ok(state_file::read_path(&recorded).ok().flatten().unwrap_or(Exit::Signal(libc::SIGKILL)))
                }
            };
            let exit = exit.unwrap_or_else(|e| {
                tracing::warn!(sandbox.id = %sandbox.key.id, container = %cid, error = %e, "runsc wait failed; exit unknown");
                Exit::Signal(libc::SIGKILL)
            });
            let mut watch = sandbox.watch.lock().unwrap_or_else(PoisonError::into_inner);
            if watch.suspended {
                watch.parked = Some(exit);
            } else if sandbox.cid() == cid {
                drop(watch);
                sandbox.publish(exit);
            }
        });
    }

    /// Keeps the log within `limit` and dated while the sandbox runs (runsc writes it directly:
    /// see `logs`): an observation at once (which dates what was written while no agent ran), then
    /// one when the log grows (inotify on the file) or when a pending entry of its time index falls
    /// due, at most one every [`LOG_OBSERVE_GAP`]. Without inotify, one every gap, as a timer.
    pub(crate) fn watch_log(self: &Arc<Self>, limit: u64) {
        *self.log_dating.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(LogDating::new(&self.dir, limit));
        let sandbox = Arc::clone(self);
        tokio::spawn(async move {
            let watch = match FsWatch::new(&paths::log_path(&sandbox.dir)) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::warn!(sandbox.id = %sandbox.key.id, error = %e, "no inotify watch of the log; observing it every second");
                    None
                }
            };
            let mut due = sandbox.observe_log().await;
            loop {
                // Without a watch (or with a broken one), every gap is taken for a growth.
                let grown = async {
                    if let Some(watch) = &watch {
                        let _ = watch.changed().await;
                    }
                };
                let woken = async {
                    tokio::time::sleep(LOG_OBSERVE_GAP).await;
                    match due {
                        Some(at) => tokio::select! {
                            () = grown => {}
                            () = tokio::time::sleep(until_unix_ms(at)) => {}
                        },
                        None => grown.await,
                    }
                };
                tokio::select! {
                    _ = sandbox.wait_exit() => return,
                    () = woken => {}
                }
                due = sandbox.observe_log().await;
            }
        });
    }

    /// Trims the log and records an observation in its time index if one is due (see `logs`), on a
    /// blocking thread; when the next one falls due (the time of day in ms), if bytes are undated.
    /// Nothing before [`Sandbox::watch_log`].
    pub(crate) async fn observe_log(self: &Arc<Self>) -> Option<u64> {
        let sandbox = Arc::clone(self);
        let job = move || {
            let mut dating = sandbox.log_dating.lock().unwrap_or_else(PoisonError::into_inner);
            dating.as_mut().map(LogDating::observe)
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(Some(Ok(due))) => due,
            Ok(None) => None,
            Ok(Some(Err(e))) => {
                tracing::warn!(sandbox.id = %self.key.id, error = %e, "trimming or dating the log failed");
                None
            }
            Err(e) => {
                tracing::warn!(sandbox.id = %self.key.id, error = %e, "trimming or dating the log failed");
                None
            }
        }
    }

    /// Records and publishes the exit (once).
    pub(crate) fn publish(&self, exit: Exit) {
        if self.exit().is_some() {
            return;
        }
        if let Err(e) = state_file::write(&self.dir, state::EXIT, &exit) {
            tracing::warn!(sandbox.id = %self.key.id, error = %e, "recording the exit failed");
        }
        self.exit_tx.send_replace(Some(exit));
    }

    /// Marks the container as being stopped on purpose (a checkpoint).
    pub(crate) fn suspend(&self) {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        watch.suspended = true;
        watch.parked = None;
    }

    /// Ends a suspension; returns what the old container's watcher saw, if it ended.
    pub(crate) fn unsuspend(&self) -> Option<Exit> {
        let mut watch = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        watch.suspended = false;
        watch.parked.take()
    }

    /// Waits for the exit. Cancel-safe.
    pub(crate) async fn wait_exit(&self) -> Exit {
        let mut rx = self.exit_tx.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(exit) => exit.unwrap_or(Exit::Signal(libc::SIGKILL)),
            Err(_) => self.exit().unwrap_or(Exit::Signal(libc::SIGKILL)),
        }
    }

    async fn wait_exit_for(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.wait_exit()).await.is_ok()
    }

    /// Keeps a background task (a slow delete) for cleanup to await.
    pub(crate) fn keep_background(&self, task: JoinHandle<()>) {
        self.background.lock().unwrap_or_else(PoisonError::into_inner).push(task);
    }

    pub(crate) async fn join_background(&self) {
        let tasks = std::mem::take(&mut *self.background.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            let _ = task.await;
        }
    }

    /// With `grace`: SIGTERM, then after `grace` SIGKILL to every process. Without: SIGKILL at once.
    /// Returns once the container has stopped. Idempotent.
    pub(crate) async fn stop(
        &self,
        runsc: &Runsc,
        cgroups: &ContainerCgroups,
        grace: Option<Duration>,
    ) -> Result<(), StopError> {
        if self.exit().is_some() {
            return Ok(());
        }
        if let Some(grace) = grace {
            let sent = {
                let _op = self.op.lock().await;
                // A frozen sandbox can neither answer runsc nor act on SIGTERM: thaw it first.
                self.exit().is_none()
                    && self.thaw(cgroups)
                    && runsc.kill(&self.cid(), "TERM", false).await.is_ok()
            };
            if sent && self.wait_exit_for(grace).await {
                return Ok(());
            }
        }
        let _op = self.op.lock().await;
        if self.exit().is_some() {
            return Ok(());
        }
        let cid = self.cid();
        self.thaw(cgroups);
        // `kill --all` misses the processes of a restored container (runsc 20221219); SIGKILL to
        // its init ends them all (the end of a pid namespace's init).
        let all = runsc.kill(&cid, "KILL", true).await;
        let mut killed = runsc.kill(&cid, "KILL", false).await.or(all);
        if killed.is_err() {
            // runsc cannot reach it (its state was lost): kill what is in its cgroup.
            killed = cgroups.find(&cid).kill_until_empty(KILL_TIMEOUT).await.map_err(|e| e.source);
        }
        if self.wait_exit_for(KILL_TIMEOUT).await {
            return Ok(());
        }
        let source =
            killed.err().unwrap_or_else(|| std::io::Error::other("the sandbox did not stop after SIGKILL"));
        Err(StopError::Host { key: self.key.clone(), step: "runsc kill", source })
    }

    /// Thaws a paused sandbox (so that runsc can reach it); whether it now runs.
    fn thaw(&self, cgroups: &ContainerCgroups) -> bool {
        if !self.is_paused() {
            return true;
        }
        match cgroups.find(&self.cid()).thaw() {
            Ok(()) => {
                self.set_paused_flag(false);
                true
            }
            Err(e) => {
                tracing::warn!(sandbox.id = %self.key.id, error = %e.source, "thawing a paused sandbox failed");
                false
            }
        }
    }

    /// Freezes (returning once every task has stopped) or thaws the container's cgroup. Through the
    /// cgroup rather than `runsc pause`, which does not stop a restored container in runsc 20221219
    /// (it reports it paused while it runs on).
    pub(crate) async fn set_paused(
        &self,
        cgroups: &ContainerCgroups,
        pause: bool,
    ) -> Result<(), ControlError> {
        let _op = self.op.lock().await;
        if self.exit().is_some() {
            return Err(ControlError::NotRunning(self.key.clone()));
        }
        let cgroup = cgroups.find(&self.cid());
        let changed = if pause { cgroup.freeze().await } else { cgroup.thaw() };
        changed.map_err(|e| ControlError::Host { key: self.key.clone(), step: e.step, source: e.source })?;
        self.set_paused_flag(pause);
        Ok(())
    }

    pub(crate) fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_paused_flag(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(PoisonError::into_inner) = paused;
    }
}
