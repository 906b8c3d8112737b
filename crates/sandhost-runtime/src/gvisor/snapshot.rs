//! Checkpoint, restore and the snapshot store: `<state_dir>/snapshots/<snapshot id>/` holds runsc's
//! image and `snapshot.json` (the source sandbox, when, the size, and the spec the bundle of a
//! restore is made from). Such a directory copied into another host's state dir restores there.
//!
//! A checkpoint is written into `.partial-<id>` (never a valid snapshot id, so never listed) and
//! renamed into place once complete.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::inner::Inner;
use super::lifecycle::{self, Launch};
use super::paths::{self, snapshot_dir, snapshots_dir};
use crate::{
    CheckpointError, Exit, SandboxId, SandboxKey, SandboxSpec, SnapshotId, SnapshotInfo, StartError, Started,
};
use crate::{state, state_file};

pub(super) const META: &str = "snapshot.json";

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotMeta {
    source: SandboxId,
    created_at_ms: u64,
    size_bytes: u64,
    spec: SandboxSpec,
}

impl SnapshotMeta {
    fn info(&self, id: SnapshotId) -> SnapshotInfo {
        SnapshotInfo {
            id,
            source: self.source.clone(),
            created_at: UNIX_EPOCH + Duration::from_millis(self.created_at_ms),
            size_bytes: self.size_bytes,
        }
    }
}

fn dir_size(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let meta = entry?.metadata()?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

/// Saves the sandbox as `id`; then restores it into a fresh container of the same lifecycle (it
/// keeps its memory), or, with `stop`, leaves it stopped.
pub(super) async fn checkpoint(
    inner: &Inner,
    key: &SandboxKey,
    id: &SnapshotId,
    stop: bool,
) -> Result<SnapshotInfo, CheckpointError> {
    let sandbox = inner.get(key).ok_or_else(|| CheckpointError::NotFound(key.clone()))?;
    let _op = sandbox.op.lock().await;
    if sandbox.exit().is_some() {
        return Err(CheckpointError::NotFound(key.clone()));
    }
    let host = |step| move |source| CheckpointError::Host { step, source };
    let target = snapshot_dir(&inner.config.state_dir, id);
    if target.exists() {
        return Err(CheckpointError::SnapshotExists(id.clone()));
    }
    let partial = snapshots_dir(&inner.config.state_dir).join(format!(".partial-{id}"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(host("create snapshot dir"))?;
    let spec: SandboxSpec = match state_file::read(&sandbox.dir, state::SPEC) {
        Ok(Some(spec)) => spec,
        Ok(None) => return Err(host("read spec")(io::Error::other("spec.json missing"))),
        Err(e) => return Err(host("read spec")(e.into())),
    };
    let old = sandbox.cid();
    // A frozen sandbox cannot be checkpointed: thaw it (the caller pauses it again afterwards).
    if sandbox.is_paused() {
        inner.container_cgroup(&old).thaw().map_err(|e| host("thaw cgroup")(e.source))?;
        sandbox.set_paused_flag(false);
    }
    sandbox.suspend();
    let args: [&OsStr; 4] = ["checkpoint".as_ref(), "--image-path".as_ref(), partial.as_ref(), old.as_ref()];
    if let Err(e) = inner.runsc.run(&args).await {
        let _ = std::fs::remove_dir_all(&partial);
        if let Some(exit) = sandbox.unsuspend() {
            sandbox.publish(exit);
        }
        return Err(host("runsc checkpoint")(e));
    }
    let meta = SnapshotMeta {
        source: key.id.clone(),
        created_at_ms: state::millis_since_epoch(SystemTime::now()),
        size_bytes: dir_size(&partial).unwrap_or(0),
        spec: spec.clone(),
    };
    let saved = state_file::write(&partial, META, &meta).and_then(|()| std::fs::rename(&partial, &target));
    if stop {
        // The container has stopped: its watcher publishes the exit (now or already parked).
        if let Some(exit) = sandbox.unsuspend() {
            sandbox.publish(exit);
        }
        if saved.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        saved.map_err(host("write snapshot"))?;
        return Ok(meta.info(id.clone()));
    }
    let saved = saved.map_err(host("write snapshot"));
    let new = paths::container_id(key, paths::generation_of(&old) + 1);
    let image = if saved.is_ok() { target.clone() } else { partial.clone() };
    let restored = lifecycle::run_container(
        inner,
        &spec,
        &sandbox.dir,
        &new,
        Launch::Restore { snapshot: id, image: &image },
    )
    .await
    .map(|launched| {
        // The old container's watcher sees a new name from here on and stays quiet.
        sandbox.set_cid(new.clone());
        let _ = sandbox.unsuspend();
        match launched.exited {
            Some(exit) => sandbox.publish(exit),
            None => sandbox.watch_container(launched.source, new.clone()),
        }
    });
    let runsc = inner.runsc.clone();
    let cgroups = inner.cgroups.clone();
    let mut stale = vec![old];
    if restored.is_err() {
        stale.push(new);
        let exit = sandbox.unsuspend().unwrap_or(Exit::Signal(libc::SIGKILL));
        sandbox.publish(exit);
    }
    sandbox.keep_background(inner.background.spawn(async move {
        for cid in stale {
            if let Err(e) = runsc.delete(&cid).await {
                tracing::warn!(container = %cid, error = %e, "deleting a replaced container failed");
            }
            if let Err(e) = cgroups.find(&cid).remove().await {
                tracing::warn!(container = %cid, step = e.step, error = %e.source, "removing a replaced container's cgroup failed");
            }
        }
    }));
    if saved.is_err() {
        // The image served the restore; without its metadata it is no snapshot.
        let _ = std::fs::remove_dir_all(&partial);
    }
    saved?;
    restored.map_err(host("runsc restore"))?;
    Ok(meta.info(id.clone()))
}

/// Starts `spec.key` from snapshot `id`: its bundle is the snapshot's spec (a restore must see the
/// mounts, command and user the checkpoint saw) under the new key, with the new spec's limits and
/// stop grace.
pub(super) async fn restore(
    inner: &Inner,
    spec: &SandboxSpec,
    id: &SnapshotId,
) -> Result<Started, StartError> {
    let dir = snapshot_dir(&inner.config.state_dir, id);
    let refuse =
        |reason: String| StartError::Snapshot { key: spec.key.clone(), snapshot: id.clone(), reason };
    let meta: SnapshotMeta = match state_file::read(&dir, META) {
        Ok(Some(meta)) => meta,
        Ok(None) => return Err(refuse("no such snapshot on this node".to_owned())),
        Err(e) => return Err(refuse(format!("unreadable {META}: {e}"))),
    };
    let mut restored = meta.spec;
    restored.key = spec.key.clone();
    restored.restore_from = Some(id.clone());
    restored.stop_grace = spec.stop_grace;
    restored.limits = spec.limits;
    lifecycle::launch(inner, &restored, Launch::Restore { snapshot: id, image: &dir }).await
}

pub(super) async fn list(inner: &Inner) -> Result<Vec<SnapshotInfo>, CheckpointError> {
    let dir = snapshots_dir(&inner.config.state_dir);
    let entries =
        std::fs::read_dir(&dir).map_err(|source| CheckpointError::Host { step: "list snapshots", source })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(id) = entry.file_name().to_str().and_then(|n| SnapshotId::parse(n).ok()) else {
            continue;
        };
        match state_file::read::<SnapshotMeta>(&entry.path(), META) {
            Ok(Some(meta)) => out.push(meta.info(id)),
            Ok(None) => {}
            Err(e) => tracing::warn!(snapshot = %id, error = %e, "skipping an unreadable snapshot"),
        }
    }
    out.sort_by_key(|s| s.created_at);
    Ok(out)
}

pub(super) async fn delete(inner: &Inner, id: &SnapshotId) -> Result<(), CheckpointError> {
    let dir = snapshot_dir(&inner.config.state_dir, id);
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => {}
        _ => return Err(CheckpointError::SnapshotNotFound(id.clone())),
    }
    std::fs::remove_dir_all(&dir).map_err(|source| CheckpointError::Host { step: "delete snapshot", source })
}
