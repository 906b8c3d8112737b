//! What the manager keeps about each live sandbox beyond the runtime's spec (labels, end time, drain
//! policy, template name), one JSON file per sandbox, so a restarted agent re-adopts sandboxes with
//! everything the API reported about them. Writes are atomic (temp file + rename).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use sandhost_runtime::{LifecycleId, SandboxId};
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

/// The directory of [`SandboxMeta`] files.
#[derive(Debug)]
pub(crate) struct MetaStore {
    dir: PathBuf,
}

impl MetaStore {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, id: &SandboxId) -> PathBuf {
        // A SandboxId is [a-z0-9][a-z0-9-]*: it cannot name another directory.
        self.dir.join(format!("{id}.json"))
    }

    pub(crate) async fn save(&self, meta: &SandboxMeta) -> io::Result<()> {
        tokio::fs::create_dir_all(&self.dir).await?;
        let json = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let path = self.path(&meta.id);
        let temp = path.with_extension("json.tmp");
        tokio::fs::write(&temp, json).await?;
        tokio::fs::rename(&temp, &path).await
    }

    pub(crate) async fn load(&self, id: &SandboxId) -> Option<SandboxMeta> {
        let bytes = tokio::fs::read(self.path(id)).await.ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub(crate) async fn remove(&self, id: &SandboxId) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
