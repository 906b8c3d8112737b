//! The in-sandbox init: pid 1 of every sandbox is the sandhost binary, re-executed through
//! `init_exe` with the hidden subcommand [`INIT_SUBCOMMAND`] (the binary calls [`init_main`]).
//!
//! Its command line is `sandhost-init __init` ([`INIT_ARGV0`]) and its environment empty: any
//! process of the sandbox can read `/proc/1/cmdline`, so no host path is on it. What it needs (where
//! to build the root, the state dir to hide, the log bound, the host template's allow list) comes
//! as [`InitArgs`] in a memfd ([`INIT_ARGS_FD`]), read and closed first. Re-adoption never reads
//! the command line (an init is known by its pid and start time, `files::InitRecord`).
//!
//! It runs single-threaded, as root in the sandbox's fresh namespaces and cgroup, and:
//! 1. reads its arguments, brings loopback up and builds the template's filesystem (`mounts`), then
//!    `pivot_root`s: nothing of this depends on the request. A warm pool member
//!    (`InitArgs::wait_for_claim`) then says it is ready and blocks on its claim pipe
//!    ([`CLAIM_FD`]) until the agent claims it (or lets it go: end of file, and it exits); a cold
//!    start goes straight on. Both read the spec through the state dir fd they were handed
//!    ([`STATE_DIR_FD`], close-on-exec; the agent wrote it there before the claim), check that it
//!    names the template built, name the host, size the private tmpfs and hand the home to the
//!    command's user;
//! 2. forks the command (`command`), which drops every privilege and execs; a failure up to the
//!    exec is reported on the status pipe ([`STATUS_FD`]), whose closing tells `start` it ran;
//! 3. stays as the reaper: forwards SIGTERM, SIGINT, SIGHUP, SIGUSR1 and SIGUSR2 to the command,
//!    reaps every orphan, copies the command's output into the bounded log and dates it (its time
//!    index, `crate::log_index`: the poll wakes when an entry falls due), and when the command
//!    exits writes `exit.json` atomically (`crate::state_file::write_at_unsynced`, through the dir fd) and
//!    exits, which makes the kernel kill whatever is left in the pid namespace.

mod command;
mod mounts;

pub(crate) use mounts::HOME;

use std::ffi::OsString;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::{OFlag, openat};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2, read, sethostname};

use super::logs::LogWriter;
use super::spawn::{CLAIM_FD, INIT_ARGS_FD, STATE_DIR_FD};
use super::status_pipe::{self, Report, STATUS_FD};
use super::{files, sys};
use crate::{Exit, HostPaths, SandboxSpec, Template, log_index};

/// The hidden subcommand of the sandhost binary that runs the init: `sandhost-init __init`.
pub const INIT_SUBCOMMAND: &str = "__init";
/// The init's `argv[0]`: what the sandbox sees of it instead of the binary's host path.
pub const INIT_ARGV0: &str = "sandhost-init";

const FORWARDED: [Signal; 5] =
    [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2];

/// A failed setup step of the init.
#[derive(Debug)]
pub(crate) struct SetupError {
    step: &'static str,
    message: String,
}

impl SetupError {
    #[allow(clippy::needless_pass_by_value)] // it reads better at the call sites (`map_err`)
    fn new(step: &'static str, e: io::Error) -> Self {
        Self { step, message: e.to_string() }
    }

    fn msg(step: &'static str, message: &str) -> Self {
        Self { step, message: message.to_owned() }
    }
}

/// What `start` hands the init, in a memfd ([`INIT_ARGS_FD`]) rather than on its command line.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct InitArgs {
    /// Where to mount the sandbox's root (an empty dir in its state dir).
    pub(crate) new_root: PathBuf,
    /// The runtime's state dir, hidden inside the sandbox.
    pub(crate) state_dir: PathBuf,
    /// The bound of the log.
    pub(crate) log_limit: u64,
    /// What the `host` template shows of the host.
    pub(crate) host_paths: HostPaths,
    /// The root to build: the spec's own must be the same.
    pub(crate) template: Template,
    /// A warm pool member: once the root is built, say so on the status pipe
    /// (`status_pipe::READY`) and wait on [`CLAIM_FD`] for the claim before reading the spec.
    pub(crate) wait_for_claim: bool,
}

impl InitArgs {
    /// A memfd holding the arguments, its offset at their start.
    ///
    /// # Errors
    ///
    /// The failed `memfd_create` or write.
    pub(crate) fn to_memfd(&self) -> io::Result<OwnedFd> {
        let bytes = serde_json::to_vec(self).map_err(io::Error::other)?;
        let fd =
            nix::sys::memfd::memfd_create(c"sandhost-init-args", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(&bytes)?;
        file.rewind()?;
        Ok(file.into())
    }

    /// Reads the arguments from `fd` (and closes it).
    fn read_from(fd: OwnedFd) -> Result<Self, String> {
        let mut bytes = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}

/// Runs the init; `args` are the arguments after [`INIT_SUBCOMMAND`] (none: they come in
/// [`INIT_ARGS_FD`]). Never returns.
///
/// Only meaningful when started by the process runtime (which hands it fds 3, 4 and 5).
pub fn init_main(args: &[OsString]) -> ! {
    // Nothing but fds 0-6 was meant for us (the agent's other fds are close-on-exec anyway).
    sys::close_from(7);
    // SAFETY: fds 3, 4 and 5 were set up by `spawn` for this process and nothing else owns them.
    let (status, dir, init_args) =
        unsafe { (sys::adopt_fd(STATUS_FD), sys::adopt_fd(STATE_DIR_FD), sys::adopt_fd(INIT_ARGS_FD)) };
    let code = match run(args.is_empty(), init_args, status, &dir) {
        Ok(code) => code,
        Err((status, e)) => {
            eprintln!("sandhost init: {}: {}", e.step, e.message);
            if let Some(status) = status {
                let _ = Report::Setup(format!("{}: {}", e.step, e.message)).send(status.as_fd());
            }
            125
        }
    };
    sys::exit_now(code)
}

type RunError = (Option<OwnedFd>, SetupError);

fn run(no_args: bool, init_args: OwnedFd, status: OwnedFd, dir: &OwnedFd) -> Result<i32, RunError> {
    for fd in [status.as_raw_fd(), dir.as_raw_fd(), init_args.as_raw_fd()] {
        if let Err(e) = sys::set_cloexec(fd, true) {
            return Err((Some(status), SetupError::new("fds", e)));
        }
    }
    if !no_args {
        return Err((Some(status), SetupError::msg("arguments", "usage: sandhost-init __init")));
    }
    let args = match InitArgs::read_from(init_args) {
        Ok(args) => args,
        Err(e) => return Err((Some(status), SetupError::msg("arguments", &e))),
    };
    // The claim pipe is there only for a pool member; a cold start has nothing at fd 6.
    let claim = if args.wait_for_claim {
        // SAFETY: `spawn` set up fd 6 for a member and nothing else owns it.
        let claim = unsafe { sys::adopt_fd(CLAIM_FD) };
        if let Err(e) = sys::set_cloexec(claim.as_raw_fd(), true) {
            return Err((Some(status), SetupError::new("fds", e)));
        }
        Some(claim)
    } else {
        sys::close_from(6);
        None
    };
    let (home, supervision) = match prepare(&args, dir.as_fd()) {
        Ok(prepared) => prepared,
        Err(e) => return Err((Some(status), e)),
    };
    if let Some(claim) = claim {
        if let Err(e) = status_pipe::send_ready(status.as_fd()) {
            return Err((Some(status), SetupError::new("report ready", e)));
        }
        if !wait_for_claim(&claim) {
            // The member was destroyed (or its agent died) before any claim: nothing ran.
            sys::exit_now(0);
        }
    }
    match continue_with_request(&args, &home, dir.as_fd()) {
        Ok(spec) => supervise(&spec, &home, status, dir.as_fd(), supervision),
        Err(e) => Err((Some(status), e)),
    }
}

/// Everything that does not depend on the request: the init's OOM score, loopback, the root of
/// the template, what supervising the command needs. A cold start continues at once; a pool
/// member waits for its claim after this.
fn prepare<'a>(args: &InitArgs, dir: BorrowedFd<'a>) -> Result<(PathBuf, Supervision<'a>), SetupError> {
    // The init should outlive its command under memory pressure (the command resets this). Without
    // CAP_SYS_RESOURCE this fails; the OOM killer still picks the larger command first.
    let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
    sys::loopback_up().map_err(|e| SetupError::new("loopback up", e))?;
    let home = mounts::build_root(&args.template, args)?;
    Ok((home, Supervision::prepare(dir, args.log_limit)?))
}

/// Blocks until the agent claims this member (one byte) or lets it go (end of file: the agent
/// closed its end, or died). Whatever else is read is a release too.
fn wait_for_claim(claim: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match read(claim, &mut byte) {
            Ok(1) => return byte[0] == status_pipe::CLAIM_BYTE,
            Err(nix::errno::Errno::EINTR) => {}
            _ => return false,
        }
    }
}

/// The request's part, the same for a cold start and a claimed member: the spec (written by the
/// agent into the state dir, which is now the sandbox's), checked against the root that was
/// built, then the hostname and what the request decides of the filesystem.
fn continue_with_request(
    args: &InitArgs,
    home: &std::path::Path,
    dir: BorrowedFd<'_>,
) -> Result<SandboxSpec, SetupError> {
    let spec_fd =
        openat(dir, files::SPEC, OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(|e| SetupError::new("read spec", e.into()))?;
    let mut bytes = Vec::with_capacity(4096);
    std::io::Read::read_to_end(&mut std::fs::File::from(spec_fd), &mut bytes)
        .map_err(|e| SetupError::new("read spec", e))?;
    let spec: SandboxSpec =
        crate::state_file::decode(&bytes).map_err(|reason| SetupError::msg("read spec", &reason))?;
    if spec.template != args.template {
        return Err(SetupError::msg("read spec", "the spec's template is not the one built"));
    }
    sethostname(spec.key.id.as_str()).map_err(|e| SetupError::new("sethostname", e.into()))?;
    mounts::apply_request(&spec, home)?;
    Ok(spec)
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(63)
}

/// Forks the command and supervises it until it exits.
/// What the init makes for the command before it knows the request: the seccomp filters, the
/// log and its pipe, stdin, the signals it forwards. A pool member has all of it ready when it
/// is claimed.
struct Supervision<'a> {
    filters: Vec<seccompiler::BpfProgram>,
    last_cap: u32,
    log: LogWriter<'a>,
    log_r: OwnedFd,
    log_w: OwnedFd,
    stdin: OwnedFd,
    sigfd: SignalFd,
}

impl<'a> Supervision<'a> {
    fn prepare(dir: BorrowedFd<'a>, log_limit: u64) -> Result<Self, SetupError> {
        let filters = super::seccomp::default_filters().map_err(|m| SetupError::msg("seccomp", &m))?;
        let log = LogWriter::create(dir, log_limit).map_err(|e| SetupError::new("create log", e))?;
        let (log_r, log_w) = pipe2(OFlag::O_CLOEXEC).map_err(|e| SetupError::new("log pipe", e.into()))?;
        let stdin = nix::fcntl::open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| SetupError::new("open /dev/null", e.into()))?;
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGCHLD);
        for sig in FORWARDED {
            signals.add(sig);
        }
        signals.thread_block().map_err(|e| SetupError::new("block signals", e.into()))?;
        let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|e| SetupError::new("signalfd", e.into()))?;
        Ok(Self { filters, last_cap: last_cap(), log, log_r, log_w, stdin, sigfd })
    }
}

/// Forks the command and supervises it until it exits.
fn supervise(
    spec: &SandboxSpec,
    home: &std::path::Path,
    status: OwnedFd,
    dir: BorrowedFd<'_>,
    ready: Supervision<'_>,
) -> Result<i32, RunError> {
    let Supervision { filters, last_cap, mut log, log_r, log_w, stdin, sigfd } = ready;
    let plan = match command::CommandPlan::new(spec, home, last_cap, filters) {
        Ok(plan) => plan,
        Err(e) => return Err((Some(status), e)),
    };
    // SAFETY: this process is single-threaded (the init never starts threads), so the child may
    // run arbitrary code until it execs.
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => command::exec_command(&plan, &stdin, &log_w, status.as_fd()),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => return Err((Some(status), SetupError::new("fork command", e.into()))),
    };
    // The command (until it execs) holds the only other copies of these.
    drop((status, log_w, stdin));
    // From here on the init only signals, reaps and writes through fds it holds: it keeps nothing
    // but CAP_KILL (the command runs as another user).
    if let Err(e) = sys::keep_only_cap_kill() {
        eprintln!("sandhost init: dropping capabilities: {e}");
    }
    // Not dumpable: /proc/1 of the sandbox belongs to root and cannot be inspected by the command.
    if let Err(e) = sys::set_not_dumpable() {
        eprintln!("sandhost init: PR_SET_DUMPABLE: {e}");
    }
    let exit = reap_until(child, &sigfd, &log_r, &mut log);
    record_exit(dir, exit).map_err(|e| (None, SetupError::new("record exit", e)))?;
    Ok(exit.as_shell_code())
}

/// Forwards signals, reaps orphans and copies the log until `child` exits. The log's time index
/// may want an entry a while after the log grew: the poll then wakes at that time.
fn reap_until(child: Pid, sigfd: &SignalFd, log_r: &OwnedFd, log: &mut LogWriter<'_>) -> Exit {
    let mut buf = vec![0u8; 64 * 1024];
    let mut log_open = true;
    loop {
        let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        if log_open {
            fds.push(PollFd::new(log_r.as_fd(), PollFlags::POLLIN));
        }
        let now = log_index::now_ms();
        let timeout = log.due_at(now).map_or(PollTimeout::NONE, |at| {
            PollTimeout::try_from(at.saturating_sub(now)).unwrap_or(PollTimeout::MAX)
        });
        let polled = poll(&mut fds, timeout);
        log.date(log_index::now_ms());
        if polled.is_err() {
            continue; // EINTR
        }
        let log_ready = log_open && fds[1].revents().is_some_and(|r| !r.is_empty());
        if log_ready {
            match read(log_r, &mut buf) {
                Ok(0) => log_open = false,
                Ok(n) => {
                    let _ = log.write(&buf[..n]);
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => log_open = false,
            }
        }
        while let Ok(Some(info)) = sigfd.read_signal() {
            let signo = i32::try_from(info.ssi_signo).unwrap_or(0);
            if signo == libc::SIGCHLD {
                continue;
            }
            if let Ok(sig) = Signal::try_from(signo) {
                let _ = kill(child, sig);
            }
        }
        if let Some(exit) = reap_all(child) {
            drain(log_r, log, &mut buf);
            return exit;
        }
    }
}

/// Reaps every exited child; returns the command's exit if it was among them.
fn reap_all(child: Pid) -> Option<Exit> {
    let mut exit = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == child => exit = Some(Exit::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => exit = Some(Exit::Signal(sig as i32)),
            Ok(WaitStatus::StillAlive) | Err(_) => return exit,
            Ok(_) => {}
        }
    }
}

/// Copies what is still buffered in the pipe (without waiting for writers that outlived the command).
fn drain(log_r: &OwnedFd, log: &mut LogWriter<'_>, buf: &mut [u8]) {
    let _ = nix::fcntl::fcntl(log_r, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    while let Ok(n) = read(log_r, buf) {
        if n == 0 {
            break;
        }
        let _ = log.write(&buf[..n]);
    }
}

/// Not synced here: the agent has it synced once it sees the init end (`crate::durable`), so the
/// sandbox's end does not wait for the disk.
fn record_exit(dir: BorrowedFd<'_>, exit: Exit) -> io::Result<()> {
    crate::state_file::write_at_unsynced(dir, files::EXIT, &exit)
}
