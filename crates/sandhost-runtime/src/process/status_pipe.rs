//! The status pipe, from a starting sandbox to the agent: how `start` learns that the command runs,
//! or which step failed and why.
//!
//! The agent keeps the read end ([`StatusReader`]); the init gets the write end as fd [`STATUS_FD`],
//! close-on-exec in the init and in the command, so the last copy closes with the command's
//! `execve`. Whoever fails writes one [`Report`] and exits:
//! - the clone child (`spawn`), before the init runs: [`Report::CgroupJoin`] or
//!   [`Report::InitExec`] with the errno, encoded by [`errno_report`] without allocating (the child
//!   may only make async-signal-safe calls);
//! - the init (`init`): [`Report::Setup`], the step and the error as text;
//! - the command's process, up to its `execve` (`init::command`): [`Report::Exec`], likewise.
//!
//! # Protocol
//!
//! A warm pool member's init first writes [`READY`] alone once its root is built, then waits for
//! its claim ([`CLAIM_BYTE`] on its claim pipe); from there on the pipe is a cold start's.
//!
//! End of file with nothing read means the command runs. Anything read is one report: a [`Tag`]
//! byte, then the errno as 4 bytes little-endian ([`Tag::CgroupJoin`], [`Tag::InitExec`]) or text
//! to the end ([`Tag::Setup`], [`Tag::Exec`]; invalid UTF-8 is replaced, never refused). Anything
//! else is a [`MalformedReport`]. Encoding and decoding live here only.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use tokio::io::AsyncReadExt;

/// The init's (and the command's) number of the write end.
pub(crate) const STATUS_FD: RawFd = 3;

/// What a pool member's init writes once it is ready to be claimed; never the first byte of a
/// [`Report`].
pub(crate) const READY: u8 = b'R';
/// What the agent writes on a member's claim pipe to claim it.
pub(crate) const CLAIM_BYTE: u8 = b'G';

/// Tells the agent that this member is ready to be claimed.
///
/// # Errors
///
/// The failed `write`.
pub(crate) fn send_ready(status: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match nix::unistd::write(status, &[READY]) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The length of a report that carries an errno: the tag and 4 bytes.
pub(crate) const ERRNO_REPORT_LEN: usize = 5;

/// The first byte of a report: which step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Tag {
    /// The clone child could not join the sandbox's cgroups; an errno follows.
    CgroupJoin = b'C',
    /// The clone child could not set up the init's fds or exec it; an errno follows.
    InitExec = b'I',
    /// A setup step of the init failed; text follows.
    Setup = b'S',
    /// The command could not be run; text follows.
    Exec = b'X',
}

impl Tag {
    fn from_byte(byte: u8) -> Option<Self> {
        [Self::CgroupJoin, Self::InitExec, Self::Setup, Self::Exec].into_iter().find(|tag| *tag as u8 == byte)
    }
}

/// A failure a starting sandbox reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// Writing `cgroup.procs` failed with this errno.
    CgroupJoin(i32),
    /// A `dup2` or the `execve` of the init failed with this errno.
    InitExec(i32),
    /// `"<step>: <error>"` of the init's setup.
    Setup(String),
    /// `"<step>: <error>"` of the command's last steps (privileges, cwd, seccomp, `execve`).
    Exec(String),
}

/// Bytes on the status pipe that are no [`Report`].
#[derive(Debug, thiserror::Error)]
#[error("malformed report on the status pipe: {:?}", String::from_utf8_lossy(.bytes))]
pub(crate) struct MalformedReport {
    /// What was read.
    pub(crate) bytes: Vec<u8>,
}

/// A report with an errno, built without allocating: for the clone child. `tag` is
/// [`Tag::CgroupJoin`] or [`Tag::InitExec`] (the decoder reads other tags' payload as text).
pub(crate) const fn errno_report(tag: Tag, errno: i32) -> [u8; ERRNO_REPORT_LEN] {
    let errno = errno.to_le_bytes();
    [tag as u8, errno[0], errno[1], errno[2], errno[3]]
}

impl Report {
    fn tag(&self) -> Tag {
        match self {
            Self::CgroupJoin(_) => Tag::CgroupJoin,
            Self::InitExec(_) => Tag::InitExec,
            Self::Setup(_) => Tag::Setup,
            Self::Exec(_) => Tag::Exec,
        }
    }

    /// The bytes of this report on the pipe.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match self {
            Self::CgroupJoin(errno) | Self::InitExec(errno) => errno_report(self.tag(), *errno).to_vec(),
            Self::Setup(text) | Self::Exec(text) => {
                let mut bytes = Vec::with_capacity(1 + text.len());
                bytes.push(self.tag() as u8);
                bytes.extend_from_slice(text.as_bytes());
                bytes
            }
        }
    }

    /// The report in `bytes` (everything read from the pipe).
    ///
    /// # Errors
    ///
    /// A [`MalformedReport`] for an empty read, an unknown tag, or an errno that is not 4 bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, MalformedReport> {
        let malformed = || MalformedReport { bytes: bytes.to_vec() };
        let (&first, payload) = bytes.split_first().ok_or_else(malformed)?;
        let errno = || payload.try_into().map(i32::from_le_bytes).map_err(|_| malformed());
        let text = || String::from_utf8_lossy(payload).into_owned();
        match Tag::from_byte(first).ok_or_else(malformed)? {
            Tag::CgroupJoin => errno().map(Self::CgroupJoin),
            Tag::InitExec => errno().map(Self::InitExec),
            Tag::Setup => Ok(Self::Setup(text())),
            Tag::Exec => Ok(Self::Exec(text())),
        }
    }

    /// Writes the report to `status` (the write end).
    ///
    /// # Errors
    ///
    /// The failed `write`.
    pub(crate) fn send(&self, status: BorrowedFd<'_>) -> io::Result<()> {
        let bytes = self.encode();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            match nix::unistd::write(status, rest) {
                Ok(written) => rest = &rest[written..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The agent's end of a status pipe.
#[derive(Debug)]
pub(crate) struct StatusReader {
    fd: OwnedFd,
}

/// A new status pipe: the agent's end, and the write end to hand to the init. Both close-on-exec.
///
/// # Errors
///
/// The failed `pipe2`.
pub(crate) fn pipe() -> io::Result<(StatusReader, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((StatusReader { fd: read }, write))
}

impl StatusReader {
    /// Waits for a pool member's init to say it is ready: `Ok(Ok(self))` to go on reading the
    /// claimed start's outcome with [`outcome`](Self::outcome) later, or `Ok(Err(report))` when it
    /// failed first (`None`: it ended without a word).
    ///
    /// # Errors
    ///
    /// The failed read, or [`io::ErrorKind::InvalidData`] carrying a [`MalformedReport`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe (the member is destroyed when its build stops waiting).
    pub(crate) async fn ready(self) -> io::Result<Result<Self, Option<Report>>> {
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(self.fd)?;
        let mut first = [0u8; 1];
        if pipe.read(&mut first).await? == 0 {
            return Ok(Err(None));
        }
        if first[0] == READY {
            return Ok(Ok(Self { fd: pipe.into_nonblocking_fd()? }));
        }
        let mut bytes = first.to_vec();
        pipe.read_to_end(&mut bytes).await?;
        let report = Report::decode(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Err(Some(report)))
    }

    /// Reads until every write end is closed: `Ok(None)` if nothing was written (the command
    /// runs), or the report of the step that failed.
    ///
    /// # Errors
    ///
    /// The failed read, or [`io::ErrorKind::InvalidData`] carrying a [`MalformedReport`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: what was read is lost with the future (a start that stops waiting undoes
    /// the sandbox anyway).
    pub(crate) async fn outcome(self) -> io::Result<Option<Report>> {
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(self.fd)?;
        let mut bytes = Vec::new();
        pipe.read_to_end(&mut bytes).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        Report::decode(&bytes).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn every_report_survives_the_round_trip() {
        let reports = [
            Report::CgroupJoin(libc::EACCES),
            Report::InitExec(libc::ENOENT),
            Report::InitExec(-1),
            Report::Setup("mount /proc: EPERM".to_owned()),
            Report::Exec("exec: No such file or directory (os error 2)".to_owned()),
            Report::Exec(String::new()),
        ];
        for report in reports {
            assert_eq!(Report::decode(&report.encode()).expect("decodes"), report);
        }
        assert_eq!(errno_report(Tag::CgroupJoin, 13), [b'C', 13, 0, 0, 0]);
    }

    #[test]
    fn malformed_reports_are_refused_and_keep_their_bytes() {
        for bytes in [&b""[..], b"?", b"Zsomething", b"I", b"I\x02\x00\x00", b"C\x02\x00\x00\x00\x00"] {
            let e = Report::decode(bytes).expect_err("malformed");
            assert_eq!(e.bytes, bytes);
        }
        // Text is never refused: invalid UTF-8 is replaced.
        assert_eq!(Report::decode(b"Xexec: \xff").expect("text"), Report::Exec("exec: \u{fffd}".to_owned()));
    }

    #[tokio::test]
    async fn the_reader_sees_a_sent_report_or_a_clean_end() {
        let (reader, writer) = pipe().expect("pipe");
        Report::Setup("pivot_root: EINVAL".to_owned()).send(writer.as_fd()).expect("send");
        drop(writer);
        assert_eq!(
            reader.outcome().await.expect("read"),
            Some(Report::Setup("pivot_root: EINVAL".to_owned()))
        );

        let (reader, writer) = pipe().expect("pipe");
        drop(writer);
        assert_eq!(reader.outcome().await.expect("read"), None);

        // A member: ready, then the claimed start's outcome on the same pipe.
        let (reader, writer) = pipe().expect("pipe");
        send_ready(writer.as_fd()).expect("ready");
        let reader = reader.ready().await.expect("read").expect("ready");
        Report::Exec("exec: ENOENT".to_owned()).send(writer.as_fd()).expect("send");
        drop(writer);
        assert_eq!(reader.outcome().await.expect("read"), Some(Report::Exec("exec: ENOENT".to_owned())));
        let (reader, writer) = pipe().expect("pipe");
        Report::Setup("mount root: EPERM".to_owned()).send(writer.as_fd()).expect("send");
        drop(writer);
        assert_eq!(
            reader.ready().await.expect("read").expect_err("failed"),
            Some(Report::Setup("mount root: EPERM".to_owned()))
        );

        let (reader, writer) = pipe().expect("pipe");
        nix::unistd::write(&writer, b"Q").expect("write");
        drop(writer);
        let e = reader.outcome().await.expect_err("malformed");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
