//! What `/proc` says of a process, for both backends: when it started (the kernel's count of
//! clock ticks since boot, which with the pid names one process even after the pid is reused),
//! and that time on the wall clock.

use std::fs;
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Field 22 of `/proc/<pid>/stat`: when the process started, in clock ticks since boot.
///
/// # Errors
///
/// The process is gone, or its stat cannot be read.
pub(crate) fn start_ticks(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces and parentheses: fields 3.. follow the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| io::Error::other("malformed stat"))?;
    rest.split_whitespace()
        .nth(22 - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("malformed stat"))
}

/// When process `pid` started, on the wall clock (to the clock tick); `None` if it is gone.
pub(crate) fn started_at(pid: i32) -> Option<SystemTime> {
    let ticks = start_ticks(pid).ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten()?;
    let per_second = u64::try_from(per_second).ok().filter(|t| *t > 0)?;
    let boot = fs::read_to_string("/proc/stat").ok()?;
    let boot_secs: u64 = boot.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    let since_boot = Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second);
    Some(UNIX_EPOCH + Duration::from_secs(boot_secs) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_started_a_moment_ago() {
        let me = i32::try_from(std::process::id()).expect("pid");
        let started = started_at(me).expect("started");
        let age = SystemTime::now().duration_since(started).expect("in the past");
        // btime is whole seconds: allow for it, and for a slow machine.
        assert!(age < Duration::from_secs(3600), "{age:?}");
        assert!(started_at(i32::MAX).is_none());
    }
}
