//! The one format and the one write of every state file sandhost keeps: the runtimes' lifecycle
//! files (`crate::state`), and the agent's sandbox records, drain intent and node id.
//!
//! On disk a file is `{"crc32c":"<8 hex digits>","body":<the value's JSON>}`: still JSON for a
//! person with `jq`, and the CRC-32C of the body's bytes makes a torn or corrupt file detectable.
//!
//! # Invariants
//!
//! - A file is either absent or whole: it is written to `<name>.tmp`, synced, renamed over
//!   `<name>`, and the directory synced ([`write`], or [`write_at`] through a directory fd), so
//!   neither a crash nor a concurrent reader sees half of one. A record on the path of a Create or
//!   an exit is synced soon after instead ([`write_soon`], `crate::durable`): whole at once, on disk
//!   within a round of the background sync.
//! - A file is read whole and checked, or reported [`StateFileError::Damaged`]: never half-read.
//! - A file written before the checksum (a bare JSON object, array or string, which a tear cannot
//!   leave parseable) is still read when it parses whole as the value, so an upgraded agent
//!   re-adopts what an older one started; the next write gives it the checksum.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// The file exists but could not be read.
    #[error("reading {path} failed")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file is torn, corrupt, or not what it should hold.
    #[error("{path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl StateFileError {
    /// Whether the file is there but damaged (not an I/O failure).
    #[must_use]
    pub fn is_damaged(&self) -> bool {
        matches!(self, Self::Damaged { .. })
    }
}

impl From<StateFileError> for io::Error {
    fn from(e: StateFileError) -> Self {
        let kind = match &e {
            StateFileError::Read { source, .. } => source.kind(),
            StateFileError::Damaged { .. } => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

const PREFIX: &[u8] = br#"{"crc32c":""#;
const MIDDLE: &[u8] = br#"","body":"#;
const SUFFIX: &[u8] = b"}\n";

/// The temporary name [`write`] writes `name` under before renaming it.
pub(crate) fn temp_name(name: &str) -> String {
    format!("{name}.tmp")
}

/// The bytes of a state file holding `value`.
///
/// # Errors
///
/// A value that cannot be serialized as JSON.
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(PREFIX.len() + 8 + MIDDLE.len() + body.len() + SUFFIX.len());
    bytes.extend_from_slice(PREFIX);
    bytes.extend_from_slice(format!("{:08x}", crc32c(&body)).as_bytes());
    bytes.extend_from_slice(MIDDLE);
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(SUFFIX);
    Ok(bytes)
}

/// The value a state file's bytes hold, checked (see the module's invariants).
///
/// # Errors
///
/// Why the bytes are not a whole, intact file holding a `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let Some(rest) = bytes.strip_prefix(PREFIX) else {
        return decode_unchecked(bytes);
    };
    let (crc, rest) = rest.split_at_checked(8).ok_or("it ends inside its checksum")?;
    let body = rest
        .strip_prefix(MIDDLE)
        .and_then(|r| r.strip_suffix(SUFFIX).or_else(|| r.strip_suffix(b"}")))
        .ok_or("it is not a whole file (torn, or changed by hand)")?;
    let expected = std::str::from_utf8(crc).ok().and_then(|c| u32::from_str_radix(c, 16).ok());
    if expected != Some(crc32c(body)) {
        return Err("its checksum does not match its contents".to_owned());
    }
    serde_json::from_slice(body).map_err(|e| format!("its contents are not what it should hold: {e}"))
}

/// A file written before the checksum: only a whole JSON object, array or string, which a tear
/// cannot leave parseable (a number or `true` could be cut short and still parse).
fn decode_unchecked<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{' | b'[' | b'"') => {
            serde_json::from_slice(bytes).map_err(|e| format!("it is not a whole file: {e}"))
        }
        Some(_) => Err("it is not a state file of sandhost".to_owned()),
        None => Err("it is empty".to_owned()),
    }
}

/// Writes `value` to `dir/name`, atomically and durably (see the module's invariants).
///
/// # Errors
///
/// The first step that failed; `dir` must exist.
pub fn write<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    write_at(File::open(dir)?.as_fd(), name, value)
}

/// [`write`] through an open directory (the process backend's init, which has no path to it once
/// it has pivoted into the sandbox's root).
///
/// # Errors
///
/// The first step that failed.
pub(crate) fn write_at<T: Serialize>(dir: BorrowedFd<'_>, name: &str, value: &T) -> io::Result<()> {
    put(dir, name, value, true)
}

/// Writes `value` to `dir/name` atomically, and durably soon after: a state file on the path of a
/// Create or an exit (see `crate::durable`, which says what this gives up).
///
/// # Errors
///
/// The first step that failed; `dir` must exist.
pub fn write_soon<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    put(File::open(dir)?.as_fd(), name, value, false)?;
    crate::durable::queue(&dir.join(name));
    Ok(())
}

/// [`write_soon`] without the queueing: for a file whose directory is renamed before the caller
/// queues it by its final path (`crate::durable::queue`).
///
/// # Errors
///
/// The first step that failed; `dir` must exist.
pub(crate) fn write_unqueued<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    put(File::open(dir)?.as_fd(), name, value, false)
}

/// [`write_soon`] without the sync that makes it durable: for the process backend's init, which
/// ends right after; the agent, which sees the end, has the file synced ([`crate::durable`]).
///
/// # Errors
///
/// The first step that failed.
pub(crate) fn write_at_unsynced<T: Serialize>(dir: BorrowedFd<'_>, name: &str, value: &T) -> io::Result<()> {
    put(dir, name, value, false)
}

/// Writes aside, renames into place; with `sync`, the file before the rename and the directory
/// after it.
fn put<T: Serialize>(dir: BorrowedFd<'_>, name: &str, value: &T, sync: bool) -> io::Result<()> {
    let bytes = encode(value)?;
    let temp = temp_name(name);
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let mut file = File::from(openat(dir, temp.as_str(), flags, Mode::from_bits_truncate(0o600))?);
    file.write_all(&bytes)?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    renameat(dir, temp.as_str(), dir, name)?;
    if sync {
        nix::unistd::fsync(dir)?;
    }
    Ok(())
}

/// Reads `dir/name`; `Ok(None)` if it does not exist.
///
/// # Errors
///
/// [`StateFileError::Read`] for a failed read, [`StateFileError::Damaged`] for a file that is not
/// a whole, intact file holding a `T`.
pub fn read<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, StateFileError> {
    read_path(&dir.join(name))
}

/// [`read`] by the file's path.
///
/// # Errors
///
/// As [`read`].
pub fn read_path<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateFileError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes)
            .map(Some)
            .map_err(|reason| StateFileError::Damaged { path: path.to_owned(), reason }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateFileError::Read { path: path.to_owned(), source }),
    }
}

/// CRC-32C (Castagnoli), as iSCSI, ext4 and btrfs check their metadata with.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            #[allow(clippy::cast_possible_truncation)] // i < 256
            let mut crc = i as u32;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 == 0 { crc >> 1 } else { (crc >> 1) ^ 0x82F6_3B78 };
                bit += 1;
            }
            table[i] = crc;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |crc, &b| TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
    struct Record {
        end_ms: u64,
        labels: Vec<String>,
    }

    fn record() -> Record {
        Record { end_ms: 1_700_000_000_123, labels: vec!["team=a".into()] }
    }

    #[test]
    fn the_checksum_is_crc32c() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn a_file_reads_back_what_was_written_and_is_json_for_people() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "r.json", &record()).expect("write");
        assert!(!dir.path().join("r.json.tmp").exists(), "the temporary was renamed");
        let text = std::fs::read_to_string(dir.path().join("r.json")).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(json["body"]["end_ms"], 1_700_000_000_123_u64);
        assert_eq!(read::<Record>(dir.path(), "r.json").expect("read"), Some(record()));
        assert_eq!(read::<Record>(dir.path(), "absent.json").expect("read"), None);
    }

    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_written_through() {
        let dir = tempfile::tempdir().expect("tmp");
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"host file").expect("write");
        std::os::unix::fs::symlink(&outside, dir.path().join("r.json.tmp")).expect("link");
        for result in [write(dir.path(), "r.json", &record()), write_soon(dir.path(), "r.json", &record())] {
            assert!(result.is_err(), "{result:?}");
        }
        assert_eq!(std::fs::read(&outside).expect("read"), b"host file");
    }

    #[test]
    fn a_file_written_soon_is_whole_at_once_and_synced_by_the_next_round() {
        let dir = tempfile::tempdir().expect("tmp");
        write_soon(dir.path(), "r.json", &record()).expect("write");
        assert!(!dir.path().join("r.json.tmp").exists(), "the temporary was renamed");
        assert_eq!(read::<Record>(dir.path(), "r.json").expect("read"), Some(record()));
        // Replaced, then removed, before its round: the round skips what is gone.
        write_soon(dir.path(), "r.json", &Record { end_ms: 1, labels: Vec::new() }).expect("write");
        write_soon(dir.path(), "gone.json", &record()).expect("write");
        std::fs::remove_file(dir.path().join("gone.json")).expect("remove");
        crate::durable::sync();
        assert_eq!(read::<Record>(dir.path(), "r.json").expect("read").map(|r| r.end_ms), Some(1));
    }

    #[test]
    fn a_torn_or_corrupt_file_is_damaged_never_half_read() {
        let bytes = encode(&record()).expect("encode");
        // Every tear: a crash that a rename did not cover (a copy, a disk that lost a block).
        for len in 0..bytes.len() - 1 {
            assert!(decode::<Record>(&bytes[..len]).is_err(), "torn at {len}: {:?}", &bytes[..len]);
        }
        // Every digit of the body changed: still JSON, still a Record, but not what was written.
        let body_start = PREFIX.len() + 8 + MIDDLE.len();
        for at in body_start..bytes.len() - SUFFIX.len() {
            if bytes[at].is_ascii_digit() {
                let mut corrupt = bytes.clone();
                corrupt[at] = if bytes[at] == b'9' { b'0' } else { bytes[at] + 1 };
                let error = decode::<Record>(&corrupt).expect_err("a changed digit");
                assert!(error.contains("checksum"), "{error}");
            }
        }
        // Not what it should hold.
        assert!(decode::<Vec<u8>>(&bytes).is_err());
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("r.json"), &bytes[..bytes.len() / 2]).expect("tear");
        match read::<Record>(dir.path(), "r.json") {
            Err(e @ StateFileError::Damaged { .. }) => {
                assert!(e.is_damaged());
                assert!(e.to_string().contains("r.json"), "{e}");
            }
            other => panic!("expected damaged, got {other:?}"),
        }
    }

    #[test]
    fn a_file_written_before_the_checksum_is_read_when_whole() {
        let legacy = br#"{"end_ms":5,"labels":[]}"#;
        assert_eq!(decode::<Record>(legacy), Ok(Record { end_ms: 5, labels: Vec::new() }));
        assert!(decode::<Record>(&legacy[..legacy.len() - 1]).is_err());
        assert_eq!(decode::<String>(br#""box.ab.0""#), Ok("box.ab.0".to_owned()));
        // A bare number could be a torn longer one: never read without a checksum.
        assert!(decode::<u64>(b"12").is_err());
        assert!(decode::<u64>(b"").is_err());
    }
}
