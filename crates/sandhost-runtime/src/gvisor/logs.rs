//! The bounded log of a gVisor sandbox. runsc's processes write the sandbox's stdout and stderr
//! straight into one file (opened `O_APPEND`), so it keeps flowing while the agent is down. The
//! file offset is the logical offset; the bound is kept by punching a hole over the oldest bytes
//! (`FALLOC_FL_PUNCH_HOLE`, which frees the blocks and keeps every offset), and a reader learns
//! how much was dropped from where the data starts again (`SEEK_DATA`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use nix::fcntl::{FallocateFlags, fallocate};
use nix::unistd::{Whence, lseek};

use crate::{LogChunk, LogsError, SandboxKey};

/// Holes are punched in whole blocks.
const BLOCK: u64 = 4096;

/// If the log holds more than `limit` bytes, drops the oldest so that about `limit / 2` remain.
pub(super) fn trim(path: &Path, limit: u64) -> io::Result<()> {
    let file = match File::options().write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = first_data(&file, len)?;
    if len - start <= limit {
        return Ok(());
    }
    let end = (len - limit / 2) / BLOCK * BLOCK;
    if end <= start {
        return Ok(());
    }
    let to_off = |v: u64| i64::try_from(v).map_err(io::Error::other);
    fallocate(
        &file,
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        to_off(end)?,
    )
    .map_err(io::Error::from)
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

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
