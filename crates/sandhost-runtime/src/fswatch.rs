//! Waiting on the file system instead of polling it, with inotify: for a sandbox's log to grow (its
//! writers, the process backend's init or runsc's processes, send no event of their own; the
//! sandbox's directory holding the log files does), and for a v2 cgroup's `cgroup.events` to say
//! what a caller waits for (frozen, empty), which the kernel notifies as a modification.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::{LogChunk, LogsError, SandboxKey};

/// [`crate::Runtime::log_grown`] for a backend whose logs are files in `dir`: the watch is set up
/// before the log is read again, so a write in between is not missed.
pub(crate) async fn log_grown(
    key: &SandboxKey,
    dir: &Path,
    read_one_byte: impl Future<Output = Result<LogChunk, LogsError>>,
) -> Result<(), LogsError> {
    let watch = FsWatch::new(dir).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => LogsError::NotFound(key.clone()),
        _ => LogsError::Io { key: key.clone(), source },
    })?;
    if !read_one_byte.await?.data.is_empty() {
        return Ok(());
    }
    watch.changed().await.map_err(|source| LogsError::Io { key: key.clone(), source })
}

/// Waits, within `limit`, until `done()` holds, checking it again at each modification of `file`
/// (a v2 `cgroup.events`). `Ok(false)` when the limit passed; an error if `file` cannot be
/// watched (then the caller must check at an interval).
pub(crate) async fn until(file: &Path, limit: Duration, done: impl Fn() -> bool) -> io::Result<bool> {
    let watch = FsWatch::new(file)?;
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(changed) => changed?,
            Err(_elapsed) => return Ok(done()),
        }
    }
    Ok(true)
}

/// An inotify watch of one directory or file, readable through tokio.
pub(crate) struct FsWatch {
    fd: AsyncFd<Watched>,
}

/// `AsyncFd` wants `AsRawFd`; `Inotify` has `AsFd`.
struct Watched(Inotify);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl FsWatch {
    /// Watches `path`: writes to it (a file) or to its files and new files in it (a directory).
    pub(crate) fn new(path: &Path) -> io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let events = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF;
        inotify.add_watch(path, events)?;
        // SAFETY: `Watched` owns the inotify descriptor and closes it only when dropped, which the
        // `AsyncFd` does after deregistering it; `as_raw_fd` always returns that same descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(Watched(inotify), Interest::READABLE) };
        Ok(Self { fd: fd.map_err(|e| e.into_parts().1)? })
    }

    /// Waits for a change to a file of the watched directory whose name contains `part` (or for an
    /// overflow of the event queue, which may have hidden one).
    pub(crate) async fn changed_named(&self, part: &str) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let Ok(events) = ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) else {
                continue; // would block
            };
            let matched = events?.iter().any(|event| {
                event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW)
                    || event.name.as_ref().is_some_and(|name| name.to_string_lossy().contains(part))
            });
            if matched {
                return Ok(());
            }
        }
    }

    /// Waits for the next change (spurious ones are possible: a trim of the log is one).
    pub(crate) async fn changed(&self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from)) {
                Ok(result) => return result.map(drop),
                Err(_would_block) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_in_the_directory_wakes_the_watcher() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("log.0");
        std::fs::write(&file, b"a").expect("write");
        let watch = FsWatch::new(dir.path()).expect("watch");
        let waiter = tokio::spawn(async move { watch.changed().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "woke without a change");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"b"))
            .expect("append");
        tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("hang guard")
            .expect("join")
            .expect("event");
    }

    #[tokio::test]
    async fn a_named_wait_wakes_only_for_files_whose_name_holds_the_part() {
        let dir = tempfile::tempdir().expect("dir");
        let watch = FsWatch::new(dir.path()).expect("watch");
        let root = dir.path().to_path_buf();
        let waiter = tokio::spawn(async move { watch.changed_named("box.ab.0").await });
        std::fs::write(root.join("other.cd.0_sandbox:other.cd.0.state"), b"{}").expect("write");
        // The other container's event is read and passed over: the waiter still waits.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "woke for another container's file");
        std::fs::write(root.join("box.ab.0_sandbox:box.ab.0.state"), b"{}").expect("write");
        tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("hang guard")
            .expect("join")
            .expect("event");
    }

    #[tokio::test]
    async fn until_checks_again_at_each_change_of_the_file_and_gives_up_at_the_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("cgroup.events");
        std::fs::write(&file, "frozen 0\n").expect("write");
        let said = |f: &Path| std::fs::read_to_string(f).is_ok_and(|t| t.contains("frozen 1"));
        let watched = file.clone();
        let waiter =
            tokio::spawn(async move { until(&watched, Duration::from_secs(60), || said(&watched)).await });
        tokio::task::yield_now().await;
        std::fs::write(&file, "frozen 1\n").expect("write");
        let done = tokio::time::timeout(Duration::from_secs(60), waiter).await.expect("hang guard");
        assert!(done.expect("join").expect("watch"));
        std::fs::write(&file, "frozen 0\n").expect("write");
        assert!(!until(&file, Duration::from_millis(50), || said(&file)).await.expect("watch"));
        assert!(until(&dir.path().join("missing"), Duration::from_millis(50), || true).await.is_err());
    }
}
