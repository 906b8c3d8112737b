//! Re-adoption after an agent restart: every lifecycle in the state dir whose container runsc still
//! reports running (or paused) gets a new watcher; the others are deleted and reported exited with
//! the exit they recorded. Containers in our `--root` that no lifecycle names are deleted.

use std::collections::HashSet;

use super::inner::Inner;
use super::lifecycle;
use super::paths::{self, read_container};
use super::recorder;
use super::sandbox::{ExitSource, Sandbox};
use crate::cgroup::FreezerState;
use crate::{Exit, LifecycleId, RecoverError, Recovered, RecoveredState, SandboxId, SandboxKey, SandboxSpec};
use crate::{state, state_file};

pub(super) async fn recover(inner: &Inner) -> Result<Vec<Recovered>, RecoverError> {
    let root = state::sandboxes_dir(&inner.config.state_dir);
    let read_err = |source| RecoverError::StateDir { path: root.clone(), source };
    let mut found = Vec::new();
    let mut adopted = HashSet::new();
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
            let (Ok(Some(spec)), Ok(Some(cid))) =
                (state_file::read::<SandboxSpec>(&dir, state::SPEC), read_container(&dir))
            else {
                continue; // cleaned up already: only its log is left
            };
            // A frozen (or freezing) sandbox cannot answer `runsc state`: its cgroup says it lives,
            // paused.
            let frozen = inner.container_cgroup(&cid).freezer_state() != FreezerState::Thawed;
            let status = if frozen {
                Some("paused".to_owned())
            } else {
                inner.runsc.state(&cid).await.ok().flatten().map(|s| s.status)
            };
            let started_at = std::fs::metadata(dir.join(state::SPEC))
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| std::time::SystemTime::now());
            let state = match status.as_deref() {
                Some(s @ ("running" | "paused" | "created")) => {
                    let paused = s == "paused" || frozen;
                    adopted.insert(cid.clone());
                    let source = ExitSource::Runsc(inner.runsc.clone());
                    let sandbox = Sandbox::running(key.clone(), dir, cid, source, paused);
                    sandbox.keep_log_bounded(inner.config.log_limit_bytes);
                    inner.insert(sandbox);
                    RecoveredState::Running { paused }
                }
                _ => {
                    // Recorded by the agent, or, if it ended while no agent ran, by its recorder.
                    let recorded = recorder::exit_file(&dir, &cid);
                    let exit: Option<Exit> =
                        state_file::read(&dir, state::EXIT).ok().flatten().or_else(|| {
                            let name = recorded.file_name()?.to_str()?;
                            state_file::read(&dir, name).ok().flatten()
                        });
                    inner.insert(Sandbox::exited(
                        key.clone(),
                        dir,
                        cid,
                        exit.unwrap_or(Exit::Signal(libc::SIGKILL)),
                    ));
                    if let Err(e) = lifecycle::cleanup(inner, &key).await {
                        tracing::warn!(sandbox.id = %key.id, error = %e, "cleaning up an ended sandbox failed");
                    }
                    RecoveredState::Exited(exit)
                }
            };
            found.push(Recovered::new(spec, started_at, state));
        }
    }
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
