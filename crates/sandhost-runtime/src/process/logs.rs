//! The bounded log of a sandbox: its command's stdout and stderr, written by the init (so output
//! keeps flowing while the agent is down) and read by the agent at logical offsets.
//!
//! The log is a series of segment files `log.<start offset, 16 hex digits>`; a new segment starts
//! once the current one holds half the bound, and the oldest is deleted once more than two exist.
//! So at most about `limit` bytes are kept, the oldest go first, and a reader can always tell which
//! logical offsets a file holds (its name) and how many bytes were dropped before it.
//!
//! Each segment has its time index beside it, `log.<start offset>.times` (`crate::log_index`: one
//! entry "the log held N bytes at T" about a second after the log grows, appended by the init as
//! it writes, at most `log_index::max_entries(limit / 2)` per segment), deleted with its segment,
//! so the index is bounded with the log: under a twelfth of it (at least 64 entries of 20 bytes per
//! segment, which is more for bounds under 32 KiB). A reader adds each segment's modification time
//! as one more entry, which dates what was written since the segment's last entry (also when the
//! init was killed with an entry pending).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::SystemTime;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::LogChunk;
use crate::log_index::{self, Cadence, Due, Entry};

/// The file name prefix of log segments (and of their time indexes).
const SEGMENT_PREFIX: &str = "log.";
/// The file name suffix of a segment's time index.
const INDEX_SUFFIX: &str = ".times";

fn segment_name(start: u64) -> String {
    format!("{SEGMENT_PREFIX}{start:016x}")
}

fn index_name(start: u64) -> String {
    format!("{SEGMENT_PREFIX}{start:016x}{INDEX_SUFFIX}")
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
    /// The current segment's time index, opened at its first entry.
    index: Option<File>,
    cadence: Cadence,
}

impl<'a> LogWriter<'a> {
    /// Starts the first segment.
    pub(crate) fn create(dir: BorrowedFd<'a>, limit: u64) -> io::Result<Self> {
        let current = open_append(dir, &segment_name(0))?;
        let segment_max = (limit / 2).max(4096);
        Ok(Self {
            dir,
            segment_max,
            current,
            current_start: 0,
            current_len: 0,
            segments: VecDeque::from([0]),
            index: None,
            cadence: Cadence::new(log_index::max_entries(segment_max), 0, None),
        })
    }

    /// Appends `data`, written now (see [`LogWriter::write_at`]).
    pub(crate) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_at(data, log_index::now_ms())
    }

    /// Appends `data`, never more than a segment's room at a time (a busy host lets the pipe fill,
    /// and one read can be many segments' worth), rotating whenever the current segment is full,
    /// then dates it if an entry is due at `now_ms` (the time of day in ms; the tests set it).
    pub(crate) fn write_at(&mut self, mut data: &[u8], now_ms: u64) -> io::Result<()> {
        while !data.is_empty() {
            if self.current_len >= self.segment_max {
                self.rotate()?;
            }
            let room = usize::try_from(self.segment_max - self.current_len).unwrap_or(usize::MAX);
            let (now, rest) = data.split_at(room.min(data.len()));
            self.current.write_all(now)?;
            self.current_len += now.len() as u64;
            data = rest;
        }
        self.date(now_ms);
        Ok(())
    }

    /// Starts a new segment at the end, and deletes the oldest beyond two.
    fn rotate(&mut self) -> io::Result<()> {
        let start = self.end();
        self.current = open_append(self.dir, &segment_name(start))?;
        self.current_start = start;
        self.current_len = 0;
        self.segments.push_back(start);
        self.index = None;
        self.cadence.restart();
        while self.segments.len() > 2 {
            if let Some(old) = self.segments.pop_front() {
                unlinkat(self.dir, segment_name(old).as_str(), UnlinkatFlags::NoRemoveDir)?;
                match unlinkat(self.dir, index_name(old).as_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// When an entry of the time index falls due (the time of day in ms), if bytes are undated:
    /// the writer's caller wakes then and calls [`LogWriter::date`].
    pub(crate) fn due_at(&self, now_ms: u64) -> Option<u64> {
        match self.cadence.due(self.end(), now_ms) {
            Due::Idle => None,
            Due::Now => Some(now_ms),
            Due::At(at) => Some(at),
        }
    }

    /// Records an entry of the time index if one is due at `now_ms`. Best effort: an entry that
    /// cannot be written leaves its bytes to be dated by the next one (or the segment's
    /// modification time), and the log itself goes on.
    pub(crate) fn date(&mut self, now_ms: u64) {
        if self.cadence.due(self.end(), now_ms) != Due::Now {
            return;
        }
        let entry = Entry { offset: self.end(), unix_ms: now_ms };
        if self.index.is_none() {
            self.index = open_append(self.dir, &index_name(self.current_start)).ok();
        }
        if let Some(index) = &mut self.index {
            let _ = index.write_all(&entry.encode());
        }
        self.cadence.recorded(entry);
    }

    /// The logical offset of the next byte.
    fn end(&self) -> u64 {
        self.current_start + self.current_len
    }
}

fn open_append(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    let fd = openat(
        dir.as_fd(),
        name,
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

/// Removes every segment in `dir`, with its time index. A missing dir is fine.
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

/// The first logical offset from which the log in `dir` may hold bytes written at or after `since`
/// (`crate::log_index::offset_at`, over every kept segment's entries and modification time);
/// `Ok(None)` if the sandbox has no log.
pub(crate) fn offset_at(dir: &Path, since: SystemTime) -> io::Result<Option<u64>> {
    // A segment can be deleted between listing and reading it (rotation): list again.
    for _ in 0..8 {
        match try_offset_at(dir, since) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
    }
    try_offset_at(dir, since)
}

fn try_offset_at(dir: &Path, since: SystemTime) -> io::Result<Option<u64>> {
    let Some(starts) = list_segments(dir)? else {
        return Ok(None);
    };
    let mut entries = Vec::new();
    for &start in &starts {
        let meta = std::fs::metadata(dir.join(segment_name(start)))?;
        let end = start + meta.len();
        entries.push(Entry::from_mtime(end, meta.modified()?));
        // An entry is believed only within its segment as it was just seen (one made since is left
        // out: the index is only coarser for it).
        let dated = log_index::read_file(&dir.join(index_name(start)))?;
        entries.extend(dated.into_iter().filter(|e| (start..=end).contains(&e.offset)));
    }
    Ok(Some(log_index::offset_at(entries, since)))
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
    fn one_write_larger_than_the_bound_keeps_the_bound() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = File::open(tmp.path()).expect("open dir");
        let mut writer = LogWriter::create(dir.as_fd(), 16 << 10).expect("writer");
        // A pipe that filled while the init waited for a CPU: one read of 64 KiB, after a little.
        let small = vec![b'a'; 100];
        let big: Vec<u8> = (0..64 << 10).map(|i: u32| b'0' + (i % 10) as u8).collect();
        writer.write(&small).expect("write");
        writer.write(&big).expect("write");
        let chunk = read(tmp.path(), 0, usize::MAX).expect("read").expect("some log");
        assert!(chunk.data.len() <= 16 << 10, "kept {} bytes under a bound of 16 KiB", chunk.data.len());
        assert_eq!(chunk.dropped + chunk.data.len() as u64, (small.len() + big.len()) as u64);
        assert!(big.ends_with(&chunk.data), "the newest bytes are kept");
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
    }

    /// The bytes of the log in `dir` from the offset for `since`.
    fn since(dir: &Path, ms: u64) -> (u64, Vec<u8>) {
        let offset = offset_at(dir, at(ms)).expect("offset").expect("a log");
        let chunk = read(dir, offset, usize::MAX).expect("read").expect("a log");
        (offset, chunk.data)
    }

    #[test]
    fn the_time_index_finds_what_was_written_since_a_time() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = File::open(tmp.path()).expect("open dir");
        let mut writer = LogWriter::create(dir.as_fd(), 1 << 20).expect("writer");
        writer.write_at(b"early\n", 10_000).expect("write");
        // Half a second later: too soon for an entry; one falls due a second after the last.
        writer.write_at(b"still early\n", 10_500).expect("write");
        assert_eq!(writer.due_at(10_600), Some(11_000));
        // The init wakes then and dates it; nothing is due afterwards.
        writer.date(11_000);
        assert_eq!(writer.due_at(11_001), None);
        writer.write_at(b"late\n", 20_000).expect("write");

        assert_eq!(since(tmp.path(), 9_000), (0, b"early\nstill early\nlate\n".to_vec()));
        assert_eq!(since(tmp.path(), 10_000).1, b"early\nstill early\nlate\n", "at or after: included");
        assert_eq!(since(tmp.path(), 10_800).1, b"still early\nlate\n", "within the second: included");
        assert_eq!(since(tmp.path(), 15_000).1, b"late\n");
        // The segment's modification time (now, in the real clock) dates the end: a time after it
        // finds nothing.
        let later = log_index::now_ms() + 3_600_000;
        let (end, nothing) = since(tmp.path(), later);
        assert_eq!((end, nothing), (23, Vec::new()));
    }

    #[test]
    fn rotation_keeps_the_index_bounded_with_the_log() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = File::open(tmp.path()).expect("open dir");
        let limit = 8192;
        let mut writer = LogWriter::create(dir.as_fd(), limit).expect("writer");
        // One line a second for 2000 seconds: far more entries than a segment's budget.
        let mut ends = Vec::new();
        let mut written = 0u64;
        for i in 0..2000u64 {
            let line = format!("line {i:05}\n");
            writer.write_at(line.as_bytes(), 1_000_000 + i * 1000).expect("write");
            written += line.len() as u64;
            ends.push(written);
        }
        let mut indexes = Vec::new();
        for entry in std::fs::read_dir(tmp.path()).expect("dir") {
            let entry = entry.expect("entry");
            let name = entry.file_name().into_string().expect("utf-8");
            if name.ends_with(INDEX_SUFFIX) {
                indexes.push((name, entry.metadata().expect("meta").len()));
            }
        }
        let budget = log_index::max_entries((limit / 2).max(4096)) as u64;
        assert!(!indexes.is_empty() && indexes.len() <= 2, "one index per kept segment: {indexes:?}");
        for (name, len) in &indexes {
            assert!(*len <= budget * log_index::ENTRY_LEN as u64, "{name} holds {len} bytes");
            let start = u64::from_str_radix(&name[SEGMENT_PREFIX.len()..][..16], 16).expect("hex");
            assert!(tmp.path().join(segment_name(start)).exists(), "{name} outlived its segment");
        }
        // A time within what is kept finds its line; one older than what is kept starts from the
        // beginning, and the read says what was dropped.
        let whole = read(tmp.path(), 0, usize::MAX).expect("read").expect("log");
        let first_kept = ends.iter().position(|&end| end > whole.dropped).expect("kept") + 1;
        let i = first_kept + 10;
        let (offset, data) = since(tmp.path(), 1_000_000 + i as u64 * 1000);
        assert!(offset <= ends[i - 1], "line {i} is at {}, the read starts at {offset}", ends[i - 1]);
        assert!(data.starts_with(b"line "), "starts at a line: {:?}", String::from_utf8_lossy(&data[..20]));
        let (offset, _) = since(tmp.path(), 1_000_000);
        assert_eq!(offset, 0);
        assert_eq!(read(tmp.path(), offset, 10).expect("read").expect("log").dropped, whole.dropped);
        remove_segments(tmp.path()).expect("remove");
        assert_eq!(std::fs::read_dir(tmp.path()).expect("dir").count(), 0, "the indexes go with the log");
    }

    #[test]
    fn a_torn_or_garbage_index_only_makes_the_answer_coarser() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = File::open(tmp.path()).expect("open dir");
        let mut writer = LogWriter::create(dir.as_fd(), 1 << 20).expect("writer");
        writer.write_at(b"early\n", 10_000).expect("write");
        writer.write_at(b"late\n", 20_000).expect("write");
        let index = tmp.path().join(index_name(0));
        let good = std::fs::read(&index).expect("index");
        assert_eq!(good.len(), 2 * log_index::ENTRY_LEN);

        // A torn last entry: the whole ones still count.
        std::fs::write(&index, [&good[..], &good[..9]].concat()).expect("write");
        assert_eq!(since(tmp.path(), 15_000).1, b"late\n");
        // An entry past what the segment holds (or from another log) is not believed.
        let wild = Entry { offset: 1 << 40, unix_ms: 1 }.encode();
        std::fs::write(&index, [&good[..], &wild[..]].concat()).expect("write");
        assert_eq!(since(tmp.path(), 15_000).1, b"late\n");
        // Garbage of every length: never a panic, never a byte lost (only more than asked for).
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| u8::try_from((i * 89 + len) % 256).unwrap_or(0)).collect();
            std::fs::write(&index, &junk).expect("write");
            let (_, data) = since(tmp.path(), 15_000);
            assert!(data.ends_with(b"late\n"), "garbage of {len} bytes lost a line");
        }
        // No index at all (a log written before there were any): read from the start.
        std::fs::remove_file(&index).expect("remove");
        assert_eq!(since(tmp.path(), 15_000), (0, b"early\nlate\n".to_vec()));
    }

    #[test]
    fn no_segments_means_no_log() {
        let tmp = tempfile::tempdir().expect("tmp");
        assert!(read(tmp.path(), 0, 10).expect("read").is_none());
        assert!(read(&tmp.path().join("missing"), 0, 10).expect("read").is_none());
        assert!(offset_at(tmp.path(), SystemTime::now()).expect("offset").is_none());
    }
}
