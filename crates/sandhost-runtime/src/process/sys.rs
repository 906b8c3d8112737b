//! Thin wrappers over the Linux system calls the process backend needs and that neither `std` nor
//! `nix` offers in the form we need (pidfds, `waitid(P_PIDFD)`, `mount_setattr`, capabilities),
//! each `unsafe` block with the reason it is sound. The other `unsafe` of the backend is the `clone3`
//! and its child (`spawn`), the command's last steps before `execve` (`init::command`), adopting
//! fds 3 and 4 and forking the command in the init (`init`), and waiting on a pidfd (`control`).
//! Outside the backend, `fswatch` registers its inotify fd with tokio.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Turns a `-1`-on-error return value into an `io::Result`.
pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// `pidfd_open(pid, 0)`: a pidfd naming the process that has `pid` now.
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1; nothing is borrowed.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_send_signal(pidfd, sig)`; `Ok(false)` if the process is already gone.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<bool> {
    // SAFETY: the fd is valid for the call (borrowed); a null siginfo is allowed; flags 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    match cvt(ret) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How a reaped child ended, from `waitid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChildStatus {
    /// `_exit(code)`.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// Reaps the child behind `pidfd` if it has exited (`WNOHANG` unless `block`). `Ok(None)` if it
/// still runs or is not our child (someone else reaps it).
pub(crate) fn waitid_pidfd(pidfd: BorrowedFd<'_>, block: bool) -> io::Result<Option<ChildStatus>> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | if block { 0 } else { libc::WNOHANG };
    let id =
        libc::id_t::try_from(pidfd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
    let ret = unsafe { libc::waitid(libc::P_PIDFD, id, &raw mut info, flags) };
    if ret < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ECHILD) { Ok(None) } else { Err(e) };
    }
    // SAFETY: waitid filled `info` (or left it zeroed under WNOHANG: si_pid 0).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if info.si_code == libc::CLD_EXITED {
        ChildStatus::Exited(status)
    } else {
        ChildStatus::Signaled(status)
    }))
}

/// `mount_setattr(AT_FDCWD, path, AT_RECURSIVE, {attr_set})`: sets mount attributes on a whole
/// mount tree at once (Linux 5.12).
pub(crate) fn mount_setattr_recursive(path: &CStr, attr_set: u64) -> io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr { attr_set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: `path` is NUL-terminated and `attr` lives across the call; the size matches the struct
    // (MOUNT_ATTR_SIZE_VER0).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    cvt(ret).map(drop)
}

/// Brings the loopback interface of the current network namespace up.
pub(crate) fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() takes integers and returns a new fd or -1.
    let sock = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into())?;
    // SAFETY: the fd was just returned to us; OwnedFd closes it.
    let sock = unsafe { OwnedFd::from_raw_fd(sock as RawFd) };
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags into `ifr`, which outlives the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut ifr) }.into())?;
    // SAFETY: the union's flags member was just filled in by the kernel.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS only reads `ifr`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const ifr) }.into())?;
    Ok(())
}

/// Sets or clears `FD_CLOEXEC` on `fd`.
pub(crate) fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on an integer fd; an invalid fd only yields EBADF.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }.into())?;
    let flags = if on {
        flags | libc::c_long::from(libc::FD_CLOEXEC)
    } else {
        flags & !libc::c_long::from(libc::FD_CLOEXEC)
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags as libc::c_int) }.into()).map(drop)
}

/// Duplicates `fd` to a new close-on-exec fd numbered at least `min`.
pub(crate) fn dup_cloexec_above(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a borrowed, valid fd returns a new fd or -1.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) }.into())?;
    // SAFETY: the new fd is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(new as RawFd) })
}

/// Takes ownership of an fd that was handed to this process at a known number (the init's status
/// pipe and state dir).
///
/// # Safety
///
/// `fd` must be open and not owned by anything else in this process.
pub(crate) unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: guaranteed by the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Drops every capability from the bounding set, clears the ambient set, and (after the uid change)
/// empties the permitted, effective and inheritable sets.
pub(crate) fn drop_bounding_and_ambient(last_cap: u32) -> io::Result<()> {
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments.
        let ret = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) }.into())
        .map(drop)
}

/// Empties the permitted, effective and inheritable capability sets of the calling thread.
pub(crate) fn clear_capabilities() -> io::Result<()> {
    set_capabilities(0)
}

/// Sets the calling thread's effective and permitted capability sets to `caps` (bits 0-31, the
/// first word of the kernel's sets; the second word empty), and nothing inheritable.
fn set_capabilities(caps: u32) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [
        Data { effective: caps, permitted: caps, inheritable: 0 },
        Data { effective: 0, permitted: 0, inheritable: 0 },
    ];
    // SAFETY: header and data (two elements, as version 3 requires) live across the call.
    cvt(unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) }).map(drop)
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
pub(crate) fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }.into()).map(drop)
}

/// `prctl(PR_SET_DUMPABLE, 0)`.
pub(crate) fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    cvt(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }.into()).map(drop)
}

/// Marks every fd from 3 up close-on-exec.
pub(crate) fn cloexec_from_3() -> io::Result<()> {
    // SAFETY: close_range with integer arguments; CLOSE_RANGE_CLOEXEC closes nothing now.
    cvt(unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) }.into())
        .map(drop)
}

/// Closes every fd from `first` up (fds the init did not ask for).
pub(crate) fn close_from(first: u32) {
    // SAFETY: close_range with integer arguments; the caller owns no fd in that range.
    unsafe { libc::close_range(first, libc::c_uint::MAX, 0) };
}

/// Keeps only `CAP_KILL` (to signal the command, which runs as another user) in the effective and
/// permitted sets of the calling thread, and nothing inheritable.
pub(crate) fn keep_only_cap_kill() -> io::Result<()> {
    const CAP_KILL: u32 = 5;
    set_capabilities(1 << CAP_KILL)
}

/// Resets every catchable signal to its default action and unblocks all signals.
pub(crate) fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: setting SIG_DFL installs no handler code; invalid numbers only yield EINVAL.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised set; sigprocmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const set, std::ptr::null_mut());
    }
}

/// `_exit(code)`: leaves without running destructors or atexit handlers (a forked child).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no process state of ours.
    unsafe { libc::_exit(code) }
}
