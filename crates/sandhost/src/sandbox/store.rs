//! What the manager keeps about each live sandbox beyond the runtime's spec (labels, end time, drain
//! policy, template name), one JSON file per sandbox, so a restarted agent re-adopts sandboxes with
//! everything the API reported about them. The files are state files
//! (`sandhost_runtime::state_file`): written atomically and durably, checked when read.
//!
//! The files are a few hundred bytes on the state dir's local disk: they are written with plain
//! `std::fs` calls, which cost less than a hop to tokio's blocking pool.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use sandhost_runtime::{LifecycleId, SandboxId, SandboxKey, state_file};
use serde::{Deserialize, Serialize};

use super::{DrainPolicy, SandboxInfo};

/// The persisted part of a sandbox's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SandboxMeta {
    pub(crate) id: SandboxId,
    pub(crate) lifecycle: LifecycleId,
    pub(crate) template: String,
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(with = "policy")]
    pub(crate) drain_policy: DrainPolicy,
    pub(crate) created_at: SystemTime,
    pub(crate) end_time: Option<SystemTime>,
}

impl SandboxMeta {
    pub(crate) fn from_entry(info: &SandboxInfo) -> Self {
        Self {
            id: info.id.clone(),
            lifecycle: info.lifecycle.clone(),
            template: info.template.clone(),
            labels: info.labels.clone(),
            drain_policy: info.drain_policy,
            created_at: info.created_at,
            end_time: info.end_time,
        }
    }
}

mod policy {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::sandbox::DrainPolicy;

    pub(super) fn serialize<S: Serializer>(policy: &DrainPolicy, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(policy.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DrainPolicy, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "stop" => DrainPolicy::Stop,
            "checkpoint" => DrainPolicy::Checkpoint,
            _ => DrainPolicy::Wait,
        })
    }
}

/// The file of `key`. Ids are [a-z0-9][a-z0-9-]* and lifecycles hex: the name cannot leave the
/// directory. Keyed by lifecycle, so removing one lifecycle's file never races the next one's.
fn file_name(key: &SandboxKey) -> String {
    format!("{}.{}.json", key.id, key.lifecycle)
}

/// The directory of [`SandboxMeta`] files.
#[derive(Debug)]
pub(crate) struct MetaStore {
    dir: PathBuf,
}

impl MetaStore {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, key: &SandboxKey) -> PathBuf {
        self.dir.join(file_name(key))
    }

    pub(crate) fn save(&self, meta: &SandboxMeta) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let key = SandboxKey { id: meta.id.clone(), lifecycle: meta.lifecycle.clone() };
        state_file::write(&self.dir, &file_name(&key), meta)
    }

    pub(crate) fn load(&self, key: &SandboxKey) -> Option<SandboxMeta> {
        state_file::read_path(&self.path(key)).ok().flatten()
    }

    /// Removes every file that belongs to none of `live` (left by an agent that died between a
    /// sandbox's exit and the removal of its file).
    pub(crate) fn retain(&self, live: &[SandboxKey]) {
        let keep: std::collections::HashSet<PathBuf> = live.iter().map(|key| self.path(key)).collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            if !keep.contains(&entry.path()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    pub(crate) fn remove(&self, key: &SandboxKey) -> io::Result<()> {
        match std::fs::remove_file(self.path(key)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
