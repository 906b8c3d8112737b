//! The bounded log of a sandbox: its command's stdout and stderr, written by the init (so output
//! keeps flowing while the agent is down) and read by the agent at logical offsets.
//!
//! The log is a series of segment files `log.<start offset, 16 hex digits>`; a new segment starts
//! once the current one holds half the bound, and the oldest is deleted once more than two exist.
//! So at most about `limit` bytes are kept, the oldest go first, and a reader can always tell which
//! logical offsets a file holds (its name) and how many bytes were dropped before it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::LogChunk;

/// The file name prefix of log segments.
const SEGMENT_PREFIX: &str = "log.";

fn segment_name(start: u64) -> String {
    format!("{SEGMENT_PREFIX}{start:016x}")
}

/// Appends to the segments through the sandbox's state dir fd (the init holds it across
/// `pivot_root`).
#[derive(Debug)]
pub(crate) struct LogWriter<'a> {
    dir: BorrowedFd<'a>,
    segment_max: u64,
    current: File,
    current_start: u64,
    current_len: u64,
    segments: VecDeque<u64>,
}

impl<'a> LogWriter<'a> {
    /// Starts the first segment.
    pub(crate) fn create(dir: BorrowedFd<'a>, limit: u64) -> io::Result<Self> {
        let current = open_segment(dir, 0)?;
        Ok(Self {
            dir,
            segment_max: (limit / 2).max(4096),
            current,
            current_start: 0,
            current_len: 0,
            segments: VecDeque::from([0]),
        })
    }

    /// Appends `data`, rotating first if the current segment is full.
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.current_len >= self.segment_max {
            let start = self.current_start + self.current_len;
            self.current = open_segment(self.dir, start)?;
            self.current_start = start;
            self.current_len = 0;
            self.segments.push_back(start);
            while self.segments.len() > 2 {
                if let Some(old) = self.segments.pop_front() {
                    unlinkat(self.dir, segment_name(old).as_str(), UnlinkatFlags::NoRemoveDir)?;
                }
            }
        }
        self.current.write_all(data)?;
        self.current_len += data.len() as u64;
        Ok(())
    }
}

fn open_segment(dir: BorrowedFd<'_>, start: u64) -> io::Result<File> {
    let fd = openat(
        dir.as_fd(),
        segment_name(start).as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_APPEND | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    )?;
    Ok(File::from(fd))
}

/// The segments in `dir`, oldest first; `Ok(None)` if there are none (or no dir).
fn list_segments(dir: &Path) -> io::Result<Option<Vec<u64>>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut starts = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(hex) = name.to_str().and_then(|n| n.strip_prefix(SEGMENT_PREFIX)) else {
            continue;
        };
        if let (16, Ok(start)) = (hex.len(), u64::from_str_radix(hex, 16)) {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(if starts.is_empty() { None } else { Some(starts) })
}

/// Removes every segment in `dir`. A missing dir is fine.
pub(crate) fn remove_segments(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let is_segment = entry.file_name().to_str().is_some_and(|n| n.starts_with(SEGMENT_PREFIX));
        if is_segment && entry.file_type()?.is_file() {
            crate::state::remove_file_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// Reads up to `max` bytes from logical `offset`; `Ok(None)` if the sandbox has no log.
pub(crate) fn read(dir: &Path, offset: u64, max: usize) -> io::Result<Option<LogChunk>> {
    // A segment can be deleted between listing and opening it (rotation): list again.
    for _ in 0..8 {
        match try_read(dir, offset, max) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
    }
    try_read(dir, offset, max)
}

fn try_read(dir: &Path, offset: u64, max: usize) -> io::Result<Option<LogChunk>> {
    let Some(starts) = list_segments(dir)? else {
        return Ok(None);
    };
    let oldest = starts[0];
    let (mut pos, dropped) = if offset < oldest { (oldest, oldest - offset) } else { (offset, 0) };
    let mut data = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        if data.len() >= max {
            break;
        }
        let mut file = File::open(dir.join(segment_name(start)))?;
        let len = file.metadata()?.len();
        let end = starts.get(i + 1).copied().unwrap_or(start + len).min(start + len);
        if pos >= end {
            continue;
        }
        file.seek(SeekFrom::Start(pos - start))?;
        let want = usize::try_from(end - pos).unwrap_or(usize::MAX).min(max - data.len());
        let before = data.len();
        file.take(want as u64).read_to_end(&mut data)?;
        pos += (data.len() - before) as u64;
    }
    Ok(Some(LogChunk { data, next_offset: pos, dropped }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_newest_bytes_and_reports_what_it_dropped() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = File::open(tmp.path()).expect("open dir");
        let mut writer = LogWriter::create(dir.as_fd(), 8192).expect("writer");
        let mut written = Vec::new();
        for i in 0..2000u32 {
            let line = format!("line {i:05}\n");
            writer.write(line.as_bytes()).expect("write");
            written.extend_from_slice(line.as_bytes());
        }
        let total = written.len() as u64;
        let chunk = read(tmp.path(), 0, usize::MAX).expect("read").expect("some log");
        assert_eq!(chunk.next_offset, total);
        assert!(chunk.dropped > 0);
        assert_eq!(chunk.dropped + chunk.data.len() as u64, total);
        assert!(chunk.data.len() <= 8192 + 16);
        let dropped = usize::try_from(chunk.dropped).expect("fits");
        assert_eq!(chunk.data, written[dropped..]);
        // Reading in small pieces across segment boundaries gives the same bytes.
        let mut offset = chunk.dropped;
        let mut pieces = Vec::new();
        while offset < total {
            let piece = read(tmp.path(), offset, 100).expect("read").expect("log");
            assert_eq!(piece.dropped, 0);
            pieces.extend_from_slice(&piece.data);
            offset = piece.next_offset;
        }
        assert_eq!(pieces, chunk.data);
        // Beyond the end: nothing, and the offset stays.
        let past = read(tmp.path(), total + 5, 10).expect("read").expect("log");
        assert!(past.data.is_empty());
        assert_eq!(past.next_offset, total + 5);
    }

    #[test]
    fn no_segments_means_no_log() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(read(tmp.path(), 0, 10).expect("read").is_none());
        assert!(read(&tmp.path().join("missing"), 0, 10).expect("read").is_none());
    }
}
