//! Waiting for a sandbox's log to grow. Its writers (the process backend's init, runsc's processes)
//! send no event of their own; the kernel's is inotify on the sandbox's directory, which holds the
//! log files.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::Path;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::{LogChunk, LogsError, SandboxKey};

/// [`crate::Runtime::log_grown`] for a backend whose logs are files in `dir`: the watch is set up
/// before the log is read again, so a write in between is not missed.
pub(crate) async fn grown(
    key: &SandboxKey,
    dir: &Path,
    read_one_byte: impl Future<Output = Result<LogChunk, LogsError>>,
) -> Result<(), LogsError> {
    let watch = DirWatch::new(dir).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => LogsError::NotFound(key.clone()),
        _ => LogsError::Io { key: key.clone(), source },
    })?;
    if !read_one_byte.await?.data.is_empty() {
        return Ok(());
    }
    watch.changed().await.map_err(|source| LogsError::Io { key: key.clone(), source })
}

/// An inotify watch of one directory, readable through tokio.
pub(crate) struct DirWatch {
    fd: AsyncFd<Watched>,
}

/// `AsyncFd` wants `AsRawFd`; `Inotify` has `AsFd`.
struct Watched(Inotify);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl DirWatch {
    /// Watches `dir` for writes to, and new files in, it.
    pub(crate) fn new(dir: &Path) -> io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let events = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF;
        inotify.add_watch(dir, events)?;
        // SAFETY: `Watched` owns the inotify descriptor and closes it only when dropped, which the
        // `AsyncFd` does after deregistering it; `as_raw_fd` always returns that same descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(Watched(inotify), Interest::READABLE) };
        Ok(Self { fd: fd.map_err(|e| e.into_parts().1)? })
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
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_write_in_the_directory_wakes_the_watcher() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("log.0");
        std::fs::write(&file, b"a").expect("write");
        let watch = DirWatch::new(dir.path()).expect("watch");
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
}
