//! Durability off the hot path (group commit).
//!
//! A record written with [`crate::state_file::write_soon`] is whole at once (written aside and
//! renamed, as every state file) and seen at once by every reader, including an agent that restarts
//! after this one was killed: the page cache outlives the process. It becomes durable on disk (its
//! data and its directory entry synced) shortly after, when the one background thread of this
//! module syncs every file queued since its last round in one go. So a Create does not wait for the
//! disk, and a thousand Creates share the syncs of a few rounds.
//!
//! What this gives up: a host that loses power within a round (milliseconds) may come back without
//! the newest of these records; it never sees one torn (the checksum calls a torn file damaged).
//! The sandboxes those records describe died with the host. Files that must be on disk before the
//! caller goes on (the operator's drain intent, the node id, a snapshot's metadata) keep the
//! synchronous [`crate::state_file::write`]. [`sync`] waits until everything queued so far is
//! durable (a runtime's `close`).

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

/// The queue the background thread works through.
#[derive(Debug, Default)]
struct Queue {
    /// Files written since the round in progress began.
    files: BTreeSet<PathBuf>,
    /// How many [`queue`] calls there have been.
    queued: u64,
    /// How many of them are durable (every call up to this number).
    synced: u64,
}

#[derive(Debug)]
struct Flusher {
    queue: Mutex<Queue>,
    /// Signalled when a file is queued.
    work: Condvar,
    /// Signalled when a round ends.
    done: Condvar,
}

impl Flusher {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The background thread: takes everything queued, syncs it, says so; sleeps while idle.
    fn run(&self) {
        loop {
            let (files, upto) = {
                let mut queue = self.lock();
                while queue.files.is_empty() {
                    queue = self.work.wait(queue).unwrap_or_else(PoisonError::into_inner);
                }
                (std::mem::take(&mut queue.files), queue.queued)
            };
            sync_files(&files);
            self.lock().synced = upto;
            self.done.notify_all();
        }
    }
}

/// Syncs each file, then each directory holding one (its entry, made by the rename). A file that
/// is gone was removed or replaced meanwhile: nothing of it to keep (a replacement is queued too).
fn sync_files(files: &BTreeSet<PathBuf>) {
    let mut dirs = BTreeSet::new();
    for file in files {
        if let Ok(f) = File::open(file) {
            if let Err(e) = f.sync_all() {
                tracing::warn!(file = %file.display(), error = %e, "syncing a state file failed");
            }
            if let Some(dir) = file.parent() {
                dirs.insert(dir);
            }
        }
    }
    for dir in dirs {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "syncing a state directory failed");
        }
    }
}

fn flusher() -> &'static Flusher {
    static FLUSHER: OnceLock<&'static Flusher> = OnceLock::new();
    FLUSHER.get_or_init(|| {
        let flusher: &'static Flusher = Box::leak(Box::new(Flusher {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            done: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("sandhost-sync".into())
            .spawn(|| flusher.run())
            .expect("spawn the state files' sync thread");
        flusher
    })
}

/// Has `file` (just renamed into place) synced by the next round.
pub(crate) fn queue(file: &Path) {
    let flusher = flusher();
    let mut queue = flusher.lock();
    queue.files.insert(file.to_owned());
    queue.queued += 1;
    drop(queue);
    flusher.work.notify_one();
}

/// Blocks until every file queued before this call is durable.
pub fn sync() {
    let flusher = flusher();
    let mut queue = flusher.lock();
    let target = queue.queued;
    while queue.synced < target {
        queue = flusher.done.wait(queue).unwrap_or_else(PoisonError::into_inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_returns_once_every_queued_file_was_synced_and_survives_gone_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let kept = dir.path().join("kept");
        std::fs::write(&kept, b"x").expect("write");
        queue(&kept);
        queue(&dir.path().join("gone"));
        sync();
        let queue = flusher().lock();
        assert!(queue.synced >= 2 && queue.synced <= queue.queued, "{queue:?}");
    }
}
