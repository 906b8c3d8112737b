//! Starting a sandbox's init from the (multi-threaded) agent: one `clone3` into new pid, mount,
//! ipc, uts and network namespaces, returning a pidfd; the child only makes async-signal-safe system
//! calls (write, setsid, dup2, execve) on values prepared before the clone, then execs the init.
//!
//! Fds handed to the init: 0 and 1 are `/dev/null`, 2 its diagnostics file, 3 the status pipe
//! ([`STATUS_FD`], see `status_pipe`), 4 the sandbox's state dir ([`STATE_DIR_FD`]), 5 its
//! arguments ([`INIT_ARGS_FD`], `init::InitArgs`), and for a warm pool member 6 its claim pipe
//! ([`CLAIM_FD`]). Everything else the agent holds is
//! close-on-exec. Its environment is empty.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::status_pipe::{self, STATUS_FD, Tag};
use super::sys;

/// The init's fd of the sandbox's state dir.
pub(crate) const STATE_DIR_FD: RawFd = 4;
/// The init's fd of its arguments (a memfd): its command line shows no host path.
pub(crate) const INIT_ARGS_FD: RawFd = 5;

/// A warm pool member's fd of its claim pipe (`init`'s wait for a claim); a cold start has none.
pub(crate) const CLAIM_FD: RawFd = 6;

/// `CLONE_INTO_CGROUP` (Linux 5.7; libc's constant has the wrong width).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Everything the child needs, prepared before the clone so that it allocates nothing.
#[derive(Debug)]
pub(crate) struct InitPlan {
    /// The init executable.
    pub(crate) exe: CString,
    /// Its argv (which the sandbox can read: no host path).
    pub(crate) argv: Vec<CString>,
    /// The v2 cgroup directory, if the sandbox has one: the child is cloned straight into it
    /// (`CLONE_INTO_CGROUP`, no migration), and then `cgroup_procs[0]` (its `cgroup.procs`) is not
    /// written. Kernels without `CLONE_INTO_CGROUP` fall back to writing it.
    pub(crate) cgroup_v2_dir: Option<OwnedFd>,
    /// `cgroup.procs` of each hierarchy (v2 first), opened for writing: the child writes "0" to each, moving
    /// itself into the sandbox's cgroups before it runs any code of the init.
    pub(crate) cgroup_procs: Vec<OwnedFd>,
    /// `/dev/null`.
    pub(crate) dev_null: OwnedFd,
    /// The init's diagnostics file.
    pub(crate) init_log: OwnedFd,
    /// The write end of the status pipe.
    pub(crate) status: OwnedFd,
    /// The sandbox's state dir.
    pub(crate) state_dir: OwnedFd,
    /// The init's arguments.
    pub(crate) args: OwnedFd,
    /// The read end of a pool member's claim pipe ([`CLAIM_FD`]).
    pub(crate) claim: Option<OwnedFd>,
}

/// The init, as seen from the agent.
#[derive(Debug)]
pub(crate) struct SpawnedInit {
    /// Its pid in the agent's pid namespace.
    pub(crate) pid: i32,
    /// A pidfd naming it.
    pub(crate) pidfd: OwnedFd,
}

/// Clones the init into its namespaces and execs it.
///
/// # Errors
///
/// The `clone3` error (the child's own failures arrive on the status pipe).
pub(crate) fn spawn_init(plan: InitPlan) -> io::Result<SpawnedInit> {
    // Move every fd the child will dup2 above the target numbers, so that no dup2 clobbers a source.
    let cgroup_procs = plan
        .cgroup_procs
        .iter()
        .map(|fd| sys::dup_cloexec_above(fd.as_fd(), 10))
        .collect::<io::Result<Vec<_>>>()?;
    let dev_null = sys::dup_cloexec_above(plan.dev_null.as_fd(), 10)?;
    let init_log = sys::dup_cloexec_above(plan.init_log.as_fd(), 10)?;
    let status = sys::dup_cloexec_above(plan.status.as_fd(), 10)?;
    let state_dir = sys::dup_cloexec_above(plan.state_dir.as_fd(), 10)?;
    let args = sys::dup_cloexec_above(plan.args.as_fd(), 10)?;
    let claim = plan.claim.as_ref().map(|fd| sys::dup_cloexec_above(fd.as_fd(), 10)).transpose()?;
    drop(plan.status);

    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let procs: Vec<RawFd> = cgroup_procs.iter().map(AsRawFd::as_raw_fd).collect();
    let fds = |into_cgroup: bool| ChildFds {
        procs: if into_cgroup { procs.get(1..).unwrap_or_default() } else { &procs },
        dev_null: dev_null.as_raw_fd(),
        init_log: init_log.as_raw_fd(),
        status: status.as_raw_fd(),
        state_dir: state_dir.as_raw_fd(),
        args: args.as_raw_fd(),
        claim: claim.as_ref().map(AsRawFd::as_raw_fd),
    };
    let (with_cgroup, without_cgroup) = (fds(true), fds(false));

    let mut into_cgroup = plan.cgroup_v2_dir.as_ref().map(AsRawFd::as_raw_fd);
    let mut pidfd: libc::c_int = -1;
    let ret = loop {
        // SAFETY: clone_args is plain data; all-zero is the documented "no options" value.
        let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
        args.flags = (libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWNET
            | libc::CLONE_PIDFD) as u64;
        if let Some(dir) = into_cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir as u64;
        }
        args.pidfd = (&raw mut pidfd) as u64;
        args.exit_signal = libc::SIGCHLD as u64;
        // SAFETY: clone3 without CLONE_VM and with a zero stack behaves like fork: the child gets
        // a copy of this thread's address space. In the child we run only `child_exec`, which makes
        // raw, async-signal-safe system calls on memory prepared above and never returns.
        let ret = unsafe {
            libc::syscall(libc::SYS_clone3, &raw mut args, std::mem::size_of::<libc::clone_args>())
        };
        if ret == 0 {
            let child = if into_cgroup.is_some() { &with_cgroup } else { &without_cgroup };
            // SAFETY: we are the freshly cloned child; see above.
            unsafe { child_exec(child, plan.exe.as_ptr(), argv.as_ptr(), envp.as_ptr()) }
        }
        let errno = io::Error::last_os_error().raw_os_error();
        let unsupported = matches!(errno, Some(libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP));
        if ret < 0 && into_cgroup.is_some() && unsupported {
            into_cgroup = None; // a kernel before 5.7: join by writing cgroup.procs instead
            continue;
        }
        break ret;
    };
    let pid = sys::cvt(ret)?;
    // SAFETY: with CLONE_PIDFD the kernel stored a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    Ok(SpawnedInit { pid, pidfd })
}

struct ChildFds<'a> {
    procs: &'a [RawFd],
    dev_null: RawFd,
    init_log: RawFd,
    status: RawFd,
    state_dir: RawFd,
    args: RawFd,
    claim: Option<RawFd>,
}

/// Reports the failed step (`tag`) and `errno` on the status pipe, then `_exit`s.
///
/// # Safety
///
/// Only in the cloned child: async-signal-safe calls only.
unsafe fn child_fail(status: RawFd, tag: Tag) -> ! {
    // SAFETY: errno location is thread-local and valid in the child's (copied) thread.
    let errno = unsafe { *libc::__errno_location() };
    let msg = status_pipe::errno_report(tag, errno);
    // SAFETY: write from a stack buffer; _exit never returns.
    unsafe {
        libc::write(status, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The cloned child: join the cgroups, leave the agent's session, set up fds 0-5, exec the init.
///
/// # Safety
///
/// Only in the cloned child; every pointer must be valid (they point into the parent's prepared,
/// copied memory).
unsafe fn child_exec(
    fds: &ChildFds<'_>,
    exe: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> ! {
    // SAFETY: plain system calls on fds and buffers that are valid in this copy of the address space.
    unsafe {
        for &fd in fds.procs {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                child_fail(fds.status, Tag::CgroupJoin);
            }
        }
        libc::setsid();
        // dup2 clears FD_CLOEXEC on the targets; every other fd stays close-on-exec.
        let pairs = [
            (fds.dev_null, 0),
            (fds.dev_null, 1),
            (fds.init_log, 2),
            (fds.status, STATUS_FD),
            (fds.state_dir, STATE_DIR_FD),
            (fds.args, INIT_ARGS_FD),
        ];
        for (from, to) in pairs {
            if libc::dup2(from, to) < 0 {
                child_fail(fds.status, Tag::InitExec);
            }
        }
        if let Some(claim) = fds.claim
            && libc::dup2(claim, CLAIM_FD) < 0
        {
            child_fail(STATUS_FD, Tag::InitExec);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
        libc::execve(exe, argv, envp);
        child_fail(STATUS_FD, Tag::InitExec)
    }
}
