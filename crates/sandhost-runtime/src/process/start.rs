//! `start`: validate the spec, create the state dir and the cgroup, clone the init, and return
//! once the command has exec'd, or with the error the init reported, having undone every step.
//!
//! Whether the command runs, or which step failed, comes over the status pipe (`status_pipe`).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use super::cgroup::{Cgroup, CgroupError};
use super::control::Sandbox;
use super::init::{INIT_SUBCOMMAND, InitArgs};
use super::spawn::{self, InitPlan};
use super::status_pipe::{self, Report};
use super::{Inner, NAME, state, sys};
use crate::{SandboxKey, SandboxSpec, StartError, Started};

pub(super) async fn start(inner: &Arc<Inner>, spec: &SandboxSpec) -> Result<Started, StartError> {
    let deadline = tokio::time::Instant::now() + inner.config.start_timeout;
    validate(spec)?;
    let key = &spec.key;
    if inner.get(key).is_some() {
        return Err(StartError::AlreadyExists(key.clone()));
    }
    let host =
        |step: &'static str| move |source: io::Error| StartError::Host { key: key.clone(), step, source };
    let dir = state::sandbox_dir(&inner.config.state_dir, key);
    let mut guard = StartGuard {
        disarmed: false,
        dir: dir.clone(),
        dir_created: false,
        cgroup: inner.layout.cgroup(key),
        cgroup_created: false,
        init: None,
    };

    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(host("create state dir"))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => guard.dir_created = true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(StartError::AlreadyExists(key.clone()));
        }
        Err(e) => return Err(host("create state dir")(e)),
    }
    let new_root = dir.join(state::ROOT);
    std::fs::DirBuilder::new().mode(0o700).create(&new_root).map_err(host("create state dir"))?;
    state::write_json(&dir, state::SPEC, spec).map_err(host("write spec"))?;

    guard.cgroup.create().map_err(|e| cgroup_error(key, e))?;
    guard.cgroup_created = true;
    guard.cgroup.set_limits(&spec.limits).map_err(|e| cgroup_error(key, e))?;

    let args = InitArgs {
        new_root,
        state_dir: inner.config.state_dir.clone(),
        log_limit: inner.config.log_limit_bytes,
    };
    let mut argv = vec![inner.init_exe.clone(), c_string(key, INIT_SUBCOMMAND.into())?];
    for arg in args.to_args() {
        argv.push(c_string(key, arg)?);
    }
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
        cgroup_v2_dir: guard.cgroup.open_v2_dir().map_err(|e| cgroup_error(key, e))?,
        cgroup_procs: guard.cgroup.open_procs().map_err(|e| cgroup_error(key, e))?,
        dev_null: open("/dev/null".into(), false).map_err(host("open /dev/null"))?,
        init_log: open(dir.join(state::INIT_LOG), true).map_err(host("create init log"))?,
        status: status_w,
        state_dir: open(dir.clone(), false).map_err(host("open state dir"))?,
    };
    let init = spawn::spawn_init(plan).map_err(host("clone"))?;
    let started_at = SystemTime::now();
    let pid = init.pid;
    guard.init = Some(init.pidfd);
    let start_time = state::proc_start_time(pid).map_err(host("read init start time"))?;
    let record = state::InitRecord {
        cgroup_parent: Some(inner.layout.parent().to_owned()),
        pid,
        start_time,
        started_at_ms: state::millis_since_epoch(started_at),
    };
    state::write_json(&dir, state::INIT, &record).map_err(host("write init record"))?;

    let timed_out = || host("wait for sandbox setup")(io::ErrorKind::TimedOut.into());
    match tokio::time::timeout_at(deadline, status.outcome()).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(report))) => return Err(start_failure(spec, report)),
        Ok(Err(e)) => return Err(host("read status pipe")(e)),
        Err(_) => return Err(timed_out()),
    }
    // Past the deadline is a timeout even if the report has just come: whether a start counts as
    // timed out must not depend on when this task happened to be polled.
    if tokio::time::Instant::now() >= deadline {
        return Err(timed_out());
    }

    let pidfd = guard.init.as_ref().map(OwnedFd::try_clone).transpose().map_err(host("watch init"))?;
    let pidfd = pidfd.ok_or_else(|| host("watch init")(io::ErrorKind::NotFound.into()))?;
    let sandbox =
        Sandbox::running(key.clone(), dir, guard.cgroup.clone(), pidfd).map_err(host("watch init"))?;
    guard.disarm();
    inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sandbox);
    tracing::debug!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, pid, "sandbox started");
    Ok(Started { pid, started_at })
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

/// Undoes the completed steps of a start that did not finish (also when its future is dropped).
#[derive(Debug)]
struct StartGuard {
    disarmed: bool,
    dir: PathBuf,
    dir_created: bool,
    cgroup: Cgroup,
    cgroup_created: bool,
    init: Option<OwnedFd>,
}

impl StartGuard {
    fn disarm(&mut self) {
        self.disarmed = true;
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if self.disarmed {
            return;
        }
        if let Some(pidfd) = self.init.take() {
            let _ = sys::pidfd_send_signal(pidfd.as_fd(), libc::SIGKILL);
            // The init is dying (SIGKILL cannot be caught): this blocks for a moment at most.
            let _ = sys::waitid_pidfd(pidfd.as_fd(), true);
        }
        if self.cgroup_created {
            let _ = self.cgroup.kill_all();
            if let Err(e) = self.cgroup.remove() {
                tracing::error!(step = e.step, error = %e.source, "undoing a failed start: cgroup left behind");
            }
        }
        if self.dir_created
            && let Err(e) = state::remove_dir(&self.dir)
        {
            tracing::error!(dir = %self.dir.display(), error = %e, "undoing a failed start: state left behind");
        }
    }
}
