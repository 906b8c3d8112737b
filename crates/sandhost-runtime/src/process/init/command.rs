//! The sandbox's command, forked by the (single-threaded) init: it takes its stdio, drops every
//! privilege (capabilities, then uid/gid, then `no_new_privs` and the seccomp filter) and execs.
//! A failure before or at `execve` is written to the status pipe, where `start` reads it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Uid, setresgid, setresuid, setsid};
use seccompiler::BpfProgram;

use super::SetupError;
use crate::SandboxSpec;
use crate::process::status_pipe::Report;
use crate::process::sys;

/// The PATH used to find the command when its environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the command's process needs, prepared in the init before the fork.
#[derive(Debug)]
pub(super) struct CommandPlan {
    argv: Vec<CString>,
    env: Vec<CString>,
    path: String,
    cwd: PathBuf,
    uid: Uid,
    gid: Gid,
    filters: Vec<BpfProgram>,
    last_cap: u32,
}

impl CommandPlan {
    /// The plan of `spec`'s command, with the filters and the last capability made before the
    /// request (`init::prepare`).
    pub(super) fn new(
        spec: &SandboxSpec,
        home: &Path,
        last_cap: u32,
        filters: Vec<BpfProgram>,
    ) -> Result<Self, SetupError> {
        let cstring = |s: &[u8]| CString::new(s).map_err(|_| SetupError::msg("prepare command", "NUL byte"));
        let argv = spec.argv.iter().map(|a| cstring(a.as_bytes())).collect::<Result<Vec<_>, _>>()?;
        if argv.is_empty() {
            return Err(SetupError::msg("prepare command", "empty argv"));
        }
        let mut env: Vec<CString> =
            spec.env.iter().map(|(k, v)| cstring(format!("{k}={v}").as_bytes())).collect::<Result<_, _>>()?;
        let has = |name: &str| spec.env.iter().any(|(k, _)| k == name);
        if !has("HOME") {
            env.push(cstring(format!("HOME={}", home.display()).as_bytes())?);
        }
        if !has("PATH") {
            env.push(cstring(format!("PATH={DEFAULT_PATH}").as_bytes())?);
        }
        let path =
            spec.env.iter().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str()).to_owned();
        Ok(Self {
            argv,
            env,
            path,
            cwd: spec.cwd.clone().unwrap_or_else(|| home.to_path_buf()),
            uid: Uid::from_raw(spec.user.uid),
            gid: Gid::from_raw(spec.user.gid),
            filters,
            last_cap,
        })
    }
}

/// The forked command process: never returns. On failure reports the step and its error on
/// `status` ([`Report::Exec`]).
pub(super) fn exec_command(plan: &CommandPlan, stdin: &OwnedFd, log: &OwnedFd, status: BorrowedFd<'_>) -> ! {
    let Err((what, e)) = prepare_and_exec(plan, stdin, log);
    let _ = Report::Exec(format!("{what}: {e}")).send(status);
    sys::exit_now(127)
}

type StepError = (&'static str, io::Error);

fn at(what: &'static str) -> impl FnOnce(io::Error) -> StepError {
    move |e| (what, e)
}

fn nix_at(what: &'static str) -> impl FnOnce(nix::Error) -> StepError {
    move |e| (what, e.into())
}

fn prepare_and_exec(
    plan: &CommandPlan,
    stdin: &OwnedFd,
    log: &OwnedFd,
) -> Result<std::convert::Infallible, StepError> {
    setsid().map_err(nix_at("setsid"))?;
    for (from, to) in [(stdin.as_raw_fd(), 0), (log.as_raw_fd(), 1), (log.as_raw_fd(), 2)] {
        // SAFETY: dup2 on fds we hold; it only replaces the target number.
        sys::cvt(unsafe { libc::dup2(from, to) }.into()).map_err(at("dup2"))?;
    }
    sys::reset_signals();
    if std::fs::read_to_string("/proc/self/oom_score_adj").is_ok_and(|v| v.trim() == "-1000") {
        std::fs::write("/proc/self/oom_score_adj", "0").map_err(at("reset oom_score_adj"))?;
    }
    sys::cloexec_from_3().map_err(at("close fds"))?;
    sys::drop_bounding_and_ambient(plan.last_cap).map_err(at("drop capabilities"))?;
    // SAFETY: setgroups with an empty list reads nothing.
    sys::cvt(unsafe { libc::setgroups(0, std::ptr::null()) }.into()).map_err(at("setgroups"))?;
    setresgid(plan.gid, plan.gid, plan.gid).map_err(nix_at("setgid"))?;
    setresuid(plan.uid, plan.uid, plan.uid).map_err(nix_at("setuid"))?;
    sys::clear_capabilities().map_err(at("drop capabilities"))?;
    std::env::set_current_dir(&plan.cwd).map_err(|e| ("chdir", e))?;
    sys::set_no_new_privs().map_err(at("no_new_privs"))?;
    for filter in &plan.filters {
        seccompiler::apply_filter(filter).map_err(|e| ("seccomp", io::Error::other(e.to_string())))?;
    }
    Err(("exec", execvpe(plan)))
}

/// `execvpe`: a name without a slash is searched in PATH; returns the most telling error.
fn execvpe(plan: &CommandPlan) -> io::Error {
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let name = plan.argv[0].as_bytes();
    let candidates: Vec<CString> = if name.contains(&b'/') {
        vec![plan.argv[0].clone()]
    } else {
        plan.path
            .split(':')
            .filter(|d| !d.is_empty())
            .filter_map(|d| {
                let mut full = d.as_bytes().to_vec();
                full.push(b'/');
                full.extend_from_slice(name);
                CString::new(full).ok()
            })
            .collect()
    };
    let mut best = io::Error::from_raw_os_error(libc::ENOENT);
    for candidate in &candidates {
        // SAFETY: argv and envp are NULL-terminated arrays of pointers into CStrings that outlive
        // the call; execve only returns on failure.
        unsafe { libc::execve(candidate.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) && e.raw_os_error() != Some(libc::ENOTDIR) {
            best = e;
        }
    }
    best
}
