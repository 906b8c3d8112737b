//! `start`: validate the spec, create the state dir and the cgroup, clone the init, and return
//! once the command has exec'd, or with the error the init reported, having undone every step.
//!
//! Whether the command runs, or which step failed, comes over the status pipe (`status_pipe`).
//!
//! # Invariants
//!
//! - A start that fails has undone everything it made before it returns (`StartGuard::undo`: the
//!   init killed and reaped, the cgroup removed, the lifecycle's files removed).
//! - A start whose future is dropped part way (its caller went away) is undone in the background
//!   ([`Runtime::settle`](crate::Runtime::settle) waits for it).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use tokio::time::Instant;

use super::control::{self, Sandbox};
use super::init::{INIT_ARGV0, INIT_SUBCOMMAND, InitArgs};
use super::spawn::{self, InitPlan};
use super::status_pipe::{self, Report};
use super::{Inner, NAME, files, sys};
use crate::background::Background;
use crate::cgroup::{Cgroup, CgroupError};
use crate::{SandboxKey, SandboxSpec, StartError, Started, state, state_file};

pub(super) async fn start(inner: &Arc<Inner>, spec: &SandboxSpec) -> Result<Started, StartError> {
    let deadline = Instant::now() + inner.config.start_timeout;
    validate(spec)?;
    let key = &spec.key;
    if inner.get(key).is_some() {
        return Err(StartError::AlreadyExists(key.clone()));
    }
    let mut guard = StartGuard { made: Some(Made::default()), background: inner.background.clone() };
    match run_steps(inner, spec, deadline, &mut guard).await {
        Ok((started, sandbox)) => {
            guard.disarm();
            inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sandbox);
            tracing::debug!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, pid = started.pid, "sandbox started");
            Ok(started)
        }
        Err(e) => {
            guard.undo().await;
            Err(e)
        }
    }
}

/// The steps of a start, each recorded in `guard` once done.
async fn run_steps(
    inner: &Inner,
    spec: &SandboxSpec,
    deadline: Instant,
    guard: &mut StartGuard,
) -> Result<(Started, Arc<Sandbox>), StartError> {
    let key = &spec.key;
    let host =
        |step: &'static str| move |source: io::Error| StartError::Host { key: key.clone(), step, source };
    let dir = state::sandbox_dir(&inner.config.state_dir, key);
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(host("create state dir"))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => guard.made().dir = Some(dir.clone()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(StartError::AlreadyExists(key.clone()));
        }
        Err(e) => return Err(host("create state dir")(e)),
    }
    let new_root = dir.join(files::ROOT);
    std::fs::DirBuilder::new().mode(0o700).create(&new_root).map_err(host("create state dir"))?;
    state_file::write(&dir, files::SPEC, spec).map_err(host("write spec"))?;

    let cgroup = inner.cgroup(key);
    cgroup.create().map_err(|e| cgroup_error(key, e))?;
    guard.made().cgroup = Some(cgroup.clone());
    cgroup.set_limits(&spec.limits).map_err(|e| cgroup_error(key, e))?;

    let args = InitArgs {
        new_root,
        state_dir: inner.config.state_dir.clone(),
        log_limit: inner.config.log_limit_bytes,
        host_paths: inner.config.host_paths.clone(),
    };
    // No host path on the command line: the sandbox reads it (`/proc/1/cmdline`).
    let argv = vec![c_string(key, INIT_ARGV0.into())?, c_string(key, INIT_SUBCOMMAND.into())?];
    let (status, status_w) = status_pipe::pipe().map_err(host("status pipe"))?;
    let open = |path: PathBuf, write: bool| -> io::Result<OwnedFd> {
        let mut options = std::fs::OpenOptions::new();
        if write {
            options.append(true).create(true);
        } else {
            options.read(true);
        }
        options.open(path).map(OwnedFd::from)
    };
    let plan = InitPlan {
        exe: inner.init_exe.clone(),
        argv,
        cgroup_v2_dir: cgroup.open_v2_dir().map_err(|e| cgroup_error(key, e))?,
        cgroup_procs: cgroup.open_procs().map_err(|e| cgroup_error(key, e))?,
        dev_null: open("/dev/null".into(), false).map_err(host("open /dev/null"))?,
        init_log: open(dir.join(files::INIT_LOG), true).map_err(host("create init log"))?,
        status: status_w,
        state_dir: open(dir.clone(), false).map_err(host("open state dir"))?,
        args: args.to_memfd().map_err(host("init arguments"))?,
    };
    let init = spawn::spawn_init(plan).map_err(host("clone"))?;
    let started_at = SystemTime::now();
    let pid = init.pid;
    let pidfd = init.pidfd.try_clone();
    guard.made().init = Some(init.pidfd);
    let pidfd = pidfd.map_err(host("watch init"))?;
    let start_time = crate::procfs::start_ticks(pid).map_err(host("read init start time"))?;
    let record = files::InitRecord {
        cgroup_parent: Some(inner.layout.parent().to_owned()),
        pid,
        start_time,
        started_at_ms: state::millis_since_epoch(started_at),
    };
    state_file::write(&dir, files::INIT, &record).map_err(host("write init record"))?;

    let timed_out = || host("wait for sandbox setup")(io::ErrorKind::TimedOut.into());
    match tokio::time::timeout_at(deadline, status.outcome()).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(report))) => return Err(start_failure(spec, report)),
        Ok(Err(e)) => return Err(host("read status pipe")(e)),
        Err(_) => return Err(timed_out()),
    }
    // Past the deadline is a timeout even if the report has just come: whether a start counts as
    // timed out must not depend on when this task happened to be polled.
    if Instant::now() >= deadline {
        return Err(timed_out());
    }
    let sandbox = Sandbox::running(key.clone(), dir, cgroup, pidfd).map_err(host("watch init"))?;
    Ok((Started { pid, started_at }, sandbox))
}

fn c_string(key: &SandboxKey, s: OsString) -> Result<CString, StartError> {
    CString::new(s.into_vec()).map_err(|_| StartError::Host {
        key: key.clone(),
        step: "init arguments",
        source: io::ErrorKind::InvalidInput.into(),
    })
}

fn cgroup_error(key: &SandboxKey, e: CgroupError) -> StartError {
    if e.source.kind() == io::ErrorKind::Unsupported {
        return StartError::NotSupported { key: key.clone(), backend: NAME, what: e.step };
    }
    StartError::Host { key: key.clone(), step: e.step, source: e.source }
}

/// The error of the step the status pipe reported failed.
fn start_failure(spec: &SandboxSpec, report: Report) -> StartError {
    let key = spec.key.clone();
    match report {
        Report::InitExec(errno) => {
            StartError::Host { key, step: "exec init", source: io::Error::from_raw_os_error(errno) }
        }
        Report::CgroupJoin(errno) => {
            StartError::Host { key, step: "join cgroup", source: io::Error::from_raw_os_error(errno) }
        }
        Report::Setup(text) => {
            StartError::Host { key, step: "sandbox setup", source: io::Error::other(text) }
        }
        Report::Exec(reason) => StartError::Exec { key, command: spec.argv[0].clone(), reason },
    }
}

fn validate(spec: &SandboxSpec) -> Result<(), StartError> {
    if spec.restore_from.is_some() {
        return Err(StartError::NotSupported {
            key: spec.key.clone(),
            backend: NAME,
            what: "restoring from a snapshot",
        });
    }
    spec.validate()
}

/// What a start has made so far, to be undone if it does not finish.
#[derive(Debug, Default)]
struct Made {
    /// The lifecycle's directory (created by this start).
    dir: Option<PathBuf>,
    /// The sandbox's cgroup (created by this start).
    cgroup: Option<Cgroup>,
    /// The init's pidfd (it is our child).
    init: Option<OwnedFd>,
}

impl Made {
    /// Kills and reaps the init, removes the cgroup (killing what is left in it) and the files.
    async fn undo(self) {
        if let Some(pidfd) = self.init {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            // SIGKILL cannot be caught: the init is exiting. Reap it once it has.
            match control::until_exited(pidfd).await {
                Ok(pidfd) => {
                    let _ = sys::waitid_pidfd(pidfd.as_fd(), false);
                }
                Err(e) => tracing::error!(error = %e, "undoing a failed start: the init was not reaped"),
            }
        }
        if let Some(cgroup) = self.cgroup
            && let Err(e) = cgroup.remove().await
        {
            tracing::error!(step = e.step, error = %e.source, "undoing a failed start: cgroup left behind");
        }
        if let Some(dir) = self.dir
            && let Err(e) = files::remove_all(&dir)
        {
            tracing::error!(dir = %dir.display(), error = %e, "undoing a failed start: state left behind");
        }
    }
}

/// Undoes the completed steps of a start that did not finish: awaited when it fails, in the
/// background when its future is dropped.
#[derive(Debug)]
struct StartGuard {
    /// `None` once the start succeeded (disarmed) or was undone.
    made: Option<Made>,
    background: Background,
}

impl StartGuard {
    fn made(&mut self) -> &mut Made {
        self.made.get_or_insert_with(Made::default)
    }

    fn disarm(&mut self) {
        self.made = None;
    }

    async fn undo(mut self) {
        if let Some(made) = self.made.take() {
            made.undo().await;
        }
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        let Some(made) = self.made.take() else {
            return;
        };
        // The start's future was dropped part way (its caller went away, or a step panicked).
        if tokio::runtime::Handle::try_current().is_ok() {
            self.background.spawn(made.undo());
        } else {
            tracing::error!(
                "a start dropped outside a tokio runtime could not be undone; its sandbox is left behind"
            );
        }
    }
}
