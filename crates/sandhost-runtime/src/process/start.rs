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

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use tokio::time::Instant;

use super::control::{self, Sandbox};
use super::init::{INIT_ARGV0, INIT_SUBCOMMAND, InitArgs};
use super::spawn::{self, InitPlan};
use super::status_pipe::{self, Report, StatusReader};
use super::warm::Member;
use super::{Inner, NAME, files, sys};
use crate::background::Background;
use crate::cgroup::{Cgroup, CgroupError};
use crate::{SandboxKey, SandboxSpec, StartError, Started, Template, state, state_file};

pub(super) async fn start(inner: &Arc<Inner>, spec: &SandboxSpec) -> Result<Started, StartError> {
    let deadline = Instant::now() + inner.config.start_timeout;
    validate(spec)?;
    let key = &spec.key;
    if inner.get(key).is_some() {
        return Err(StartError::AlreadyExists(key.clone()));
    }
    let mut guard = StartGuard::new(inner.background.clone());
    // Taken before anything else is made: a member goes to this start alone, or to none.
    let steps = match inner.pool.claim(inner, &spec.template) {
        Some(member) => {
            // The member's replacement once this start is done, however it ends (also when the
            // caller goes away).
            let _refill = RefillWhenDone { inner, template: &spec.template };
            run_claimed(inner, spec, member, deadline, &mut guard).await
        }
        None => run_steps(inner, spec, deadline, &mut guard).await,
    };
    match steps {
        Ok((started, sandbox)) => {
            guard.disarm();
            inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sandbox);
            tracing::debug!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, pid = started.pid, warm = started.warm, "sandbox started");
            Ok(started)
        }
        Err(e) => {
            guard.undo().await;
            Err(e)
        }
    }
}

/// Refills the pool of a start's template when dropped (see `WarmPool::claim` in `warm.rs`).
struct RefillWhenDone<'a> {
    inner: &'a Arc<Inner>,
    template: &'a crate::Template,
}

impl Drop for RefillWhenDone<'_> {
    fn drop(&mut self) {
        self.inner.pool.refill_for(self.inner, self.template);
    }
}

/// Makes the sandbox's directory (private) that holds a lifecycle's `dir`.
fn make_parent(dir: &std::path::Path) -> io::Result<()> {
    match dir.parent() {
        Some(parent) => std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent),
        None => Ok(()),
    }
}

/// The steps of a cold start, each recorded in `guard` once done.
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
    make_parent(&dir).map_err(host("create state dir"))?;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => guard.made().dir = Some(dir.clone()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(StartError::AlreadyExists(key.clone()));
        }
        Err(e) => return Err(host("create state dir")(e)),
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir.join(files::ROOT)).map_err(host("create state dir"))?;
    state_file::write_soon(&dir, files::SPEC, spec).map_err(host("write spec"))?;

    let cgroup = inner.cgroup(key);
    cgroup.create().map_err(|e| cgroup_error(key, e))?;
    guard.made().cgroup = Some(cgroup.clone());
    cgroup.set_limits(&spec.limits).map_err(|e| cgroup_error(key, e))?;

    let launched = launch(inner, &dir, &cgroup, &spec.template, None, guard).map_err(|e| match e {
        LaunchError::Cgroup(e) => cgroup_error(key, e),
        LaunchError::Host(step, source) => StartError::Host { key: key.clone(), step, source },
    })?;
    let record = launched.record(inner, None);
    state_file::write_soon(&dir, files::INIT, &record).map_err(host("write init record"))?;
    let (pid, started_at) = (launched.pid, record.started_at());
    running(spec, launched.status, deadline).await?;
    let sandbox = Sandbox::running(key.clone(), dir, cgroup, launched.pidfd).map_err(host("watch init"))?;
    Ok((Started { pid, started_at, warm: false }, sandbox))
}

/// The steps of a warm start: the claimed member's directory becomes the lifecycle's (with the
/// spec and the init record already in it, in one rename), its cgroup gets the request's limits,
/// and the init, told to go on, runs the cold start's remaining steps.
async fn run_claimed(
    inner: &Inner,
    spec: &SandboxSpec,
    member: Member,
    deadline: Instant,
    guard: &mut StartGuard,
) -> Result<(Started, Arc<Sandbox>), StartError> {
    let key = &spec.key;
    let host =
        |step: &'static str| move |source: io::Error| StartError::Host { key: key.clone(), step, source };
    let Member { name, dir: member_dir, cgroup, init, claim, .. } = member;
    let LaunchedInit { pid, pidfd, start_time, status } = init;
    // From here on a failure destroys the member: it never goes back to the pool.
    let made = guard.made();
    made.init = Some(pidfd.try_clone().map_err(host("watch init"))?);
    made.cgroup = Some(cgroup.clone());
    made.member_dir = Some(member_dir.clone());

    // Durable soon, by their final paths (below): the directory is renamed first.
    state_file::write_unqueued(&member_dir, files::SPEC, spec).map_err(host("write spec"))?;
    let started_at = SystemTime::now();
    let record = files::InitRecord {
        cgroup_parent: Some(inner.layout.parent().to_owned()),
        cgroup_name: Some(name),
        pid,
        start_time,
        started_at_ms: state::millis_since_epoch(started_at),
    };
    state_file::write_unqueued(&member_dir, files::INIT, &record).map_err(host("write init record"))?;
    let dir = state::sandbox_dir(&inner.config.state_dir, key);
    make_parent(&dir).map_err(host("create state dir"))?;
    match files::rename_no_replace(&member_dir, &dir) {
        Ok(()) => {
            let made = guard.made();
            made.member_dir = None;
            made.dir = Some(dir.clone());
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(StartError::AlreadyExists(key.clone()));
        }
        Err(e) => return Err(host("claim state dir")(e)),
    }
    // The directory itself too: its entry under the sandbox's is the rename's.
    for path in [dir.join(files::SPEC), dir.join(files::INIT), dir.clone()] {
        crate::durable::queue(&path);
    }
    cgroup.set_limits(&spec.limits).map_err(|e| cgroup_error(key, e))?;
    nix::unistd::write(&claim, &[status_pipe::CLAIM_BYTE]).map_err(|e| host("claim member")(e.into()))?;
    drop(claim);
    running(spec, status, deadline).await?;
    let sandbox = Sandbox::running(key.clone(), dir, cgroup, pidfd).map_err(host("watch init"))?;
    Ok((Started { pid, started_at, warm: true }, sandbox))
}

/// Waits for the status pipe to say the command runs (or what failed), within the deadline.
async fn running(spec: &SandboxSpec, status: StatusReader, deadline: Instant) -> Result<(), StartError> {
    let key = &spec.key;
    let host =
        |step: &'static str| move |source: io::Error| StartError::Host { key: key.clone(), step, source };
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
    Ok(())
}

/// Why an init could not be launched.
#[derive(Debug)]
pub(super) enum LaunchError {
    /// A cgroup step.
    Cgroup(CgroupError),
    /// Another step of the host's.
    Host(&'static str, io::Error),
}

/// An init cloned into its namespaces and cgroup, as the agent sees it.
#[derive(Debug)]
pub(super) struct LaunchedInit {
    /// Its host pid.
    pub(super) pid: i32,
    /// Its pidfd (the guard holds another copy).
    pub(super) pidfd: OwnedFd,
    /// Its kernel start time.
    pub(super) start_time: u64,
    /// The agent's end of its status pipe.
    pub(super) status: StatusReader,
}

impl LaunchedInit {
    fn record(&self, inner: &Inner, cgroup_name: Option<String>) -> files::InitRecord {
        files::InitRecord {
            cgroup_parent: Some(inner.layout.parent().to_owned()),
            cgroup_name,
            pid: self.pid,
            start_time: self.start_time,
            started_at_ms: state::millis_since_epoch(SystemTime::now()),
        }
    }
}

/// Clones an init into `cgroup` (made), with `dir` (holding an empty `root/`) as its state dir,
/// to build `template`'s root; with `claim` (a member's claim pipe) it then waits to be claimed.
/// Recorded in `guard` once cloned.
pub(super) fn launch(
    inner: &Inner,
    dir: &std::path::Path,
    cgroup: &Cgroup,
    template: &Template,
    claim: Option<OwnedFd>,
    guard: &mut StartGuard,
) -> Result<LaunchedInit, LaunchError> {
    let host = |step: &'static str| move |source: io::Error| LaunchError::Host(step, source);
    let args = InitArgs {
        new_root: dir.join(files::ROOT),
        state_dir: inner.config.state_dir.clone(),
        log_limit: inner.config.log_limit_bytes,
        host_paths: inner.config.host_paths.clone(),
        template: template.clone(),
        wait_for_claim: claim.is_some(),
    };
    // No host path on the command line: the sandbox reads it (`/proc/1/cmdline`).
    let argv = [INIT_ARGV0, INIT_SUBCOMMAND]
        .map(CString::new)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| LaunchError::Host("init arguments", io::ErrorKind::InvalidInput.into()))?;
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
        cgroup_v2_dir: cgroup.open_v2_dir().map_err(LaunchError::Cgroup)?,
        cgroup_procs: cgroup.open_procs().map_err(LaunchError::Cgroup)?,
        dev_null: open("/dev/null".into(), false).map_err(host("open /dev/null"))?,
        init_log: open(dir.join(files::INIT_LOG), true).map_err(host("create init log"))?,
        status: status_w,
        state_dir: open(dir.to_path_buf(), false).map_err(host("open state dir"))?,
        args: args.to_memfd().map_err(host("init arguments"))?,
        claim,
    };
    let init = spawn::spawn_init(plan).map_err(host("clone"))?;
    let pid = init.pid;
    let pidfd = init.pidfd.try_clone();
    guard.made().init = Some(init.pidfd);
    let pidfd = pidfd.map_err(host("watch init"))?;
    let start_time = crate::procfs::start_ticks(pid).map_err(host("read init start time"))?;
    Ok(LaunchedInit { pid, pidfd, start_time, status })
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

/// What a start (or a pool member's build) has made so far, to be undone if it does not finish.
#[derive(Debug, Default)]
pub(super) struct Made {
    /// The lifecycle's directory (created by this start).
    pub(super) dir: Option<PathBuf>,
    /// The sandbox's cgroup (created by this start).
    pub(super) cgroup: Option<Cgroup>,
    /// The init's pidfd (it is our child).
    pub(super) init: Option<OwnedFd>,
    /// A warm pool member's directory, removed without its parent (`warm/`, shared by builds).
    pub(super) member_dir: Option<PathBuf>,
}

impl Made {
    /// Kills and reaps the init, removes the cgroup (killing what is left in it) and the files.
    pub(super) async fn undo(self) {
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
        if let Some(dir) = self.member_dir {
            super::warm::remove_member_dir(&dir);
        }
    }
}

/// Undoes the completed steps of a start that did not finish: awaited when it fails, in the
/// background when its future is dropped.
#[derive(Debug)]
pub(super) struct StartGuard {
    /// `None` once the start succeeded (disarmed) or was undone.
    made: Option<Made>,
    background: Background,
}

impl StartGuard {
    pub(super) fn new(background: Background) -> Self {
        Self { made: Some(Made::default()), background }
    }

    pub(super) fn made(&mut self) -> &mut Made {
        self.made.get_or_insert_with(Made::default)
    }

    pub(super) fn disarm(&mut self) {
        self.made = None;
    }

    pub(super) async fn undo(mut self) {
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
