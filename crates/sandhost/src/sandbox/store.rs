//! The manager's record of each sandbox, one state file per lifecycle in `<state_dir>/meta/`
//! (`sandhost_runtime::state_file`: written atomically and durably, checked when read): what the
//! API reports of it beyond the runtime's spec (labels, end time, drain policy, template, command,
//! limits, conditions) and, once it has exited, its exit. A restarted agent re-adopts live
//! sandboxes with all of it, and shows exited ones until their retention ends.
//!
//! # Invariants
//!
//! - Written at the Create (before the start), at an Update, when recovery gave it defaults or
//!   conditions, and at the exit; removed when the retention ends, after the runtime's last files.
//! - A damaged record is reported, never half-read (recovery then gives the node's defaults and a
//!   condition). A record written before the exit and the command were kept reads with none.
//!
//! The files are a few hundred bytes on the state dir's local disk, written with plain `std::fs`
//! calls; a durable write waits for two fsyncs (about 7 ms on the disk of the hosts this was built
//! on), so the one on the exit's path runs on tokio's blocking pool (`supervise.rs`).

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

use sandhost_runtime::state_file::{self, StateFileError};
use sandhost_runtime::{Exit, LifecycleId, Limits, SandboxId, SandboxKey, SnapshotId};
use serde::{Deserialize, Serialize};

use super::{Condition, ConditionKind, DrainPolicy, ExitInfo, ExitReason, SandboxInfo, SandboxState};

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
    #[serde(default)]
    pub(crate) argv: Vec<String>,
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) restored_from: Option<SnapshotId>,
    #[serde(default)]
    pub(crate) started_at: Option<SystemTime>,
    #[serde(default)]
    conditions: Vec<StoredCondition>,
    /// Set once it has exited.
    #[serde(default)]
    exit: Option<StoredExit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredCondition {
    kind: String,
    message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredExit {
    exited_at: SystemTime,
    exit: Option<Exit>,
    reason: String,
    message: Option<String>,
    #[serde(default)]
    oom_killed: Option<bool>,
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
            argv: info.argv.clone(),
            limits: info.limits,
            restored_from: info.restored_from.clone(),
            started_at: info.started_at,
            conditions: info
                .conditions
                .iter()
                .map(|c| StoredCondition { kind: c.kind.as_str().to_owned(), message: c.message.clone() })
                .collect(),
            exit: match (&info.exit, info.exited_at) {
                (Some(exit), Some(exited_at)) => Some(StoredExit {
                    exited_at,
                    exit: exit.exit,
                    reason: exit.reason.as_str().to_owned(),
                    message: exit.message.clone(),
                    oom_killed: exit.oom_killed,
                }),
                _ => None,
            },
        }
    }

    pub(crate) fn key(&self) -> SandboxKey {
        SandboxKey { id: self.id.clone(), lifecycle: self.lifecycle.clone() }
    }

    /// When it exited, if the record says it has.
    pub(crate) fn exited_at(&self) -> Option<SystemTime> {
        self.exit.as_ref().map(|e| e.exited_at)
    }

    /// The read model this record holds, in `state` (`Exited` with its exit once it has one).
    pub(crate) fn to_info(&self, state: SandboxState) -> SandboxInfo {
        let exit = self.exit.as_ref();
        SandboxInfo {
            id: self.id.clone(),
            lifecycle: self.lifecycle.clone(),
            state,
            argv: self.argv.clone(),
            template: self.template.clone(),
            limits: self.limits,
            labels: self.labels.clone(),
            drain_policy: self.drain_policy,
            created_at: self.created_at,
            started_at: self.started_at,
            end_time: self.end_time,
            exited_at: exit.map(|e| e.exited_at),
            exit: exit.map(|e| ExitInfo {
                exit: e.exit,
                reason: ExitReason::from_name(&e.reason).unwrap_or(ExitReason::Exited),
                message: e.message.clone(),
                oom_killed: e.oom_killed,
            }),
            restored_from: self.restored_from.clone(),
            conditions: self
                .conditions
                .iter()
                .filter_map(|c| {
                    let kind = ConditionKind::from_name(&c.kind)?;
                    Some(Condition { kind, message: c.message.clone() })
                })
                .collect(),
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

/// The key a file name of [`file_name`] stands for.
fn key_of(name: &str) -> Option<SandboxKey> {
    let (id, lifecycle) = name.strip_suffix(".json")?.split_once('.')?;
    Some(SandboxKey { id: SandboxId::parse(id).ok()?, lifecycle: LifecycleId::parse(lifecycle).ok()? })
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

    pub(crate) fn save(&self, meta: &SandboxMeta) -> io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        // On the path of every Create and exit: durable soon after, not before (see `durable`).
        state_file::write_soon(&self.dir, &file_name(&meta.key()), meta)
    }

    /// Every record, by key, each read or the reason it could not be (a file whose name is no
    /// record's, or a temporary a crash left, is removed).
    pub(crate) fn list(&self) -> Vec<(SandboxKey, Result<SandboxMeta, StateFileError>)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut records = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(key) = name.to_str().and_then(key_of) else {
                tracing::warn!(path = %entry.path().display(), "removing a file that is no sandbox record");
                let _ = std::fs::remove_file(entry.path());
                continue;
            };
            let record = match state_file::read_path::<SandboxMeta>(&entry.path()) {
                Ok(Some(meta)) if meta.key() == key => Ok(meta),
                Ok(Some(_)) => Err(StateFileError::Damaged {
                    path: entry.path(),
                    reason: "it is the record of another sandbox".to_owned(),
                }),
                Ok(None) => continue, // removed meanwhile
                Err(e) => Err(e),
            };
            records.push((key, record));
        }
        records
    }

    pub(crate) fn remove(&self, key: &SandboxKey) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(file_name(key))) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_with_its_exit_and_conditions() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = MetaStore::new(dir.path().join("meta"));
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
        let info = SandboxInfo {
            id: SandboxId::parse("box").expect("id"),
            lifecycle: LifecycleId::parse("ab").expect("lifecycle"),
            state: SandboxState::Exited,
            argv: vec!["echo".into(), "hi".into()],
            template: "host".into(),
            limits: Limits { memory_bytes: Some(1 << 20), cpu_millis: None, pids_max: Some(9) },
            labels: BTreeMap::from([("k".into(), "v".into())]),
            drain_policy: DrainPolicy::Stop,
            created_at: at,
            started_at: Some(at),
            end_time: Some(at),
            exited_at: Some(at),
            exit: Some(ExitInfo {
                exit: Some(Exit::Signal(9)),
                reason: ExitReason::Timeout,
                message: None,
                oom_killed: Some(true),
            }),
            restored_from: None,
            conditions: vec![Condition { kind: ConditionKind::MetadataLost, message: "lost".into() }],
        };
        store.save(&SandboxMeta::from_entry(&info)).expect("save");
        std::fs::write(dir.path().join("meta").join("box.ab.json.tmp"), b"half").expect("a crashed write");
        let listed = store.list();
        assert_eq!(listed.len(), 1);
        let (key, record) = &listed[0];
        assert_eq!(key.id.as_str(), "box");
        assert_eq!(record.as_ref().expect("readable").to_info(SandboxState::Exited), info);
        assert!(!dir.path().join("meta").join("box.ab.json.tmp").exists(), "the temporary is removed");
        store.remove(key).expect("remove");
        assert!(store.list().is_empty());
    }

    #[test]
    fn a_record_written_before_exits_were_kept_still_reads() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(
            dir.path().join("box.ab.json"),
            br#"{"id":"box","lifecycle":"ab","template":"host","labels":{},"drain_policy":"stop","created_at":{"secs_since_epoch":5,"nanos_since_epoch":0},"end_time":null}"#,
        )
        .expect("write");
        let listed = MetaStore::new(dir.path().to_path_buf()).list();
        let meta = listed[0].1.as_ref().expect("readable");
        assert_eq!((meta.drain_policy, meta.exited_at()), (DrainPolicy::Stop, None));
    }
}
