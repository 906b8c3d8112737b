//! `recover`: find the sandboxes an earlier agent left, in the state dir and under the parent
//! cgroup.
//!
//! For each `<id>/<lifecycle>` (names that are not valid ids are skipped, never joined into a path):
//! - no `spec.json`: a cleaned-up lifecycle whose log awaits `forget`: reported
//!   [`RecoveredState::CleanedUp`] (unless its cgroup still holds processes: see below);
//! - no `init.json`: the agent died inside `start`, which therefore never succeeded: everything
//!   is undone (cgroup killed and removed, directory removed);
//! - the init still runs (same pid *and* same start time, checked after opening a pidfd, so a
//!   reused pid is never adopted): re-adopted;
//! - otherwise: its leftovers are cleaned up and its recorded exit returned.
//!
//! A damaged `spec.json` does not lose the sandbox: it is adopted through its init record, or, if
//! that is damaged too, through its cgroup ([`Sandbox::watched_by_cgroup`]), and reported with
//! what was lost ([`Lost::State`](crate::Lost::State)). Then every cgroup under the parent that no
//! lifecycle accounted for is adopted from its name (`<id>.<lifecycle>`) if it holds processes,
//! removed if it is empty, and killed and reported if its name is no sandbox's. Last, what warm
//! pool members an earlier agent left is destroyed (`warm::remove_leftovers`): they are never
//! adopted.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use super::control::{KILL_TIMEOUT, Sandbox};
use super::files::{self, InitRecord};
use super::{Inner, sys, warm};
use crate::cgroup::Cgroup;
use crate::{Exit, LifecycleId, RecoverError, Recovered, RecoveredState, SandboxId, SandboxKey};
use crate::{recovery, state, state_file};

pub(super) async fn recover(inner: &Arc<Inner>) -> Result<Vec<Recovered>, RecoverError> {
    let root = state::sandboxes_dir(&inner.config.state_dir);
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RecoverError::StateDir { path, source }
    };
    let mut found = Vec::new();
    // Lifecycles whose state was lost, left for the cgroup pass: why.
    let mut lost: HashMap<SandboxKey, String> = HashMap::new();
    // The cgroups of claimed warm pool members that lifecycles name.
    let mut claimed: HashSet<String> = HashSet::new();
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
            match recover_one(inner, key, &mut claimed).await {
                Outcome::Found(recovered) => found.push(*recovered),
                Outcome::Lost(key, why) => {
                    lost.insert(key, why);
                }
                Outcome::Nothing => {}
            }
        }
    }
    found.extend(recover_cgroups(inner, lost).await);
    // Members are not sandboxes: what an earlier agent's pool left is destroyed, never adopted.
    warm::remove_leftovers(inner, |name| inner.pool.is_live(name), |name| claimed.contains(name)).await;
    Ok(found)
}

/// What became of one lifecycle of the state dir.
enum Outcome {
    Found(Box<Recovered>),
    /// Its state is lost and its cgroup holds processes: the cgroup pass adopts it.
    Lost(SandboxKey, String),
    Nothing,
}

async fn recover_one(inner: &Arc<Inner>, key: SandboxKey, claimed: &mut HashSet<String>) -> Outcome {
    let dir = state::sandbox_dir(&inner.config.state_dir, &key);
    // What was lost, for people.
    let mut lost: Vec<String> = Vec::new();
    let spec = match recovery::read_spec(&dir, &key) {
        Ok(Some(spec)) => Some(spec),
        Ok(None) if inner.cgroup(&key).is_populated() => {
            lost.push(format!("{} is missing", dir.join(files::SPEC).display()));
            None
        }
        Ok(None) => return Outcome::Found(Box::new(recovery::cleaned_up(key))),
        Err(why) => {
            lost.push(why);
            None
        }
    };
    let record = match state_file::read::<InitRecord>(&dir, files::INIT) {
        Ok(Some(record)) => Some(record),
        Ok(None) if spec.is_some() => {
            tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "undoing a start the earlier agent did not finish");
            kill_and_remove(&inner.cgroup(&key)).await;
            let _ = files::remove_all(&dir);
            return Outcome::Nothing;
        }
        Ok(None) => None,
        Err(e) => {
            lost.push(recovery::unreadable(&e));
            None
        }
    };
    // A claimed member's cgroup keeps the member's name; the record is hostile input, so the
    // name is used only if it is a member's.
    let name = match record.as_ref().and_then(|r| r.cgroup_name.as_deref()) {
        Some(name) if warm::is_member_name(name) => {
            claimed.insert(name.to_owned());
            name.to_owned()
        }
        _ => super::cgroup_name(&key),
    };
    let cgroup = match record.as_ref().and_then(|r| other_parent(r, inner.layout.parent())) {
        Some(parent) => inner.layout.with_parent(parent).cgroup(&name),
        None => inner.layout.cgroup(&name),
    };
    if let Some(record) = &record
        && let Some(pidfd) = open_same_process(record)
    {
        let paused = cgroup.is_frozen();
        match Sandbox::running(key.clone(), dir.clone(), cgroup.clone(), pidfd) {
            Ok(sandbox) => {
                inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sandbox);
                tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, pid = record.pid, "re-adopted a running sandbox");
                return Outcome::Found(Box::new(match spec {
                    Some(spec) => {
                        Recovered::new(spec, record.started_at(), RecoveredState::Running { paused })
                    }
                    None => {
                        lost.push(
                            "adopted through its init record (the runtime lost its command, limits and grace)"
                                .into(),
                        );
                        recovery::adopted_without_spec(key, &cgroup, paused, lost.join("; "))
                    }
                }));
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch a re-adopted init; treating it as gone"),
        }
    } else if record.is_none() && cgroup.is_populated() {
        return Outcome::Lost(key, lost.join("; "));
    }
    // It ended (or its init cannot be watched).
    crate::durable::queue(&dir.join(files::EXIT)); // the init did not sync it
    let exit = state_file::read::<Exit>(&dir, files::EXIT).ok().flatten();
    cleanup_ended(inner, &key, &dir, cgroup, exit).await;
    let started_at = record.as_ref().map_or_else(SystemTime::now, InitRecord::started_at);
    let mut recovered = match spec {
        Some(spec) => Recovered::new(spec, started_at, RecoveredState::Exited(exit)),
        None => recovery::ended_without_spec(key, exit),
    };
    if !lost.is_empty() {
        recovered.lost.push(crate::Lost::State(lost.join("; ")));
    }
    Outcome::Found(Box::new(recovered))
}

/// Every cgroup under the parent that no lifecycle accounted for: adopted from its name if it
/// holds processes (`lost` says what was lost of those the state dir knew), removed if empty,
/// killed and reported if its name is no sandbox's.
async fn recover_cgroups(inner: &Arc<Inner>, mut lost: HashMap<SandboxKey, String>) -> Vec<Recovered> {
    let mut found = Vec::new();
    for name in inner.layout.children() {
        if warm::is_member_name(&name) {
            continue; // a warm pool member's: see `warm::remove_leftovers`
        }
        let Some(key) = key_of(&name) else {
            found.extend(recovery::kill_unidentified(&inner.layout, &name).await);
            continue;
        };
        if inner.get(&key).is_some() {
            continue;
        }
        let cgroup = inner.cgroup(&key);
        if !cgroup.is_populated() {
            recovery::remove_leftover(&cgroup, &name).await;
            continue;
        }
        let why = lost.remove(&key).unwrap_or_else(|| "no state of it was found in the state dir".to_owned());
        let why = format!(
            "{why}; adopted through its cgroup (the runtime lost its command, limits and grace, and will not know its exit code)"
        );
        let dir = state::sandbox_dir(&inner.config.state_dir, &key);
        let paused = cgroup.is_frozen();
        let sandbox = Sandbox::watched_by_cgroup(key.clone(), dir, cgroup.clone());
        inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sandbox);
        found.push(recovery::adopted_without_spec(key, &cgroup, paused, why));
    }
    found
}

/// The parent an init record names when it is not `current` (an agent with another configuration,
/// or one that was not a systemd service, started it) and is a valid one. The record is a file an
/// earlier agent wrote, so hostile input: its parent is validated as strictly as the
/// configuration's before it is joined under any hierarchy; an invalid one is ignored (the current
/// parent is looked in).
fn other_parent<'a>(record: &'a InitRecord, current: &str) -> Option<&'a str> {
    let parent = record.cgroup_parent.as_deref()?;
    (parent != current && crate::cgroup::is_valid_cgroup_parent(parent)).then_some(parent)
}

/// The sandbox a cgroup name of this backend (`<id>.<lifecycle>`) stands for.
fn key_of(name: &str) -> Option<SandboxKey> {
    let (id, lifecycle) = name.split_once('.')?;
    Some(SandboxKey { id: SandboxId::parse(id).ok()?, lifecycle: LifecycleId::parse(lifecycle).ok()? })
}

/// Cleans up after a sandbox that ended while no agent ran, keeping its exit for `wait`.
async fn cleanup_ended(inner: &Arc<Inner>, key: &SandboxKey, dir: &Path, cgroup: Cgroup, exit: Option<Exit>) {
    kill_and_remove(&cgroup).await;
    if let Err(e) = files::remove_state_files(dir) {
        tracing::warn!(sandbox.id = %key.id, error = %e, "cleanup of an exited sandbox's state failed");
    }
    let sandbox = Sandbox::exited(key.clone(), cgroup, exit.unwrap_or(Exit::Signal(libc::SIGKILL)));
    inner.sandboxes.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), sandbox);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_parent_is_used_only_when_valid_and_another() {
        let record = |parent: Option<&str>| InitRecord {
            pid: 1,
            start_time: 0,
            started_at_ms: 0,
            cgroup_parent: parent.map(str::to_owned),
            cgroup_name: None,
        };
        let current = "system.slice/sandhost.service/sandboxes";
        // Started under the root parent before the agent became a systemd service, or the reverse.
        assert_eq!(other_parent(&record(Some("sandhost")), current), Some("sandhost"));
        assert_eq!(other_parent(&record(Some(current)), "sandhost"), Some(current));
        // The same parent, or none recorded (an older agent): the current one.
        assert_eq!(other_parent(&record(Some(current)), current), None);
        assert_eq!(other_parent(&record(None), current), None);
        // Hostile: never joined.
        for hostile in ["../../etc", "/sys/fs/cgroup", "a/../../b", "", "a//b", "a\nb", "x/./y"] {
            assert_eq!(other_parent(&record(Some(hostile)), current), None, "{hostile:?}");
        }
    }
}
