//! `recover`: find the sandboxes an earlier agent left in the state dir.
//!
//! For each `<id>/<lifecycle>` (names that are not valid ids are skipped, never joined into a path):
//! - no `spec.json`: a cleaned-up lifecycle whose log awaits `forget`; skipped;
//! - no `init.json`: the agent died inside `start`, which therefore never succeeded: everything
//!   is undone (cgroup killed and removed, directory removed);
//! - the init still runs (same pid *and* same start time, checked after opening a pidfd, so a
//!   reused pid is never adopted): re-adopted;
//! - otherwise: its leftovers are cleaned up and its recorded exit returned.

use std::fs;
use std::os::fd::OwnedFd;
use std::sync::{Arc, PoisonError};

use super::control::{KILL_TIMEOUT, Sandbox};
use super::files::{self, InitRecord};
use super::{Inner, sys};
use crate::cgroup::Cgroup;
use crate::{Exit, LifecycleId, RecoverError, Recovered, RecoveredState, SandboxId, SandboxKey, SandboxSpec};
use crate::{state, state_file};

pub(super) async fn recover(inner: &Arc<Inner>) -> Result<Vec<Recovered>, RecoverError> {
    let root = state::sandboxes_dir(&inner.config.state_dir);
    let read_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| RecoverError::StateDir { path, source }
    };
    let mut found = Vec::new();
    for id_entry in fs::read_dir(&root).map_err(read_err(&root))? {
        let id_entry = id_entry.map_err(read_err(&root))?;
        let Some(id) = id_entry.file_name().to_str().and_then(|n| SandboxId::parse(n).ok()) else {
            tracing::warn!(name = ?id_entry.file_name(), "ignoring a foreign entry in the state dir");
            continue;
        };
        let id_dir = id_entry.path();
        for lc_entry in fs::read_dir(&id_dir).map_err(read_err(&id_dir))? {
            let lc_entry = lc_entry.map_err(read_err(&id_dir))?;
            let Some(lifecycle) = lc_entry.file_name().to_str().and_then(|n| LifecycleId::parse(n).ok())
            else {
                continue;
            };
            let key = SandboxKey { id: id.clone(), lifecycle };
            if inner.get(&key).is_some() {
                continue;
            }
            if let Some(recovered) = recover_one(inner, key).await {
                found.push(recovered);
            }
        }
    }
    Ok(found)
}

async fn recover_one(inner: &Arc<Inner>, key: SandboxKey) -> Option<Recovered> {
    let dir = state::sandbox_dir(&inner.config.state_dir, &key);
    let spec = match state_file::read::<SandboxSpec>(&dir, files::SPEC) {
        Ok(Some(spec)) if spec.key == key => spec,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, error = %e, "unreadable spec; skipped");
            return None;
        }
    };
    let record = state_file::read::<InitRecord>(&dir, files::INIT).ok().flatten();
    let cgroup = match record.as_ref().and_then(|r| r.cgroup_parent.as_deref()) {
        Some(parent) if parent != inner.layout.parent() && super::is_valid_cgroup_parent(parent) => {
            inner.layout.with_parent(parent).cgroup(&super::cgroup_name(&key))
        }
        _ => inner.cgroup(&key),
    };
    let Some(record) = record else {
        tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "undoing a start the earlier agent did not finish");
        kill_and_remove(&cgroup).await;
        let _ = files::remove_all(&dir);
        return None;
    };
    if let Some(pidfd) = open_same_process(&record) {
        let paused = cgroup.is_frozen();
        match Sandbox::running(key.clone(), dir.clone(), cgroup.clone(), pidfd) {
            Ok(sandbox) => {
                inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sandbox);
                tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, pid = record.pid, "re-adopted a running sandbox");
                return Some(Recovered::new(spec, record.started_at(), RecoveredState::Running { paused }));
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch a re-adopted init; treating it as gone"),
        }
    }
    let exit = state_file::read::<Exit>(&dir, files::EXIT).ok().flatten();
    kill_and_remove(&cgroup).await;
    if let Err(e) = files::remove_state_files(&dir) {
        tracing::warn!(sandbox.id = %key.id, error = %e, "cleanup of an exited sandbox's state failed");
    }
    let sandbox = Sandbox::exited(key.clone(), cgroup, exit.unwrap_or(Exit::Signal(libc::SIGKILL)));
    inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(key, sandbox);
    Some(Recovered::new(spec, record.started_at(), RecoveredState::Exited(exit)))
}

/// A pidfd for the recorded init if the pid still names the same process.
fn open_same_process(record: &InitRecord) -> Option<OwnedFd> {
    if !files::is_same_process(record) {
        return None;
    }
    let pidfd = sys::pidfd_open(record.pid).ok()?;
    // Checked again after opening: the pidfd names whatever had the pid at open time.
    files::is_same_process(record).then_some(pidfd)
}

async fn kill_and_remove(cgroup: &Cgroup) {
    if let Err(e) = cgroup.kill_until_empty(KILL_TIMEOUT).await {
        tracing::warn!(step = e.step, error = %e.source, "processes of an exited sandbox left behind");
    }
    if let Err(e) = cgroup.remove().await {
        tracing::warn!(step = e.step, error = %e.source, "cgroup of an exited sandbox left behind");
    }
}
