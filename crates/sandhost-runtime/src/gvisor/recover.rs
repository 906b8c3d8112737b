//! Re-adoption after an agent restart: every lifecycle in the state dir whose container runsc still
//! reports running (or paused) gets a new watcher; the others are deleted and reported exited with
//! the exit they recorded; a lifecycle of which only the log is left is reported cleaned up.
//!
//! A damaged spec does not lose the sandbox: it is adopted through its container's name. If that
//! name (`container.json`) is lost too, every container cgroup under the parent
//! (`<id>.<lifecycle>.<generation>`, found through `crate::cgroup::Layout::find`) that no lifecycle
//! accounts for and that holds processes is adopted from its name: watched through runsc if runsc
//! still knows it, else through the cgroup alone. A cgroup whose name is no sandbox's is killed
//! and reported. Containers in our `--root` that no lifecycle names are deleted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::inner::Inner;
use super::lifecycle;
use super::paths::{self, read_container};
use super::recorder;
use super::sandbox::{ExitSource, Sandbox};
use crate::cgroup::FreezerState;
use crate::{Exit, LifecycleId, Lost, RecoverError, Recovered, RecoveredState, SandboxId, SandboxKey};
use crate::{recovery, state, state_file};

pub(super) async fn recover(inner: &Inner) -> Result<Vec<Recovered>, RecoverError> {
    let root = state::sandboxes_dir(&inner.config.state_dir);
    let read_err = |source| RecoverError::StateDir { path: root.clone(), source };
    let mut found = Vec::new();
    let mut adopted = HashSet::new();
    // Lifecycles whose container's name was lost, left for the cgroup pass: why.
    let mut lost: HashMap<SandboxKey, String> = HashMap::new();
    for id_entry in std::fs::read_dir(&root).map_err(read_err)?.flatten() {
        let Some(id) = id_entry.file_name().to_str().and_then(|n| SandboxId::parse(n).ok()) else {
            continue;
        };
        let Ok(lifecycles) = std::fs::read_dir(id_entry.path()) else { continue };
        for entry in lifecycles.flatten() {
            let Some(lifecycle) = entry.file_name().to_str().and_then(|n| LifecycleId::parse(n).ok()) else {
                continue;
            };
            let key = SandboxKey { id: id.clone(), lifecycle };
            if inner.get(&key).is_some() {
                continue;
            }
            let dir = entry.path();
            adopt_legacy_log(&dir);
            match recover_one(inner, key, dir).await {
                Outcome::Found(recovered, cid) => {
                    adopted.extend(cid);
                    found.push(*recovered);
                }
                Outcome::Lost(key, why) => {
                    lost.insert(key, why);
                }
                Outcome::Nothing => {}
            }
        }
    }
    found.extend(recover_cgroups(inner, &mut adopted, lost).await);
    match inner.runsc.list().await {
        Ok(ids) => {
            for cid in ids.into_iter().filter(|cid| !adopted.contains(cid)) {
                tracing::info!(container = %cid, "deleting a container no sandbox owns");
                if let Err(e) = lifecycle::delete_container(inner, &cid).await {
                    tracing::warn!(container = %cid, error = %e, "deleting an orphaned container failed");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "listing runsc containers failed"),
    }
    Ok(found)
}

/// What became of one lifecycle of the state dir.
enum Outcome {
    /// Found, with the container it runs in if it was adopted.
    Found(Box<Recovered>, Option<String>),
    /// Its container's name is lost: the cgroup pass looks for it.
    Lost(SandboxKey, String),
    Nothing,
}

async fn recover_one(inner: &Inner, key: SandboxKey, dir: PathBuf) -> Outcome {
    // What was lost, for people.
    let mut lost: Vec<String> = Vec::new();
    let spec = recovery::read_spec(&dir, &key).unwrap_or_else(|why| {
        lost.push(why);
        None
    });
    let cid = match read_container(&dir) {
        Ok(cid) => cid,
        Err(e) => {
            lost.push(recovery::unreadable(&e));
            None
        }
    };
    let Some(cid) = cid else {
        return match (spec, lost.is_empty()) {
            // Cleaned up already: only its log is left (unless a cgroup of it still holds processes).
            (None, true) if !has_populated_cgroup(inner, &key) => {
                Outcome::Found(Box::new(recovery::cleaned_up(key)), None)
            }
            (None, true) => Outcome::Lost(key, format!("{} is missing", dir.join(state::SPEC).display())),
            // The agent died before the container was made: the start never ran.
            (Some(_), true) => {
                tracing::info!(sandbox.id = %key.id, lifecycle.id = %key.lifecycle, "undoing a start the earlier agent did not finish");
                lifecycle::discard(inner, &paths::container_id(&key, 0), &dir).await;
                Outcome::Nothing
            }
            (_, false) => Outcome::Lost(key, lost.join("; ")),
        };
    };
    if spec.is_none() && lost.is_empty() {
        lost.push(format!("{} is missing", dir.join(state::SPEC).display()));
    }
    // An agent with another parent may have started it: its bundle says where its cgroup is.
    inner.cgroups.locate(&cid, &dir.join(paths::BUNDLE));
    // A frozen (or freezing) sandbox cannot answer `runsc state`: its cgroup says it lives, paused.
    let cgroup = inner.container_cgroup(&cid);
    let frozen = cgroup.freezer_state() != FreezerState::Thawed;
    let status = if frozen {
        Some("paused".to_owned())
    } else {
        inner.runsc.state(&cid).await.ok().flatten().map(|s| s.status)
    };
    let started_at = std::fs::metadata(dir.join(state::SPEC))
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| std::time::SystemTime::now());
    if let Some(s @ ("running" | "paused" | "created")) = status.as_deref() {
        let paused = s == "paused" || frozen;
        let sandbox =
            Sandbox::running(key.clone(), dir, cid.clone(), ExitSource::Runsc(inner.runsc.clone()), paused);
        sandbox.watch_log(inner.config.log_limit_bytes);
        inner.insert(sandbox);
        let recovered = match spec {
            Some(spec) => Recovered::new(spec, started_at, RecoveredState::Running { paused }),
            None => {
                lost.push(
                    "adopted through its container (the runtime lost its command, limits and grace)".into(),
                );
                recovery::adopted_without_spec(key, &cgroup, paused, lost.join("; "))
            }
        };
        return Outcome::Found(Box::new(recovered), Some(cid));
    }
    // Recorded by the agent, or, if it ended while no agent ran, by its recorder.
    let exit = recorded_exit(&dir, &cid);
    inner.insert(Sandbox::exited(key.clone(), dir, cid, exit.unwrap_or(Exit::Signal(libc::SIGKILL))));
    if let Err(e) = lifecycle::cleanup(inner, &key).await {
        tracing::warn!(sandbox.id = %key.id, error = %e, "cleaning up an ended sandbox failed");
    }
    let mut recovered = match spec {
        Some(spec) => Recovered::new(spec, started_at, RecoveredState::Exited(exit)),
        None => recovery::ended_without_spec(key, exit),
    };
    if !lost.is_empty() {
        recovered.lost.push(Lost::State(lost.join("; ")));
    }
    Outcome::Found(Box::new(recovered), None)
}

/// Every container cgroup under the parent that no lifecycle accounted for: adopted from its name
/// if it holds processes (`lost` says what was lost of those the state dir knew), left to the
/// deletion of unowned containers (or removed) otherwise, killed and reported if its name is no
/// sandbox's. The lifecycles of `lost` not found so are reported ended.
async fn recover_cgroups(
    inner: &Inner,
    adopted: &mut HashSet<String>,
    mut lost: HashMap<SandboxKey, String>,
) -> Vec<Recovered> {
    let mut found = Vec::new();
    for name in inner.cgroups.children() {
        if adopted.contains(&name) {
            continue;
        }
        let Some(key) = paths::key_of_container(&name) else {
            found.extend(recovery::kill_unidentified(inner.cgroups.layout(), &name).await);
            continue;
        };
        let cgroup = inner.container_cgroup(&name);
        if inner.get(&key).is_some() || !cgroup.is_populated() {
            // An earlier generation, or an empty leftover: deleted with the containers no sandbox
            // owns; its cgroup here if runsc does not know it.
            if !cgroup.is_populated() {
                recovery::remove_leftover(&cgroup, &name).await;
            }
            continue;
        }
        let why = lost.remove(&key).unwrap_or_else(|| "no state of it was found in the state dir".to_owned());
        let dir = state::sandbox_dir(&inner.config.state_dir, &key);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(sandbox.id = %key.id, error = %e, "cannot make the directory of an adopted sandbox");
        }
        let frozen = cgroup.freezer_state() != FreezerState::Thawed;
        let known =
            frozen || inner.runsc.state(&name).await.ok().flatten().is_some_and(|s| s.status != "stopped");
        let (source, how) = if known {
            (ExitSource::Runsc(inner.runsc.clone()), "adopted through its container's cgroup and runsc")
        } else {
            (
                ExitSource::Cgroup(cgroup.clone()),
                "adopted through its container's cgroup alone (runsc does not know it)",
            )
        };
        let sandbox = Sandbox::running(key.clone(), dir, name.clone(), source, frozen);
        sandbox.watch_log(inner.config.log_limit_bytes);
        inner.insert(sandbox);
        adopted.insert(name);
        let why = format!("{why}; {how} (the runtime lost its command, limits and grace)");
        found.push(recovery::adopted_without_spec(key, &cgroup, frozen, why));
    }
    for (key, why) in lost {
        let dir = state::sandbox_dir(&inner.config.state_dir, &key);
        let exit = state_file::read::<Exit>(&dir, state::EXIT).ok().flatten();
        if let Err(e) = lifecycle::cleanup(inner, &key).await {
            tracing::warn!(sandbox.id = %key.id, error = %e, "cleaning up an ended sandbox failed");
        }
        let mut recovered = recovery::ended_without_spec(key, exit);
        recovered.lost.push(Lost::State(why));
        found.push(recovered);
    }
    found
}

/// The exit of container `cid` of the lifecycle in `dir`: recorded by the agent, or by the
/// container's recorder.
fn recorded_exit(dir: &Path, cid: &str) -> Option<Exit> {
    state_file::read(dir, state::EXIT)
        .ok()
        .flatten()
        .or_else(|| state_file::read_path(&recorder::exit_file(dir, cid)).ok().flatten())
}

/// Whether a container cgroup of `key` (any generation) holds processes.
fn has_populated_cgroup(inner: &Inner, key: &SandboxKey) -> bool {
    let prefix = format!("{}.{}.", key.id, key.lifecycle);
    inner
        .cgroups
        .children()
        .iter()
        .any(|n| n.starts_with(&prefix) && inner.container_cgroup(n).is_populated())
}

/// Gives the log of a lifecycle an earlier agent started the name this one reads
/// ([`paths::LOG`]): runsc's processes keep writing to the renamed file.
fn adopt_legacy_log(dir: &std::path::Path) {
    let (legacy, log) = (dir.join(paths::LEGACY_LOG), paths::log_path(dir));
    if legacy.exists()
        && !log.exists()
        && let Err(e) = std::fs::rename(&legacy, &log)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "renaming a log an earlier agent named failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_an_earlier_agent_named_is_adopted_once() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join(paths::LEGACY_LOG), b"old").expect("write");
        adopt_legacy_log(dir.path());
        assert_eq!(std::fs::read(paths::log_path(dir.path())).expect("renamed"), b"old");
        assert!(!dir.path().join(paths::LEGACY_LOG).exists());
        // A log under the new name is never replaced.
        std::fs::write(dir.path().join(paths::LEGACY_LOG), b"stale").expect("write");
        adopt_legacy_log(dir.path());
        assert_eq!(std::fs::read(paths::log_path(dir.path())).expect("kept"), b"old");
    }
}
