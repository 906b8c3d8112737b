//! The time index of a sandbox's log: when its bytes were written, to about a second, so that a
//! reader can start at a time ([`crate::Runtime::log_offset_at`], `Logs` with `since`). Both
//! backends keep one, each where it sees the log grow: the process backend's init, which writes the
//! log, and the gvisor agent, which watches runsc's processes write it.
//!
//! # What an entry says
//!
//! An entry `(offset, unix_ms)` says "the log held `offset` bytes at `unix_ms`": every byte before
//! `offset` was written at or before that time. Each entry is true on its own, whatever the others
//! say. So an entry that is lost, torn, garbage or never made only makes the index coarser: a reader
//! skips what does not check, and can only start too early (include bytes from before the time it
//! asks for), never too late. The same holds of a log file's modification time (a write updates it,
//! from a clock that may lag by a tick: [`MTIME_SLACK_MS`]), which a reader adds as one more entry
//! at the file's end, and which is why what was written since the last entry is dated too.
//!
//! # When entries are made ([`Cadence`])
//!
//! After the log grows, an entry (its length, now) is due at once if the last entry is at least the
//! interval old, else as soon as it is: the writer arms a timer when the log grows, and never polls.
//! So while its writer runs, a byte is dated at most about an interval after it was written. The
//! interval is [`INTERVAL_MS`] and doubles each time another eighth of a file's budget of entries is
//! used (1 s, 2 s, ... 128 s): a slowly written log is dated more coarsely as it ages, and no file
//! ever holds more than its budget ([`max_entries`]).
//!
//! # On disk
//!
//! A file of 20-byte entries, appended one `write` each: the offset (u64, little-endian), the unix
//! time in milliseconds (u64, little-endian), and the CRC-32C of those 16 bytes (u32,
//! little-endian). A reader keeps the entries whose checksum matches and whose offset does not go
//! back; a torn tail is ignored.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of one entry on disk.
pub(crate) const ENTRY_LEN: usize = 20;
/// The shortest interval between two entries of a file: the index's granularity.
pub(crate) const INTERVAL_MS: u64 = 1000;
/// How far a file's modification time may lag the write that set it: the kernel stamps it from a
/// coarse clock, up to a tick (10 ms at 100 Hz) behind the time of day.
pub(crate) const MTIME_SLACK_MS: u64 = 100;
/// The interval doubles this many times at most (to 128 s).
const DOUBLINGS: usize = 7;

/// One entry: every byte before `offset` was written at or before `unix_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The log's length then (a logical offset).
    pub(crate) offset: u64,
    /// The time, in milliseconds since the Unix epoch.
    pub(crate) unix_ms: u64,
}

impl Entry {
    /// The entry on disk.
    pub(crate) fn encode(self) -> [u8; ENTRY_LEN] {
        let mut bytes = [0u8; ENTRY_LEN];
        bytes[..8].copy_from_slice(&self.offset.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.unix_ms.to_le_bytes());
        let crc = crate::state_file::crc32c(&bytes[..16]);
        bytes[16..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    /// The entry of `bytes`, if its checksum matches.
    fn decode(bytes: &[u8; ENTRY_LEN]) -> Option<Self> {
        let (body, crc) = bytes.split_at(16);
        let crc = u32::from_le_bytes(crc.try_into().ok()?);
        if crc != crate::state_file::crc32c(body) {
            return None;
        }
        let offset = u64::from_le_bytes(body[..8].try_into().ok()?);
        let unix_ms = u64::from_le_bytes(body[8..].try_into().ok()?);
        Some(Self { offset, unix_ms })
    }

    /// The entry a file's length and modification time make: every byte in it was written by then.
    pub(crate) fn from_mtime(len: u64, mtime: SystemTime) -> Self {
        Self { offset: len, unix_ms: unix_ms(mtime).saturating_add(MTIME_SLACK_MS) }
    }
}

/// The entries of an index file's `bytes`, in order: those whose checksum matches and whose offset
/// does not go back; a torn last entry is ignored. Never fails: garbage only means fewer entries.
pub(crate) fn decode(bytes: &[u8]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    for chunk in bytes.chunks_exact(ENTRY_LEN) {
        let Some(entry) = chunk.try_into().ok().and_then(Entry::decode) else {
            continue;
        };
        if entries.last().is_none_or(|last| entry.offset >= last.offset) {
            entries.push(entry);
        }
    }
    entries
}

/// The entries of the index file at `path` ([`decode`]); none if there is no such file. At most the
/// largest budget of entries is read.
pub(crate) fn read_file(path: &Path) -> io::Result<Vec<Entry>> {
    const MOST: u64 = (MOST_ENTRIES as u64 + 1) * ENTRY_LEN as u64;
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MOST).read_to_end(&mut bytes)?;
    Ok(decode(&bytes))
}

/// Whether `bytes` are whole, valid entries only (nothing for [`decode`] to skip).
pub(crate) fn is_clean(bytes: &[u8]) -> bool {
    bytes.len().is_multiple_of(ENTRY_LEN) && decode(bytes).len() == bytes.len() / ENTRY_LEN
}

/// The first offset from which the log may hold bytes written at or after `since`, by `entries`
/// (in any order): the largest offset an entry dates strictly before `since`'s millisecond, or 0 if
/// none does. Every byte before it was written before `since`; from it on, the bytes may include some
/// written up to the granularity before `since`.
pub(crate) fn offset_at(entries: impl IntoIterator<Item = Entry>, since: SystemTime) -> u64 {
    let since_ms = unix_ms(since);
    entries.into_iter().filter(|e| e.unix_ms < since_ms).map(|e| e.offset).max().unwrap_or(0)
}

/// The budget of entries of one index file whose log holds up to `bytes`: one per 256 bytes of it
/// (so the index is under a twelfth of what it dates), at least 64 and at most 16384 (6 days of
/// entries at the doubling interval; 320 KiB).
pub(crate) fn max_entries(bytes: u64) -> usize {
    usize::try_from(bytes / 256).unwrap_or(usize::MAX).clamp(64, MOST_ENTRIES)
}

/// The largest budget of entries of a file.
const MOST_ENTRIES: usize = 16_384;

/// The time of day in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a writer should do about the index now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing is undated (or the budget is spent).
    Idle,
    /// Record an entry now.
    Now,
    /// Bytes are undated: record an entry at this unix time (ms), unless the log grows again first
    /// and then asks for one anyway.
    At(u64),
}

/// When the entries of one index file fall due (see the module doc).
#[derive(Debug, Clone)]
pub(crate) struct Cadence {
    budget: usize,
    count: usize,
    last: Option<Entry>,
}

impl Cadence {
    /// A cadence for a file of at most `budget` entries, `count` of them there already, the last
    /// one `last`.
    pub(crate) fn new(budget: usize, count: usize, last: Option<Entry>) -> Self {
        Self { budget: budget.max(1), count, last }
    }

    /// A fresh file (a new segment): the budget starts again, the time of the last entry counts on.
    pub(crate) fn restart(&mut self) {
        self.count = 0;
    }

    /// The interval now, or `None` once the budget is spent.
    fn interval_ms(&self) -> Option<u64> {
        if self.count >= self.budget {
            return None;
        }
        let level = (self.count * 8 / self.budget).min(DOUBLINGS);
        Some(INTERVAL_MS << level)
    }

    /// What is due for a log of `len` bytes at `now_ms`.
    pub(crate) fn due(&self, len: u64, now_ms: u64) -> Due {
        let grown = self.last.map_or(len > 0, |last| len > last.offset);
        let Some(interval) = self.interval_ms().filter(|_| grown) else {
            return Due::Idle;
        };
        match self.last {
            None => Due::Now,
            // A clock set back: an entry now rather than a wait for the old time to come back.
            Some(last) if now_ms < last.unix_ms => Due::Now,
            Some(last) => {
                let at = last.unix_ms.saturating_add(interval);
                if now_ms >= at { Due::Now } else { Due::At(at) }
            }
        }
    }

    /// Notes that `entry` was recorded.
    pub(crate) fn recorded(&mut self, entry: Entry) {
        self.count += 1;
        self.last = Some(entry);
    }

    /// Notes that the file now holds `count` entries (the older ones were dropped with their bytes).
    pub(crate) fn set_count(&mut self, count: usize) {
        self.count = count;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn entry(offset: u64, unix_ms: u64) -> Entry {
        Entry { offset, unix_ms }
    }

    #[test]
    fn entries_read_back_and_garbage_or_a_torn_tail_is_skipped() {
        let entries = [entry(6, 1_000), entry(11, 3_000), entry(20, 4_500)];
        let mut bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
        assert_eq!(decode(&bytes), entries);
        assert!(is_clean(&bytes));
        // A torn tail.
        bytes.extend_from_slice(&entry(30, 5_000).encode()[..7]);
        assert_eq!(decode(&bytes), entries);
        assert!(!is_clean(&bytes));
        // A flipped bit in the middle entry: that one is skipped, the others stay.
        let mut flipped: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
        flipped[ENTRY_LEN + 3] ^= 0x10;
        assert_eq!(decode(&flipped), [entries[0], entries[2]]);
        // An entry whose offset goes back is not believed.
        let back: Vec<u8> =
            [entry(10, 1), entry(5, 2), entry(12, 3)].iter().flat_map(|e| e.encode()).collect();
        assert_eq!(decode(&back), [entry(10, 1), entry(12, 3)]);
        // Pure garbage, any length: no entry, no panic.
        for len in 0..100 {
            let junk: Vec<u8> = (0..len).map(|i| u8::try_from(i * 37 % 251).unwrap_or(0)).collect();
            assert!(decode(&junk).is_empty(), "garbage of {len} bytes decoded");
        }
    }

    #[test]
    fn the_offset_at_a_time_is_the_last_one_dated_before_it() {
        // "early\n" dated 1.000 s, "late\n" dated 3.000 s.
        let entries = [entry(6, 1_000), entry(11, 3_000)];
        assert_eq!(offset_at(entries, at(0)), 0, "before everything: from the start");
        assert_eq!(offset_at(entries, at(1_000)), 0, "an entry at the very time does not exclude");
        assert_eq!(offset_at(entries, at(1_001)), 6);
        assert_eq!(offset_at(entries, at(2_999)), 6);
        assert_eq!(offset_at(entries, at(3_001)), 11, "after everything: the end");
        // No entries: nothing can be excluded.
        assert_eq!(offset_at([], at(5_000)), 0);
        // Each entry stands on its own: out of order, or one lost, never excludes a later byte.
        assert_eq!(offset_at([entry(11, 3_000), entry(6, 1_000)], at(2_000)), 6);
        assert_eq!(offset_at([entry(11, 3_000)], at(2_000)), 0);
        // A modification time dates the whole file, with its slack.
        let mtime = Entry::from_mtime(11, at(3_000));
        assert_eq!(offset_at([entry(6, 1_000), mtime], at(3_000 + MTIME_SLACK_MS + 1)), 11);
        assert_eq!(offset_at([entry(6, 1_000), mtime], at(3_001)), 6);
    }

    #[test]
    fn an_entry_is_due_an_interval_after_the_last_and_only_when_the_log_grew() {
        let mut cadence = Cadence::new(64, 0, None);
        assert_eq!(cadence.due(0, 5_000), Due::Idle, "an empty log needs no entry");
        assert_eq!(cadence.due(6, 5_000), Due::Now, "the first growth is dated at once");
        cadence.recorded(entry(6, 5_000));
        assert_eq!(cadence.due(6, 5_500), Due::Idle, "no growth, nothing due");
        assert_eq!(cadence.due(9, 5_500), Due::At(6_000), "too soon: due an interval after the last");
        assert_eq!(cadence.due(9, 6_000), Due::Now);
        // A clock set back does not leave bytes undated until it comes back.
        assert_eq!(cadence.due(9, 1_000), Due::Now);
    }

    #[test]
    fn the_interval_doubles_as_the_budget_is_used_and_stops_at_it() {
        let mut cadence = Cadence::new(64, 0, None);
        let mut now = 0;
        let mut offset = 0;
        let mut gaps = Vec::new();
        loop {
            offset += 1;
            match cadence.due(offset, now) {
                Due::Idle => break,
                Due::Now => {
                    cadence.recorded(entry(offset, now));
                    now += 1;
                }
                Due::At(at) => {
                    gaps.push(at - cadence.last.map_or(0, |l| l.unix_ms));
                    now = at;
                }
            }
        }
        assert_eq!(cadence.count, 64, "never more than the budget");
        assert_eq!(gaps.first(), Some(&INTERVAL_MS));
        assert_eq!(gaps.last(), Some(&(INTERVAL_MS << DOUBLINGS)));
        assert!(gaps.windows(2).all(|w| w[1] == w[0] || w[1] == 2 * w[0]), "{gaps:?}");
        assert_eq!(max_entries(0), 64);
        assert_eq!(max_entries(1 << 19), 2048);
        assert_eq!(max_entries(1 << 40), 16_384);
    }
}
