//! The bounded log of a gVisor sandbox. runsc's processes write the sandbox's stdout and stderr
//! straight into one file (opened `O_APPEND`), so it keeps flowing while the agent is down. The
//! file offset is the logical offset; the bound is kept by punching a hole over the oldest bytes
//! (`FALLOC_FL_PUNCH_HOLE`, which frees the blocks and keeps every offset), and a reader learns
//! how much was dropped from where the data starts again (`SEEK_DATA`).
//!
//! # Its time index
//!
//! The agent cannot see each write, so it dates the log by observing it ([`LogDating`]): it reads
//! the log's length and records `(length, time)` in the time index `paths::LOG_TIMES`
//! (`crate::log_index`'s format and cadence: an observation about a second after the log grows,
//! woken by inotify, not by a timer that polls; and at each read of the log). An observation's time
//! is the earlier of now and the log's modification time (plus its slack): every byte before that
//! length was written by then. So, while an agent runs, a byte is dated at most about a second
//! after it was written (plus the agent's own delays: it observes at most once a second); bytes
//! written while no agent ran are dated by the log's modification time when the next agent first
//! looks (at its start): the time of the last of them. A reader also takes the log's modification
//! time as an entry at its end. When the head is punched out, the entries before the new start go
//! with it (the file is rewritten, atomically); with the cadence's budget
//! (`log_index::max_entries(limit)`) the index stays under a twelfth of the log's bound (at
//! least 64 entries of 20 bytes, which is more for bounds under 16 KiB).
//!
//! The index is rewritten whole, too, when this agent first finds it holding anything a reader
//! would skip (an earlier agent killed in the middle of an append), so that appends stay aligned.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{FallocateFlags, fallocate};
use nix::unistd::{Whence, lseek};

use super::paths;
use crate::log_index::{self, Cadence, Due, Entry};
use crate::{LogChunk, LogsError, SandboxKey, state_file};

/// Holes are punched in whole blocks.
const BLOCK: u64 = 4096;

/// If the log holds more than `limit` bytes, drops the oldest so that about `limit / 2` remain.
/// Returns where the kept bytes start now, if it dropped any.
pub(super) fn trim(path: &Path, limit: u64) -> io::Result<Option<u64>> {
    let file = match File::options().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = first_data(&file, len)?;
    if len - start <= limit {
        return Ok(None);
    }
    let end = (len - limit / 2) / BLOCK * BLOCK;
    if end <= start {
        return Ok(None);
    }
    let to_off = |v: u64| i64::try_from(v).map_err(io::Error::other);
    fallocate(
        &file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        to_off(end)?,
    )?;
    Ok(Some(end))
}

/// Where the kept bytes start (the end of the punched head).
fn first_data(file: &File, len: u64) -> io::Result<u64> {
    match lseek(file, 0, Whence::SeekData) {
        Ok(offset) => Ok(u64::try_from(offset).unwrap_or(0)),
        // All hole (or empty): nothing kept before the end.
        Err(nix::errno::Errno::ENXIO) => Ok(len),
        Err(e) => Err(e.into()),
    }
}

/// Reads up to `max` bytes from logical `offset`; `Ok(None)` if there is no log.
fn read(path: &Path, offset: u64, max: usize) -> io::Result<Option<LogChunk>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = first_data(&file, len)?;
    let (pos, dropped) = if offset < start { (start, start - offset) } else { (offset.min(len), 0) };
    file.seek(SeekFrom::Start(pos))?;
    let mut data = Vec::new();
    file.take(u64::try_from(max).unwrap_or(u64::MAX)).read_to_end(&mut data)?;
    Ok(Some(LogChunk { next_offset: pos + data.len() as u64, data, dropped }))
}

/// [`Runtime::read_logs`](crate::Runtime::read_logs) of sandbox `key`, whose log is `path`: trims
/// the log to `limit`, then reads `max` bytes from `offset`, on a blocking thread.
pub(super) async fn read_logs(
    key: &SandboxKey,
    path: PathBuf,
    limit: u64,
    offset: u64,
    max: usize,
) -> Result<LogChunk, LogsError> {
    let owned = key.clone();
    let job = move || {
        trim(&path, limit)?;
        read(&path, offset, max)
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(Ok(Some(chunk))) => Ok(chunk),
        Ok(Ok(None)) => Err(LogsError::NotFound(owned)),
        Ok(Err(source)) => Err(LogsError::Io { key: owned, source }),
        Err(join) => Err(LogsError::Io { key: owned, source: io::Error::other(join.to_string()) }),
    }
}

/// [`Runtime::log_offset_at`](crate::Runtime::log_offset_at) of sandbox `key`, whose lifecycle's
/// directory is `dir`: by the time index and the log's modification time, on a blocking thread.
pub(super) async fn offset_at(key: &SandboxKey, dir: PathBuf, since: SystemTime) -> Result<u64, LogsError> {
    let owned = key.clone();
    let job = move || -> io::Result<Option<u64>> {
        let meta = match std::fs::metadata(paths::log_path(&dir)) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Entries past the length just seen (made since) are left out: the index is only coarser.
        let mut entries = log_index::read_file(&dir.join(paths::LOG_TIMES))?;
        entries.retain(|e| e.offset <= meta.len());
        entries.push(Entry::from_mtime(meta.len(), meta.modified()?));
        Ok(Some(log_index::offset_at(entries, since)))
    };
    match tokio::task::spawn_blocking(job).await {
        Ok(Ok(Some(offset))) => Ok(offset),
        Ok(Ok(None)) => Err(LogsError::NotFound(owned)),
        Ok(Err(source)) => Err(LogsError::Io { key: owned, source }),
        Err(join) => Err(LogsError::Io { key: owned, source: io::Error::other(join.to_string()) }),
    }
}

/// The agent's dating of one sandbox's log (see the module doc): trims it and records
/// observations in its time index.
#[derive(Debug)]
pub(super) struct LogDating {
    log: PathBuf,
    index: PathBuf,
    limit: u64,
    /// Loaded from the index at this agent's first observation.
    cadence: Option<Cadence>,
}

impl LogDating {
    /// The dating of the log of the lifecycle whose directory is `dir`, bounded to `limit`.
    pub(super) fn new(dir: &Path, limit: u64) -> Self {
        Self { log: paths::log_path(dir), index: dir.join(paths::LOG_TIMES), limit, cadence: None }
    }

    /// Trims the log to its bound, then records an observation if one is due now. Returns when the
    /// next one falls due (the time of day in ms), if bytes are undated. Blocking.
    pub(super) fn observe(&mut self) -> io::Result<Option<u64>> {
        self.observe_at(log_index::now_ms())
    }

    /// [`LogDating::observe`] at `now_ms` (the tests set it).
    fn observe_at(&mut self, now_ms: u64) -> io::Result<Option<u64>> {
        let trimmed = trim(&self.log, self.limit)?;
        let meta = match std::fs::metadata(&self.log) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = meta.len();
        let mut cadence = match self.cadence.take() {
            Some(cadence) => cadence,
            None => self.load()?,
        };
        if let Some(start) = trimmed {
            cadence.set_count(self.drop_before(start)?);
        }
        let due = cadence.due(len, now_ms);
        let next = match due {
            Due::Idle => None,
            Due::At(at) => Some(at),
            Due::Now => {
                let written_by = Entry::from_mtime(len, meta.modified()?).unix_ms;
                let entry = Entry { offset: len, unix_ms: now_ms.min(written_by) };
                let appended = File::options()
                    .create(true)
                    .append(true)
                    .open(&self.index)
                    .and_then(|mut index| index.write_all(&entry.encode()));
                cadence.recorded(entry);
                self.cadence = Some(cadence);
                appended?;
                return Ok(None);
            }
        };
        self.cadence = Some(cadence);
        Ok(next)
    }

    /// The cadence of the index as this agent finds it; the index rewritten first if a reader
    /// would skip anything in it.
    fn load(&self) -> io::Result<Cadence> {
        let budget = log_index::max_entries(self.limit);
        let bytes = match std::fs::read(&self.index) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let entries = log_index::decode(&bytes);
        if !log_index::is_clean(&bytes) {
            self.rewrite(&entries)?;
        }
        Ok(Cadence::new(budget, entries.len(), entries.last().copied()))
    }

    /// Drops the entries of bytes no longer kept (before `start`); how many are left.
    fn drop_before(&self, start: u64) -> io::Result<usize> {
        let entries = log_index::read_file(&self.index)?;
        let kept: Vec<Entry> = entries.iter().copied().filter(|e| e.offset >= start).collect();
        if kept.len() < entries.len() {
            self.rewrite(&kept)?;
        }
        Ok(kept.len())
    }

    /// Replaces the index by `entries`, atomically (a temporary file renamed over it).
    fn rewrite(&self, entries: &[Entry]) -> io::Result<()> {
        let name = self.index.file_name().and_then(|n| n.to_str()).unwrap_or(paths::LOG_TIMES);
        let temp = self.index.with_file_name(state_file::temp_name(name));
        let bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
        std::fs::write(&temp, bytes)?;
        std::fs::rename(&temp, &self.index)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn append(path: &Path, bytes: &[u8]) {
        let mut file = File::options().create(true).append(true).open(path).expect("open");
        file.write_all(bytes).expect("write");
    }

    /// The offset for `since_ms` by the index in `dir` and the log's modification time.
    fn offset_for(dir: &Path, since_ms: u64) -> u64 {
        let key = crate::SandboxKey {
            id: crate::SandboxId::parse("box").expect("id"),
            lifecycle: crate::LifecycleId::parse("ab").expect("lifecycle"),
        };
        let since = UNIX_EPOCH + Duration::from_millis(since_ms);
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(offset_at(&key, dir.to_path_buf(), since)).expect("offset")
    }

    #[test]
    fn observations_date_the_log_about_a_second_after_it_grows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = paths::log_path(dir.path());
        let mut dating = LogDating::new(dir.path(), 1 << 20);
        assert_eq!(dating.observe_at(9_000).expect("observe"), None, "no log yet: nothing to date");
        append(&log, b"early\n");
        assert_eq!(dating.observe_at(10_000).expect("observe"), None, "dated at once");
        append(&log, b"still early\n");
        assert_eq!(dating.observe_at(10_400).expect("observe"), Some(11_000), "too soon: due later");
        assert_eq!(dating.observe_at(11_000).expect("observe"), None);
        append(&log, b"late\n");
        assert_eq!(dating.observe_at(20_000).expect("observe"), None);
        let entries = log_index::read_file(&dir.path().join(paths::LOG_TIMES)).expect("index");
        let dated: Vec<(u64, u64)> = entries.iter().map(|e| (e.offset, e.unix_ms)).collect();
        assert_eq!(dated, [(6, 10_000), (18, 11_000), (23, 20_000)]);
        assert_eq!(offset_for(dir.path(), 10_000), 0);
        assert_eq!(offset_for(dir.path(), 10_500), 6);
        assert_eq!(offset_for(dir.path(), 15_000), 18);
        // The log's modification time dates its end.
        assert_eq!(offset_for(dir.path(), log_index::now_ms() + 3_600_000), 23);
    }

    #[test]
    fn bytes_written_while_no_agent_looked_are_dated_by_the_log_s_modification_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = paths::log_path(dir.path());
        append(&log, b"while the agent was down\n");
        let written_by = log_index::now_ms() + log_index::MTIME_SLACK_MS;
        // The next agent looks much later: the entry is the file's time, not the agent's.
        let mut dating = LogDating::new(dir.path(), 1 << 20);
        dating.observe_at(written_by + 3_600_000).expect("observe");
        let entries = log_index::read_file(&dir.path().join(paths::LOG_TIMES)).expect("index");
        assert_eq!(entries.len(), 1);
        assert!(entries[0].unix_ms <= written_by, "dated {} > {written_by}", entries[0].unix_ms);
    }

    #[test]
    fn a_torn_index_is_rewritten_whole_and_trimming_drops_the_entries_of_what_it_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = paths::log_path(dir.path());
        let index = dir.path().join(paths::LOG_TIMES);
        append(&log, &[b'x'; 4096]);
        // An earlier agent was killed in the middle of its second append.
        let first = Entry { offset: 4096, unix_ms: 1_000 }.encode();
        std::fs::write(&index, [&first[..], &first[..5]].concat()).expect("write");
        let limit = 16 * 1024;
        let mut dating = LogDating::new(dir.path(), limit);
        let mut now = 10_000;
        for _ in 0..40 {
            append(&log, &[b'y'; 4095]);
            append(&log, b"\n");
            dating.observe_at(now).expect("observe");
            now += 1_000;
        }
        let bytes = std::fs::read(&index).expect("index");
        assert!(log_index::is_clean(&bytes), "appends after a torn entry are aligned again");
        let entries = log_index::decode(&bytes);
        let kept = read(&log, 0, usize::MAX).expect("read").expect("log");
        assert!(kept.dropped > 0, "the log was trimmed");
        assert!(entries.iter().all(|e| e.offset >= kept.dropped), "entries of dropped bytes remain");
        assert!(entries.len() <= log_index::max_entries(limit));
        // A time within what is kept starts within it.
        let last = entries.last().expect("an entry");
        assert_eq!(offset_for(dir.path(), last.unix_ms + 1), last.offset);
    }

    #[test]
    fn trimming_keeps_offsets_and_reports_what_was_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let mut file = File::options().create(true).append(true).open(&path).expect("open");
        let line = [b'x'; 1023];
        for _ in 0..64 {
            file.write_all(&line).and_then(|()| file.write_all(b"\n")).expect("write");
        }
        trim(&path, 16 * 1024).expect("trim");
        let chunk = read(&path, 0, usize::MAX).expect("read").expect("log");
        assert!(chunk.dropped > 0 && chunk.dropped.is_multiple_of(BLOCK), "dropped {}", chunk.dropped);
        assert!(chunk.data.len() as u64 <= 16 * 1024, "kept {}", chunk.data.len());
        assert_eq!(chunk.next_offset, 64 * 1024);
        assert_eq!(chunk.dropped + chunk.data.len() as u64, 64 * 1024);
        // The writer appends on at the same logical offsets.
        file.write_all(b"more\n").expect("write");
        let tail = read(&path, chunk.next_offset, 100).expect("read").expect("log");
        assert_eq!(tail.data, b"more\n");
    }
}
